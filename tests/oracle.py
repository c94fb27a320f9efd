"""The official Depth Anything 3 network as a numerical test oracle.

Builds the official ``DepthAnything3Net`` / ``NestedDepthAnything3Net`` from the
installed ``depth_anything_3`` package (0.1.1, installed without its
dependencies) exactly as its api does (``load_config(MODEL_REGISTRY[name])`` +
``create_object``, after ``torch.manual_seed``), perturbs the parameters the
official constructor leaves constant so a comparison exercises them, runs it
in fp32, and writes its weights in the official checkpoint layout.

A stand-in for ``evo.core.trajectory`` (imported by the giant's Gaussian head
module, which is never run here) is installed only when evo does not import.
The torchvision stand-in the official ``InputProcessor`` needs lives in
``tests/official_input.py``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch

OFFICIAL_NAMES = {
    "small": "da3-small",
    "base": "da3-base",
    "large": "da3-large",
    "giant": "da3-giant",
    "mono-large": "da3mono-large",
    "metric-large": "da3metric-large",
    "nested-giant-large": "da3nested-giant-large",
}
"""Our preset key -> official ``model_name``."""

FOV_BIAS_SHIFT = 1.0
"""Added to ``cam_dec.fc_fov.0.bias`` so the ReLU'd field of view is rarely 0 (else fx ~ 1e8)."""

PERTURB_ZERO_STD = 0.05
"""Constant-zero parameters become N(0, this^2)."""

PERTURB_REL_STD = 0.1
"""Other constant parameters are multiplied by 1 + N(0, this^2)."""


# ---------------------------------------------------------------------------------- shims
def install_evo_shim() -> bool:
    """Provide ``evo.core.trajectory.PosePath3D`` (raising if used) if evo is absent."""
    try:
        import evo.core.trajectory  # noqa: F401

        return False
    except Exception:
        pass

    class PosePath3D:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("evo is not installed; the official GS pose alignment is unavailable")

    evo, core, traj = (types.ModuleType(n) for n in ("evo", "evo.core", "evo.core.trajectory"))
    traj.PosePath3D = PosePath3D
    evo.core, core.trajectory = core, traj
    sys.modules.update({"evo": evo, "evo.core": core, "evo.core.trajectory": traj})
    return True


def require_official():
    """Import the official package or skip the calling test."""
    try:
        import depth_anything_3.cfg  # noqa: F401
    except Exception as exc:  # pragma: no cover - environment dependent
        pytest.skip(f"official depth_anything_3 package not importable: {exc}")


# ------------------------------------------------------------------------------- building
def official_model_name(preset: str) -> str:
    return OFFICIAL_NAMES.get(preset, preset)


def perturb_constant_params(net: torch.nn.Module, seed: int) -> list[str]:
    """Perturb every parameter the official init leaves constant (deterministic in ``seed``).

    Zero tensors (cls token, position embedding, LayerNorm biases) become small
    noise, other constant tensors (LayerNorm weights, LayerScale gammas) are
    scaled by ``1 + noise``; every ``cam_dec.fc_fov.0.bias`` is shifted by +1.
    Returns the names touched.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    touched = []
    with torch.no_grad():
        for name, p in net.named_parameters():  # tied tensors appear once
            flat = p.reshape(-1)
            if flat.numel() == 0 or not bool((flat == flat[0]).all()):
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype)
            if float(flat[0]) == 0.0:
                p.copy_(PERTURB_ZERO_STD * noise)
            else:
                p.mul_(1.0 + PERTURB_REL_STD * noise)
            touched.append(name)
        for name, module in net.named_modules():
            if name.endswith("cam_dec") and hasattr(module, "fc_fov"):
                module.fc_fov[0].bias.add_(FOV_BIAS_SHIFT)
                touched.append(f"{name}.fc_fov.0.bias (+{FOV_BIAS_SHIFT})")
    return touched


def build_official(preset: str, seed: int = 0, perturb: bool = True) -> torch.nn.Module:
    """The official network of ``preset`` (our key or official name), seeded, eval mode, fp32."""
    require_official()
    name = official_model_name(preset)
    if "giant" in name:
        install_evo_shim()
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY

    cfg = load_config(MODEL_REGISTRY[name])
    torch.manual_seed(seed)
    net = create_object(cfg).eval()
    if perturb:
        perturb_constant_params(net, seed)
    return net


def run_official(
    net: torch.nn.Module,
    images: torch.Tensor,
    extrinsics: Optional[torch.Tensor] = None,
    intrinsics: Optional[torch.Tensor] = None,
    ref_view_strategy: str = "saddle_balanced",
) -> dict[str, torch.Tensor]:
    """Official forward in fp32 under inference mode, with the ray outputs and the chosen view kept.

    The official forward deletes ``ray``/``ray_conf`` after using them; they are
    captured from the head here. ``ref_view`` is the index the official
    selector returned (absent when selection did not run).
    """
    import depth_anything_3.model.dinov2.vision_transformer as vt

    captured: dict[str, torch.Tensor] = {}
    original_select = vt.select_reference_view

    def recording_select(x, strategy="saddle_balanced"):
        idx = original_select(x, strategy=strategy)
        captured["ref_view"] = idx.clone()
        return idx

    def head_hook(_module, _inputs, output):
        for key in ("ray", "ray_conf"):
            if key in output:
                captured[key] = output[key].detach().clone()

    heads = [m for n, m in net.named_modules() if n.endswith("head") and not n.endswith("gs_head")]
    handles = [h.register_forward_hook(head_hook) for h in heads[:1]]
    vt.select_reference_view = recording_select
    try:
        with torch.inference_mode():
            out = net(images, extrinsics, intrinsics, export_feat_layers=[], infer_gs=False,
                      use_ray_pose=False, ref_view_strategy=ref_view_strategy)
    finally:
        vt.select_reference_view = original_select
        for h in handles:
            h.remove()
    result = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    result.update({k: torch.tensor(float(v)) for k, v in out.items() if isinstance(v, (int, float))})
    result.update(captured)
    return result


def balance_sky_head(net: torch.nn.Module, images: torch.Tensor, sky_fraction: float,
                     threshold: float = 0.3) -> float:
    """Shift the sky head's last bias so about ``sky_fraction`` of these pixels score >= ``threshold``.

    Random weights give "no sky" everywhere, which would leave the official sky
    handling untested. ``net`` is an official mono/metric net (or a nested one,
    whose metric branch is used). Returns the shift added.
    """
    mono = getattr(net, "da3_metric", net)
    conv = mono.head.scratch.sky_output_conv2
    captured = {}
    handle = conv.register_forward_hook(lambda _m, _i, out: captured.__setitem__("logits", out.detach().clone()))
    try:
        with torch.inference_mode():
            mono(images)
    finally:
        handle.remove()
    # cut in the widest gap between sorted logits near the wanted quantile, so that no pixel
    # sits on the threshold (where fp32 rounding could flip its class)
    values = captured["logits"].flatten().double().sort().values
    n = values.numel()
    k = min(max(int(round((1.0 - sky_fraction) * n)), 1), n - 1)
    lo, hi = max(k - max(n // 100, 1), 1), min(k + max(n // 100, 1), n - 1)
    gaps = values[lo : hi + 1] - values[lo - 1 : hi]
    j = lo + int(gaps.argmax())
    cut = 0.5 * (values[j - 1] + values[j])
    shift = float(threshold - cut)
    with torch.no_grad():
        conv[-1].bias.add_(shift)
    return shift


# -------------------------------------------------------------------------------- writing
def write_official_checkpoint(net: torch.nn.Module, model_name: str, directory) -> Path:
    """Write ``net`` in the official layout: ``model.safetensors`` (keys ``model.*``) + ``config.json``.

    Tied tensors are stored as separate copies (as the probe does). Returns the directory.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {"model." + k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"model_name": official_model_name(model_name)}, indent=2))
    return directory


def official_checkpoint(preset: str, directory, seed: int = 0, perturb: bool = True) -> Path:
    """Build the official net of ``preset`` (perturbed, seeded) and write it to ``directory``."""
    net = build_official(preset, seed=seed, perturb=perturb)
    return write_official_checkpoint(net, preset, directory)


# ------------------------------------------------------------------------------- inputs
def random_images(views: int, height: int, width: int, seed: int) -> torch.Tensor:
    """(1, views, 3, H, W) seeded N(0, 1) network input (ImageNet-normalised-like)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, views, 3, height, width, generator=gen)


def synthetic_cameras(views: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, S, 4, 4) cam_from_world (view 0 identity, others at distance 1) and (1, S, 3, 3) intrinsics."""
    cam_from_world, intrinsics = [], []
    for i in range(views):
        th = 0.15 * i
        c, s = np.cos(th), np.sin(th)
        rot = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
        centre = np.array([np.sin(th), 0.1 * (i > 0), 1 - np.cos(th)])
        if i > 0:
            centre = centre / np.linalg.norm(centre)
        m = np.eye(4)
        m[:3, :3] = rot
        m[:3, 3] = -rot @ centre
        cam_from_world.append(m)
        f = 0.9 * max(height, width)
        intrinsics.append(np.array([[f, 0, width / 2], [0, f * 1.02, height / 2], [0, 0, 1]]))
    as_t = lambda a: torch.from_numpy(np.stack(a)).float()[None]  # noqa: E731
    return as_t(cam_from_world), as_t(intrinsics)


def max_rel_error(ref: torch.Tensor, got: torch.Tensor) -> float:
    """max|got - ref| / max|ref| in float64."""
    ref64, got64 = ref.detach().double(), got.detach().double()
    if ref64.shape != got64.shape:
        raise AssertionError(f"shape mismatch: reference {tuple(ref64.shape)} vs ours {tuple(got64.shape)}")
    denom = max(float(ref64.abs().max()), 1e-12)
    return float((got64 - ref64).abs().max()) / denom
