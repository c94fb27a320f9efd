"""Known intrinsics: parsing, every YAML layout, scaling, undistortion, source integration, errors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from da3stream.errors import ConfigError, ShapeError
from da3stream.io.sources.calibration import (
    Calibration,
    Undistorter,
    calibration_from_arg,
    frame_intrinsics,
    load_calibration,
    parse_intrinsics,
)
from da3stream.io.sources import open_source

K_REF = np.array([[300.0, 0.0, 161.5], [0.0, 305.0, 118.25], [0.0, 0.0, 1.0]])
DIST_REF = np.array([-0.28, 0.09, 0.0012, -0.0008, -0.01])


# --------------------------------------------------------------------------- parsing


def test_parse_four_values():
    c = parse_intrinsics("300, 305,161.5,118.25")
    np.testing.assert_array_equal(c.K, K_REF)
    assert c.dist.shape == (0,) and c.model == "pinhole" and c.image_hw is None and not c.has_distortion
    assert c.K.dtype == np.float64


@pytest.mark.parametrize("n_dist", [4, 5, 8])
def test_parse_with_distortion(n_dist):
    dist = np.arange(1, n_dist + 1) * 0.01
    c = parse_intrinsics(",".join(repr(float(v)) for v in [300.0, 305.0, 161.5, 118.25, *dist]))
    np.testing.assert_array_equal(c.dist, dist)
    assert c.has_distortion


@pytest.mark.parametrize("text, match", [
    ("300,305,160", "got 3"),
    ("300,305,160,120,0.1", "got 5"),
    ("300,305,160,120,0.1,0.1,0.1,0.1,0.1,0.1", "got 10"),
    ("300,abc,160,120", "comma-separated numbers"),
    ("0,305,160,120", "focal lengths must be positive"),
    ("300,-1,160,120", "focal lengths must be positive"),
    ("300,305,nan,120", "finite"),
])
def test_parse_errors_are_one_line_and_name_the_text(text, match):
    with pytest.raises(ConfigError, match=match) as info:
        parse_intrinsics(text)
    assert "\n" not in str(info.value) and repr(text) in str(info.value)


def test_calibration_is_immutable():
    c = parse_intrinsics("300,305,160,120")
    with pytest.raises(ValueError):
        c.K[0, 0] = 1.0
    with pytest.raises(AttributeError):
        c.model = "fisheye"


# --------------------------------------------------------------------------- YAML layouts

OPENCV_YAML = """%YAML:1.0
---
calibration_time: "Mon Jan  1 00:00:00 2024"
image_width: 640
image_height: 480
camera_matrix: !!opencv-matrix
   rows: 3
   cols: 3
   dt: d
   data: [ 600., 0., 323., 0., 610., 236.5, 0., 0., 1. ]
distortion_coefficients: !!opencv-matrix
   rows: 1
   cols: 5
   dt: d
   data: [ -0.28, 0.09, 1.2e-03, -8.0e-04, -0.01 ]
avg_reprojection_error: 0.21
"""

ROS_YAML = """image_width: 640
image_height: 480
camera_name: narrow_stereo
camera_matrix:
  rows: 3
  cols: 3
  data: [600.0, 0.0, 323.0, 0.0, 610.0, 236.5, 0.0, 0.0, 1.0]
distortion_model: plumb_bob
distortion_coefficients:
  rows: 1
  cols: 5
  data: [-0.28, 0.09, 0.0012, -0.0008, -0.01]
rectification_matrix:
  rows: 3
  cols: 3
  data: [1, 0, 0, 0, 1, 0, 0, 0, 1]
projection_matrix:
  rows: 3
  cols: 4
  data: [600, 0, 323, 0, 0, 610, 236.5, 0, 0, 0, 1, 0]
"""

PLAIN_YAML = """fx: 600
fy: 610.0
cx: 323
cy: 236.5
dist: [-0.28, 0.09, 0.0012, -0.0008, -0.01]
width: 640
height: 480
model: pinhole
"""

KALIBR_YAML = """cam0:
  camera_model: pinhole
  intrinsics: [600.0, 610.0, 323.0, 236.5]
  distortion_model: radtan
  distortion_coeffs: [-0.28, 0.09, 0.0012, -0.0008]
  resolution: [640, 480]
  rostopic: /cam0/image_raw
cam1:
  camera_model: pinhole
  intrinsics: [1.0, 1.0, 1.0, 1.0]
  resolution: [640, 480]
"""

K_640 = np.array([[600.0, 0.0, 323.0], [0.0, 610.0, 236.5], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("text, n_dist", [(OPENCV_YAML, 5), (ROS_YAML, 5), (PLAIN_YAML, 5), (KALIBR_YAML, 4)],
                         ids=["opencv", "ros", "plain", "kalibr"])
def test_load_layouts(tmp_path, text, n_dist):
    path = tmp_path / "calib.yaml"
    path.write_text(text)
    c = load_calibration(path)
    np.testing.assert_array_equal(c.K, K_640)
    np.testing.assert_array_equal(c.dist, DIST_REF[:n_dist])
    assert c.model == "pinhole" and c.image_hw == (480, 640) and c.origin == str(path)


def test_load_a_file_written_by_cv2_filestorage(tmp_path):
    path = tmp_path / "cv.yaml"
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    fs.write("image_width", 640)
    fs.write("image_height", 480)
    fs.write("camera_matrix", K_640)
    fs.write("distortion_coefficients", DIST_REF[None])
    fs.release()
    assert path.read_text().startswith("%YAML:1.0")
    c = load_calibration(path)
    np.testing.assert_array_equal(c.K, K_640)
    np.testing.assert_array_equal(c.dist, DIST_REF)
    assert c.image_hw == (480, 640)


@pytest.mark.parametrize("text", [
    ROS_YAML.replace("plumb_bob", "equidistant").replace("-0.01]", "").replace("-0.0008,", "-0.0008]").replace("cols: 5", "cols: 4"),
    PLAIN_YAML.replace("model: pinhole", "model: fisheye").replace(", -0.01]", "]"),
    KALIBR_YAML.replace("radtan", "equidistant"),
], ids=["ros", "plain", "kalibr"])
def test_load_fisheye_layouts(tmp_path, text):
    path = tmp_path / "fish.yaml"
    path.write_text(text)
    c = load_calibration(path)
    assert c.model == "fisheye" and c.dist.shape == (4,)


def test_ros_rational_polynomial(tmp_path):
    text = ROS_YAML.replace("plumb_bob", "rational_polynomial").replace("cols: 5", "cols: 8").replace(
        "-0.01]", "-0.01, 0.001, 0.0, 0.0]")
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_calibration(path).dist.shape == (8,)


def test_plain_without_size_or_dist(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("fx: 300\nfy: 305\ncx: 161.5\ncy: 118.25\n")
    c = load_calibration(path)
    np.testing.assert_array_equal(c.K, K_REF)
    assert c.image_hw is None and c.dist.size == 0


@pytest.mark.parametrize("text, match", [
    ("fx: 600\nfy: 610\ncx: [323\n", "malformed YAML at line"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("foo: 1\nbar: 2\n", "unknown calibration layout"),
    ("fx: 600\nfy: 610\ncx: 320\n", "unknown calibration layout"),
    ("fx: 0\nfy: 610\ncx: 320\ncy: 240\n", "focal lengths must be positive"),
    ("fx: 600\nfy: 610\ncx: 320\ncy: two\n", "cy must be a number"),
    ("fx: 600\nfy: 610\ncx: 320\ncy: 240\ndist: [0.1, 0.2, 0.3]\n", "takes 4, 5, 8, 12, 14 distortion coefficients, got 3"),
    ("fx: 600\nfy: 610\ncx: 320\ncy: 240\nmodel: fisheye\ndist: [0.1, 0.2, 0.3, 0.1, 0.0]\n", "fisheye model takes 4"),
    ("fx: 600\nfy: 610\ncx: 320\ncy: 240\nmodel: omni\n", "model must be pinhole or fisheye"),
    ("fx: 600\nfy: 610\ncx: 320\ncy: 240\nwidth: 640\n", "width and height must both be positive integers"),
    ("camera_matrix:\n  rows: 3\n  cols: 3\n  data: [1, 0, 0, 0, 1, 0, 0, 0]\n", "declares 3x3 values but has 8"),
    ("camera_matrix: [600, 0, 320, 0, 610, 240]\n", "must have 9 values"),
    ("camera_matrix:\n  rows: 3\n  cols: 3\n", "has no 'data' list"),
    ("camera_matrix: [600, 0, 320, 0, 610, 240, 0, 0, 1]\ndistortion_model: weird\n", "unsupported distortion model 'weird'"),
    ("camera_matrix: [600, 0, 320, 0, 610, 240, 0, 0, 2]\n", "must have the form"),
    ("cam0:\n  camera_model: omni\n  intrinsics: [1, 600, 610, 320, 240]\n", "unsupported Kalibr camera_model"),
    ("cam0:\n  camera_model: pinhole\n", "has no 'intrinsics'"),
])
def test_load_errors_name_the_file(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_calibration(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="calibration file not found"):
        load_calibration(tmp_path / "nope.yaml")


def test_calibration_from_arg(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(PLAIN_YAML)
    assert calibration_from_arg(None) is None
    assert calibration_from_arg(str(path)).image_hw == (480, 640)
    assert calibration_from_arg(path).image_hw == (480, 640)
    np.testing.assert_array_equal(calibration_from_arg("300,305,161.5,118.25").K, K_REF)
    c = parse_intrinsics("1,1,1,1")
    assert calibration_from_arg(c) is c
    with pytest.raises(ConfigError, match="calibration file not found"):
        calibration_from_arg(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="neither a calibration file nor"):
        calibration_from_arg("hello")
    with pytest.raises(ConfigError, match="expected a path"):
        calibration_from_arg(3.0)


# --------------------------------------------------------------------------- scaling


def test_scaling_to_another_resolution_of_the_same_aspect():
    c = Calibration(K_640, DIST_REF, "pinhole", (480, 640), "c.yaml")
    half = c.for_size((240, 320))
    np.testing.assert_allclose(half.K, [[300.0, 0.0, 161.5], [0.0, 305.0, 118.25], [0.0, 0.0, 1.0]], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(half.dist, c.dist)
    assert half.image_hw == (240, 320)
    assert c.for_size((480, 640)) is c
    # unknown calibration size: taken as is
    free = parse_intrinsics("300,305,161.5,118.25")
    assert free.for_size((1000, 2000)) is free


def test_scaled_undistortion_matches_undistorting_at_full_size_then_resizing():
    """A point undistorted with scaled intrinsics lands at the scaled position of its full-size result."""
    c = Calibration(K_640, DIST_REF, "pinhole", (480, 640), "c.yaml")
    full = Undistorter(c, (480, 640), alpha=None)
    half = Undistorter(c, (240, 320), alpha=None)
    uv = np.array([[30.0, 40.0], [600.0, 20.0], [320.0, 240.0], [10.0, 470.0]])
    np.testing.assert_allclose(half.undistort_points(uv / 2), full.undistort_points(uv) / 2, atol=1e-6)


def test_scaling_with_another_aspect_is_an_error():
    c = Calibration(K_640, DIST_REF, "pinhole", (480, 640), "cam.yaml")
    with pytest.raises(ConfigError, match=r"^cam\.yaml: calibration is for 640x480 images but the frames are 640x360"):
        c.for_size((360, 640))
    with pytest.raises(ConfigError, match="different aspect ratio"):
        Undistorter(c, (360, 640))


def test_principal_point_outside_the_frame_is_an_error():
    c = parse_intrinsics("600,600,1280,720")  # for 2560x1440, used on 640x360
    with pytest.raises(ConfigError, match="principal point .* outside the 640x360 frames"):
        Undistorter(c, (360, 640))


# --------------------------------------------------------------------------- undistortion


def _grid_norm(nx=9, ny=7, span=(0.42, 0.32)):
    """Normalised image-plane points (x/z, y/z) of a planar grid seen head-on: (ny, nx, 2)."""
    xs = np.linspace(-span[0], span[0], nx)
    ys = np.linspace(-span[1], span[1], ny)
    return np.stack(np.meshgrid(xs, ys), -1)


def _project(norm, K, dist, model):
    """Distorted pixel positions of normalised points through cv2's projectPoints."""
    pts3 = np.concatenate([norm.reshape(-1, 2), np.ones((norm[..., 0].size, 1))], 1).reshape(-1, 1, 3)
    if model == "fisheye":
        uv, _ = cv2.fisheye.projectPoints(pts3, np.zeros((3, 1)), np.zeros((3, 1)), K, dist)
    else:
        uv, _ = cv2.projectPoints(pts3, np.zeros(3), np.zeros(3), K, dist)
    return uv.reshape(norm.shape)


def _render_dots(uv, hw, sigma=1.2):
    """An RGB image with a Gaussian dot at each (sub-pixel) position."""
    H, W = hw
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    img = np.zeros((H, W))
    for u, v in uv.reshape(-1, 2):
        img += np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * sigma * sigma))
    img = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return np.repeat(img[:, :, None], 3, axis=2)


def _dot_centres(image, expected):
    """Intensity-weighted centroid of the dot nearest each expected position (window of +-4 px)."""
    g = image[:, :, 0].astype(np.float64)
    out = []
    for u, v in expected.reshape(-1, 2):
        u0, v0 = int(round(u)), int(round(v))
        win = g[v0 - 4 : v0 + 5, u0 - 4 : u0 + 5]
        yy, xx = np.mgrid[v0 - 4 : v0 + 5, u0 - 4 : u0 + 5]
        w = np.clip(win - 20.0, 0, None)
        out.append([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])
    return np.array(out).reshape(expected.shape)


def _row_straightness(points):
    """Largest distance (px) of a grid row's points from the row's least-squares line, over all rows."""
    worst = 0.0
    for row in points:
        c = row - row.mean(0)
        _, _, vt = np.linalg.svd(c)
        worst = max(worst, float(np.abs(c @ vt[1]).max()))
    return worst


@pytest.mark.parametrize("model, dist", [
    ("pinhole", DIST_REF),
    ("fisheye", np.array([0.08, -0.02, 0.004, -0.001])),
])
@pytest.mark.parametrize("alpha", [0.0, None])
def test_undistort_puts_distorted_grid_points_back_on_the_pinhole_grid(model, dist, alpha):
    hw = (240, 320)
    K = K_REF if model == "pinhole" else np.array([[200.0, 0.0, 160.5], [0.0, 202.0, 119.5], [0.0, 0.0, 1.0]])
    norm = _grid_norm(span=(0.42, 0.32) if model == "pinhole" else (0.6, 0.45))
    uv_dist = _project(norm, K, dist, model)
    image = _render_dots(uv_dist, hw)
    und = Undistorter(Calibration(K, dist, model, hw, "test"), hw, alpha=alpha)
    assert not und.is_identity
    out = und.undistort(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    # where an ideal pinhole camera with K_new sees each grid point
    expected = np.einsum("ij,...j->...i", und.K_new, np.concatenate([norm, np.ones(norm.shape[:-1] + (1,))], -1))[..., :2]
    inside = (expected[..., 0] > 6) & (expected[..., 0] < hw[1] - 7) & (expected[..., 1] > 6) & (expected[..., 1] < hw[0] - 7)
    assert inside.mean() > 0.6
    found = _dot_centres(out, expected)
    err = np.linalg.norm(found - expected, axis=-1)[inside]
    assert err.max() < 0.25, err.max()
    # the distortion was real: before undistortion the rows are bent, afterwards straight
    full_rows = inside.all(axis=1)
    assert full_rows.sum() >= 3
    assert _row_straightness(uv_dist[full_rows]) > 1.5
    assert _row_straightness(found[full_rows]) < 0.25
    # undistort_points agrees with the image remap
    np.testing.assert_allclose(und.undistort_points(uv_dist.reshape(-1, 2)), expected.reshape(-1, 2), atol=1e-3)


def test_alpha_zero_leaves_no_black_border():
    hw = (240, 320)
    und = Undistorter(Calibration(K_REF, DIST_REF, "pinhole", hw, "t"), hw, alpha=0.0)
    out = und.undistort(np.full(hw + (3,), 200, np.uint8))
    assert out[1:-1, 1:-1].min() == 200
    keep = Undistorter(Calibration(K_REF, DIST_REF, "pinhole", hw, "t"), hw, alpha=None)
    np.testing.assert_array_equal(keep.K_new, K_REF)
    everything = Undistorter(Calibration(K_REF, DIST_REF, "pinhole", hw, "t"), hw, alpha=1.0)
    assert everything.undistort(np.full(hw + (3,), 200, np.uint8)).min() == 0  # every source pixel kept: black corners


def test_no_distortion_is_identity():
    und = Undistorter(parse_intrinsics("300,305,161.5,118.25"), (240, 320))
    img = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    assert und.is_identity and und.undistort(img) is img
    np.testing.assert_array_equal(und.K_new, K_REF)


def test_undistort_checks_the_image_shape():
    und = Undistorter(Calibration(K_REF, DIST_REF, "pinhole", (240, 320), "t"), (240, 320))
    with pytest.raises(ShapeError, match=r"expected an image of shape \(240, 320"):
        und.undistort(np.zeros((120, 160, 3), np.uint8))
    with pytest.raises(ConfigError, match="alpha"):
        Undistorter(Calibration(K_REF, DIST_REF, "pinhole", (240, 320), "t"), (240, 320), alpha=2.0)


def test_frame_intrinsics_follow_the_resize_convention():
    K = frame_intrinsics(K_REF, (240, 320), (120, 160))
    np.testing.assert_allclose(K, [[150.0, 0, 80.75], [0, 152.5, 59.125], [0, 0, 1]])


# --------------------------------------------------------------------------- source integration


def test_open_source_undistorts_every_frame_and_records_the_calibration(tmp_path):
    hw = (240, 320)
    uv = _project(_grid_norm(), K_REF, DIST_REF, "pinhole")
    frames = [_render_dots(uv + np.array([0.3 * i, 0.0]), hw) for i in range(3)]
    calib = Calibration(K_REF, DIST_REF, "pinhole", hw, "cam.yaml")
    ref = Undistorter(calib, hw)
    with open_source(frames, calibration=calib, prefetch=2) as src:
        got = list(src)
        desc = src.describe()
        np.testing.assert_array_equal(src.intrinsics, ref.K_new)
    for f, raw in zip(got, frames):
        np.testing.assert_array_equal(f.image, ref.undistort(raw))
    assert desc["undistorted"] is True
    assert desc["calibration"]["K"] == K_REF.tolist() and desc["calibration"]["dist"] == DIST_REF.tolist()
    assert desc["calibration"]["model"] == "pinhole" and desc["intrinsics"] == ref.K_new.tolist()
    with open_source(frames) as plain:
        assert plain.describe()["undistorted"] is False and plain.intrinsics is None


def test_open_source_undistorts_before_max_side_and_scales_intrinsics(tmp_path):
    hw = (240, 320)
    frames = [_render_dots(_project(_grid_norm(), K_REF, DIST_REF, "pinhole"), hw)] * 2
    calib = Calibration(K_REF * np.array([[2, 2, 2], [2, 2, 2], [1, 1, 1]]), DIST_REF, "pinhole", (480, 640), "cam.yaml")
    with open_source(frames, calibration=calib, max_side=160, prefetch=0) as src:
        got = list(src)
        K_out = src.intrinsics
    ref = Undistorter(calib, hw)
    want = cv2.resize(ref.undistort(frames[0]), (160, 120), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(got[0].image, want)
    np.testing.assert_allclose(K_out, np.diag([0.5, 0.5, 1.0]) @ ref.K_new)


def test_open_source_accepts_text_and_files_and_rejects_mismatched_calibration(tmp_path):
    frames = [np.zeros((240, 320, 3), np.uint8)] * 2
    with open_source(frames, calibration="300,305,161.5,118.25") as src:
        np.testing.assert_array_equal(src.intrinsics, K_REF)
    path = tmp_path / "wide.yaml"
    path.write_text(PLAIN_YAML.replace("height: 480", "height: 360"))
    with pytest.raises(ConfigError, match=r"wide\.yaml: calibration is for 640x360 images but the frames are 320x240"):
        open_source(frames, calibration=str(path))
