"""Our DA3 network vs the official one (``tests/oracle.py``): same weights, same inputs, same outputs.

Every parity case loads the official (perturbed, seeded) weights into our
network with ``strict=True`` and compares every official output in fp32:
max|ours - official| / max|official| <= 1e-4. Each case prints one
``PARITY`` line with the per-output errors (see them with ``pytest -rP``).

Default cases: small and base, 1/2/5 views, landscape and portrait frames of
different sizes, with and without pose conditioning; 5 views trigger the
reference-view selection (inputs chosen so that a view other than 0 wins).
``-m slow``: large, giant, mono-large, metric-large and nested-giant-large.
"""

from __future__ import annotations

import copy
import gc
import json

import pytest
import torch

from da3stream.core.network import PRESETS, build_network, preset_from_model_name
from da3stream.errors import CheckpointError, ConfigError, ShapeError

import oracle

REL_TOL_FP32 = 1e-4
"""Parity tolerance in fp32: max|d| / max|ref| per output."""

BF16_DENSE_TOL = 0.05
"""bf16 copy vs fp32: max relative error of dense outputs."""

BF16_POSE_TOL = 0.2
"""bf16 copy vs fp32: max relative error of poses / intrinsics / descriptors."""

CHUNK_TOL = 1e-5
"""Micro-batched vs one-shot execution of the same net."""

OUTPUT_MAP = {
    "depth": "depth",
    "depth_conf": "depth_conf",
    "extrinsics": "cam_from_world",
    "intrinsics": "intrinsics",
    "ray": "ray",
    "ray_conf": "ray_conf",
    "sky": "sky",
}
"""Official output key -> NetworkOutput field."""

SHAPES = {"landscape": (98, 140), "portrait": (154, 98)}
"""Frame sizes (H, W) of the default cases: 7x10 and 11x7 patches."""

INPUT_SEED = 1
"""Seed of the input images; with it the 5-view cases select a reference view other than 0."""

WEIGHT_SEEDS = {"metric-large": 1}
"""Weight seeds other than 0 (mono and metric share an architecture; give them different weights)."""

_CACHE: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # fastest on a loaded 2-core machine; parity does not depend on it
    yield
    torch.set_num_threads(previous)
    _CACHE.clear()


def nets(preset: str):
    """(official, ours) sharing the official weights; one preset cached at a time."""
    if preset not in _CACHE:
        _CACHE.clear()
        gc.collect()
        official = oracle.build_official(preset, seed=WEIGHT_SEEDS.get(preset, 0))
        ours = build_network(preset, device="meta")
        ours.load_state_dict(official.state_dict(), strict=True, assign=True)
        _CACHE[preset] = (official, ours.eval())
    return _CACHE[preset]


def compare(ref: dict, got, label: str) -> dict[str, float]:
    """Per-output max relative errors; every official tensor output must have a counterpart."""
    errors = {}
    for key, field in OUTPUT_MAP.items():
        if key in ref:
            value = getattr(got, field)
            assert value is not None, f"{label}: official gives {key!r}, ours gives no {field!r}"
            errors[key] = oracle.max_rel_error(ref[key], value)
    unknown = set(ref) - set(OUTPUT_MAP) - {"ref_view"}
    assert not unknown, f"{label}: official outputs without a comparison: {sorted(unknown)}"
    views = f"; ref_view official {ref['ref_view'].tolist()} ours {got.ref_view.tolist()}" if "ref_view" in ref else ""
    print(f"PARITY {label}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()) + views)
    return errors


def run_case(preset: str, views: int, height: int, width: int, poses: bool, seed: int = INPUT_SEED,
             strategy: str = "saddle_balanced", batch: int = 1):
    official, ours = nets(preset)
    images = torch.cat([oracle.random_images(views, height, width, seed + b) for b in range(batch)])
    ext = ixt = None
    if poses:
        ext, ixt = oracle.synthetic_cameras(views, height, width)
        ext, ixt = ext.expand(batch, -1, -1, -1), ixt.expand(batch, -1, -1, -1)
    ref = oracle.run_official(official, images, ext, ixt, ref_view_strategy=strategy)
    with torch.inference_mode():
        got = ours(images, ext, ixt, ref_view_strategy=strategy)
    label = f"{preset} B{batch} {views}v {height}x{width} {'poses' if poses else 'no-poses'} {strategy}"
    errors = compare(ref, got, label)
    bad = {k: v for k, v in errors.items() if not v <= REL_TOL_FP32}
    assert not bad, f"{label}: relative error above {REL_TOL_FP32}: {bad}"
    return ref, got


def check_ref_view(ref, got, views: int, poses: bool, multi_view: bool = True) -> None:
    if not multi_view or poses:
        assert got.ref_view is None
    elif "ref_view" in ref:
        assert torch.equal(got.ref_view, ref["ref_view"])
    else:
        assert views < 3 and got.ref_view.tolist() == [0] * got.ref_view.shape[0]


# ------------------------------------------------------------------------ default parity
DEFAULT_CASES = [
    (preset, views, orient, poses)
    for preset in ("small", "base")
    for views in (1, 2, 5)
    for orient in SHAPES
    for poses in (False, True)
]


@pytest.mark.parametrize(
    "preset,views,orient,poses",
    DEFAULT_CASES,
    ids=[f"{p}-{v}v-{o}-{'poses' if c else 'noposes'}" for p, v, o, c in DEFAULT_CASES],
)
def test_parity_default(preset, views, orient, poses):
    height, width = SHAPES[orient]
    ref, got = run_case(preset, views, height, width, poses)
    check_ref_view(ref, got, views, poses)
    if views == 5 and not poses:
        assert int(ref["ref_view"][0]) != 0, "input should make the selector pick a view other than 0"


@pytest.mark.parametrize("strategy", ["saddle_sim_range", "first", "middle"])
def test_parity_ref_view_strategies(strategy):
    ref, got = run_case("small", 5, 98, 140, poses=False, strategy=strategy)
    check_ref_view(ref, got, 5, False)


def test_parity_batch_of_two():
    """Two batch items choose their reference views independently."""
    ref, got = run_case("small", 4, 98, 126, poses=False, seed=4, batch=2)
    check_ref_view(ref, got, 4, False)
    assert ref["ref_view"].tolist() == [3, 1], "the two items should choose different non-zero views"


@pytest.mark.parametrize("views,height,width", [(1, 98, 126), (3, 126, 98), (2, 196, 252)])
def test_parity_use_ray_pose(views, height, width, monkeypatch):
    """Poses from the ray map (RANSAC on the global torch RNG); at 196x252 (> 8000 inliers) the
    refit uses a random inlier subset."""
    official, ours = nets("small")
    images = oracle.random_images(views, height, width, INPUT_SEED)
    torch.manual_seed(5)
    with torch.inference_mode():
        ref = official(images, use_ray_pose=True)
    after_official = torch.rand(3)
    draws = []
    randperm = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda n, *a, **k: draws.append(n) or randperm(n, *a, **k))
    torch.manual_seed(5)
    with torch.inference_mode():
        got = ours(images, use_ray_pose=True)
    monkeypatch.undo()
    after_ours = torch.rand(3)
    errors = {key: oracle.max_rel_error(ref[key], getattr(got, OUTPUT_MAP[key]))
              for key in ("depth", "depth_conf", "extrinsics", "intrinsics")}
    print(f"PARITY small {views}v {height}x{width} use_ray_pose: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()) + f"; randperm draws {len(draws)}")
    assert max(errors.values()) <= REL_TOL_FP32, errors
    assert torch.equal(after_official, after_ours), "both should draw the same random numbers"
    if height * width >= 196 * 252:
        assert len(draws) > 100, "the inlier subsampling should run in this case"


def test_parity_native_grid_518():
    """At 518x518 the position embedding is used without resizing."""
    run_case("small", 1, 518, 518, poses=False)


# --------------------------------------------------------------------------- slow parity
@pytest.mark.slow
@pytest.mark.parametrize("views,poses", [(1, False), (5, False), (3, True)])
def test_parity_large(views, poses):
    ref, got = run_case("large", views, 98, 126, poses, seed=2)
    check_ref_view(ref, got, views, poses)
    if views >= 3 and not poses:
        assert int(ref["ref_view"][0]) != 0


@pytest.mark.slow
@pytest.mark.parametrize("views,poses", [(3, False), (2, True)])
def test_parity_giant(views, poses):
    ref, got = run_case("giant", views, 98, 126, poses, seed=1)
    check_ref_view(ref, got, views, poses)
    if views >= 3 and not poses:
        assert int(ref["ref_view"][0]) != 0


SKY_CASES = [(2, 98, 126, 0.5), (3, 224, 252, 0.2)]
"""(views, H, W, sky fraction); the second has > 100000 non-sky pixels, so the quantiles sample."""


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["mono-large", "metric-large"])
@pytest.mark.parametrize("views,height,width,sky_fraction", SKY_CASES)
def test_parity_mono_metric(preset, views, height, width, sky_fraction):
    """Depth and sky, including the sky fill (sampled with the global torch RNG like the official)."""
    official, ours = nets(preset)  # ours shares the official tensors, so the bias shift reaches both
    images = oracle.random_images(views, height, width, INPUT_SEED)
    oracle.balance_sky_head(official, images, sky_fraction)
    torch.manual_seed(11)
    ref = oracle.run_official(official, images)
    torch.manual_seed(11)
    with torch.inference_mode():
        got = ours(images)
    label = f"{preset} {views}v {height}x{width} sky {sky_fraction:.0%}"
    errors = compare(ref, got, label)
    assert max(errors.values()) <= REL_TOL_FP32, errors
    non_sky = int((ref["sky"] < 0.3).sum())
    assert 10 < non_sky < ref["sky"].numel() - 10, "the sky fill should run in this case"
    check_ref_view(ref, got, views, False, multi_view=False)
    ext, ixt = oracle.synthetic_cameras(views, height, width)
    with pytest.raises(ConfigError, match="any-view"):
        ours(images, ext, ixt)
    with pytest.raises(ConfigError, match="any-view"):
        ours(images, use_ray_pose=True)


@pytest.mark.slow
@pytest.mark.parametrize("views,height,width,sky_fraction,poses",
                         [(2, 98, 126, 0.5, False), (3, 224, 252, 0.2, True)])
def test_parity_nested(views, height, width, sky_fraction, poses):
    """Metric scaling, least-squares alignment and sky handling of the nested model."""
    official, ours = nets("nested-giant-large")
    images = oracle.random_images(views, height, width, INPUT_SEED)
    oracle.balance_sky_head(official, images, sky_fraction)
    ext = ixt = None
    if poses:
        ext, ixt = oracle.synthetic_cameras(views, height, width)
    seen = {}
    align = official._apply_depth_alignment

    def recording_align(output, metric_output):  # the metric branch after focal scaling
        seen["metric_depth"], seen["sky"] = metric_output.depth.clone(), metric_output.sky.clone()
        return align(output, metric_output)

    official._apply_depth_alignment = recording_align
    try:
        torch.manual_seed(11)
        ref = oracle.run_official(official, images, ext, ixt)
    finally:
        del official._apply_depth_alignment
    torch.manual_seed(11)
    with torch.inference_mode():
        got = ours(images, ext, ixt)
    scale = float(ref.pop("scale_factor"))
    ref.pop("is_metric")
    # the official nested output drops the rays; ours carries the any-view rays with metric origins
    ray, ray_conf = ref.pop("ray"), ref.pop("ray_conf")
    label = f"nested-giant-large {views}v {height}x{width} sky {sky_fraction:.0%} {'poses' if poses else 'no-poses'}"
    errors = compare(ref, got, label)
    errors["metric_scale"] = abs(float(got.metric_scale) - scale) / abs(scale)
    errors["ray_dir"] = oracle.max_rel_error(ray[..., :3], got.ray[..., :3])
    errors["ray_origin_x_scale"] = oracle.max_rel_error(ray[..., 3:] * scale, got.ray[..., 3:])
    errors["ray_conf"] = oracle.max_rel_error(ray_conf, got.ray_conf)
    errors["metric_depth"] = oracle.max_rel_error(seen["metric_depth"], got.metric_depth)
    errors["metric_sky"] = oracle.max_rel_error(seen["sky"], got.sky)
    print(f"PARITY {label} (extra): " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) <= REL_TOL_FP32, errors
    assert got.metric_depth is not None and got.sky is not None
    assert 0 < int((got.sky >= 0.3).sum()) < got.sky.numel()


# ----------------------------------------------------------------------- other properties
def test_state_dict_keys_match_official_small():
    official, ours = nets("small")
    assert list(ours.state_dict()) == list(official.state_dict())


def test_micro_batching_does_not_change_outputs():
    _, ours = nets("small")
    images = oracle.random_images(5, 98, 140, INPUT_SEED)
    backbone = ours.backbone
    saved = (backbone.view_chunk, backbone.token_chunk)
    with torch.inference_mode():
        base = ours(images, head_chunk=64)
        backbone.view_chunk, backbone.token_chunk = 2, 100
        try:
            chunked = ours(images, head_chunk=1)
        finally:
            backbone.view_chunk, backbone.token_chunk = saved
    with torch.enable_grad():  # plain autograd mode takes the unchunked, out-of-place path
        graph = ours(images[:, :3])
    for field in ("depth", "depth_conf", "cam_from_world", "intrinsics", "ray", "ray_conf", "descriptors"):
        err = oracle.max_rel_error(getattr(base, field), getattr(chunked, field))
        assert err <= CHUNK_TOL, f"{field}: {err}"
    assert graph.depth.requires_grad
    with torch.inference_mode():
        assert oracle.max_rel_error(ours(images[:, :3]).depth, graph.depth.detach()) <= CHUNK_TOL


def test_bf16_weights_run_and_stay_close():
    """A bf16 copy runs on CPU (the official net fails with bf16 weights) and stays near fp32."""
    _, ours = nets("small")
    low = copy.deepcopy(ours).to(torch.bfloat16)
    images = oracle.random_images(5, 98, 140, INPUT_SEED)
    ext, ixt = oracle.synthetic_cameras(5, 98, 140)
    with torch.inference_mode():
        for cams in ((None, None), (ext, ixt)):
            ref = ours(images, *cams)
            got = low(images, *cams)
            for field in ("depth", "depth_conf", "ray", "ray_conf"):
                value = getattr(got, field)
                assert value.dtype == torch.float32 and bool(torch.isfinite(value).all())
                assert oracle.max_rel_error(getattr(ref, field), value) <= BF16_DENSE_TOL, field
            for field in ("cam_from_world", "intrinsics", "descriptors"):
                assert oracle.max_rel_error(getattr(ref, field), getattr(got, field)) <= BF16_POSE_TOL, field


def test_descriptors_unit_norm_identical_views_and_context_free():
    _, ours = nets("small")
    images = oracle.random_images(5, 98, 140, INPUT_SEED)
    twins = torch.cat([images[:, :1], images[:, :1]], dim=1)
    with torch.inference_mode():
        out = ours(images)
        twin = ours(twins).descriptors
        alone = ours(images[:, 3:4]).descriptors
        first = ours(images, ref_view_strategy="first").descriptors
    desc = out.descriptors
    assert desc.shape == (1, 5, 2 * PRESETS["small"].backbone.embed_dim) and desc.dtype == torch.float32
    assert bool(torch.isfinite(desc).all())
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(1, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(twin[:, 0], twin[:, 1], atol=1e-6, rtol=0)
    # a view's descriptor does not depend on the other views or the reference choice
    torch.testing.assert_close(alone[:, 0], desc[:, 3], atol=1e-5, rtol=0)
    assert int(out.ref_view[0]) != 0
    torch.testing.assert_close(first, desc, atol=1e-6, rtol=0)
    # and different views differ
    assert float((desc[:, 0] - desc[:, 1]).norm()) > 1e-3


def test_checkpoint_writer_official_layout(tmp_path):
    from safetensors.torch import load_file

    official, _ = nets("small")
    directory = oracle.write_official_checkpoint(official, "small", tmp_path / "ckpt")
    assert json.loads((directory / "config.json").read_text()) == {"model_name": "da3-small"}
    tensors = load_file(str(directory / "model.safetensors"))
    assert all(k.startswith("model.") for k in tensors)
    fresh = build_network("small")
    fresh.load_state_dict({k[len("model."):]: v for k, v in tensors.items()}, strict=True)
    images = oracle.random_images(2, 98, 126, INPUT_SEED)
    ref = oracle.run_official(official, images)
    with torch.inference_mode():
        got = fresh(images)
    assert oracle.max_rel_error(ref["depth"], got.depth) <= REL_TOL_FP32


def test_build_network_shapes_and_official_names():
    net = build_network("da3-small")
    assert not net.training
    images = torch.zeros(1, 2, 3, 56, 70)
    with torch.inference_mode():
        out = net(images)
    assert out.depth.shape == (1, 2, 56, 70) and out.depth_conf.shape == (1, 2, 56, 70)
    assert out.cam_from_world.shape == (1, 2, 3, 4) and out.intrinsics.shape == (1, 2, 3, 3)
    assert out.ray.shape == (1, 2, 32, 40, 6) and out.ray_conf.shape == (1, 2, 32, 40)
    assert out.sky is None and out.metric_depth is None


@pytest.mark.parametrize("name,key", [
    ("da3-small", "small"), ("da3-base", "base"), ("da3-large", "large"), ("da3-large-1.1", "large"),
    ("da3-giant", "giant"), ("DA3-GIANT-1.1", "giant"), ("da3mono-large", "mono-large"),
    ("da3metric-large", "metric-large"), ("da3nested-giant-large", "nested-giant-large"),
    ("da3nested-giant-large-1.1", "nested-giant-large"), ("depth-anything/DA3-SMALL", "small"),
    ("metric-large", "metric-large"),
])
def test_preset_from_model_name(name, key):
    assert preset_from_model_name(name) == key


@pytest.mark.parametrize("name", ["da3-tiny", "", "vggt"])
def test_preset_from_model_name_rejects_unknown(name):
    with pytest.raises(CheckpointError, match="model_name"):
        preset_from_model_name(name)


def test_bad_inputs_raise_one_line_errors():
    _, ours = nets("small")
    good = torch.zeros(1, 2, 3, 56, 70)
    with pytest.raises(ShapeError, match="multiples of 14"):
        ours(torch.zeros(1, 2, 3, 50, 70))
    with pytest.raises(ShapeError, match="images"):
        ours(torch.zeros(2, 3, 56, 70))
    with pytest.raises(ShapeError, match="both or neither"):
        ours(good, torch.eye(4).expand(1, 2, 4, 4))
    with pytest.raises(ShapeError, match="intrinsics"):
        ours(good, torch.eye(4).expand(1, 2, 4, 4), torch.eye(3).expand(1, 3, 3, 3))
    with pytest.raises(ConfigError, match="ref_view_strategy"):
        ours(good, ref_view_strategy="random")
    with pytest.raises(ConfigError, match="preset"):
        build_network("da3-tiny")
