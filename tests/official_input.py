"""The official DA3 ``InputProcessor`` as a test oracle.

The official preprocessing imports ``torchvision.transforms`` for three small
classes; PyPI's torchvision does not import beside the CPU torch used here. When
the real package is absent, :func:`install_torchvision_standin` registers a
stand-in module with ``ToTensor``, ``Normalize`` and ``CenterCrop`` following
torchvision's documented semantics (uint8 HWC -> float CHW / 255;
``(x - mean) / std``; centre crop at ``round((h - ch) / 2)``). Nothing else
of torchvision is provided.
"""

from __future__ import annotations

import sys
import types

import numpy as np


def install_torchvision_standin() -> bool:
    """Register the stand-in unless a real (or another stand-in) torchvision is importable.

    Returns True when this call installed it.
    """
    if "torchvision.transforms" in sys.modules:
        return False
    try:
        import torchvision.transforms  # noqa: F401

        return False
    except Exception:
        pass
    import torch

    class ToTensor:
        def __call__(self, pic):
            arr = np.array(pic, copy=True)
            if arr.ndim == 2:
                arr = arr[:, :, None]
            chw = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
            if chw.dtype == torch.uint8:
                return chw.to(torch.get_default_dtype()).div(255)
            return chw

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = list(mean), list(std)

        def __call__(self, x):
            mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            return x.sub(mean).div(std)

    class CenterCrop:
        def __init__(self, size):
            self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

        def __call__(self, x):
            h, w = x.shape[-2:]
            ch, cw = self.size
            if ch > h or cw > w:
                raise NotImplementedError("torchvision stand-in: CenterCrop does not pad")
            top = int(round((h - ch) / 2.0))
            left = int(round((w - cw) / 2.0))
            return x[..., top:top + ch, left:left + cw]

    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor, transforms.Normalize, transforms.CenterCrop = ToTensor, Normalize, CenterCrop
    tv.transforms = transforms
    tv.__da3stream_standin__ = True
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.transforms"] = transforms
    return True


def official_preprocess(images, intrinsics=None, process_res=504, method="upper_bound_resize"):
    """Run the official InputProcessor on a list of (H, W, 3) uint8 views.

    Returns ``(images (N, 3, h, w) float32 tensor, intrinsics (N, 3, 3) float32 tensor or None)``.
    """
    install_torchvision_standin()
    import logging

    from depth_anything_3.utils.io.input_processor import InputProcessor

    logging.getLogger("depth_anything_3").setLevel(logging.ERROR)
    K = None if intrinsics is None else np.asarray(intrinsics, dtype=np.float32).copy()
    x, _, K_out = InputProcessor()(list(images), None, K, process_res, method, num_workers=1)
    return x, K_out


def official_api():
    """The official ``depth_anything_3.api`` module (for its pose normalisation and alignment code).

    ``api`` imports the official export stack (moviepy, trimesh, ...) at module
    load; when that does not import, a stand-in ``depth_anything_3.utils.export``
    whose ``export`` raises is registered first. Nothing here calls it.
    """
    install_torchvision_standin()
    try:
        import depth_anything_3.utils.export  # noqa: F401
    except Exception:
        stub = types.ModuleType("depth_anything_3.utils.export")

        def export(*args, **kwargs):
            raise RuntimeError("official export stack not installed (test stand-in)")

        stub.export = export
        sys.modules["depth_anything_3.utils.export"] = stub
    import depth_anything_3.api as api

    return api


def official_inference(net, images, world_from_cam=None, intrinsics=None, process_res=504,
                       method="upper_bound_resize", ref_view_strategy="saddle_balanced"):
    """The official ``DepthAnything3.inference`` steps in fp32 without autocast, on ``net``.

    Calls the official InputProcessor, ``_normalize_extrinsics``, OutputProcessor and
    ``_align_to_input_extrinsics_intrinsics`` in the order ``inference`` does; only the
    forward differs (fp32, no autocast, rays captured). Known cameras are given as
    (N, 4, 4) ``world_from_cam`` and (N, 3, 3) original-resolution intrinsics.
    Returns ``(prediction, raw)``: the official Prediction and the raw network outputs.
    """
    import torch

    api = official_api()
    from depth_anything_3.utils.io.input_processor import InputProcessor
    from depth_anything_3.utils.io.output_processor import OutputProcessor
    from oracle import run_official

    ext = None if world_from_cam is None else np.linalg.inv(np.asarray(world_from_cam, np.float64)).astype(np.float32)
    K = None if intrinsics is None else np.asarray(intrinsics, np.float32).copy()
    imgs, ext_t, K_t = InputProcessor()(list(images), ext, K, process_res, method, num_workers=1)
    x = imgs[None].float()
    ex_in = None if ext_t is None else ext_t[None].float()
    K_in = None if K_t is None else K_t[None].float()
    ex_norm = api.DepthAnything3._normalize_extrinsics(None, None if ex_in is None else ex_in.clone())
    raw = run_official(net, x, ex_norm, K_in, ref_view_strategy)
    pred = OutputProcessor()(raw)
    pred = api.DepthAnything3._align_to_input_extrinsics_intrinsics(None, ext_t, K_t, pred, True)
    return pred, raw
