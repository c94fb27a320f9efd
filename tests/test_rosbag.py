"""Robot logs as sources: ROS 1 bags, ROS 2 bags (sqlite3 and mcap storage), MCAP files.

Every bag here is written by the ``rosbags`` writers with messages built from
its typestores, then read back through :func:`open_source`.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from da3stream.errors import ConfigError, SourceError
from da3stream.io.sources import rosbag as rb
from da3stream.io.sources import open_source

pytest.importorskip("rosbags")

from rosbags.rosbag1 import Writer as Writer1  # noqa: E402
from rosbags.rosbag2 import StoragePlugin  # noqa: E402
from rosbags.rosbag2 import Writer as Writer2  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

T0_NS = 1_700_000_123_456_789_012
"""An absolute epoch stamp (ns) whose float64 seconds would lose the nanoseconds."""
FORMATS = ["ros1", "ros2-sqlite3", "ros2-mcap", "mcap-file"]


# --------------------------------------------------------------------------- bag writing helpers


def textured_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Distinct smooth RGB frames (a panning texture with a colour tint)."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (h // 4 + n, w // 4 + n, 3), dtype=np.uint8), None, fx=4, fy=4,
                      interpolation=cv2.INTER_LINEAR)
    return [np.ascontiguousarray(base[2 * i : 2 * i + h, 3 * i : 3 * i + w]) for i in range(n)]


def encode_raw(rgb: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> tuple[bytes, int]:
    """RGB uint8 -> (data, step) of a sensor_msgs/Image with ``encoding`` and ``pad`` bytes per row."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    pixels = {
        "rgb8": rgb, "bgr8": rgb[:, :, ::-1], "8UC3": rgb[:, :, ::-1],
        "rgba8": np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)]),
        "bgra8": np.dstack([rgb[:, :, ::-1], np.full(rgb.shape[:2], 7, np.uint8)]),
        "mono8": gray, "8UC1": gray,
        "mono16": gray.astype(np.uint16) * 257, "16UC1": gray.astype(np.uint16) * 257,
    }[encoding]
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    if pad:
        rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return rows.tobytes(), rows.shape[1]


class BagWriter:
    """Writes topics of Image / CompressedImage / CameraInfo / other messages in one of FORMATS."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.fmt = fmt
        self.ros1 = fmt == "ros1"
        self.ts = get_typestore(Stores.ROS1_NOETIC if self.ros1 else Stores.ROS2_HUMBLE)
        if self.ros1:
            self.path = path.with_suffix(".bag")
            self.writer = Writer1(self.path)
        else:
            self.path = path
            plugin = StoragePlugin.SQLITE3 if fmt == "ros2-sqlite3" else StoragePlugin.MCAP
            self.writer = Writer2(path, version=9, storage_plugin=plugin)
        self.writer.open()
        self.conns: dict[str, object] = {}
        self.seq = 0

    def _conn(self, topic: str, msgtype: str):
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        return self.conns[topic]

    def header(self, stamp_ns: int):
        T = self.ts.types
        stamp = T["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
        self.seq += 1
        if self.ros1:
            return T["std_msgs/msg/Header"](seq=self.seq, stamp=stamp, frame_id="cam")
        return T["std_msgs/msg/Header"](stamp=stamp, frame_id="cam")

    def write(self, topic: str, msgtype: str, msg, bag_ns: int) -> None:
        data = self.ts.serialize_ros1(msg, msgtype) if self.ros1 else self.ts.serialize_cdr(msg, msgtype)
        self.writer.write(self._conn(topic, msgtype), bag_ns, data)

    def image(self, topic: str, rgb: np.ndarray, stamp_ns: int, bag_ns=None, encoding="rgb8", pad=0, bigendian=False,
              data=None, step=None):
        if data is None:
            data, step = encode_raw(rgb, encoding, pad, bigendian)
        msg = self.ts.types["sensor_msgs/msg/Image"](
            header=self.header(stamp_ns), height=rgb.shape[0], width=rgb.shape[1], encoding=encoding,
            is_bigendian=int(bigendian), step=step, data=np.frombuffer(data, np.uint8))
        self.write(topic, "sensor_msgs/msg/Image", msg, stamp_ns + 5_000_000 if bag_ns is None else bag_ns)

    def compressed(self, topic: str, rgb: np.ndarray, stamp_ns: int, fmt="png", data=None):
        if data is None:
            ok, buf = cv2.imencode("." + fmt, rgb[:, :, ::-1])
            assert ok
            data = buf.tobytes()
        msg = self.ts.types["sensor_msgs/msg/CompressedImage"](
            header=self.header(stamp_ns), format=fmt, data=np.frombuffer(data, np.uint8))
        self.write(topic, "sensor_msgs/msg/CompressedImage", msg, stamp_ns + 5_000_000)

    def camera_info(self, topic: str, K: np.ndarray, D: np.ndarray, hw, stamp_ns: int, model="plumb_bob"):
        T = self.ts.types
        kw = dict(header=self.header(stamp_ns), height=hw[0], width=hw[1], distortion_model=model,
                  binning_x=0, binning_y=0, roi=T["sensor_msgs/msg/RegionOfInterest"](
                      x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
        arrays = {"d": np.asarray(D, np.float64), "k": K.reshape(-1).astype(np.float64),
                  "r": np.eye(3).reshape(-1), "p": np.zeros(12)}
        for k, v in arrays.items():
            kw[k.upper() if self.ros1 else k] = v
        self.write(topic, "sensor_msgs/msg/CameraInfo", T["sensor_msgs/msg/CameraInfo"](**kw), stamp_ns)

    def string(self, topic: str, text: str, stamp_ns: int):
        self.write(topic, "std_msgs/msg/String", self.ts.types["std_msgs/msg/String"](data=text), stamp_ns)

    def close(self) -> Path:
        self.writer.close()
        if self.fmt == "mcap-file":
            return next(self.path.glob("*.mcap"))
        return self.path


def stamps(n: int, seed: int = 3) -> list[int]:
    """Irregular increasing header stamps (ns) from T0_NS, ~30 Hz."""
    rng = np.random.default_rng(seed)
    return [T0_NS + int(v) for v in np.cumsum(np.r_[0, rng.integers(25_000_000, 41_000_000, n - 1)])]


def collect(src):
    with src:
        return list(src)


# --------------------------------------------------------------------------- reading frames


@pytest.mark.parametrize("fmt", FORMATS)
def test_raw_image_topic_round_trips_frames_indices_and_header_stamps(tmp_path, fmt):
    frames = textured_frames(6)
    ts = stamps(6)
    w = BagWriter(tmp_path / "run", fmt)
    for i, (img, t) in enumerate(zip(frames, ts)):
        w.image("/cam/image_raw", img, t)
        w.string("/log", f"message {i}", t)
    path = w.close()
    assert rb.is_bag_path(path)
    src = open_source(path, prefetch=2)
    got = collect(src)
    assert [f.index for f in got] == list(range(6))
    assert [f.timestamp for f in got] == [(t - ts[0]) / 1e9 for t in ts]
    for f, want in zip(got, frames):
        np.testing.assert_array_equal(f.image, want)
    d = src.describe()
    assert d["kind"] == "rosbag" and d["topic"] == "/cam/image_raw" and d["msgtype"] == "sensor_msgs/msg/Image"
    assert d["n_frames"] == 6 and d["first_stamp_ns"] == T0_NS and d["time_source"] == "header"
    assert d["encoding"] == "rgb8" and (d["width"], d["height"]) == (64, 48) and d["undistorted"] is False
    assert d["format"] == {"ros1": "ros1", "ros2-sqlite3": "ros2", "ros2-mcap": "ros2", "mcap-file": "mcap"}[fmt]
    assert src.time_origin == T0_NS / 1e9


@pytest.mark.parametrize("fmt", ["ros1", "ros2-mcap"])
def test_compressed_png_and_jpeg_topics(tmp_path, fmt):
    frames = textured_frames(4)
    ts = stamps(4)
    w = BagWriter(tmp_path / "c", fmt)
    for img, t in zip(frames, ts):
        w.compressed("/cam/png", img, t, "png")
        w.compressed("/cam/jpeg", img, t, "jpeg")
    path = w.close()
    png = collect(open_source(path, topic="/cam/png", prefetch=0))
    for f, want in zip(png, frames):
        np.testing.assert_array_equal(f.image, want)
    jpg = collect(open_source(path, topic="/cam/jpeg"))
    assert [f.timestamp for f in jpg] == [(t - ts[0]) / 1e9 for t in ts]
    for f, want in zip(jpg, frames):
        assert f.image.shape == want.shape
        assert np.abs(f.image.astype(int) - want).mean() < 8.0  # lossy, same picture, right channel order
        assert np.abs(f.image.astype(int) - want[:, :, ::-1]).mean() > np.abs(f.image.astype(int) - want).mean()


@pytest.mark.parametrize("encoding, pad, bigendian", [
    ("rgb8", 0, False), ("bgr8", 0, False), ("rgba8", 0, False), ("bgra8", 0, False),
    ("mono8", 0, False), ("mono16", 0, False), ("16UC1", 0, False), ("8UC3", 0, False), ("8UC1", 0, False),
    ("rgb8", 5, False), ("mono16", 3, True),
])
def test_raw_encodings_decode_to_rgb(encoding, pad, bigendian):
    rgb = textured_frames(1, 30, 40)[0]
    data, step = encode_raw(rgb, encoding, pad, bigendian)
    out = rb.decode_raw(encoding, 30, 40, step, bigendian, np.frombuffer(data, np.uint8), "m")
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]
    if encoding in ("mono8", "8UC1", "mono16", "16UC1"):
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    else:
        np.testing.assert_array_equal(out, rgb)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_demosaic_to_the_right_colours(pattern):
    h, w = 32, 40
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 120, 30  # a flat colour: demosaicing is exact away from borders
    chan = {"r": 0, "g": 1, "b": 2}
    mosaic = np.empty((h, w), np.uint8)
    for dy in range(2):
        for dx in range(2):
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, chan[pattern[2 * dy + dx]]]
    out = rb.decode_raw(f"bayer_{pattern}8", h, w, w, False, mosaic.reshape(-1), "m")
    np.testing.assert_array_equal(out[4:-4, 4:-4], rgb[4:-4, 4:-4])


@pytest.mark.parametrize("encoding", ["32FC1", "yuv422", "bayer_rggb16"])
def test_unsupported_encoding_is_a_one_line_error_naming_it(tmp_path, encoding):
    rgb = textured_frames(1)[0]
    w = BagWriter(tmp_path / "u", "ros2-sqlite3")
    for t in stamps(3):
        w.image("/depth", rgb, t, encoding=encoding, data=bytes(48 * 64 * 4), step=64 * 4)
    path = w.close()
    with pytest.raises(SourceError, match=f"unsupported image encoding '{encoding}'") as info:
        open_source(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value) and "/depth" in str(info.value)


def test_one_bad_message_is_skipped_and_recorded(tmp_path):
    frames = textured_frames(5)
    ts = stamps(5)
    w = BagWriter(tmp_path / "b", "ros1")
    for i, (img, t) in enumerate(zip(frames, ts)):
        if i == 2:
            w.image("/cam", img, t, encoding="yuv422", data=bytes(48 * 64 * 2), step=128)
        elif i == 3:
            w.image("/cam", img, t, data=bytes(100), step=64 * 3)  # truncated pixel data
        else:
            w.image("/cam", img, t)
    src = open_source(w.close())
    got = collect(src)
    assert [f.index for f in got] == [0, 1, 4]
    assert [i for i, _ in src.skipped] == [2, 3]
    assert "unsupported image encoding 'yuv422'" in src.skipped[0][1]
    assert "100 bytes of pixel data" in src.skipped[1][1]


def test_undecodable_compressed_image_is_named(tmp_path):
    w = BagWriter(tmp_path / "h", "ros2-mcap")
    for t in stamps(2):
        w.compressed("/video", textured_frames(1)[0], t, fmt="h264", data=b"\x00\x00\x00\x01garbage")
    with pytest.raises(SourceError, match="cannot decode compressed image of format 'h264'"):
        open_source(w.close())


# --------------------------------------------------------------------------- topics


def test_topic_selection_and_its_errors(tmp_path):
    frames = textured_frames(3)
    ts = stamps(3)
    w = BagWriter(tmp_path / "two", "ros2-sqlite3")
    for img, t in zip(frames, ts):
        w.image("/left/image_raw", img, t)
        w.compressed("/right/image_raw/compressed", img[::-1].copy(), t)
        w.string("/status", "ok", t)
    path = w.close()
    with pytest.raises(SourceError, match="2 image topics; choose one with topic=") as info:
        open_source(path)
    msg = str(info.value)
    assert "/left/image_raw (Image, 3 msgs)" in msg and "/right/image_raw/compressed (CompressedImage, 3 msgs)" in msg
    assert "\n" not in msg and msg.startswith(str(path))
    with pytest.raises(SourceError, match=r"no topic '/nope'; image topics: /left/image_raw"):
        open_source(path, topic="/nope")
    with pytest.raises(SourceError, match=r"topic '/status' is std_msgs/msg/String, not an image topic"):
        open_source(path, topic="/status")
    right = collect(open_source(path, topic="/right/image_raw/compressed"))
    np.testing.assert_array_equal(right[1].image, frames[1][::-1])
    left = collect(open_source(path, topic="/left/image_raw"))
    np.testing.assert_array_equal(left[2].image, frames[2])


def test_bag_without_image_topics(tmp_path):
    w = BagWriter(tmp_path / "none", "ros1")
    w.string("/status", "ok", T0_NS)
    with pytest.raises(SourceError, match=r"no sensor_msgs Image or CompressedImage topic \(topics: /status\)"):
        open_source(w.close())


def test_topic_option_is_rejected_for_other_sources():
    with pytest.raises(ConfigError, match="topic='/cam' applies only to ROS bags"):
        open_source([np.zeros((32, 32, 3), np.uint8)], topic="/cam")


def test_not_a_bag_and_missing_files(tmp_path):
    bad = tmp_path / "garbage.bag"
    bad.write_bytes(b"#ROSBAG V2.0\n" + b"\x00" * 50)
    with pytest.raises(SourceError, match=r"garbage\.bag: not a readable ROS bag") as info:
        open_source(bad)
    assert "\n" not in str(info.value)
    bad_mcap = tmp_path / "x.mcap"
    bad_mcap.write_bytes(b"not an mcap at all")
    with pytest.raises(SourceError, match=r"x\.mcap: not a readable ROS bag"):
        open_source(bad_mcap)
    with pytest.raises(SourceError, match="no such file or folder"):
        open_source(tmp_path / "missing.bag")


def test_ros2_folder_without_metadata_gets_a_hint(tmp_path):
    w = BagWriter(tmp_path / "m", "ros2-sqlite3")
    w.image("/cam", textured_frames(1)[0], T0_NS)
    path = w.close()
    (path / "metadata.yaml").unlink()
    with pytest.raises(SourceError, match=r"ROS 2 bag without metadata\.yaml; pass its storage file \(m\.db3\)"):
        open_source(path)
    assert len(collect(open_source(path / "m.db3"))) == 1


def test_folder_with_an_unrelated_metadata_yaml_is_an_image_folder(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "metadata.yaml").write_text("dataset: mine\n")
    cv2.imwrite(str(folder / "a.png"), textured_frames(1)[0])
    assert not rb.is_bag_path(folder)
    assert open_source(folder).kind == "images"


# --------------------------------------------------------------------------- time and position


def test_start_index_gives_the_same_frames_and_times_as_a_full_read(tmp_path):
    frames = textured_frames(8)
    w = BagWriter(tmp_path / "s", "ros2-mcap")
    for img, t in zip(frames, stamps(8)):
        w.image("/cam", img, t)
    path = w.close()
    full = collect(open_source(path))
    part = collect(open_source(path, start_index=5))
    assert [f.index for f in part] == [5, 6, 7]
    for a, b in zip(part, full[5:]):
        assert a.timestamp == b.timestamp
        np.testing.assert_array_equal(a.image, b.image)
    # subsampling is a pure function of the full sequence
    sub = collect(open_source(path, stride=2, start_index=3))
    assert [f.index for f in sub] == [4, 6]
    by_fps = collect(open_source(path, fps=10.0))
    assert all(b.timestamp - a.timestamp > 0.06 for a, b in zip(by_fps, by_fps[1:]))


def test_header_stamp_going_back_is_skipped_and_bag_order_kept(tmp_path):
    frames = textured_frames(5)
    ts = stamps(5)
    ts_bad = [ts[0], ts[1], ts[2], ts[1] - 1000, ts[4]]  # message 3 claims a time before message 2
    w = BagWriter(tmp_path / "o", "ros1")
    for i, (img, t) in enumerate(zip(frames, ts_bad)):
        w.image("/cam", img, t, bag_ns=ts[i] + 1_000_000)
    src = open_source(w.close())
    got = collect(src)
    assert [f.index for f in got] == [0, 1, 2, 4]
    assert src.skipped[0][0] == 3 and "earlier than the previous" in src.skipped[0][1]
    assert got[-1].timestamp == (ts[4] - ts[0]) / 1e9


def test_zero_header_stamps_fall_back_to_receive_times(tmp_path, caplog):
    frames = textured_frames(3)
    w = BagWriter(tmp_path / "z", "ros2-sqlite3")
    bag_ns = [T0_NS, T0_NS + 50_000_000, T0_NS + 90_000_000]
    for img, b in zip(frames, bag_ns):
        w.image("/cam", img, 0, bag_ns=b)
    src = open_source(w.close())
    got = collect(src)
    assert [f.timestamp for f in got] == [0.0, 0.05, 0.09]
    assert src.describe()["time_source"] == "bag" and src.describe()["first_stamp_ns"] == T0_NS
    assert "zero header stamp" in caplog.text


def test_leaving_a_pass_early_stops_reading(tmp_path):
    w = BagWriter(tmp_path / "e", "ros2-sqlite3")
    for img, t in zip(textured_frames(20), stamps(20)):
        w.image("/cam", img, t)
    path = w.close()
    with open_source(path, prefetch=2) as src:
        for f in src:
            if f.index == 1:
                break
        again = [f.index for f in src]  # a second pass starts from the beginning
    assert again == list(range(20))


# --------------------------------------------------------------------------- calibration from CameraInfo


@pytest.mark.parametrize("fmt", ["ros1", "ros2-sqlite3"])
def test_calibration_from_camera_info(tmp_path, fmt):
    K = np.array([[60.0, 0.0, 32.5], [0.0, 61.0, 24.0], [0.0, 0.0, 1.0]])
    D = np.array([-0.2, 0.05, 0.001, 0.0, 0.0])
    w = BagWriter(tmp_path / "ci", fmt)
    for img, t in zip(textured_frames(2), stamps(2)):
        w.image("/cam/image_raw", img, t)
        w.camera_info("/cam/camera_info", K, D, (48, 64), t)
        w.camera_info("/other/camera_info", np.diag([2.0, 2.0, 1.0]) @ K, D, (96, 128), t)
    path = w.close()
    c = rb.calibration_from_bag(path, image_topic="/cam/image_raw")
    np.testing.assert_array_equal(c.K, K)
    np.testing.assert_array_equal(c.dist, D)
    assert c.model == "pinhole" and c.image_hw == (48, 64) and c.origin.endswith(":/cam/camera_info")
    assert rb.calibration_from_bag(path, topic="/other/camera_info").image_hw == (96, 128)
    with pytest.raises(SourceError, match="cannot choose a CameraInfo topic"):
        rb.calibration_from_bag(path)
    with open_source(path, calibration=c) as src:
        assert src.describe()["undistorted"] is True
        assert len(list(src)) == 2
    with open_source(path, calibration="camera_info", topic="cam/image_raw") as src:  # leading slash optional
        assert src.describe()["topic"] == "/cam/image_raw"
        assert src.describe()["calibration"]["origin"] == f"{path}:/cam/camera_info"
        np.testing.assert_array_equal(src.calibration.K, K)
    with pytest.raises(ConfigError, match="calibration='camera_info' applies only to ROS bags"):
        open_source([np.zeros((32, 32, 3), np.uint8)], calibration="camera_info")


# --------------------------------------------------------------------------- end to end


CONFIG_E2E = {"chunk_size": 14, "overlap": 4, "loop": {"enabled": False}, "keyframes": {"enabled": False}}


@pytest.fixture(scope="module")
def robot_bag(tmp_path_factory):
    """A rendered synthetic walk in a ROS 1 bag (CompressedImage PNG) beside a log topic."""
    from da3stream.synthetic.sequence import make_sequence

    seq = make_sequence("demo", n_frames=36, width=128, height=96)
    images = seq.images()
    stamp_ns = [T0_NS + int(round(t * 1e9)) for t in seq.timestamps]
    w = BagWriter(tmp_path_factory.mktemp("bag") / "robot", "ros1")
    for img, t in zip(images, stamp_ns):
        w.compressed("/camera/color/image_raw/compressed", img, t, "png")
        w.string("/rosout", "tick", t)
    return seq, images, stamp_ns, w.close()


def test_reconstruct_from_a_bag_equals_reconstructing_the_same_frames(tmp_path, robot_bag):
    """A bag run gives the same store as the same frames passed in memory."""
    from da3stream.synthetic.predictor import SimulatedPredictor
    from da3stream.io.store import RunStore
    from da3stream.streaming.pipeline import reconstruct

    seq, images, stamp_ns, bag = robot_bag
    rel = [(t - stamp_ns[0]) / 1e9 for t in stamp_ns]
    summary = reconstruct(bag, tmp_path / "bag.zarr", predictor=SimulatedPredictor(seq, depth_hw=(48, 64)), config=CONFIG_E2E)
    ref = reconstruct(list(zip(images, rel)), tmp_path / "mem.zarr", predictor=SimulatedPredictor(seq, depth_hw=(48, 64)),
                      config=CONFIG_E2E)
    assert summary.status == "complete" and summary.n_frames == 36 and summary.n_chunks == ref.n_chunks
    a, b = RunStore.open(tmp_path / "bag.zarr"), RunStore.open(tmp_path / "mem.zarr")
    try:
        fa, fb = a.frames_table(), b.frames_table()
        np.testing.assert_array_equal(fa["index"], np.arange(36))
        np.testing.assert_array_equal(fa["timestamp"], rel)
        np.testing.assert_array_equal(fa["world_from_cam"], fb["world_from_cam"])
        src = a.source
        assert src["kind"] == "rosbag" and src["topic"] == "/camera/color/image_raw/compressed"
        assert src["first_stamp_ns"] == T0_NS and src["format"] == "ros1" and src["undistorted"] is False
    finally:
        a.close()
        b.close()


def test_reconstruct_from_a_calibrated_bag_source_records_the_calibration(tmp_path, robot_bag):
    from da3stream.synthetic.predictor import SimulatedPredictor
    from da3stream.io.sources.calibration import Calibration
    from da3stream.io.store import RunStore
    from da3stream.streaming.pipeline import reconstruct

    seq, _, _, bag = robot_bag
    K = np.asarray(seq.intrinsics, np.float64) * np.array([[2.0], [2.0], [1.0]])  # calibrated at 256x192
    calib = Calibration(K, np.array([-0.05, 0.01, 0.0, 0.0]), "pinhole", (192, 256), "cam.yaml")
    src = open_source(bag, calibration=calib)
    summary = reconstruct(src, tmp_path / "cal.zarr", predictor=SimulatedPredictor(seq, depth_hw=(48, 64)), config=CONFIG_E2E)
    assert summary.status == "complete" and summary.n_frames == 36
    store = RunStore.open(tmp_path / "cal.zarr")
    try:
        desc = store.source
        assert desc["undistorted"] is True and desc["calibration"]["origin"] == "cam.yaml"
        assert desc["calibration"]["K"] == K.tolist() and desc["calibration"]["model"] == "pinhole"
        np.testing.assert_allclose(desc["intrinsics"], src.intrinsics)
    finally:
        store.close()


@pytest.mark.parametrize("fmt, compression", [("ros1", None), ("ros2-sqlite3", "png"), ("ros2-mcap", None)])
def test_write_image_bag_round_trips(tmp_path, fmt, compression):
    frames = textured_frames(3)
    ts = stamps(3)
    path = rb.write_image_bag(tmp_path / ("w.bag" if fmt == "ros1" else "w"), iter(frames), ts, fmt=fmt,
                              compression=compression)
    got = collect(open_source(path))
    assert [f.timestamp for f in got] == [(t - ts[0]) / 1e9 for t in ts]
    for f, want in zip(got, frames):
        np.testing.assert_array_equal(f.image, want)
    assert rb.list_topics(path)[0].msgtype == ("sensor_msgs/msg/CompressedImage" if compression else "sensor_msgs/msg/Image")
