"""DPT dense heads: ``DualDPT`` (depth + ray, any-view models) and ``MonoDPT`` (depth + sky).

Both read the four out-layer features of the backbone, project and resize
them to a 4-level pyramid (x4, x2, x1, /2 of the patch grid), fuse it top-down
with RefineNet-style blocks and decode at image resolution. Parameter names
follow the official checkpoints (``head.*``; the giant's unused Gaussian head
``gs_head.*`` is mirrored by :class:`GaussianHeadWeights` so checkpoints load
strictly).

Views are decoded in micro-batches of ``chunk`` views and the full-resolution
tail (upsampling, last convs) one view at a time; results are written into
preallocated fp32 outputs, so head activations do not grow with the number of
views. Only the last level of the ray branch is computed (the official head
computes all four and discards three). With autograd off, ReLUs, residual adds
and position-embedding adds run in place on fresh intermediates (same values,
fewer temporaries).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from da3stream.core.network.presets import PATCH_SIZE, HeadSpec
from da3stream.core.network.vit import BackboneOutput

UV_EMBED_RATIO = 0.1
"""Scale of the UV sin/cos position embedding added to head feature maps."""

UV_EMBED_OMEGA0 = 100.0
"""Base frequency of the UV sin/cos position embedding."""

HEAD_HIDDEN = 32
"""Width of the last 3x3 conv of every output branch."""

AUX_LEVELS = 4
"""Pyramid levels the official ray branch is built with (only the last one is used)."""


# ------------------------------------------------------------------------- building blocks
class Permute(nn.Module):
    """``x.permute(*dims)`` as a module (keeps the official Sequential indices)."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.dims = tuple(dims)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.dims)


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))``."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, 1, 1)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.conv2(F.relu(self.conv1(F.relu(x)))) + x
        out = self.conv2(F.relu_(self.conv1(F.relu(x))))  # same values, fewer temporaries
        return out.add_(x)


class FusionBlock(nn.Module):
    """Top-down fusion: [+ RCU(skip)] -> RCU -> bilinear resize (align_corners) -> 1x1 conv."""

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1, 1, 0)

    def forward(self, x: Tensor, skip: Optional[Tensor] = None, size=None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip) if torch.is_grad_enabled() else self.resConfUnit1(skip).add_(x)
        x = self.resConfUnit2(x)
        if size is None:
            size = (int(x.shape[-2] * 2), int(x.shape[-1] * 2))
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


def uv_position_embedding(
    channels: int, ph: int, pw: int, aspect: float, omega0: float = UV_EMBED_OMEGA0, device=None
) -> Tensor:
    """(channels, ph, pw) fp32 sin/cos embedding of a centred UV grid.

    The grid spans ``+-aspect/diag`` horizontally and ``+-1/diag`` vertically
    (``diag = sqrt(aspect^2 + 1)``, pixel centres); the first half of the
    channels encodes u, the second v, each as [sin, cos] of ``pos * omega0^(-k/(c/4))``.
    """
    diag = (aspect**2 + 1.0) ** 0.5
    span_x, span_y = aspect / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (pw - 1) / pw, span_x * (pw - 1) / pw, steps=pw,
                        dtype=torch.float32, device=device)
    ys = torch.linspace(-span_y * (ph - 1) / ph, span_y * (ph - 1) / ph, steps=ph,
                        dtype=torch.float32, device=device)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")  # (ph, pw) each
    quarter = channels // 4
    omega = torch.arange(quarter, dtype=torch.float32, device=device) / (channels / 4.0)
    omega = 1.0 / omega0**omega
    parts = []
    for coord in (uu, vv):
        angles = coord.reshape(-1)[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=-1).reshape(ph, pw, channels).permute(2, 0, 1)


class _PosEmbedCache:
    """Memoises :func:`uv_position_embedding` per (channels, size, aspect, dtype, device)."""

    def __init__(self, max_items: int = 64) -> None:
        self.items: dict = {}
        self.max_items = max_items

    def add(self, x: Tensor, height: int, width: int) -> Tensor:
        """``x`` (n, C, h, w) + 0.1 * embedding, in x's dtype (in place when autograd is off:
        callers pass fresh intermediates only)."""
        c, h, w = x.shape[1:]
        key = (c, h, w, height, width, x.dtype, x.device)
        pe = self.items.get(key)
        if pe is None:
            pe = (uv_position_embedding(c, h, w, width / height, device=x.device) * UV_EMBED_RATIO).to(x.dtype)
            if len(self.items) >= self.max_items:
                self.items.clear()
            self.items[key] = pe
        if torch.is_grad_enabled():
            return x + pe[None]
        return x.add_(pe[None])


def _make_scratch(out_channels: Sequence[int], features: int) -> nn.Module:
    scratch = nn.Module()
    for i, oc in enumerate(out_channels):
        setattr(scratch, f"layer{i + 1}_rn", nn.Conv2d(oc, features, 3, 1, 1, bias=False))
    return scratch


def _output_branch(features: int, out: int, layer_norm: Optional[nn.LayerNorm] = None) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Conv2d(features // 2, HEAD_HIDDEN, 3, 1, 1)]
    if layer_norm is not None:
        mods += [Permute((0, 2, 3, 1)), layer_norm, Permute((0, 3, 1, 2))]
    mods += [nn.ReLU(inplace=True), nn.Conv2d(HEAD_HIDDEN, out, 1, 1, 0)]
    return nn.Sequential(*mods)


class _DPTBase(nn.Module):
    """Projection, resize and main fusion chain shared by all DPT variants."""

    def __init__(self, spec: HeadSpec, token_norm: bool, pos_embed: bool) -> None:
        super().__init__()
        oc, f = spec.out_channels, spec.features
        self.features = f
        self.use_pos_embed = pos_embed
        if token_norm:
            self.norm = nn.LayerNorm(spec.dim_in)
        self.projects = nn.ModuleList(nn.Conv2d(spec.dim_in, c, 1, 1, 0) for c in oc)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(oc[0], oc[0], kernel_size=4, stride=4, padding=0),
            nn.ConvTranspose2d(oc[1], oc[1], kernel_size=2, stride=2, padding=0),
            nn.Identity(),
            nn.Conv2d(oc[3], oc[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = _make_scratch(oc, f)
        self.scratch.refinenet1 = FusionBlock(f)
        self.scratch.refinenet2 = FusionBlock(f)
        self.scratch.refinenet3 = FusionBlock(f)
        self.scratch.refinenet4 = FusionBlock(f, has_residual=False)
        self.scratch.output_conv1 = nn.Conv2d(f, f // 2, 3, 1, 1)
        self._pe = _PosEmbedCache()

    def _pyramid(self, tokens: list[Tensor], ph: int, pw: int, height: int, width: int) -> list[Tensor]:
        """Per level: tokens (n, P, D) -> (n, features, h_l, w_l) after the 3x3 ``layerK_rn``."""
        levels = []
        for i, tok in enumerate(tokens):
            if hasattr(self, "norm"):
                tok = self.norm(tok)
            n, _, d = tok.shape
            x = tok.permute(0, 2, 1).reshape(n, d, ph, pw)
            x = self.projects[i](x)
            if self.use_pos_embed:
                x = self._pe.add(x, height, width)
            x = self.resize_layers[i](x)
            levels.append(getattr(self.scratch, f"layer{i + 1}_rn")(x))
        return levels

    def _fuse(self, levels: list[Tensor], suffix: str = "") -> Tensor:
        l1, l2, l3, l4 = levels
        sc = self.scratch
        out = getattr(sc, "refinenet4" + suffix)(l4, size=l3.shape[2:])
        out = getattr(sc, "refinenet3" + suffix)(out, l3, size=l2.shape[2:])
        out = getattr(sc, "refinenet2" + suffix)(out, l2, size=l1.shape[2:])
        return getattr(sc, "refinenet1" + suffix)(out, l1)

    @staticmethod
    def _chunk_tokens(feats: BackboneOutput, start: int, stop: int) -> list[Tensor]:
        """Out-layer tokens of flattened views [start, stop): (n, P, D) each."""
        out = []
        for loc, glob in zip(feats.local_feats, feats.global_feats):
            b, s, p, c = glob.shape
            g = glob.reshape(b * s, p, c)[start:stop]
            if loc is None:
                out.append(g)
            else:
                out.append(torch.cat((loc.reshape(b * s, p, c)[start:stop], g), dim=-1))
        return out


class DualDPT(_DPTBase):
    """Depth (+conf) at image resolution and rays (+conf) at 8x the patch grid."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__(spec, token_norm=True, pos_embed=True)
        f = spec.features
        self.scratch.output_conv2 = _output_branch(f, 2)
        for k in (1, 2, 3):
            setattr(self.scratch, f"refinenet{k}_aux", FusionBlock(f))
        self.scratch.refinenet4_aux = FusionBlock(f, has_residual=False)
        self.scratch.output_conv1_aux = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(f, f // 2, 3, 1, 1),
                nn.Conv2d(f // 2, f, 3, 1, 1),
                nn.Conv2d(f, f // 2, 3, 1, 1),
                nn.Conv2d(f // 2, f, 3, 1, 1),
                nn.Conv2d(f, f // 2, 3, 1, 1),
            )
            for _ in range(AUX_LEVELS)
        )
        shared_ln = nn.LayerNorm(HEAD_HIDDEN)  # one module at every level (tied, as in checkpoints)
        self.scratch.output_conv2_aux = nn.ModuleList(
            _output_branch(f, 7, shared_ln) for _ in range(AUX_LEVELS)
        )

    def forward(self, feats: BackboneOutput, height: int, width: int, chunk: int = 8) -> dict[str, Tensor]:
        """-> depth, depth_conf (B, S, H, W); ray (B, S, 8ph, 8pw, 6) [direction, origin]; ray_conf; fp32."""
        b, s = feats.global_feats[0].shape[:2]
        ph, pw = height // PATCH_SIZE, width // PATCH_SIZE
        n_all = b * s
        dev = feats.global_feats[0].device
        out = {
            "depth": torch.empty(n_all, height, width, device=dev),
            "depth_conf": torch.empty(n_all, height, width, device=dev),
            "ray": torch.empty(n_all, 8 * ph, 8 * pw, 6, device=dev),
            "ray_conf": torch.empty(n_all, 8 * ph, 8 * pw, device=dev),
        }
        chunk = max(1, int(chunk or n_all))
        full = (ph * PATCH_SIZE, pw * PATCH_SIZE)
        for start in range(0, n_all, chunk):
            stop = min(start + chunk, n_all)
            levels = self._pyramid(self._chunk_tokens(feats, start, stop), ph, pw, height, width)
            main = self.scratch.output_conv1(self._fuse(levels))
            for i in range(main.shape[0]):  # the full-resolution tail one view at a time
                tail = F.interpolate(main[i : i + 1], size=full, mode="bilinear", align_corners=True)
                logits = self.scratch.output_conv2(self._pe.add(tail, height, width))[0].float()
                out["depth"][start + i] = logits[0].exp()
                out["depth_conf"][start + i] = logits[1].exp() + 1.0
                del tail, logits
            del main
            aux = self.scratch.output_conv1_aux[-1](self._fuse(levels, "_aux"))
            del levels
            aux = self.scratch.output_conv2_aux[-1](self._pe.add(aux, height, width)).float()
            out["ray"][start:stop] = aux[:, :6].permute(0, 2, 3, 1)
            out["ray_conf"][start:stop] = aux[:, 6].exp() + 1.0
            del aux
        return {k: v.view(b, s, *v.shape[1:]) for k, v in out.items()}


class MonoDPT(_DPTBase):
    """Depth (exp) and sky (ReLU) at image resolution, no confidence, no position embedding."""

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__(spec, token_norm=False, pos_embed=False)
        self.scratch.output_conv2 = _output_branch(spec.features, 1)
        self.scratch.sky_output_conv2 = _output_branch(spec.features, 1)

    def forward(self, feats: BackboneOutput, height: int, width: int, chunk: int = 8) -> dict[str, Tensor]:
        """-> depth, sky (B, S, H, W) fp32."""
        b, s = feats.global_feats[0].shape[:2]
        ph, pw = height // PATCH_SIZE, width // PATCH_SIZE
        n_all = b * s
        dev = feats.global_feats[0].device
        out = {"depth": torch.empty(n_all, height, width, device=dev),
               "sky": torch.empty(n_all, height, width, device=dev)}
        chunk = max(1, int(chunk or n_all))
        full = (ph * PATCH_SIZE, pw * PATCH_SIZE)
        for start in range(0, n_all, chunk):
            stop = min(start + chunk, n_all)
            levels = self._pyramid(self._chunk_tokens(feats, start, stop), ph, pw, height, width)
            fused = self.scratch.output_conv1(self._fuse(levels))
            del levels
            for i in range(fused.shape[0]):  # the full-resolution tail one view at a time
                tail = F.interpolate(fused[i : i + 1], size=full, mode="bilinear", align_corners=True)
                out["depth"][start + i] = self.scratch.output_conv2(tail)[0, 0].float().exp()
                out["sky"][start + i] = F.relu(self.scratch.sky_output_conv2(tail)[0, 0].float())
                del tail
            del fused
        return {k: v.view(b, s, *v.shape[1:]) for k, v in out.items()}


class GaussianHeadWeights(_DPTBase):
    """Parameters of the giant's 3-D Gaussian head (``gs_head.*``); loaded, never run here."""

    GS_OUTPUT_DIM = 38

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__(spec, token_norm=False, pos_embed=True)
        f = spec.features
        self.scratch.output_conv2 = _output_branch(f, self.GS_OUTPUT_DIM)
        merged = f // 2
        self.images_merger = nn.Sequential(
            nn.Conv2d(3, merged // 4, 3, 1, 1), nn.GELU(),
            nn.Conv2d(merged // 4, merged // 2, 3, 1, 1), nn.GELU(),
            nn.Conv2d(merged // 2, merged, 3, 1, 1), nn.GELU(),
        )

    def forward(self, *args, **kwargs):  # pragma: no cover - explicit refusal
        from da3stream.errors import ConfigError

        raise ConfigError("gs_head: 3-D Gaussian prediction is not supported by da3stream")
