"""Analytic peak-memory model of OUR DA3 forward, used to size windows from a memory budget.

The peak of one forward over ``views`` frames at network resolution (h, w) is

    weights + inputs + overhead + max(backbone phase, head phase)

counted tensor by tensor from the network's code (``da3stream/core/network``):

- backbone phase: the running token tensor, the out-layer features kept for the
  heads (per out layer a LayerNorm'd copy and the raw local-block output, i.e.
  up to 8 token tensors for the any-view models), plus the working set of the
  largest block -- a global-attention block over all ``views * (1 + h/14 * w/14)``
  tokens (qkv, q/k after QK-norm and RoPE, the attention output; SDPA never
  materialises the attention matrix) or its FFN (hidden 4C for the MLP, w12 +
  gate for SwiGLU; run in micro-batches of ``token_chunk`` tokens), or a
  local block run on micro-batches of ``view_chunk`` views;
- head phase: the kept features, the preallocated fp32 outputs (depth, conf
  at h x w; ray + conf at 8h/14 x 8w/14), the cached UV position embeddings and
  the working set of one micro-batch of ``head_chunk`` views: the concatenated
  tokens, the 4-level pyramid, the fusion at 8/14 resolution, and the
  full-resolution tail, which the head runs one view at a time (the
  F/2-channel upsampled map and the 32-channel conv output).

Each phase's element count is multiplied by the element size of the weights'
dtype and by a per-device calibration factor (:class:`MemoryConstants`):

- CPU (peak RSS): fitted on the small preset (fresh subprocess per forward; the
  increase of the peak RSS (``VmHWM``) over the RSS after building the net and the
  input, as ``da3stream.bench.model.measure`` reports it): :data:`CPU_CONSTANTS`
  for glibc's default malloc, :data:`CPU_PINNED_CONSTANTS` with a pinned mmap
  threshold. ``tests/test_memory_model.py`` checks the analytic count against
  live tensor bytes (within 10%, the same on every machine); how the fitted
  constants compare with peak RSS on the machine at hand is reported by
  ``python -m da3stream.bench memory`` (it differs between CPUs by up to ~25%).
  The planner uses :data:`CPU_PLANNING_CONSTANTS`, which add a margin for that.
- CUDA (``torch.cuda.max_memory_allocated``): the analytic count with factor
  1.0 plus a cuDNN/cuBLAS workspace allowance (:data:`CUDA_CONSTANTS`); these
  constants have NOT been fitted on a GPU in this repository (see the
  ``gpu``-marked test, which checks them within 15% where a GPU exists).

The CPU model is for the first forward of a process; over many forwards glibc's
heap can grow further. RSS also counts library pages, which the kernel may evict
under memory pressure (the benchmark reports ``rss_file_evicted_bytes``).
``max_views_for_budget`` inverts the model (it is monotone in ``views``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from da3stream.errors import ConfigError

PATCH = 14
DEFAULT_HEAD_CHUNK = 8
DEFAULT_VIEW_CHUNK = 16
DEFAULT_TOKEN_CHUNK = 65536
_ELEM_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_OUTPUT_BYTES = 4  # heads write fp32 outputs whatever the weights' dtype
NESTED_POST_MAPS = 6
"""Full-resolution fp32 maps per view alive during the nested model's metric alignment (not measured)."""


@dataclass(frozen=True)
class MemoryConstants:
    """Calibration of the analytic model for one device kind."""

    activation_factor: float
    """Multiplier on the analytic activation bytes (allocator reuse, fragmentation, copies we do not count)."""
    overhead_bytes: int
    """Constant bytes a first forward adds (CPU: oneDNN/OpenMP buffers; CUDA: library workspaces)."""
    weights_factor: float = 1.0
    """Multiplier on parameter bytes."""


CPU_CONSTANTS = MemoryConstants(activation_factor=1.37, overhead_bytes=42 * 2**20)
"""Peak RSS increase of a first forward on CPU with glibc's default malloc (what a user sees),
fitted (minimax relative error) on the small preset in fp32: 38 runs in fresh processes, 1-32
views, 98x140 to 504x504, head_chunk 8, 2 threads. glibc's dynamic mmap threshold keeps freed
blocks of up to 32 MiB in its heap, so RSS exceeds the live tensor bytes by an amount that varies
between runs of the SAME case by up to 15%; residuals of the fit: max 19%, std 10%."""
CPU_PINNED_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""Environment that pins glibc's mmap threshold: freed large blocks go back to the OS at once."""
CPU_PINNED_CONSTANTS = MemoryConstants(activation_factor=0.93, overhead_bytes=32 * 2**20)
"""Peak RSS increase of a first forward on CPU under :data:`CPU_PINNED_MALLOC_ENV`: 17 runs
(same range as above), residuals max 2%, std 1.2%; repeated runs agree within 0.5%. The
~30 MiB are oneDNN/OpenMP first-call buffers; the factor < 1 reflects outputs and caches that
are allocated but not yet all touched at the peak."""
CPU_MACHINE_MARGIN = 1.3
"""How far another machine's peak RSS may exceed the fitted CPU constants. On an AMD EPYC (AVX2,
no AVX-512) a first forward measured 1.24x the pinned-malloc estimate in three repeats within
0.3%: the instruction set picks oneDNN/BLAS kernels with other scratch sizes. Peak RSS is a
property of the machine, so its comparison with the fit is a benchmark figure
(``python -m da3stream.bench memory``), not a test."""
CPU_PLANNING_CONSTANTS = MemoryConstants(activation_factor=CPU_CONSTANTS.activation_factor * CPU_MACHINE_MARGIN,
                                         overhead_bytes=int(CPU_CONSTANTS.overhead_bytes * CPU_MACHINE_MARGIN))
"""What the memory planner sizes CPU windows with: the default-malloc fit times
:data:`CPU_MACHINE_MARGIN`. Conservative rather than calibrated at run time: a run-time
calibration would cost a forward per resolution before the first window and would still
change with load. A window that does not fit anyway is retried smaller on ``MemoryError``."""
CUDA_CONSTANTS = MemoryConstants(activation_factor=1.0, overhead_bytes=256 * 2**20)
"""``torch.cuda.max_memory_allocated`` (analytic, not fitted on a GPU here)."""


@dataclass(frozen=True)
class _Arch:
    embed_dim: int
    depth: int
    ffn_units: float          # FFN working set per token, in units of C (fc1 + act, or w12 + gate + product)
    cat_token: bool
    multi_view: bool
    head_dim_in: int
    features: int
    out_channels: tuple
    dual: bool                # DualDPT (depth + ray) vs MonoDPT (depth + sky)
    params: int


def _arch(preset: str) -> list[_Arch]:
    """One entry per sub-network (two for the nested model), from the network's presets."""
    from da3stream.core.network import get_preset

    try:
        spec = get_preset(preset)
    except Exception as exc:
        raise ConfigError(f"preset: unknown {preset!r} ({exc})") from None
    if spec.is_nested:
        return [a for key in spec.nested for a in _arch(key)]
    bb, hd = spec.backbone, spec.head
    c = bb.embed_dim
    if bb.ffn == "swiglu":
        from da3stream.core.network.vit import swiglu_hidden

        hidden = swiglu_hidden(c, bb.mlp_ratio)
        ffn_units = 2.0 * hidden / c + 2.0 * hidden / c  # w12 output, then silu(a) and silu(a) * b
    else:
        ffn_units = 2.0 * bb.mlp_ratio  # fc1 output and its GELU
    return [_Arch(c, bb.depth, ffn_units, bb.cat_token, bb.multi_view, hd.dim_in, hd.features,
                  tuple(hd.out_channels), hd.kind == "dualdpt", _param_count(preset))]


_PARAM_CACHE: dict[str, int] = {}


def _param_count(preset: str) -> int:
    """Parameters of ``preset`` (counted once on the meta device: no memory, no init cost)."""
    if preset not in _PARAM_CACHE:
        import torch

        from da3stream.core.network import build_network

        with torch.device("meta"):
            net = build_network(preset)
        _PARAM_CACHE[preset] = sum(p.numel() for p in net.parameters())
    return _PARAM_CACHE[preset]


def _dtype_name(dtype) -> str:
    name = str(dtype).replace("torch.", "").lower()
    aliases = {"fp32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
    name = aliases.get(name, name)
    if name not in _ELEM_BYTES:
        raise ConfigError(f"dtype: expected float32, bfloat16 or float16, got {dtype!r}")
    return name


def constants_for(device) -> MemoryConstants:
    """:data:`CUDA_CONSTANTS` for cuda devices, else :data:`CPU_CONSTANTS`."""
    return CUDA_CONSTANTS if str(device).startswith("cuda") else CPU_CONSTANTS


def planning_constants_for(device) -> MemoryConstants:
    """What the planner sizes windows with: :data:`CUDA_CONSTANTS`, or :data:`CPU_PLANNING_CONSTANTS`."""
    return CUDA_CONSTANTS if str(device).startswith("cuda") else CPU_PLANNING_CONSTANTS


ATTN_UNITS = 12
"""Live token tensors (x C) of a block during attention: input, norm1 output (alive for the whole
call), qkv (3), q and k after QK-norm (2), RoPE'd q (1) and the RoPE temporaries of k (4)."""


def _backbone_elems(a: _Arch, views: int, n_tok: int, view_chunk: int, token_chunk: int) -> float:
    """Peak live elements during the backbone (excluding weights and the input images)."""
    t = views * n_tok
    kept = (6 if a.cat_token else 3) * t  # features of the 3 earlier out layers (+ their local outputs)
    ffn_t = min(t, token_chunk) if token_chunk else t
    # one block over all tokens: attention, or the FFN (input, h, norm2, then the hidden of one token chunk)
    whole = max(ATTN_UNITS * t, 2 * t + ffn_t * (1 + a.ffn_units))
    vc = min(views, view_chunk) if view_chunk else views
    if vc < views:  # local blocks on micro-batches: input, output buffer, one micro-batch's working set
        loc_t = vc * n_tok
        local = 2 * t + max((ATTN_UNITS - 1) * loc_t, (2 + a.ffn_units) * loc_t)
    else:
        local = whole
    working = max(whole, local) if a.multi_view else local
    return a.embed_dim * (kept + working)


def _head_elems(a: _Arch, views: int, ph: int, pw: int, head_chunk: int) -> tuple[float, float, float]:
    """(working elements of one head micro-batch, kept feature elements, cached position embeddings)."""
    p = ph * pw
    k = min(views, head_chunk) if head_chunk else views
    f, d = a.features, a.head_dim_in
    half = f // 2
    l4 = ((ph + 1) // 2) * ((pw + 1) // 2)
    levels = f * (16 * p + 4 * p + p + l4)
    full = PATCH * PATCH * p
    # token concat of 4 layers, LayerNorm + reshape copies, level-1 projection/resize and its 3x3 conv
    pyramid = 4 * p * d + 2 * p * d + 2 * a.out_channels[0] * p + a.out_channels[0] * 16 * p + f * 16 * p
    # refinenet1: its input at 16P, the upsampled map and the 1x1 conv output at 64P
    fuse = levels + f * 16 * p + 2 * f * 64 * p
    # ray branch: fused map + two live convs of the 5-conv stack at 64P
    aux = levels + (f + f + half) * 64 * p
    per_view = max(pyramid, fuse, aux)
    # main branch: output_conv1 at 64P for the micro-batch, then the full-resolution tail ONE view
    # at a time (upsampled F/2 map with the embedding added in place, 32-ch conv + in-place ReLU, 2-ch conv)
    main_batch = levels + half * 64 * p
    tail = (half + 32 + 2) * full if a.dual else (half + 2 * (32 + 1)) * full
    work = max(k * per_view, k * main_batch + tail)
    kept = (8 if a.cat_token else 4) * views * (p + 1) * a.embed_dim
    # the UV position embeddings the DualDPT caches per size (full res, ray res, 4 projection levels)
    pos_cache = (half * full + half * 64 * p + sum(a.out_channels) * p) if a.dual else 0
    return work, kept, pos_cache


def _output_bytes(a: _Arch, views: int, ph: int, pw: int) -> int:
    full = PATCH * PATCH * ph * pw
    per_view = 2 * full + (7 * 64 * ph * pw if a.dual else 0)
    return views * per_view * _OUTPUT_BYTES


def estimate_breakdown(preset: str, views: int, height: int, width: int, dtype="float32", device="cpu", *,
                       head_chunk: Optional[int] = None, view_chunk: int = DEFAULT_VIEW_CHUNK,
                       token_chunk: int = DEFAULT_TOKEN_CHUNK,
                       constants: Optional[MemoryConstants] = None) -> dict:
    """Peak-memory estimate split into ``weights``, ``inputs``, ``activations``, ``overhead`` and ``total`` bytes.

    ``height``/``width`` are network-resolution sides (multiples of 14).
    """
    views, height, width = int(views), int(height), int(width)
    if views < 1:
        raise ConfigError(f"views: must be >= 1, got {views}")
    if height < PATCH or width < PATCH or height % PATCH or width % PATCH:
        raise ConfigError(f"height/width: expected positive multiples of {PATCH}, got {height}x{width}")
    e = _ELEM_BYTES[_dtype_name(dtype)]
    const = constants or constants_for(device)
    hc = DEFAULT_HEAD_CHUNK if head_chunk is None else int(head_chunk)
    ph, pw = height // PATCH, width // PATCH
    n_tok = ph * pw + 1
    archs = _arch(preset)
    weights = sum(a.params for a in archs) * e * const.weights_factor
    inputs = views * 3 * height * width * e
    phases = []
    carried = 0.0  # outputs of an earlier sub-network (nested: the any-view outputs while the metric one runs)
    for a in archs:
        outputs = _output_bytes(a, views, ph, pw)
        backbone = _backbone_elems(a, views, n_tok, view_chunk, token_chunk) * e
        head_work, kept, pos_cache = _head_elems(a, views, ph, pw, hc)
        head = (head_work + kept + pos_cache) * e + outputs
        phases.append(carried + max(backbone, head))
        carried += outputs
    if len(archs) > 1:  # nested: metric scaling and sky filling make a few full-size fp32 maps
        phases.append(carried + NESTED_POST_MAPS * views * height * width * _OUTPUT_BYTES)
    activations = max(phases) * const.activation_factor
    total = weights + inputs + activations + const.overhead_bytes
    return {"weights": int(weights), "inputs": int(inputs), "activations": int(activations),
            "overhead": int(const.overhead_bytes), "total": int(total)}


def estimate_peak_bytes(preset: str, views: int, height: int, width: int, dtype="float32", device="cpu",
                        **kwargs) -> int:
    """Estimated peak bytes of one forward of ``preset`` over ``views`` frames at network size (height, width)."""
    return estimate_breakdown(preset, views, height, width, dtype, device, **kwargs)["total"]


def max_views_for_budget(preset: str, height: int, width: int, dtype, device, budget_bytes: int,
                         max_views: int = 4096, **kwargs) -> int:
    """Largest number of views whose estimated peak fits ``budget_bytes`` (0 if not even one fits)."""
    budget = int(budget_bytes)
    if budget <= 0:
        raise ConfigError(f"budget_bytes: must be > 0, got {budget_bytes}")

    def fits(v: int) -> bool:
        return estimate_peak_bytes(preset, v, height, width, dtype, device, **kwargs) <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= max_views and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, max_views + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


__all__ = ["CPU_CONSTANTS", "CPU_MACHINE_MARGIN", "CPU_PINNED_CONSTANTS", "CPU_PINNED_MALLOC_ENV",
           "CPU_PLANNING_CONSTANTS", "CUDA_CONSTANTS", "MemoryConstants", "constants_for", "planning_constants_for", "estimate_breakdown", "estimate_peak_bytes", "max_views_for_budget"]
