"""Image preprocessing for the DA3 network, identical to the official ``InputProcessor``.

Each view is resized (cv2, ``INTER_AREA`` when shrinking, ``INTER_CUBIC`` when
enlarging) so that its longest (``upper_bound_*``) or shortest (``lower_bound_*``)
side equals ``process_res``; its sides are then made multiples of the 14-pixel
patch, by a second small resize to the nearest multiple (``*_resize``) or by a
centre crop down to the floor multiple (``*_crop``). Pixels are scaled to
[0, 1] and normalised with the ImageNet mean and std. When views end up with
different sizes, every view is centre-cropped to the smallest height and width.

Besides the tensor, :func:`preprocess` returns, per view, the affine map
``net_from_orig`` (3, 3) from original to network pixel coordinates. It follows
the official intrinsics convention (a resize scales ``fx, cx`` by ``w_new / w``,
a crop shifts ``cx, cy``; pixel coordinates have their origin at the image
corner, so a centred principal point is ``(W/2, H/2)``), hence intrinsics map as
``K_net = net_from_orig @ K_orig``. The depth grid the network outputs has the
network resolution, so ``K_net`` is also the depth-grid intrinsics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from da3stream.errors import ConfigError, ShapeError, check_shape

logger = logging.getLogger(__name__)

PATCH_SIZE = 14
"""Side of a ViT patch; network input sides are multiples of it."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
METHODS = ("upper_bound_resize", "upper_bound_crop", "lower_bound_resize", "lower_bound_crop")
"""The official ``process_res_method`` values."""


@dataclass(frozen=True)
class ViewPlan:
    """How one original image size becomes a network input size."""

    image_hw: tuple[int, int]
    """Original (H, W)."""
    resized_hw: tuple[int, int]
    """(H, W) after the boundary resize (equal to ``image_hw`` when no resize is needed)."""
    final_hw: tuple[int, int]
    """(H, W) after making both sides multiples of the patch size."""
    crop: bool
    """True: the patch multiple is reached by a centre crop; False: by a second resize."""
    enlarge: bool = False
    """True when the boundary resize scale is > 1 (cv2 ``INTER_CUBIC``; else ``INTER_AREA``)."""

    @property
    def crop_tl(self) -> tuple[int, int]:
        """(top, left) of the centre crop of the resized image ((0, 0) for resize plans)."""
        if not self.crop:
            return (0, 0)
        return ((self.resized_hw[0] - self.final_hw[0]) // 2, (self.resized_hw[1] - self.final_hw[1]) // 2)

    @property
    def net_from_orig(self) -> np.ndarray:
        """(3, 3) float64 pixel map original -> this plan's output (before any batch crop)."""
        (h0, w0), (h1, w1), (h2, w2) = self.image_hw, self.resized_hw, self.final_hw
        sx, sy = w1 / w0, h1 / h0
        if not self.crop:
            sx, sy = sx * (w2 / w1), sy * (h2 / h1)
        top, left = self.crop_tl
        return np.array([[sx, 0.0, -float(left)], [0.0, sy, -float(top)], [0.0, 0.0, 1.0]])


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"process_res_method: expected one of {', '.join(METHODS)}, got {method!r}")


def _round_multiple(x: int, patch: int) -> int:
    """Nearest multiple of ``patch``; ties go up (the official rule)."""
    down = (x // patch) * patch
    up = down + patch
    return up if (up - x) <= (x - down) else down


def plan_view(image_hw: tuple[int, int], process_res: int = 504, method: str = "upper_bound_resize",
              patch: int = PATCH_SIZE) -> ViewPlan:
    """The resize/crop plan for one original ``(H, W)``."""
    _check_method(method)
    if int(process_res) < patch:
        raise ConfigError(f"process_res: must be >= {patch}, got {process_res}")
    h0, w0 = int(image_hw[0]), int(image_hw[1])
    if h0 < 1 or w0 < 1:
        raise ShapeError(f"image size: expected positive (H, W), got {(h0, w0)}")
    bound = max(w0, h0) if method.startswith("upper") else min(w0, h0)
    if bound == process_res:
        h1, w1 = h0, w0
    else:
        scale = process_res / float(bound)
        w1, h1 = max(1, int(round(w0 * scale))), max(1, int(round(h0 * scale)))
    crop = method.endswith("crop")
    if crop:
        h2, w2 = (h1 // patch) * patch, (w1 // patch) * patch
    else:
        h2, w2 = _round_multiple(h1, patch), _round_multiple(w1, patch)
    if h2 < patch or w2 < patch:
        raise ShapeError(f"image size {(h0, w0)}: too elongated for process_res {process_res} "
                         f"({method} gives {(h2, w2)})")
    return ViewPlan((h0, w0), (h1, w1), (h2, w2), crop, enlarge=bound < process_res)


def network_hw(image_hw: tuple[int, int], process_res: int = 504,
               method: str = "upper_bound_resize") -> tuple[int, int]:
    """Network input (and depth grid) size ``(h, w)`` for one original image size (before any batch crop)."""
    return plan_view(image_hw, process_res, method).final_hw


def resize_view(image: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """Apply ``plan`` to one (H, W, 3) uint8 image; returns (h, w, 3) uint8."""
    img = np.ascontiguousarray(image)
    (h0, w0), (h1, w1), (h2, w2) = plan.image_hw, plan.resized_hw, plan.final_hw
    if (h1, w1) != (h0, w0):
        img = cv2.resize(img, (w1, h1), interpolation=cv2.INTER_CUBIC if plan.enlarge else cv2.INTER_AREA)
    if (h2, w2) == (h1, w1):
        return img
    if plan.crop:
        top, left = plan.crop_tl
        return np.ascontiguousarray(img[top:top + h2, left:left + w2])
    grow = w2 > w1 or h2 > h1
    return cv2.resize(img, (w2, h2), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA)


@dataclass(frozen=True)
class Preprocessed:
    """The network input for one batch of views and the pixel maps back to the originals."""

    images: "object"
    """(N, 3, h, w) float32 torch tensor, ImageNet-normalised."""
    net_from_orig: np.ndarray
    """(N, 3, 3) float64 affine pixel maps, original -> network pixels (``K_net = M @ K_orig``)."""
    image_hw: np.ndarray
    """(N, 2) int64 original (H, W) of every view."""

    @property
    def network_hw(self) -> tuple[int, int]:
        """(h, w) of the network input and of the depth grid."""
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    def to_network_intrinsics(self, K_orig: np.ndarray) -> np.ndarray:
        """(N, 3, 3) intrinsics at original resolution -> network (depth-grid) pixels."""
        return intrinsics_to_network(K_orig, self.net_from_orig)

    def to_original_intrinsics(self, K_net: np.ndarray) -> np.ndarray:
        """(N, 3, 3) network (depth-grid) intrinsics -> original resolution."""
        return intrinsics_to_original(K_net, self.net_from_orig)


def intrinsics_to_network(K_orig: np.ndarray, net_from_orig: np.ndarray) -> np.ndarray:
    """Map (N, 3, 3) original-resolution intrinsics with (N, 3, 3) pixel maps; returns float64."""
    K = np.asarray(K_orig, dtype=np.float64)
    check_shape("intrinsics", K, ("N", 3, 3), "fiu")
    M = np.asarray(net_from_orig, dtype=np.float64)
    check_shape("net_from_orig", M, (K.shape[0], 3, 3), "f")
    return M @ K


def intrinsics_to_original(K_net: np.ndarray, net_from_orig: np.ndarray) -> np.ndarray:
    """Inverse of :func:`intrinsics_to_network`: (N, 3, 3) network-pixel intrinsics -> original."""
    K = np.asarray(K_net, dtype=np.float64)
    check_shape("intrinsics", K, ("N", 3, 3), "fiu")
    M = np.asarray(net_from_orig, dtype=np.float64)
    check_shape("net_from_orig", M, (K.shape[0], 3, 3), "f")
    return np.linalg.inv(M) @ K


def _as_view_list(images) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        check_shape("images", images, ("N", None, None, 3), "u")
        if images.dtype != np.uint8:
            raise ShapeError(f"images: expected dtype uint8, got {images.dtype}")
        return list(images)
    views = list(images)
    for i, img in enumerate(views):
        check_shape(f"images[{i}]", img, (None, None, 3), "u")
        if img.dtype != np.uint8:
            raise ShapeError(f"images[{i}]: expected dtype uint8, got {img.dtype}")
    return views


def preprocess(images, process_res: int = 504, method: str = "upper_bound_resize") -> Preprocessed:
    """Turn uint8 RGB views into the network input, exactly as the official ``InputProcessor``.

    ``images``: (N, H, W, 3) uint8 array, or a sequence of (H_i, W_i, 3) uint8 arrays.
    Views whose network sizes differ are centre-cropped to the smallest (h, w).
    """
    import torch

    views = _as_view_list(images)
    if not views:
        raise ShapeError("images: expected at least one view, got 0")
    plans = [plan_view(img.shape[:2], process_res, method) for img in views]
    resized = [resize_view(img, plan) for img, plan in zip(views, plans)]
    maps = np.stack([plan.net_from_orig for plan in plans])
    sizes = {plan.final_hw for plan in plans}
    if len(sizes) > 1:
        min_h, min_w = min(h for h, _ in sizes), min(w for _, w in sizes)
        logger.warning("views have different network sizes %s; centre-cropping all to (%d, %d)",
                       sorted(sizes), min_h, min_w)
        cropped, new_maps = [], []
        for img, M in zip(resized, maps):
            top, left = (img.shape[0] - min_h) // 2, (img.shape[1] - min_w) // 2
            cropped.append(img[top:top + min_h, left:left + min_w])
            shift = np.array([[1.0, 0.0, -left], [0.0, 1.0, -top], [0.0, 0.0, 1.0]])
            new_maps.append(shift @ M)
        resized, maps = cropped, np.stack(new_maps)
    stack = torch.from_numpy(np.ascontiguousarray(np.stack(resized)))
    x = stack.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
    mean = torch.as_tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    x = x.sub(mean).div(std)
    image_hw = np.array([plan.image_hw for plan in plans], dtype=np.int64)
    return Preprocessed(images=x, net_from_orig=maps, image_hw=image_hw)
