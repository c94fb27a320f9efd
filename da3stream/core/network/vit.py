"""The DA3 ViT backbone: DINOv2 blocks with alternating per-view / cross-view attention.

Token layout inside the backbone is ``(B, S, N, C)``: batch, views, tokens per
view (token 0 is the cls token, later the camera token; tokens 1.. are patches
in row-major order), width. A *local* block attends within each view
(``(B*S, N, C)``), a *global* block over all tokens of all views of one batch
item (``(B, S*N, C)``).

Parameter names follow the official checkpoints (``backbone.pretrained.*``), so
official weights load with ``strict=True``. The forward differs from the
official one only where it is cheaper and equal in value:

- the reference view is not physically moved to position 0: global attention
  is permutation-equivariant over views (no cross-view position code), so
  giving view ``ref`` the reference camera token is the same computation, and
  outputs need no restoring;
- local blocks run on micro-batches of views and every FFN on micro-batches of
  tokens (``view_chunk``, ``token_chunk``), so activations do not scale with
  the chunk length;
- only the four out-layer features (and one pooled descriptor) are kept;
- every op runs in the weights' dtype except the position-embedding resize,
  the RoPE tables and the reference-view statistics (fp32, then cast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da3stream.core.network.presets import PATCH_SIZE, POS_EMBED_GRID, BackboneSpec
from da3stream.errors import ConfigError, ShapeError

BLOCK_LN_EPS = 1e-6
"""LayerNorm eps of norm1/norm2 in the backbone blocks (the others use torch's 1e-5)."""

REF_VIEW_MIN_VIEWS = 3
"""Reference-view selection runs only for at least this many views (official threshold)."""

REF_VIEW_STRATEGIES = ("saddle_balanced", "saddle_sim_range", "first", "middle")


# ----------------------------------------------------------------------------------- layers
class LayerScale(nn.Module):
    """Per-channel residual-branch scale ``gamma`` (C,)."""

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, dim: int, hidden: int, out_dim: Optional[int] = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Gated FFN of ViT-giant: ``w3(silu(a) * b)`` with ``[a, b] = w12(x)`` (pure torch)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Hidden width of the giant SwiGLU (2/3 of the MLP width, rounded up to 8)."""
    return (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8


@dataclass(frozen=True)
class RopeTables:
    """Per-token rotation of one attention layout: ``cos``/``sin`` of shape (N, head_dim)."""

    cos: Tensor
    sin: Tensor


def rope_tables(
    pos_yx: Tensor, head_dim: int, frequency: float, dtype: torch.dtype
) -> RopeTables:
    """2-D RoPE tables for integer positions ``pos_yx`` (N, 2) (row, col).

    The first half of each head encodes the row, the second half the column;
    each half uses the rotate-half convention with ``inv_freq = f^(-2k/(d/2))``.
    Computed in fp32, returned in ``dtype``.
    """
    half = head_dim // 2
    exponents = torch.arange(0, half, 2, device=pos_yx.device).float() / half
    inv_freq = 1.0 / (frequency**exponents)
    parts_cos, parts_sin = [], []
    for axis in range(2):
        angles = pos_yx[:, axis].float()[:, None] * inv_freq[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        parts_cos.append(angles.cos())
        parts_sin.append(angles.sin())
    return RopeTables(torch.cat(parts_cos, -1).to(dtype), torch.cat(parts_sin, -1).to(dtype))


def apply_rope(x: Tensor, tables: RopeTables) -> Tensor:
    """Rotate ``x`` (..., L, head_dim); L is a multiple of the table length N."""
    n = tables.cos.shape[0]
    shape = x.shape
    if shape[-2] != n:
        x = x.reshape(*shape[:-2], shape[-2] // n, n, shape[-1])
    quarter = shape[-1] // 4
    parts = x.unflatten(-1, (2, 2, quarter))  # (..., axis, half-of-axis, quarter)
    rotated = torch.stack((-parts[..., 1, :], parts[..., 0, :]), dim=-2).flatten(-3)
    out = x * tables.cos + rotated * tables.sin
    return out.reshape(shape)


class Attention(nn.Module):
    """Multi-head self-attention via ``F.scaled_dot_product_attention``.

    There is no xformers backend (it was an optional extra that nothing imported,
    and was dropped): the attention here is plain unmasked softmax attention with
    no bias, for which torch's SDPA already dispatches to the FlashAttention-2 or
    the memory-efficient (xformers-derived cutlass) kernel on CUDA in fp16 /
    bf16, and to its fused math kernel on the CPU, where xformers 0.0.35 has no
    operator at all. A second backend would add an install and a code path the
    CPU tests cannot run, for no kernel SDPA lacks (no GPU was available to
    this change to measure one against the other).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"attention: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Optional[RopeTables] = None) -> Tensor:
        """``x`` (B', L, C) -> (B', L, C)."""
        b, length, c = x.shape
        qkv = self.qkv(x).reshape(b, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, length, c))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn: str = "mlp",
        mlp_ratio: float = 4.0,
        qk_norm: bool = False,
        ln_eps: float = BLOCK_LN_EPS,
        layerscale_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=ln_eps)
        if ffn == "mlp":
            self.mlp = Mlp(dim, int(dim * mlp_ratio))
        elif ffn == "swiglu":
            self.mlp = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio))
        else:
            raise ConfigError(f"block: unknown ffn {ffn!r} (expected 'mlp' or 'swiglu')")
        self.ls2 = LayerScale(dim, layerscale_init)

    def forward(
        self, x: Tensor, rope: Optional[RopeTables] = None, token_chunk: Optional[int] = None
    ) -> Tensor:
        """``x`` (B', L, C) -> (B', L, C); the FFN runs on ``token_chunk`` tokens at a time."""
        h = x + self.ls1(self.attn(self.norm1(x), rope))
        if torch.is_grad_enabled() or not token_chunk or h.shape[0] * h.shape[1] <= token_chunk:
            return h + self.ls2(self.mlp(self.norm2(h)))
        flat = h.view(-1, h.shape[-1])
        for start in range(0, flat.shape[0], token_chunk):
            part = flat[start : start + token_chunk]
            part.add_(self.ls2(self.mlp(self.norm2(part))))  # h is this block's own tensor
        return h


class PatchEmbed(nn.Module):
    """Non-overlapping 14x14 patches -> tokens."""

    def __init__(self, dim: int, patch_size: int = PATCH_SIZE, in_chans: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B', 3, H, W) -> (B', H/14 * W/14, C)."""
        return self.proj(x).flatten(2).transpose(1, 2)


# -------------------------------------------------------------------- reference-view choice
def select_reference_view(cls_tokens: Tensor, strategy: str = "saddle_balanced") -> Tensor:
    """Index (B,) int64 of the reference view from per-view cls tokens (B, S, C).

    - ``saddle_balanced``: the view whose (mean cosine similarity to the others,
      token norm, variance of the normalised token) are, after min-max
      normalisation over views, jointly closest to 0.5;
    - ``saddle_sim_range``: the view with the largest spread of similarities;
    - ``first`` / ``middle``: view 0 / view S // 2.
    Statistics are computed in fp32.
    """
    b, s, _ = cls_tokens.shape
    device = cls_tokens.device
    if strategy not in REF_VIEW_STRATEGIES:
        raise ConfigError(
            f"ref_view_strategy: unknown {strategy!r} (expected one of {', '.join(REF_VIEW_STRATEGIES)})"
        )
    if s <= 1 or strategy == "first":
        return torch.zeros(b, dtype=torch.long, device=device)
    if strategy == "middle":
        return torch.full((b,), s // 2, dtype=torch.long, device=device)
    tok = cls_tokens.float()
    norms = tok.norm(dim=-1)
    unit = tok / norms[..., None]
    sim = unit @ unit.transpose(1, 2) - torch.eye(s, device=device)[None]
    if strategy == "saddle_sim_range":
        return (sim.max(dim=-1).values - sim.min(dim=-1).values).argmax(dim=1)
    stats = (sim.sum(dim=-1) / (s - 1), norms, unit.var(dim=-1))
    score = torch.zeros_like(norms)
    for metric in stats:
        lo = metric.min(dim=1, keepdim=True).values
        hi = metric.max(dim=1, keepdim=True).values
        score = score + ((metric - lo) / (hi - lo + 1e-8) - 0.5).abs()
    return score.argmin(dim=1)


# ------------------------------------------------------------------------------ backbone
@dataclass
class BackboneOutput:
    """What the heads need from the backbone (views in input order)."""

    local_feats: list[Optional[Tensor]]
    """Per out layer: (B, S, P, C) raw output of the latest local block, or None (no cat_token)."""
    global_feats: list[Tensor]
    """Per out layer: (B, S, P, C) block output after the final LayerNorm."""
    camera_token: Tensor
    """(B, S, out_dim) token 0 of the last out layer, un-normalised ([local, global] if cat_token)."""
    ref_view: Optional[Tensor]
    """(B,) int64 view that received the reference camera token, or None."""
    descriptor: Optional[Tensor]
    """(B, S, 2C) float32 unit-norm global descriptor, or None."""


class VisionTransformer(nn.Module):
    """The parameters live here (``backbone.pretrained.*`` in checkpoints)."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        c = spec.embed_dim
        self.spec = spec
        self.patch_embed = PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        if spec.multi_view:
            self.camera_token = nn.Parameter(torch.randn(1, 2, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, POS_EMBED_GRID * POS_EMBED_GRID + 1, c))
        self.blocks = nn.ModuleList(
            Block(
                c,
                spec.num_heads,
                ffn=spec.ffn,
                mlp_ratio=spec.mlp_ratio,
                qk_norm=spec.qknorm_start != -1 and i >= spec.qknorm_start,
            )
            for i in range(spec.depth)
        )
        self.norm = nn.LayerNorm(c)


class Backbone(nn.Module):
    """Runs :class:`VisionTransformer` (kept as ``self.pretrained`` for checkpoint names)."""

    def __init__(self, spec: BackboneSpec, view_chunk: int = 16, token_chunk: int = 65536) -> None:
        super().__init__()
        head_dim = spec.embed_dim // spec.num_heads
        if spec.rope_start != -1 and head_dim % 4:
            raise ConfigError(f"backbone: head width {head_dim} must be a multiple of 4 for 2-D RoPE")
        self.spec = spec
        self.pretrained = VisionTransformer(spec)
        self.view_chunk = view_chunk
        """Views per micro-batch in local blocks (0 = all at once)."""
        self.token_chunk = token_chunk
        """Tokens per micro-batch in the FFNs (0 = all at once)."""

    @property
    def descriptor_layer(self) -> int:
        """Block whose output feeds the descriptor: the last block that sees one view only."""
        return self.spec.alt_start - 1 if self.spec.multi_view else self.spec.depth - 1

    def is_global(self, i: int) -> bool:
        s = self.spec
        return s.multi_view and i >= s.alt_start and i % 2 == 1

    # ------------------------------------------------------------------ pieces
    def _pos_embed(self, ph: int, pw: int, height: int, width: int, dtype: torch.dtype) -> Tensor:
        """(1, 1 + ph*pw, C) position embedding for a ph x pw patch grid."""
        pe = self.pretrained.pos_embed
        m = POS_EMBED_GRID
        if ph * pw == m * m and height == width:
            return pe.to(dtype)
        pe = pe.float()
        c = pe.shape[-1]
        grid = pe[:, 1:].reshape(1, m, m, c).permute(0, 3, 1, 2)
        off = self.spec.interpolate_offset
        grid = F.interpolate(
            grid, scale_factor=((ph + off) / m, (pw + off) / m), mode="bicubic", antialias=False
        )
        if tuple(grid.shape[-2:]) != (ph, pw):
            raise ShapeError(f"images: position embedding resized to {tuple(grid.shape[-2:])}, expected {(ph, pw)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, ph * pw, c)
        return torch.cat((pe[:, :1], grid), dim=1).to(dtype)

    def _rope(self, ph: int, pw: int, device, dtype) -> tuple[RopeTables, RopeTables]:
        """(local, global) RoPE tables: patches at (row+1, col+1) resp. (1, 1); token 0 at (0, 0)."""
        rows = torch.arange(ph, device=device).repeat_interleave(pw)
        cols = torch.arange(pw, device=device).repeat(ph)
        local_pos = torch.cat((torch.zeros(1, 2, device=device, dtype=torch.long),
                               torch.stack((rows, cols), -1) + 1))
        global_pos = (local_pos > 0).long()
        head_dim = self.spec.embed_dim // self.spec.num_heads
        f = self.spec.rope_frequency
        return rope_tables(local_pos, head_dim, f, dtype), rope_tables(global_pos, head_dim, f, dtype)

    def _run_local(self, blk: Block, x: Tensor, rope: Optional[RopeTables]) -> Tensor:
        b, s, n, c = x.shape
        flat = x.reshape(b * s, n, c)
        chunk = self.view_chunk
        if torch.is_grad_enabled() or not chunk or b * s <= chunk:
            return blk(flat, rope, self.token_chunk).view(b, s, n, c)
        out = torch.empty_like(flat)
        for start in range(0, b * s, chunk):
            out[start : start + chunk] = blk(flat[start : start + chunk], rope, self.token_chunk)
        return out.view(b, s, n, c)

    def _run_global(self, blk: Block, x: Tensor, rope: Optional[RopeTables]) -> Tensor:
        b, s, n, c = x.shape
        return blk(x.reshape(b, s * n, c), rope, self.token_chunk).view(b, s, n, c)

    @staticmethod
    def _descriptor(x: Tensor) -> Tensor:
        """(B, S, N, C) tokens -> (B, S, 2C) fp32 unit vectors: [mean patch token, cls token].

        Read at :attr:`descriptor_layer`, the last block before any cross-view
        attention or camera token, so a view's descriptor depends on that view
        only: the same frame gets the same descriptor in every chunk it is
        part of, whatever the other views or the reference choice (what loop
        closure across chunks needs). Each token is standardised (LayerNorm
        without affine); the patch tokens are mean-pooled (GeM needs positive
        values); the pooled patch vector and the cls token are each
        L2-normalised, concatenated and L2-normalised again (equal weight).
        """
        tok = F.layer_norm(x.float(), x.shape[-1:])
        patch = F.normalize(tok[:, :, 1:].mean(dim=2), dim=-1)
        cls = F.normalize(tok[:, :, 0], dim=-1)
        return F.normalize(torch.cat((patch, cls), dim=-1), dim=-1)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: Tensor,
        cam_tokens: Optional[Tensor] = None,
        ref_view_strategy: str = "saddle_balanced",
        want_descriptor: bool = True,
    ) -> BackboneOutput:
        """``images`` (B, S, 3, H, W) normalised; ``cam_tokens`` (B, S, C) from the camera encoder."""
        vit, spec = self.pretrained, self.spec
        b, s, _, height, width = images.shape
        ph, pw = height // PATCH_SIZE, width // PATCH_SIZE
        dtype = vit.patch_embed.proj.weight.dtype
        c = spec.embed_dim

        tokens = vit.patch_embed(images.reshape(b * s, 3, height, width).to(dtype))
        tokens = torch.cat((vit.cls_token.expand(b * s, 1, c).to(dtype), tokens), dim=1)
        x = (tokens + self._pos_embed(ph, pw, height, width, dtype)).view(b, s, 1 + ph * pw, c)
        del tokens

        use_rope = spec.rope_start != -1
        local_rope, global_rope = self._rope(ph, pw, images.device, dtype) if use_rope else (None, None)

        out_layers = set(spec.out_layers)
        local_feats: list[Optional[Tensor]] = []
        global_feats: list[Tensor] = []
        camera_token = None
        ref_view = None
        descriptor = None
        local_x = x
        for i, blk in enumerate(vit.blocks):
            if spec.multi_view and i == spec.alt_start - 1 and cam_tokens is None:
                ref_view = (
                    select_reference_view(x[:, :, 0], ref_view_strategy)
                    if s >= REF_VIEW_MIN_VIEWS
                    else torch.zeros(b, dtype=torch.long, device=x.device)
                )
            if spec.multi_view and i == spec.alt_start:
                x = torch.cat((self._camera_tokens(b, s, cam_tokens, ref_view, dtype)[:, :, None], x[:, :, 1:]), 2)
            rope = None
            if use_rope and i >= spec.rope_start:
                rope = global_rope if self.is_global(i) else local_rope
            if self.is_global(i):
                x = self._run_global(blk, x, rope)
            else:
                x = self._run_local(blk, x, rope)
                local_x = x
            if want_descriptor and i == self.descriptor_layer:
                descriptor = self._descriptor(x)
            if i in out_layers:
                normed = vit.norm(x[:, :, 1:])
                global_feats.append(normed)
                local_feats.append(local_x[:, :, 1:] if spec.cat_token else None)
                if i == spec.out_layers[-1]:
                    tok0 = x[:, :, 0]
                    camera_token = torch.cat((local_x[:, :, 0], tok0), -1) if spec.cat_token else tok0
        return BackboneOutput(local_feats, global_feats, camera_token, ref_view, descriptor)

    def _camera_tokens(
        self, b: int, s: int, cam_tokens: Optional[Tensor], ref_view: Optional[Tensor], dtype
    ) -> Tensor:
        """(B, S, C) tokens written into position 0 at block ``alt_start``."""
        if cam_tokens is not None:
            return cam_tokens.to(dtype)
        table = self.pretrained.camera_token.to(dtype)  # (1, 2, C): [reference, other]
        is_ref = torch.arange(s, device=table.device)[None, :] == ref_view[:, None]  # (B, S)
        return torch.where(is_ref[..., None], table[:, 0:1], table[:, 1:2])

