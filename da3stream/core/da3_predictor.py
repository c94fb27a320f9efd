"""The DA3 network as a :class:`~da3stream.core.types.Predictor`.

``DA3Predictor.predict`` preprocesses uint8 frames exactly like the official
``InputProcessor`` (:mod:`da3stream.core.preprocess`), runs the network once
over all views of the window under ``torch.inference_mode()`` and returns a
:class:`Prediction` in float32/float64 numpy:

- ``depth`` (N, h, w) and ``conf`` (N, h, w): the official ``depth`` and
  ``depth_conf`` at network resolution (the depth grid), values unchanged;
- ``world_from_cam`` (N, 4, 4): the inverse of the official ``cam_from_world``
  3x4 (through :func:`~da3stream.alignment.sim3.cam_from_world_3x4_to_world_from_cam`);
  the frame is the network's: the reference view the network picked is the identity;
- ``intrinsics`` (N, 3, 3): pinhole intrinsics of the depth grid (network pixels);
  :meth:`DA3Predictor.to_original_intrinsics` maps them to the source resolution;
- ``rays`` (N, h/14*8, w/14*8, 6) and ``ray_conf`` in the same frame as the poses,
  ``descriptors`` (N, D), and ``metric_depth`` / ``sky`` (bool, score >= ``sky_threshold``
  = 0.5 like the official OutputProcessor) where the model has them.

The mono/metric presets predict no confidence (``conf`` is then 1 everywhere) and
no cameras (``predict`` then needs known ``world_from_cam`` and ``intrinsics``).

Pose conditioning (``predict(batch, world_from_cam=..., intrinsics=...)``) follows
the official ``DepthAnything3.inference``: the known poses are normalised (view 0
becomes the identity, translations are divided by the median camera distance,
clamped below at ``min_pose_scale``), the known intrinsics are mapped to network
pixels, and both go through the camera encoder. The returned Prediction then
holds the CALLER's ``world_from_cam`` and the caller's intrinsics mapped to the
depth grid; ``depth`` is divided by the Umeyama Sim(3) scale that maps the
caller's camera centres onto the predicted ones (RANSAC over view subsets from
``ransac_min_views`` views on, as the official api does), so depth is in the
caller's units; ``rays`` are moved into the caller's world frame by the inverse
of that Sim(3).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from da3stream.alignment.sim3 import cam_from_world_3x4_to_world_from_cam, invert_rigid, rigid_defects
from da3stream.alignment.umeyama import umeyama
from da3stream.config import PoseConditioning
from da3stream.core import preprocess as pp
from da3stream.core.checkpoint import CheckpointInfo, load_checkpoint, state_dict_sha256
from da3stream.core.types import FrameBatch, Prediction
from da3stream.errors import AlignmentError, ConfigError, PredictionError, ShapeError, check_shape

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` if available else ``"cpu"``; other values are checked and returned."""
    import torch

    name = str(device).strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {device!r} requested but CUDA is not available")
    return str(dev)


def resolve_dtype(dtype: str, device: str):
    """``"auto"`` -> bf16 on CUDA (fp16 without bf16 support), fp32 on CPU; returns a torch dtype."""
    import torch

    name = str(dtype).strip().lower().replace("torch.", "")
    if name == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in _DTYPES:
        raise ConfigError(f"dtype: expected auto, float32, bfloat16 or float16, got {dtype!r}")
    return getattr(torch, _DTYPES[name])


# ----------------------------------------------------------------------------- pose maths


def normalise_cam_from_world(cam_from_world: np.ndarray, min_pose_scale: float = 0.1) -> tuple[np.ndarray, float]:
    """The official api normalisation of known (N, 4, 4) ``cam_from_world`` poses.

    Returns ``(cam_from_cam0, scale)``: poses relative to view 0 (which becomes the
    identity), with translations divided by ``scale`` = the (lower) median distance of
    the camera centres from camera 0, clamped below at ``min_pose_scale``.
    """
    E = np.asarray(cam_from_world, dtype=np.float64)
    check_shape("cam_from_world", E, ("N", 4, 4), "f")
    world_from_cam0 = invert_rigid(E[0])
    cam_from_cam0 = E @ world_from_cam0
    centres = invert_rigid(cam_from_cam0)[:, :3, 3]
    dists = np.sort(np.linalg.norm(centres, axis=-1))
    scale = max(float(dists[(len(dists) - 1) // 2]), float(min_pose_scale))  # torch.median: lower median
    out = cam_from_cam0.copy()
    out[:, :3, 3] = out[:, :3, 3] / scale
    return out, scale


def umeyama_sim3(src: np.ndarray, dst: np.ndarray, min_spread: float = 1e-9) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares Sim(3) ``dst ~ s R src + t`` for corresponding (M, 3) points (Umeyama 1991).

    The official api's variant of :func:`da3stream.alignment.umeyama.umeyama`: uniform
    weights, and collinear camera centres (a straight drive) are accepted.
    Returns ``(s, R, t)``; raises :class:`PredictionError` when ``src`` has no spread.
    """
    try:
        dst_from_src = umeyama(src, dst, rank_tol=None, min_points=1, min_spread=min_spread)
    except AlignmentError as exc:
        raise PredictionError(str(exc)) from None
    return dst_from_src.s, np.array(dst_from_src.R), np.array(dst_from_src.t)


def robust_umeyama_sim3(src: np.ndarray, dst: np.ndarray, cfg: PoseConditioning = PoseConditioning()):
    """Umeyama on all points, or a RANSAC variant from ``cfg.ransac_min_views`` points on.

    RANSAC (the official api's scheme): a first fit on all points sets the inlier
    threshold (median distance of each mapped source point to its nearest target);
    ``cfg.ransac_iters`` fits on random halves are scored by inlier count (ties: mean
    error); the best inlier set (>= 3 points) is refitted.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    s0, R0, t0 = umeyama_sim3(src, dst, cfg.min_spread)
    n = len(src)
    if n < cfg.ransac_min_views:
        return s0, R0, t0
    mapped = s0 * src @ R0.T + t0
    thresh = float(np.median(np.linalg.norm(mapped[:, None] - dst[None], axis=-1).min(1)))
    rng = np.random.default_rng(cfg.ransac_seed)
    sub_n = max(3, (n + 1) // 2)
    best_model, best_inliers, best_score = (s0, R0, t0), None, (-1, np.inf)
    for _ in range(cfg.ransac_iters):
        pick = rng.choice(n, size=sub_n, replace=False)
        try:
            model = umeyama_sim3(src[pick], dst[pick], cfg.min_spread)
        except PredictionError:
            continue
        s, R, t = model
        err = np.linalg.norm(s * src @ R.T + t - dst, axis=-1)
        inl = err <= thresh
        score = (int(inl.sum()), float(err[inl].mean()) if inl.any() else np.inf)
        if score[0] > best_score[0] or (score[0] == best_score[0] and score[1] < best_score[1]):
            best_model, best_inliers, best_score = model, inl, score
    if best_inliers is not None and best_inliers.sum() >= 3:
        try:
            return umeyama_sim3(src[best_inliers], dst[best_inliers], cfg.min_spread)
        except PredictionError:
            pass
    return best_model


def _check_rigid(name: str, M: np.ndarray, tol: float) -> None:
    orth, _, last = rigid_defects(M)
    err = float(orth.max()) if orth.size else 0.0
    if not np.all(np.isfinite(M)) or err > tol:
        raise ShapeError(f"{name}: expected rigid (N, 4, 4) transforms, rotation orthonormality error {err:.3g}")
    if last > tol:
        raise ShapeError(f"{name}: last row must be [0, 0, 0, 1]")


# ----------------------------------------------------------------------------- predictor


class DA3Predictor:
    """A DA3 network wrapped as a Predictor (see the module docstring for the outputs)."""

    def __init__(self, net, info: CheckpointInfo, *, device: str = "auto", dtype: str = "auto",
                 process_res: int = 504, process_res_method: str = "upper_bound_resize",
                 head_chunk: Optional[int] = None, ref_view_strategy: str = "saddle_balanced",
                 pose_conditioning: PoseConditioning = PoseConditioning(), sky_threshold: float = 0.5):
        import torch

        pp.plan_view((process_res, process_res), process_res, process_res_method)  # validates both
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.process_res = int(process_res)
        self.process_res_method = str(process_res_method)
        self.ref_view_strategy = str(ref_view_strategy)
        self.pose_conditioning = pose_conditioning
        self.sky_threshold = float(sky_threshold)
        self.info = info
        if head_chunk is not None:
            if int(head_chunk) < 1:
                raise ConfigError(f"head_chunk: must be >= 1, got {head_chunk}")
            if not hasattr(net, "head_chunk"):
                raise ConfigError("head_chunk: this network has no micro-batched heads")
            net.head_chunk = int(head_chunk)
        self.net = net.to(device=torch.device(self.device), dtype=self.dtype).eval()

    # identity, for the store and reports
    @property
    def model_id(self) -> str:
        return self.info.model_id

    @property
    def weights_sha256(self) -> str:
        return self.info.weights_sha256

    @property
    def weights_random(self) -> bool:
        return self.info.weights_random

    @property
    def preset(self) -> str:
        return self.info.preset

    def describe(self) -> dict:
        """JSON-friendly identity of the model and its settings (for the store's root attrs)."""
        return {
            "model_id": self.model_id, "model_name": self.info.model_name, "preset": self.preset,
            "weights_sha256": self.weights_sha256, "weights_random": self.weights_random,
            "process_res": self.process_res, "process_res_method": self.process_res_method,
            "device": self.device, "dtype": str(self.dtype).replace("torch.", ""),
            "ref_view_strategy": self.ref_view_strategy,
        }

    # resolution bookkeeping
    def network_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the depth grid for frames of original size ``image_hw`` = (H, W)."""
        return pp.network_hw(image_hw, self.process_res, self.process_res_method)

    def net_from_orig(self, image_hw: tuple[int, int]) -> np.ndarray:
        """(3, 3) pixel map from original to depth-grid pixels for frames of size ``image_hw``."""
        return pp.plan_view(image_hw, self.process_res, self.process_res_method).net_from_orig

    def to_original_intrinsics(self, K_depth_grid: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """(3, 3) or (N, 3, 3) depth-grid intrinsics -> intrinsics of (H, W) = ``image_hw`` source frames."""
        return self._map_intrinsics("K_depth_grid", K_depth_grid, image_hw, to_network=False)

    def to_network_intrinsics(self, K_orig: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
        """(3, 3) or (N, 3, 3) source-resolution intrinsics -> depth-grid intrinsics."""
        return self._map_intrinsics("K_orig", K_orig, image_hw, to_network=True)

    def _map_intrinsics(self, name, K, image_hw, to_network: bool) -> np.ndarray:
        K = np.asarray(K, dtype=np.float64)
        single = K.ndim == 2
        K3 = K[None] if single else K
        check_shape(name, K3, ("N", 3, 3), "f")
        M = np.broadcast_to(self.net_from_orig(image_hw), K3.shape)
        out = pp.intrinsics_to_network(K3, M) if to_network else pp.intrinsics_to_original(K3, M)
        return out[0] if single else out

    # inference
    def predict(self, batch: FrameBatch, world_from_cam: Optional[np.ndarray] = None,
                intrinsics: Optional[np.ndarray] = None) -> Prediction:
        """Run the network on one window.

        ``world_from_cam`` (N, 4, 4) and ``intrinsics`` (N, 3, 3, original resolution):
        optional known cameras (both or neither) for pose conditioning.
        """
        import torch

        if not isinstance(batch, FrameBatch):
            raise ShapeError(f"batch: expected a FrameBatch, got {type(batch).__name__}")
        n = len(batch)
        pre = pp.preprocess(batch.images, self.process_res, self.process_res_method)
        cond = self._conditioning(n, pre, world_from_cam, intrinsics)
        dev = torch.device(self.device)
        x = pre.images[None].to(device=dev, dtype=self.dtype)
        kwargs = {"ref_view_strategy": self.ref_view_strategy}
        if cond is not None and self._has_camera_encoder():
            kwargs["cam_from_world"] = torch.from_numpy(cond["cam_from_cam0"][None]).to(dev, torch.float32)
            kwargs["intrinsics"] = torch.from_numpy(cond["K_net"][None]).to(dev, torch.float32)
        with torch.inference_mode():
            out = self.net(x, **kwargs)
        return self._to_prediction(out, n, pre, cond)

    __call__ = predict

    def _has_camera_encoder(self) -> bool:
        inner = getattr(self.net, "da3", self.net)  # the nested model's any-view branch
        return getattr(inner, "cam_enc", None) is not None

    def _conditioning(self, n, pre, world_from_cam, intrinsics):
        if world_from_cam is None and intrinsics is None:
            return None
        if world_from_cam is None or intrinsics is None:
            raise ConfigError("predict: pose conditioning needs both world_from_cam and intrinsics (or neither)")
        W = np.asarray(world_from_cam, dtype=np.float64)
        K = np.asarray(intrinsics, dtype=np.float64)
        check_shape("world_from_cam", W, (n, 4, 4), "f")
        check_shape("intrinsics", K, (n, 3, 3), "fiu")
        _check_rigid("world_from_cam", W, self.pose_conditioning.rigid_tol)
        cam_from_cam0, scale = normalise_cam_from_world(invert_rigid(W), self.pose_conditioning.min_pose_scale)
        logger.debug("pose conditioning: %d views, median camera distance %.4g", n, scale)
        return {"world_from_cam": W, "K_net": pre.to_network_intrinsics(K), "cam_from_cam0": cam_from_cam0}

    def _to_prediction(self, out, n, pre, cond) -> Prediction:
        from da3stream.core.host_copy import batch_to_host

        # all outputs start copying at once (pinned, asynchronous on CUDA; a plain copy on CPU)
        np32 = batch_to_host([getattr(out, k, None) for k in
                              ("depth", "depth_conf", "ray", "ray_conf", "sky", "metric_depth", "descriptors")])

        depth, conf = np32(out.depth), np32(out.depth_conf)
        if depth is None:
            raise PredictionError(f"{self.model_id}: the network returned no depth")
        if conf is None:  # mono/metric heads predict no confidence: every pixel gets the neutral 1
            conf = np.ones_like(depth)
        rays, ray_conf = np32(getattr(out, "ray", None)), np32(getattr(out, "ray_conf", None))
        if rays is not None:  # the network emits [direction, origin]; Prediction.rays is [origin, direction]
            rays = np.ascontiguousarray(np.concatenate([rays[..., 3:], rays[..., :3]], -1))
        sky = np32(getattr(out, "sky", None))
        sky = None if sky is None else sky >= self.sky_threshold
        metric = np32(getattr(out, "metric_depth", None))
        desc = np32(getattr(out, "descriptors", None))
        pred_cfw = getattr(out, "cam_from_world", None)
        if pred_cfw is not None:
            world_from_cam = cam_from_world_3x4_to_world_from_cam(pred_cfw[0].detach().to("cpu").double().numpy())
            K = out.intrinsics[0].detach().to("cpu").double().numpy()
        elif cond is None:
            raise PredictionError(f"{self.model_id}: preset {self.preset!r} predicts no cameras; "
                                  "pass known world_from_cam and intrinsics to predict()")
        if cond is not None:
            depth, rays = self._align_to_known(depth, rays, world_from_cam if pred_cfw is not None else None, cond)
            world_from_cam, K = cond["world_from_cam"].copy(), cond["K_net"]
        pred = Prediction(depth=depth, conf=conf, world_from_cam=world_from_cam, intrinsics=K, rays=rays,
                          ray_conf=ray_conf, descriptors=desc, metric_depth=metric, sky=sky)
        return pred.validate(n)

    def _align_to_known(self, depth, rays, pred_world_from_cam, cond):
        """Depth (and rays) into the caller's units and frame: the official api's Umeyama scale."""
        if pred_world_from_cam is None:
            return depth, rays
        from da3stream.alignment.sim3 import Sim3

        known_centres = cond["world_from_cam"][:, :3, 3]
        try:
            s, R, t = robust_umeyama_sim3(known_centres, pred_world_from_cam[:, :3, 3], self.pose_conditioning)
        except PredictionError:
            logger.warning("%s: known camera centres have no spread; depth scale left unchanged", self.model_id)
            return depth, rays
        pred_from_known = Sim3(s, R, t)
        depth = depth / np.float32(s)
        if rays is not None:
            known_from_pred = pred_from_known.inverse()
            origins = known_from_pred.apply(rays[..., :3].astype(np.float64))
            dirs = rays[..., 3:].astype(np.float64) @ known_from_pred.R.T
            rays = np.concatenate([origins, dirs], -1).astype(np.float32)
        return depth, rays


def _f32():
    import torch

    return torch.float32


# ----------------------------------------------------------------------------- factories


def load_predictor(weights, device: str = "auto", dtype: str = "auto", process_res: int = 504,
                   process_res_method: str = "upper_bound_resize", head_chunk: Optional[int] = None,
                   **kwargs) -> DA3Predictor:
    """Load a DA3 checkpoint (directory, hub id or official model name) as a :class:`DA3Predictor`."""
    pp.plan_view((process_res, process_res), process_res, process_res_method)  # fail fast on bad settings
    resolve_dtype(dtype, resolve_device(device))
    net, info = load_checkpoint(weights)
    return DA3Predictor(net, info, device=device, dtype=dtype, process_res=process_res,
                        process_res_method=process_res_method, head_chunk=head_chunk, **kwargs)


def random_predictor(preset: str = "small", seed: int = 0, device: str = "auto", dtype: str = "auto",
                     process_res: int = 504, process_res_method: str = "upper_bound_resize",
                     head_chunk: Optional[int] = None, **kwargs) -> DA3Predictor:
    """A DA3 predictor with RANDOM weights (torch's default init after ``torch.manual_seed(seed)``).

    For tests and benchmarks only: its ``model_id`` is ``random:<preset>:seed<seed>`` and
    ``weights_random`` is True.
    """
    import torch

    from da3stream.core.network import PRESETS, build_network

    if preset not in PRESETS:
        raise ConfigError(f"preset: expected one of {', '.join(sorted(PRESETS))}, got {preset!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = build_network(preset)
    info = CheckpointInfo(model_id=f"random:{preset}:seed{int(seed)}", model_name=preset, preset=preset,
                          weights_sha256=state_dict_sha256(net.state_dict()), weights_random=True, path=None)
    logger.warning("using RANDOM weights (%s): outputs are meaningless except for tests and benchmarks", info.model_id)
    return DA3Predictor(net, info, device=device, dtype=dtype, process_res=process_res,
                        process_res_method=process_res_method, head_chunk=head_chunk, **kwargs)
