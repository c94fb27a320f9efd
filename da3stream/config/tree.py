"""The run's config tree: :class:`Config` and its sections, frozen, a docstring per field."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from da3stream.errors import ConfigError


@dataclass(frozen=True)
class SourceConfig:
    """How frames are read."""

    fps: Optional[float] = None
    """Target frame rate after subsampling by timestamp; None keeps every frame."""
    stride: int = 1
    """Keep every ``stride``-th decoded frame (applied before ``fps``)."""
    max_frames: Optional[int] = None
    """Stop after this many frames have been read; None reads to the end."""
    prefetch: int = 64
    """Frames decoded ahead of the pipeline by the prefetch thread."""
    max_side: Optional[int] = 2048
    """Downscale frames whose longer side exceeds this many pixels on read (protects memory on 4K/8K input; the network sees ~504 px); None keeps them."""
    topic: Optional[str] = None
    """Image topic of a ROS bag / MCAP source (needed when it has several)."""
    intrinsics: Optional[str] = None
    """Known camera: "fx,fy,cx,cy[,k1,k2,p1,p2,...]", a calibration YAML path, or "camera_info" (bags); frames are undistorted on read and the known camera replaces the predicted intrinsics."""
    undistort_alpha: Optional[float] = 0.0
    """Undistorted camera zoom: 0 keeps only valid pixels, 1 keeps every source pixel, None keeps K."""
    poses: Optional[str] = None
    """TUM file of known world_from_cam poses (OpenCV camera axes) for pose-conditioned inference."""
    pose_max_diff: float = 0.02
    """Largest |frame time - pose time|, in seconds, for a frame to take a prior pose."""


@dataclass(frozen=True)
class KeyframeConfig:
    """The cheap motion test that drops near-duplicate frames."""

    enabled: bool = True
    """Drop frames that barely differ from the last kept frame."""
    thumb_size: int = 32
    """Side of the grayscale thumbnail the motion test compares, in pixels."""
    min_change: float = 0.015
    """Keep a frame when the mean absolute thumbnail difference (0..1) exceeds this."""
    max_skip: int = 30
    """Keep a frame at the latest after this many dropped frames in a row."""
    cut_threshold: float = 0.1
    """A thumbnail change above this (0..1) makes a kept frame a scene-cut candidate (see ``cut_colour_threshold``)."""
    cut_colour_threshold: float = 0.5
    """A candidate is a hard scene cut, which starts a new segment, when the Bhattacharyya distance (0..1) of its HSV histogram to the last kept frame's exceeds this; 0 trusts the thumbnail test alone."""


@dataclass(frozen=True)
class ModelConfig:
    """The network (ignored when a predictor object is passed in)."""

    id: Optional[str] = None
    """Checkpoint directory or hub id (e.g. depth-anything/DA3-LARGE); None runs the simulator demo only."""
    process_res: int = 504
    """Longest side, in pixels, the network sees."""
    process_res_method: str = "upper_bound_resize"
    """Resize policy of the official preprocessing."""
    device: str = "auto"
    """torch device: auto, cpu, cuda, cuda:N."""
    dtype: str = "auto"
    """Weight/compute dtype: auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16."""


@dataclass(frozen=True)
class AlignConfig:
    """Registration of consecutive windows on their shared frames."""

    mode: str = "auto"
    """Estimator: auto (rotation from the consensus of the overlap frames' ray-fitted cameras, scale and translation from the depth-ray points; sim3 when the poses are not ray-fitted), sim3 (robust, depth-ray points), se3 (metric models), scale (scale + SE(3) init from poses), or poses (naive chaining through the overlap camera poses alone; a baseline)."""
    max_points: int = 4000
    """Correspondences kept after confidence filtering and spatially-spread subsampling."""
    conf_quantile: float = 0.3
    """Drop the lowest-confidence fraction of overlap pixels before sampling."""
    irls_iters: int = 10
    """IRLS iterations of the robust estimator."""
    kernel: str = "huber"
    """Robust kernel on depth-relative residuals: huber, cauchy or tukey."""
    kernel_scale: float = 0.05
    """Kernel width as a fraction of point depth."""
    inlier_threshold: float = 0.1
    """A correspondence is an inlier when its depth-relative residual is below this."""
    min_inlier_ratio: float = 0.5
    """Gate: alignments with fewer inliers fall back and are flagged."""
    max_residual: float = 0.08
    """Gate: median depth-relative residual above this falls back and is flagged."""
    scale_range: tuple = (0.02, 50.0)
    """Gate: the relative scale between windows must lie in this range (a sanity bound: windows have arbitrary scale)."""
    max_pose_disagreement: float = 0.2
    """Gate: relative disagreement with the camera-pose-based transform above this is flagged."""
    min_points: int = 50
    """Fewer valid correspondences than this gates the alignment."""
    pose_source: str = "auto"
    """Per-frame camera poses: rays (fit to the ray map, like DA3's use_ray_pose), head (the camera head), or auto (rays when given)."""
    device: str = "auto"
    """Kept for config compatibility and validated (auto, cpu, cuda[:N]); registration runs in numpy on the host
    whatever it says, since numpy beat torch at these sizes (``python -m da3stream.bench registration``)."""


@dataclass(frozen=True)
class LoopConfig:
    """Loop detection and closure."""

    enabled: bool = True
    """Detect, verify and close loops online."""
    top_k: int = 5
    """Candidates retrieved per query frame before verification."""
    min_similarity: float = 0.8
    """Minimum descriptor cosine similarity for a candidate."""
    exclude_seconds: float = 20.0
    """Frames closer in time than this are never loop candidates."""
    exclude_distance: float = 0.0
    """Frames closer in travelled distance than this (chunk-frame units) are never candidates; 0 disables."""
    nms_frames: int = 10
    """Non-maximum suppression radius, in source frames, on candidate pairs."""
    window_half: int = 2
    """Frames taken around each side of a candidate for the verification window."""
    min_inlier_ratio: float = 0.6
    """Verification gate on the inlier ratio of both halves."""
    max_residual: float = 0.08
    """Verification gate on the median depth-relative residual of both halves (as ``align.max_residual``)."""
    max_rotation_deg: float = 30.0
    """Consistency gate: a loop may not disagree in rotation with the current trajectory more than this (degrees)."""
    huber_delta: float = 3.0
    """Robust kernel width (in whitened residual units) of the pose graph."""
    max_queries_per_chunk: int = 4
    """Query frames per new window sent to place recognition."""
    max_translation_abs: float = 0.5
    """Consistency gate: translation disagreement always allowed, as a fraction of the query frame's median depth."""
    max_translation_rel: float = 0.15
    """Consistency gate: translation disagreement allowed per unit of distance travelled between the two frames."""
    max_scale_ratio: float = 2.0
    """Consistency gate: the loop's scale may differ from the trajectory's by at most this factor."""
    max_verifications: int = 2
    """Candidates verified (one predictor call each) per window; the rest are recorded as not verified."""
    consensus_min: int = 2
    """Loops that fail only the trajectory gate are accepted when this many agree within the window; 0 disables."""
    consensus_translation_rel: float = 0.5
    """Relaxed translation gate (per unit travelled distance) for loops accepted by consensus."""
    index_backend: str = "auto"
    """Descriptor search: exact (brute force), ivf (inverted file, sub-linear) or auto (exact, then IVF)."""
    index_device: str = "cpu"
    """torch device of the exact descriptor search: cpu, cuda or auto."""
    ivf_min_size: int = 20000
    """Index size at which the IVF lists are trained (and, with auto, used)."""
    index_dtype: str = "bfloat16"
    """Storage of the place index's descriptors: bfloat16 (half the memory; a similarity moves by at most
    0.004, typically 1e-4) or float32."""
    graph_kernel: str = "huber"
    """Robust kernel of the pose graph: huber or cauchy (width ``huber_delta``)."""
    sigma_floor: float = 0.005
    """Smallest per-edge noise (depth-relative) when deriving edge information from a quality record."""
    gated_weight: float = 0.03
    """Information multiplier of sequential edges whose alignment was gated or fell back (camera-pose estimates)."""
    loop_weight: float = 0.1
    """Information multiplier of loop edges (two registrations plus a wide-baseline loop window) vs sequential ones."""
    min_graph_weight: float = 0.1
    """A new loop whose final robust weight in the pose graph falls below this is rejected as an outlier."""
    candidates_from_trajectory: bool = True
    """Also propose older frames close to a query frame in estimated position and viewing direction (far in
    time; within the drift the consistency gate allows) as candidates; the only source without descriptors."""
    trajectory_max_angle_deg: float = 20.0
    """Largest viewing-direction difference of a trajectory candidate, in degrees."""
    verify_budget: float = 0.14
    """Network frames spent on loop windows, at most this fraction of the frames committed so far (each
    verification is counted as its nominal loop window, ``2 (2 window_half + 1)`` frames); 0 verifies nothing."""

    def __post_init__(self) -> None:
        if self.graph_kernel not in ("huber", "cauchy"):
            raise ConfigError(f"loop.graph_kernel must be huber or cauchy, got {self.graph_kernel!r}")
        # The same names as da3stream.streaming.loops.index.STORAGE_DTYPES (a test pins it; config imports nothing
        # from streaming).
        if self.index_dtype not in ("bfloat16", "float32"):
            raise ConfigError(f"loop.index_dtype must be one of bfloat16, float32, got {self.index_dtype!r}")
        if self.index_backend not in ("exact", "ivf", "auto"):
            raise ConfigError(f"loop.index_backend must be exact, ivf or auto, got {self.index_backend!r}")
        if self.verify_budget < 0 or not 0 < self.trajectory_max_angle_deg <= 180:
            raise ConfigError("loop: need verify_budget >= 0 and 0 < trajectory_max_angle_deg <= 180")
        if self.max_verifications < 0 or self.window_half < 1 or self.max_scale_ratio < 1.0:
            raise ConfigError("loop: need max_verifications >= 0, window_half >= 1 and max_scale_ratio >= 1")


@dataclass(frozen=True)
class FusionConfig:
    """The fused point map."""

    conf_quantile: float = 0.5
    """Keep points above this confidence quantile of each window."""
    voxel_size: float = 0.0
    """Voxel edge in chunk-frame units; 0 derives it from ``voxel_fraction_of_depth``."""
    voxel_fraction_of_depth: float = 0.005
    """Voxel edge as a fraction of the window's median depth, used when ``voxel_size`` is 0."""
    pixel_stride: int = 4
    """Unproject every ``pixel_stride``-th pixel in each direction."""
    max_points_per_chunk: int = 200000
    """Cap on fused points written per window."""


@dataclass(frozen=True)
class StoreConfig:
    """What the Zarr store keeps."""

    save_rgb: bool = True
    """Store RGB at depth resolution (previews, loop verification, viewer)."""
    save_conf: bool = True
    """Store per-pixel confidence beside depth."""
    compression_level: int = 3
    """Blosc zstd level."""
    pixel_codec: str = "lz4"
    """Blosc codec of depth and confidence: lz4 (measured at 504x280: 2.5x less CPU than zstd for 2% more store bytes) or zstd."""


@dataclass(frozen=True)
class ScaleoutConfig:
    """Scale-out on Ray: one source split across workers (``da3stream.scaleout``)."""

    workers: int = 1
    """Segments one source is split into, each reconstructed by its own Ray worker (1: the single-process run)."""
    ray_address: Optional[str] = None
    """Ray cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); None starts a local Ray instance."""
    gpus_per_worker: Optional[float] = None
    """GPUs each worker actor reserves; None: 1 when the Ray cluster has GPUs, else 0."""
    cpus_per_worker: float = 0.5
    """CPUs each worker actor reserves."""

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"scaleout.workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"scaleout.gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        if self.cpus_per_worker < 0:
            raise ConfigError(f"scaleout.cpus_per_worker must be >= 0, got {self.cpus_per_worker}")


@dataclass(frozen=True)
class Config:
    """Root of the configuration tree."""

    chunk_size: Optional[int] = None
    """Frames per window; None derives it from ``gpu_mem_gb`` through the memory model."""
    overlap: int = 8
    """Frames shared by consecutive windows."""
    gpu_mem_gb: float = 12.0
    """GPU memory budget for the network, in GiB."""
    min_chunk_size: int = 16
    """Lower bound on the derived chunk size."""
    max_chunk_size: int = 120
    """Upper bound on the derived chunk size."""
    min_process_res: int = 252
    """Lowest network resolution (longest side) the memory planner lowers model.process_res to when gpu_mem_gb cannot hold min_chunk_size views."""
    seed: int = 0
    """Seed for every random choice the engine makes."""
    predict_ahead: int = 1
    """Windows the predictor runs ahead of alignment and writing, in a worker thread (0: predict in the main thread)."""
    source: SourceConfig = field(default_factory=SourceConfig)
    """How frames are read."""
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    """Near-duplicate frame filter."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    align: AlignConfig = field(default_factory=AlignConfig)
    """Window-to-window registration."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """Loop closure."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """Fused point map."""
    store: StoreConfig = field(default_factory=StoreConfig)
    """Store contents."""
    scaleout: ScaleoutConfig = field(default_factory=ScaleoutConfig)
    """Scale-out on Ray (split one source across workers)."""

    def __post_init__(self) -> None:
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.overlap < 0:
            raise ConfigError(f"overlap must be >= 0, got {self.overlap}")
        if self.chunk_size is not None and self.chunk_size > 1 and self.overlap >= self.chunk_size:
            raise ConfigError(f"overlap ({self.overlap}) must be smaller than chunk_size ({self.chunk_size})")
        if self.gpu_mem_gb <= 0:
            raise ConfigError(f"gpu_mem_gb must be > 0, got {self.gpu_mem_gb}")
        if self.source.stride < 1:
            raise ConfigError(f"source.stride must be >= 1, got {self.source.stride}")
        if self.source.fps is not None and self.source.fps <= 0:
            raise ConfigError(f"source.fps must be > 0, got {self.source.fps}")
        if self.align.mode not in ("auto", "sim3", "se3", "scale", "poses"):
            raise ConfigError(f"align.mode must be auto, sim3, se3, scale or poses, got {self.align.mode!r}")
        if self.predict_ahead not in (0, 1):
            raise ConfigError(f"predict_ahead must be 0 or 1, got {self.predict_ahead}")
        if not (self.align.device in ("auto", "cpu", "cuda") or self.align.device.startswith("cuda:")):
            raise ConfigError(f"align.device must be auto, cpu or cuda[:N], got {self.align.device!r}")
        if self.align.pose_source not in ("auto", "rays", "head"):
            raise ConfigError(f"align.pose_source must be auto, rays or head, got {self.align.pose_source!r}")
        if self.store.pixel_codec not in ("lz4", "zstd"):
            raise ConfigError(f"store.pixel_codec must be lz4 or zstd, got {self.store.pixel_codec!r}")
        if self.align.kernel not in ("huber", "cauchy", "tukey"):
            raise ConfigError(f"align.kernel must be huber, cauchy or tukey, got {self.align.kernel!r}")
