"""Property-based fuzzing with a fixed example budget: the config parser, the trajectory readers and writers, and
the store reader answer malformed input with their own one-line error, never with another exception."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from da3stream.config import Config, load_config
from da3stream.errors import ConfigError, ExportError, StoreError
from da3stream.io.export.trajectory import read_kitti, read_tum, write_kitti, write_tum

LONG_RUN = int(os.environ.get("DA3STREAM_FUZZ_EXAMPLES", "0"))
"""Set DA3STREAM_FUZZ_EXAMPLES=5000 to fuzz longer with fresh random examples (CI uses the fixed budget below)."""


def budget(n: int) -> settings:
    """The CI budget: ``n`` deterministic examples, no per-example deadline (the machine may be loaded)."""
    return settings(max_examples=LONG_RUN or n, deadline=None, derandomize=not LONG_RUN,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


FUZZ = budget(150)


def _field_paths(cls, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            out += _field_paths(f.default_factory, path + ".")
        else:
            out.append(path)
    return out


FIELD_PATHS = _field_paths(Config)
SECTIONS = sorted({p.split(".")[0] for p in FIELD_PATHS if "." in p})
NAMES = sorted({part for p in FIELD_PATHS for part in p.split(".")})


# --------------------------------------------------------------------------- config


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6),
    st.sampled_from([0, -1, 1, 2**63, 1e308, -0.0, "1", "true", "auto", "nan"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=5)),
                                                                          inner, max_size=3)),
    max_leaves=8,
)
keys = st.one_of(st.sampled_from(NAMES + SECTIONS), st.text(max_size=8), st.integers(-3, 3))


def _accepts_or_config_error(fn):
    try:
        cfg = fn()
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None
    assert isinstance(cfg, Config)
    return cfg


@FUZZ
@given(st.dictionaries(keys, values, max_size=5))
def test_config_from_random_nested_dicts(data):
    cfg = _accepts_or_config_error(lambda: load_config(data))
    if cfg is not None:  # anything accepted is well-formed enough to run on
        assert cfg.chunk_size is None or cfg.chunk_size >= 1
        assert cfg.overlap >= 0 and cfg.gpu_mem_gb > 0


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(FIELD_PATHS), st.text(max_size=12)), scalars, max_size=4))
def test_config_from_random_dotted_overrides(overrides):
    _accepts_or_config_error(lambda: load_config(None, overrides))


@FUZZ
@given(st.sampled_from(FIELD_PATHS), scalars)
def test_config_one_field_at_a_time(path, value):
    """Every field against every kind of value: the common mistake (one bad value) is named by its dotted path."""
    try:
        load_config(None, {path: value})
    except ConfigError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(st.text(max_size=200))
def test_config_from_random_yaml_text(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "cfg.yaml"
        path.write_text(text, encoding="utf-8")
        _accepts_or_config_error(lambda: load_config(path))


def test_nan_and_non_integral_numbers_are_config_errors():
    for bad in ({"overlap": math.nan}, {"overlap": math.inf}, {"overlap": 2.5}, {"gpu_mem_gb": math.nan},
                {"keyframes.max_skip": -math.inf}, {"align.max_residual": math.nan}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            load_config(None, bad)


# --------------------------------------------------------------------------- trajectory files


def _read_or_export_error(reader, text=None, data=None):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "traj.txt"
        if data is not None:
            path.write_bytes(data)
        else:
            path.write_text(text, encoding="utf-8")
        try:
            out = reader(path)
        except ExportError as exc:
            assert str(exc) and "\n" not in str(exc)
            return None
        return out


number_tokens = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64).map(repr),
    st.integers(-10**6, 10**6).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e999", "--1", "0x10", "1_0", "", "#", "abc", "1,2", "\t", "1e-400"]),
)
lines = st.lists(st.lists(number_tokens, min_size=0, max_size=14).map(" ".join), max_size=6).map("\n".join)


@FUZZ
@given(st.one_of(st.text(max_size=300), lines))
def test_trajectory_readers_on_random_text(text):
    tum = _read_or_export_error(read_tum, text)
    if tum is not None:
        ts, poses = tum
        assert np.all(np.isfinite(ts)) and np.all(np.isfinite(poses))
        R = poses[:, :3, :3]
        np.testing.assert_allclose(np.swapaxes(R, 1, 2) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    kitti = _read_or_export_error(read_kitti, text)
    if kitti is not None:
        assert np.all(np.isfinite(kitti)) and kitti.shape[1:] == (4, 4)


@FUZZ
@given(st.binary(max_size=200))
def test_trajectory_readers_on_random_bytes(data):
    _read_or_export_error(read_tum, data=data)
    _read_or_export_error(read_kitti, data=data)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def trajectories(draw):
    n = draw(st.integers(0, 6))
    quat_xyzw = np.array([draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4)) for _ in range(n)]).reshape(n, 4)
    norms = np.linalg.norm(quat_xyzw, axis=1)
    quat_xyzw = np.where(norms[:, None] > 1e-3, quat_xyzw, [0.0, 0.0, 0.0, 1.0])
    from scipy.spatial.transform import Rotation

    poses = np.tile(np.eye(4), (n, 1, 1))
    if n:
        poses[:, :3, :3] = Rotation.from_quat(quat_xyzw).as_matrix()
    poses[:, :3, 3] = np.array([draw(st.lists(finite, min_size=3, max_size=3)) for _ in range(n)]).reshape(n, 3)
    ts = np.sort(np.array(draw(st.lists(st.floats(0, 1e9), min_size=n, max_size=n))))
    segments = np.cumsum(np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64))
    return ts, poses, segments


@FUZZ
@given(trajectories())
def test_trajectory_write_read_round_trips(traj):
    ts, world_from_cam, segments = traj
    with tempfile.TemporaryDirectory() as d:
        tum, kitti = Path(d) / "t.tum", Path(d) / "k.txt"
        write_tum(tum, ts, world_from_cam, segments=segments)
        ts2, poses2 = read_tum(tum)
        np.testing.assert_array_equal(ts2, ts)  # shortest round-trip repr: exact
        np.testing.assert_array_equal(poses2[:, :3, 3], world_from_cam[:, :3, 3])
        np.testing.assert_allclose(poses2[:, :3, :3], world_from_cam[:, :3, :3], rtol=0, atol=1e-12)
        n_marks = sum(line.startswith("# segment") for line in tum.read_text().splitlines())
        assert n_marks == (len(np.unique(segments)) if len(np.unique(segments)) > 1 else 0)
        write_kitti(kitti, world_from_cam)
        np.testing.assert_array_equal(read_kitti(kitti), world_from_cam)


# --------------------------------------------------------------------------- the store reader


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from da3stream.synthetic.predictor import SimParams, SimulatedPredictor
    from da3stream.streaming.pipeline import reconstruct
    from da3stream.synthetic import make_sequence

    seq = make_sequence("demo", n_frames=20, width=64, height=48)
    out = tmp_path_factory.mktemp("fuzz") / "small.zarr"
    frames = [(np.zeros((48, 64, 3), np.uint8), float(t)) for t in seq.timestamps]
    pred = SimulatedPredictor(seq, depth_hw=(12, 16), params=SimParams(), seed=0)
    reconstruct(frames, out, predictor=pred, config={"chunk_size": 8, "overlap": 2, "keyframes.enabled": False,
                                                     "loop.enabled": True, "loop.exclude_seconds": 0.1})
    return out


def _read_everything(path):
    from da3stream.io.store import RunStore

    st_ = RunStore.open(path, "r")
    st_.frames_table(descriptors=True)
    st_.chunks_table()
    st_.source_table()
    st_.loop_edges(accepted_only=False)
    st_.read_state()
    list(st_.iter_map_points())
    if st_.n_frames:
        st_.depth(st_.n_frames - 1)
    _ = (st_.status, st_.config, st_.source, st_.image_hw, st_.depth_hw)


def _json_paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _json_paths(v, prefix + (k,))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _json_paths(v, prefix + (i,))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=5,
)


def _mutate(doc, path, new, delete: bool):
    if not path:
        return new
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return doc


@budget(80)
@given(data=st.data())
def test_store_reader_on_corrupted_metadata(small_store, data):
    """A random attribute of the root zarr.json (or of one array's zarr.json) replaced, deleted, or the file cut or
    overwritten with random bytes: opening and reading the store raises StoreError or works; nothing else."""
    meta_files = [small_store / "zarr.json"] + sorted(p for p in small_store.rglob("zarr.json") if p.parent != small_store)
    target = data.draw(st.sampled_from(meta_files[:1] * 4 + meta_files[1:]), label="file")
    raw = target.read_bytes()
    how = data.draw(st.sampled_from(["replace", "delete", "cut", "bytes"]), label="how")
    if how in ("replace", "delete"):
        doc = json.loads(raw)
        where = data.draw(st.sampled_from(list(_json_paths(doc))), label="path")
        damaged = json.dumps(_mutate(doc, where, data.draw(json_values, label="value"), how == "delete")).encode()
    elif how == "cut":
        damaged = raw[: data.draw(st.integers(0, len(raw) - 1), label="cut at")]
    else:
        pos = data.draw(st.integers(0, len(raw) - 1), label="at")
        junk = data.draw(st.binary(min_size=1, max_size=8), label="junk")
        damaged = raw[:pos] + junk + raw[pos + len(junk):]
    target.write_bytes(damaged)
    try:
        _read_everything(small_store)
    except StoreError as exc:
        assert str(exc) and "\n" not in str(exc)
    finally:
        target.write_bytes(raw)  # the next example starts from the intact store


def test_store_reader_reads_the_intact_store(small_store):
    _read_everything(small_store)


@pytest.mark.parametrize("where, value", [
    (("arrays",), {}),
    (("arrays", "source/kept"), "0"),
    (("arrays", "source/index", "counter"), None),
    (("arrays", "source/index", "counter"), []),
    (("arrays", "frames/chunk_from_cam", "counter"), "<delete>"),
    (("commit", "n_frames"), "12"),
    (("commit", "n_chunks"), -1),
    (("commit", "pose_slot"), 2),
    (("commit", "state", "names"), [1]),
    (("depth_hw",), [0, 16]),
    (("config",), []),
])
def test_store_reader_regressions(small_store, where, value):
    """Corruptions the long fuzz run found (each used to escape as KeyError, TypeError or ValueError)."""
    target = small_store / "zarr.json"
    raw = target.read_bytes()
    doc = json.loads(raw)
    doc = _mutate(doc, ("attributes",) + where, value, value == "<delete>")
    target.write_text(json.dumps(doc))
    try:
        with pytest.raises(StoreError, match="store metadata is corrupt"):
            _read_everything(small_store)
    finally:
        target.write_bytes(raw)


def test_damaged_resume_state_shape_is_an_error_not_a_hang(small_store):
    """Found by the long fuzz run: a state array whose zarr.json claims 33 million rows made read_state() hang."""
    from da3stream.io.store import RunStore

    slot = RunStore.open(small_store).committed["state"]["slot"]
    target = small_store / "state" / str(slot) / "carry_indices" / "zarr.json"
    raw = target.read_bytes()
    doc = json.loads(raw)
    doc["shape"] = [33083733]
    target.write_text(json.dumps(doc))
    try:
        with pytest.raises(StoreError, match="resume state is missing or corrupt"):
            RunStore.open(small_store).read_state()
    finally:
        target.write_bytes(raw)
