"""The assembled DA3 networks: any-view (small/base/large/giant), mono/metric, and nested.

``build_network(preset)`` returns a randomly initialised network in eval mode
whose ``state_dict`` keys equal the official ``DepthAnything3Net`` keys (without
the ``model.`` prefix checkpoints add; nested: ``da3.*`` and ``da3_metric.*``).
The forward returns a :class:`NetworkOutput` whose fields equal the official
outputs (``extrinsics`` is called ``cam_from_world`` here), plus the ray map,
the chosen reference view and a per-view global descriptor.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Optional

import torch
from torch import Tensor, nn

from da3stream.config import MetricAlignParams, SkyParams
from da3stream.core.network.camera import CameraDecoder, CameraEncoder, decode_pose
from da3stream.core.network.dpt import DualDPT, GaussianHeadWeights, MonoDPT
from da3stream.core.network.presets import PATCH_SIZE, PresetSpec, get_preset
from da3stream.core.network.raypose import RayPoseParams, pose_from_rays
from da3stream.core.network.vit import REF_VIEW_STRATEGIES, Backbone
from da3stream.errors import CheckpointError, ConfigError, PredictionError, ShapeError

log = logging.getLogger(__name__)

DEFAULT_HEAD_CHUNK = 8
"""Views decoded at a time by the dense heads."""


@dataclass
class NetworkOutput:
    """Network outputs (fp32 tensors; None where the model does not produce them)."""

    depth: Optional[Tensor] = None
    """(B, S, H, W) depth (relative for any-view models; metric-aligned for nested)."""
    depth_conf: Optional[Tensor] = None
    """(B, S, H, W) depth confidence (>= 1)."""
    cam_from_world: Optional[Tensor] = None
    """(B, S, 3, 4) OpenCV world->camera (the official ``extrinsics``)."""
    intrinsics: Optional[Tensor] = None
    """(B, S, 3, 3) pinhole intrinsics in network-input pixels."""
    ray: Optional[Tensor] = None
    """(B, S, 8*H/14, 8*W/14, 6) ray direction (3, unnormalised) and origin (3, the camera
    centre) in the world frame of ``cam_from_world``; point = origin + depth * direction."""
    ray_conf: Optional[Tensor] = None
    """(B, S, 8*H/14, 8*W/14) ray confidence (>= 1)."""
    sky: Optional[Tensor] = None
    """(B, S, H, W) sky score as the mono/metric head gives it (ReLU; >= 0.3 means sky)."""
    metric_depth: Optional[Tensor] = None
    """(B, S, H, W) metric depth of the metric branch in metres (nested only)."""
    metric_scale: Optional[Tensor] = None
    """() scale applied to depth, translations and ray origins (channels 3:6) to make them metric (nested only)."""
    ref_view: Optional[Tensor] = None
    """(B,) int64 view whose frame the predicted poses live in; None if poses were given or mono."""
    descriptors: Optional[Tensor] = None
    """(B, S, 2C) float32 L2-normalised per-view global descriptor."""

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _sample_randint(values: Tensor, max_samples: int) -> Tensor:
    if values.numel() <= max_samples:
        return values
    return values[torch.randint(0, values.numel(), (max_samples,), device=values.device)]


def _sample_randperm(values: Tensor, max_samples: int) -> Tensor:
    if values.numel() <= max_samples:
        return values
    return values.flatten()[torch.randperm(values.numel(), device=values.device)[:max_samples]]


def _check_inputs(images: Tensor, cam_from_world, intrinsics, ref_view_strategy: str) -> None:
    if not isinstance(images, Tensor) or images.ndim != 5 or images.shape[2] != 3:
        raise ShapeError(f"images: expected shape (B, S, 3, H, W), got {tuple(getattr(images, 'shape', ()))}")
    if not images.is_floating_point():
        raise ShapeError(f"images: expected a floating-point tensor, got {images.dtype}")
    h, w = images.shape[-2:]
    if h % PATCH_SIZE or w % PATCH_SIZE or h == 0 or w == 0:
        raise ShapeError(f"images: height and width must be positive multiples of {PATCH_SIZE}, got {h}x{w}")
    if ref_view_strategy not in REF_VIEW_STRATEGIES:
        raise ConfigError(
            f"ref_view_strategy: unknown {ref_view_strategy!r} (expected one of {', '.join(REF_VIEW_STRATEGIES)})"
        )
    if (cam_from_world is None) != (intrinsics is None):
        raise ShapeError("cam_from_world/intrinsics: pass both or neither")
    if cam_from_world is not None:
        b, s = images.shape[:2]
        if tuple(cam_from_world.shape) not in ((b, s, 4, 4), (b, s, 3, 4)):
            raise ShapeError(f"cam_from_world: expected shape ({b}, {s}, 4, 4) or ({b}, {s}, 3, 4), "
                             f"got {tuple(cam_from_world.shape)}")
        if tuple(intrinsics.shape) != (b, s, 3, 3):
            raise ShapeError(f"intrinsics: expected shape ({b}, {s}, 3, 3), got {tuple(intrinsics.shape)}")


class DepthAnything3Network(nn.Module):
    """One DA3 network: backbone + dense head [+ camera encoder/decoder]."""

    def __init__(
        self,
        spec: PresetSpec,
        head_chunk: int = DEFAULT_HEAD_CHUNK,
        sky_params: SkyParams = SkyParams(),
        ray_pose_params: RayPoseParams = RayPoseParams(),
    ) -> None:
        super().__init__()
        if spec.is_nested or spec.backbone is None or spec.head is None:
            raise ConfigError(f"preset {spec.key!r}: not a single network")
        self.spec = spec
        self.head_chunk = head_chunk
        """Views per micro-batch in the dense head."""
        self.sky_params = sky_params
        self.ray_pose_params = ray_pose_params
        self.backbone = Backbone(spec.backbone)
        self.head = DualDPT(spec.head) if spec.head.kind == "dualdpt" else MonoDPT(spec.head)
        if spec.camera_dim is not None:
            self.cam_dec = CameraDecoder(spec.backbone.out_dim)
            self.cam_enc = CameraEncoder(spec.camera_dim)
        if spec.gs_head:
            self.gs_head = GaussianHeadWeights(spec.head)

    @property
    def has_camera(self) -> bool:
        return hasattr(self, "cam_dec")

    def forward(
        self,
        images: Tensor,
        cam_from_world: Optional[Tensor] = None,
        intrinsics: Optional[Tensor] = None,
        ref_view_strategy: str = "saddle_balanced",
        want_features: bool = True,
        head_chunk: Optional[int] = None,
        use_ray_pose: bool = False,
    ) -> NetworkOutput:
        """Run the network.

        ``images`` (B, S, 3, H, W) ImageNet-normalised, H and W multiples of 14;
        ``cam_from_world`` (B, S, 4, 4) or (B, S, 3, 4) already normalised like the
        official api and ``intrinsics`` (B, S, 3, 3) in network pixels (both or
        neither; any-view models only). ``want_features`` adds ``descriptors``.
        ``use_ray_pose`` derives poses and intrinsics from the ray map (RANSAC,
        global torch RNG) instead of the camera decoder.
        """
        _check_inputs(images, cam_from_world, intrinsics, ref_view_strategy)
        if not self.has_camera and (cam_from_world is not None or use_ray_pose):
            raise ConfigError(f"preset {self.spec.key!r}: pose conditioning and use_ray_pose need an any-view model")
        height, width = images.shape[-2:]
        cam_tokens = None
        if cam_from_world is not None:
            cam_tokens = self.cam_enc(cam_from_world, intrinsics, (height, width))
        feats = self.backbone(images, cam_tokens, ref_view_strategy, want_descriptor=want_features)
        heads = self.head(feats, height, width, chunk=head_chunk or self.head_chunk)
        out = NetworkOutput(ref_view=feats.ref_view, descriptors=feats.descriptor, **heads)
        if self.has_camera and use_ray_pose:
            out.cam_from_world, out.intrinsics = pose_from_rays(
                out.ray, out.ray_conf, (height, width), self.ray_pose_params
            )
        elif self.has_camera:
            out.cam_from_world, out.intrinsics = decode_pose(self.cam_dec(feats.camera_token), (height, width))
        del feats
        if out.sky is not None:
            out.depth = self._fill_sky(out.depth, out.sky)
        return out

    def _fill_sky(self, depth: Tensor, sky: Tensor) -> Tensor:
        """Sky pixels get a far quantile of the non-sky depth (the official mono post-step)."""
        p = self.sky_params
        non_sky = sky < p.sky_threshold
        n_non_sky = int(non_sky.sum())
        if n_non_sky <= p.min_pixels or non_sky.numel() - n_non_sky <= p.min_pixels:
            return depth
        far = torch.quantile(_sample_randint(depth[non_sky], p.max_samples), p.far_quantile)
        return torch.where(non_sky, depth, far)


class NestedDepthAnything3Network(nn.Module):
    """Any-view giant + metric large: the giant's geometry, scaled to metres by the metric branch."""

    def __init__(
        self,
        spec: PresetSpec,
        head_chunk: int = DEFAULT_HEAD_CHUNK,
        align_params: MetricAlignParams = MetricAlignParams(),
    ) -> None:
        super().__init__()
        anyview, metric = (get_preset(k) for k in spec.nested)
        self.spec = spec
        self.align_params = align_params
        self.da3 = DepthAnything3Network(anyview, head_chunk)
        self.da3_metric = DepthAnything3Network(metric, head_chunk)

    @property
    def head_chunk(self) -> int:
        return self.da3.head_chunk

    @head_chunk.setter
    def head_chunk(self, value: int) -> None:
        self.da3.head_chunk = value
        self.da3_metric.head_chunk = value

    def forward(
        self,
        images: Tensor,
        cam_from_world: Optional[Tensor] = None,
        intrinsics: Optional[Tensor] = None,
        ref_view_strategy: str = "saddle_balanced",
        want_features: bool = True,
        head_chunk: Optional[int] = None,
        use_ray_pose: bool = False,
    ) -> NetworkOutput:
        """As :meth:`DepthAnything3Network.forward`; adds ``metric_depth``, ``sky``, ``metric_scale``.

        One least-squares scale (over the whole batch, as the official model
        does) maps depth, camera translations and ray origins to metres.
        """
        p = self.align_params
        out = self.da3(images, cam_from_world, intrinsics, ref_view_strategy, want_features, head_chunk,
                       use_ray_pose)
        metric = self.da3_metric(images, want_features=False, head_chunk=head_chunk)
        k = out.intrinsics
        focal = (k[:, :, 0, 0] + k[:, :, 1, 1]) / 2
        metric_depth = metric.depth * (focal[:, :, None, None] / p.focal_reference)

        non_sky = metric.sky < p.sky_threshold
        if int(non_sky.sum()) <= p.min_non_sky_pixels:
            raise PredictionError("nested model: too few non-sky pixels to align depth to the metric branch")
        median_conf = torch.quantile(_sample_randperm(out.depth_conf[non_sky], p.max_samples), p.conf_quantile)
        fit = ((out.depth_conf >= median_conf) & non_sky & (metric_depth > p.min_metric_depth)
               & (out.depth > p.min_depth))
        rel, met = out.depth[fit], metric_depth[fit]
        scale = torch.dot(met, rel) / torch.dot(rel, rel).clamp_min(p.lstsq_eps)

        depth = out.depth * scale
        cam_from_world = torch.cat((out.cam_from_world[..., :3], out.cam_from_world[..., 3:] * scale), -1)
        ray = torch.cat((out.ray[..., :3], out.ray[..., 3:] * scale), -1)
        far = torch.quantile(_sample_randint(depth[non_sky], p.max_samples), p.far_quantile)
        far = torch.clamp(far, max=p.max_sky_depth)
        return NetworkOutput(
            depth=torch.where(non_sky, depth, far),
            depth_conf=torch.where(non_sky, out.depth_conf, torch.ones_like(out.depth_conf)),
            cam_from_world=cam_from_world,
            intrinsics=out.intrinsics,
            ray=ray,
            ray_conf=out.ray_conf,
            sky=metric.sky,
            metric_depth=metric_depth,
            metric_scale=scale,
            ref_view=out.ref_view,
            descriptors=out.descriptors,
        )


def build_network(
    preset: str,
    *,
    head_chunk: int = DEFAULT_HEAD_CHUNK,
    device: Optional[torch.device | str] = None,
    dtype: Optional[torch.dtype] = None,
) -> nn.Module:
    """A randomly initialised (torch default init) DA3 network of ``preset``, in eval mode.

    ``preset`` is one of :data:`PRESETS` keys or an official model name. The
    parameters are created on ``device``; ``device="meta"`` builds an empty
    skeleton for ``load_state_dict(state_dict, assign=True)`` (no random init,
    no second copy of the weights).
    """
    try:
        spec = get_preset(preset)
    except CheckpointError as exc:
        raise ConfigError(f"preset: {exc}") from None
    net: nn.Module
    with torch.device(device) if device is not None else contextlib.nullcontext():
        if spec.is_nested:
            net = NestedDepthAnything3Network(spec, head_chunk)
        else:
            net = DepthAnything3Network(spec, head_chunk)
    if dtype is not None:
        net = net.to(dtype=dtype)
    log.debug("built DA3 network %s (%d parameters)", spec.key, sum(p.numel() for p in net.parameters()))
    return net.eval()
