"""TUM / KITTI trajectory files: conventions pinned, round trips through evo's readers and writers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from da3stream.errors import ExportError
from da3stream.io.export.trajectory import read_kitti, read_tum, write_kitti, write_tum

evo_fi = pytest.importorskip("evo.tools.file_interface", reason="evo is a dev dependency")


def random_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 4, 4) rigid world_from_cam with random rotations and translations."""
    T = np.tile(np.eye(4), (n, 1, 1))
    T[:, :3, :3] = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()
    T[:, :3, 3] = rng.normal(scale=10.0, size=(n, 3))
    return T


def test_tum_line_pins_world_from_cam_and_quat_xyzw(tmp_path):
    # camera rotated +90 deg about world z, centre at (1, 2, 3)
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", 90, degrees=True).as_matrix()
    T[:3, 3] = [1.0, 2.0, 3.0]
    path = tmp_path / "t.txt"
    write_tum(path, np.array([12.5]), T[None])
    line = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")][0]
    vals = np.array([float(v) for v in line.split()])
    s = np.sqrt(0.5)
    np.testing.assert_allclose(vals, [12.5, 1.0, 2.0, 3.0, 0.0, 0.0, s, s], atol=1e-15)


def test_tum_round_trip_exact_and_through_evo(tmp_path, rng):
    T = random_poses(rng, 50)
    ts = 1.7e9 + np.cumsum(rng.uniform(0.01, 0.05, 50))  # epoch-scale stamps keep full float64 precision
    path = tmp_path / "est.txt"
    write_tum(path, ts, T)

    ts2, T2 = read_tum(path)
    np.testing.assert_array_equal(ts2, ts)
    np.testing.assert_array_equal(T2[:, :3, 3], T[:, :3, 3])
    np.testing.assert_allclose(T2, T, atol=1e-14)

    traj = evo_fi.read_tum_trajectory_file(str(path))
    np.testing.assert_array_equal(traj.timestamps, ts)
    np.testing.assert_array_equal(traj.positions_xyz, T[:, :3, 3])
    np.testing.assert_allclose(np.stack(traj.poses_se3), T, atol=1e-14)
    # evo stores quat_wxyz; ours are quat_xyzw with qw >= 0
    quat_xyzw = Rotation.from_matrix(T[:, :3, :3]).as_quat()
    quat_xyzw *= np.sign(quat_xyzw[:, 3:4])
    np.testing.assert_allclose(traj.orientations_quat_wxyz, np.roll(quat_xyzw, 1, axis=1), atol=1e-15)


def test_tum_written_by_evo_reads_back(tmp_path, rng):
    from evo.core.trajectory import PoseTrajectory3D

    T = random_poses(rng, 20)
    ts = np.arange(20) * 0.1
    path = tmp_path / "evo.txt"
    evo_fi.write_tum_trajectory_file(str(path), PoseTrajectory3D(poses_se3=list(T), timestamps=ts))
    ts2, T2 = read_tum(path)
    np.testing.assert_allclose(ts2, ts, atol=1e-9)
    np.testing.assert_allclose(T2, T, atol=1e-9)


def test_kitti_round_trip_exact_and_through_evo(tmp_path, rng):
    T = random_poses(rng, 40)
    path = tmp_path / "poses.txt"
    write_kitti(path, T)
    first = path.read_text().splitlines()[0].split()
    assert len(first) == 12
    np.testing.assert_array_equal(np.array(first, float), T[0, :3, :].reshape(-1))  # row-major 3x4
    np.testing.assert_array_equal(read_kitti(path), T)
    np.testing.assert_array_equal(np.stack(evo_fi.read_kitti_poses_file(str(path)).poses_se3), T)


def test_comments_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# header\n\n0.0 0 0 0 0 0 0 1\n   \n# mid\n1.0 1 0 0 0 0 0 1\n")
    ts, T = read_tum(path)
    np.testing.assert_array_equal(ts, [0.0, 1.0])
    np.testing.assert_array_equal(T[1, :3, 3], [1.0, 0.0, 0.0])


@pytest.mark.parametrize(
    "text, needle",
    [
        ("0 0 0 0 0 0 0 1\n0 0 0 0 0 0 1\n", ":2: expected 8 numbers"),
        ("# c\n0 0 0 0 0 0 0 1\n1 0 0 x 0 0 0 1\n", ":3: not a number"),
        ("0 0 0 0 0 0 0 2\n", ":1: quaternion norm"),
        ("0 0 0 nan 0 0 0 1\n", ":1: NaN or inf"),
    ],
)
def test_tum_errors_name_file_and_line(tmp_path, text, needle):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ExportError) as info:
        read_tum(path)
    assert str(path) in str(info.value) and needle in str(info.value)
    assert "\n" not in str(info.value)


def test_kitti_error_and_missing_file(tmp_path):
    path = tmp_path / "k.txt"
    path.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n1 0 0 0 0 1 0 0 0 0 1\n")
    with pytest.raises(ExportError, match=r"k\.txt:2: expected 12 numbers"):
        read_kitti(path)
    with pytest.raises(ExportError, match="file not found"):
        read_kitti(tmp_path / "missing.txt")


def test_write_rejects_non_rigid_and_bad_shapes(tmp_path, rng):
    T = random_poses(rng, 3)
    T[1, :3, :3] *= 2.0  # a scaled rotation is not a camera pose
    with pytest.raises(ExportError, match="pose 1 is not a rigid transform"):
        write_tum(tmp_path / "a.txt", np.arange(3.0), T)
    with pytest.raises(ExportError, match="pose 1 is not a rigid transform"):
        write_kitti(tmp_path / "a.txt", T)
    from da3stream.errors import ShapeError

    with pytest.raises(ShapeError, match=r"write_tum\(world_from_cam\)"):
        write_tum(tmp_path / "a.txt", np.arange(2.0), random_poses(rng, 3))
    assert not (tmp_path / "a.txt").exists()
