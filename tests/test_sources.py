"""Frame sources: video (PyAV), image folders, iterables; write_video; seeking; subsampling."""

from __future__ import annotations

import json
import logging
import threading
import time

import cv2
import numpy as np
import pytest

from da3stream.errors import ExportError, ShapeError, SourceError
from da3stream.io.sources.images import list_images, natural_key, read_image
from da3stream.io.sources.video import probe_video
from da3stream.io.sources.video_write import write_video
from da3stream.io.sources import Frame, open_source, source_options


def moving_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    """A textured scene panning diagonally: every frame differs, smooth enough for lossy codecs."""
    rng = np.random.default_rng(seed)
    gray = cv2.resize(rng.integers(0, 200, (h // 4 + n, w // 4 + n), dtype=np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    tint = np.stack([xx / xx.max() * 55, yy / yy.max() * 55, (1 - xx / xx.max()) * 55], axis=2)  # smooth colour
    base = (gray[:, :, None] + tint).astype(np.uint8)
    return [np.ascontiguousarray(base[2 * i : 2 * i + h, 3 * i : 3 * i + w]) for i in range(n)]


def write_png_folder(folder, frames, names=None):
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"frame_{i}.png" for i in range(len(frames))]
    for name, image in zip(names, frames):
        ok, buf = cv2.imencode(".png", image[:, :, ::-1])
        assert ok
        buf.tofile(folder / name)
    return folder


def collect(source):
    with source:
        return list(source)


def assert_same_frames(got, want, *, exact_time=True):
    assert [f.index for f in got] == [f.index for f in want]
    for a, b in zip(got, want):
        if exact_time:
            assert a.timestamp == b.timestamp
        else:
            assert a.timestamp == pytest.approx(b.timestamp, abs=1e-3)
        np.testing.assert_array_equal(a.image, b.image)


# --------------------------------------------------------------------------- write_video


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".mov"])
def test_write_video_lossless_round_trip(tmp_path, suffix):
    frames = moving_frames(12)
    path = tmp_path / f"v{suffix}"
    assert write_video(path, frames, 30.0, codec="libx264rgb", crf=0, pix_fmt="rgb24") == 12
    got = collect(open_source(path))
    assert len(got) == 12
    for i, (f, want) in enumerate(zip(got, frames)):
        assert f.index == i
        assert f.timestamp == pytest.approx(i / 30.0, abs=1e-3)
        np.testing.assert_array_equal(f.image, want)


def test_write_video_default_codec_is_yuv420_h264_close_to_input(tmp_path):
    frames = moving_frames(10)
    path = tmp_path / "v.mp4"
    write_video(path, frames, 25.0)
    info = probe_video(path)
    assert (info.codec, info.width, info.height, info.fps, info.n_frames) == ("h264", 64, 48, 25.0, 10)
    got = collect(open_source(path))
    err = np.mean([np.abs(f.image.astype(int) - w).mean() for f, w in zip(got, frames)])
    assert err < 6.0  # lossy, but the same picture
    assert [f.timestamp for f in got] == pytest.approx([i / 25.0 for i in range(10)], abs=1e-9)


def test_write_video_pads_odd_sizes_for_yuv420(tmp_path):
    frames = moving_frames(4, h=37, w=51)
    path = tmp_path / "odd.mp4"
    write_video(path, frames, 10.0, crf=0)
    got = collect(open_source(path))
    assert got[0].image.shape == (38, 52, 3)
    np.testing.assert_allclose(got[0].image[:37, :51].astype(float).mean(), frames[0].astype(float).mean(), atol=2.0)
    # a format without chroma subsampling keeps the size
    write_video(tmp_path / "odd.mkv", frames, 10.0, codec="ffv1", pix_fmt="bgr0")
    np.testing.assert_array_equal(collect(open_source(tmp_path / "odd.mkv"))[0].image, frames[0])


def test_write_video_rejects_bad_input(tmp_path):
    frames = moving_frames(3)
    with pytest.raises(ExportError, match="no frames"):
        write_video(tmp_path / "e.mp4", [], 10.0)
    assert not (tmp_path / "e.mp4").exists()
    with pytest.raises(ShapeError, match="differs from the first"):
        write_video(tmp_path / "s.mp4", [frames[0], frames[1][:20]], 10.0)
    assert not (tmp_path / "s.mp4").exists()
    with pytest.raises(ShapeError, match="dtype"):
        write_video(tmp_path / "d.mp4", [frames[0].astype(np.float32)], 10.0)
    with pytest.raises(ExportError, match="fps"):
        write_video(tmp_path / "f.mp4", frames, 0)
    with pytest.raises(ExportError, match="unknown video codec"):
        write_video(tmp_path / "c.mp4", frames, 10.0, codec="nope")
    with pytest.raises(ExportError, match="crf"):
        write_video(tmp_path / "m.avi", frames, 10.0, codec="mpeg4", crf=3)


# --------------------------------------------------------------------------- image folders


def test_natural_sort_order(tmp_path):
    names = ["frame_10.png", "frame_2.png", "Frame_3.png", "frame_1.png", "frame_100.png", "frame_020.png"]
    write_png_folder(tmp_path / "f", moving_frames(len(names)), names)
    (tmp_path / "f" / "notes.txt").write_text("not an image")
    (tmp_path / "f" / "._frame_0.png").write_bytes(b"resource fork")
    assert [p.name for p in list_images(tmp_path / "f")] == [
        "frame_1.png", "frame_2.png", "Frame_3.png", "frame_10.png", "frame_020.png", "frame_100.png"
    ]
    assert sorted(["a10", "a9", "a09b"], key=natural_key) == ["a9", "a09b", "a10"]


def test_folder_source_frames_indices_timestamps(tmp_path):
    frames = moving_frames(7)
    folder = write_png_folder(tmp_path / "dir with space é", frames)
    src = open_source(folder, source_fps=10.0)
    got = collect(src)
    assert [f.index for f in got] == list(range(7))
    assert [f.timestamp for f in got] == pytest.approx([i / 10.0 for i in range(7)])
    for f, want in zip(got, frames):
        np.testing.assert_array_equal(f.image, want)
    d = src.describe()
    assert (d["kind"], d["n_frames"], d["width"], d["height"], d["fps"]) == ("images", 7, 64, 48, 10.0)
    json.dumps(d)


def test_single_image_file_is_a_one_frame_source(tmp_path, shared_dir):
    src = open_source(shared_dir / "data" / "soh_000.png")
    (frame,) = collect(src)
    assert frame.index == 0 and frame.timestamp == 0.0
    assert src.describe()["kind"] == "image"
    assert frame.image.dtype == np.uint8 and frame.image.shape[2] == 3


def test_image_conversions(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    bgr = rgb[:, :, ::-1]
    cv2.imwrite(str(tmp_path / "gray.png"), rgb[:, :, 0])
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([bgr, np.full((40, 60), 9, np.uint8)]))
    g16 = rng.integers(0, 65536, (40, 60, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), g16)
    cv2.imwrite(str(tmp_path / "c16.tif"), g16)
    cv2.imwrite(str(tmp_path / "x.bmp"), bgr)
    smooth = cv2.resize(rgb[:5, :5], (60, 40), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(tmp_path / "X.JPG"), smooth[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 100])

    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(rgb[:, :, :1], 3, axis=2))
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgb)
    want16 = np.round(g16[:, :, ::-1] / 65535.0 * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), want16)
    np.testing.assert_array_equal(read_image(tmp_path / "c16.tif"), want16)
    np.testing.assert_array_equal(read_image(tmp_path / "x.bmp"), rgb)
    assert np.abs(read_image(tmp_path / "X.JPG").astype(int) - smooth).mean() < 3


def test_cmyk_jpeg_and_exif_orientation(tmp_path):
    PIL_Image = pytest.importorskip("PIL.Image")
    rgb = cv2.resize(np.random.default_rng(4).integers(0, 256, (10, 15, 3), dtype=np.uint8), (60, 40))
    PIL_Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    got = read_image(tmp_path / "cmyk.jpg")
    assert got.shape == (40, 60, 3) and np.abs(got.astype(int) - rgb).mean() < 8
    exif = PIL_Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    PIL_Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    got = read_image(tmp_path / "rot.jpg")
    assert got.shape == (60, 40, 3)
    assert np.abs(got.astype(int) - np.rot90(rgb, k=-1)).mean() < 8


def test_mixed_resolution_policy(tmp_path):
    frames = moving_frames(4)
    names = [f"f{i}.png" for i in range(4)]
    write_png_folder(tmp_path / "m", frames, names)
    big = cv2.resize(frames[1], (128, 96), interpolation=cv2.INTER_NEAREST)  # same aspect, 2x
    cv2.imwrite(str(tmp_path / "m" / "f1.png"), big[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "m" / "f2.png"), frames[2][:, :40, ::-1])  # other aspect
    src = open_source(tmp_path / "m")
    got = collect(src)
    assert [f.index for f in got] == [0, 1, 3]
    assert all(f.image.shape == (48, 64, 3) for f in got)
    np.testing.assert_array_equal(got[1].image, frames[1])  # area-averaging a 2x nearest upscale is exact
    assert [i for i, _ in src.skipped] == [2]
    assert "aspect ratio" in src.skipped[0][1] and "40x48" in src.skipped[0][1]


# --------------------------------------------------------------------------- video == folder


def test_video_and_folder_of_same_content_agree(tmp_path):
    frames = moving_frames(15)
    folder = write_png_folder(tmp_path / "png", frames)
    write_video(tmp_path / "v.mp4", frames, 30.0, codec="libx264rgb", crf=0, pix_fmt="rgb24")
    for opts in ({}, {"stride": 2}, {"fps": 10.0}, {"max_side": 40, "max_frames": 5}, {"start_index": 6, "fps": 12.0}):
        a = collect(open_source(tmp_path / "v.mp4", **opts))
        b = collect(open_source(folder, source_fps=30.0, **opts))
        assert a, opts
        assert_same_frames(a, b, exact_time=False)
    # a lossy encode of the same content: same indices and timestamps, pixels within codec loss
    write_video(tmp_path / "lossy.mkv", frames, 30.0, crf=18)
    a = collect(open_source(tmp_path / "lossy.mkv"))
    b = collect(open_source(folder))
    assert [f.index for f in a] == [f.index for f in b]
    assert [f.timestamp for f in a] == pytest.approx([f.timestamp for f in b], abs=1e-3)
    assert max(np.abs(x.image.astype(int) - y.image).mean() for x, y in zip(a, b)) < 6


# --------------------------------------------------------------------------- seeking / resume


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("gop.mp4", dict(gop=10)),  # x264 with B-frames, keyframe every 10
        ("gop.mkv", dict(gop=7, crf=30)),
        ("gop.avi", dict(codec="mpeg4", gop=12)),
    ],
)
def test_seek_gives_exactly_the_frames_of_a_read_from_the_start(tmp_path, caplog, name, kwargs):
    path = tmp_path / name
    write_video(path, moving_frames(45), 25.0, **kwargs)
    full = collect(open_source(path, prefetch=0))
    assert [f.index for f in full] == list(range(45))
    caplog.set_level(logging.DEBUG, logger="da3stream.io.sources.video")
    for start in (1, 6, 10, 11, 23, 44):
        caplog.clear()
        got = collect(open_source(path, start_index=start))
        assert_same_frames(got, full[start:])
        assert any("seeking to pts" in r.getMessage() for r in caplog.records), start
        assert not any("overshot" in r.getMessage() for r in caplog.records)
    assert collect(open_source(path, start_index=45)) == []
    assert collect(open_source(path, start_index=1000)) == []


def test_resume_with_subsampling_matches_full_read(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, moving_frames(60), 29.97, gop=8)
    for opts in ({"stride": 3}, {"fps": 7.0}, {"fps": 11.0, "stride": 2}, {"fps": 10.0, "max_frames": 9}, {"max_frames": 20}):
        full = collect(open_source(path, **opts))
        for start in (5, 17, 33):
            got = collect(open_source(path, start_index=start, **opts))
            assert_same_frames(got, [f for f in full if f.index >= start])


def test_stride_fps_max_frames_semantics(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, moving_frames(50), 25.0)
    assert [f.index for f in collect(open_source(path, stride=4))] == list(range(0, 50, 4))
    got = collect(open_source(path, fps=10.0))
    # first frame in each 0.1 s bin of a 25 fps stream: indices 0, 3, 5, 8, 10, ...
    assert [f.index for f in got] == [i for i in range(50) if np.floor(i / 25 * 10 + 1e-6) > np.floor((i - 1) / 25 * 10 + 1e-6) or i == 0]
    assert len(got) == 20
    gaps = np.diff([f.timestamp for f in got])
    assert np.all(gaps >= 0.08 - 1e-9) and np.all(gaps <= 0.12 + 1e-9)
    assert len(collect(open_source(path, fps=100.0))) == 50  # above the source rate: every frame
    assert [f.index for f in collect(open_source(path, max_frames=6, stride=2))] == [0, 2, 4, 6, 8, 10]


# --------------------------------------------------------------------------- iterables, max_side, prefetch


def test_iterable_sources():
    frames = moving_frames(6)
    assert [f.index for f in collect(open_source(frames))] == list(range(6))
    got = collect(open_source(np.stack(frames), source_fps=5.0))
    assert [f.timestamp for f in got] == pytest.approx([i / 5.0 for i in range(6)])
    got = collect(open_source([(im, 10.0 + 0.5 * i) for i, im in enumerate(frames)], fps=1.0))
    assert [(f.index, f.timestamp) for f in got] == [(0, 10.0), (2, 11.0), (4, 12.0)]
    got = collect(open_source([Frame(10 * i, 0.1 * i, im) for i, im in enumerate(frames)], start_index=25))
    assert [f.index for f in got] == [30, 40, 50]
    gray = collect(open_source([im[:, :, 0] for im in frames]))
    np.testing.assert_array_equal(gray[2].image, np.repeat(frames[2][:, :, :1], 3, axis=2))

    gen = open_source(im for im in frames)
    assert len(list(gen)) == 6
    with pytest.raises(SourceError, match="only once"):
        list(gen)
    lst = open_source(frames, prefetch=0)
    assert len(list(lst)) == len(list(lst)) == 6  # collections can be read again


def test_max_side_downscales_8k_with_area_averaging():
    h, w = 4320, 7680
    image = np.tile(np.array([[[0], [255]], [[255], [0]]], np.uint8), (h // 2, w // 2, 3))  # 1-px checkerboard
    src = open_source([image], max_side=504)
    (frame,) = collect(src)
    assert frame.image.shape == (284, 504, 3)
    assert src.describe()["output_width"] == 504 and src.describe()["width"] == 7680
    assert np.abs(frame.image.astype(float) - 127.5).max() <= 2.0  # area average of a checkerboard is grey


def test_prefetch_is_bounded_and_stops_on_early_close():
    produced = []

    def slow_frames():
        for i in range(1000):
            produced.append(i)
            yield np.full((32, 32, 3), i % 256, np.uint8)

    src = open_source(slow_frames(), prefetch=4)
    it = iter(src)
    first = next(it)
    assert first.index == 0
    time.sleep(0.3)
    assert len(produced) <= 1 + 4 + 2  # the one consumed, a full queue, one in hand (+ the peeked first)
    it.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("da3stream-prefetch")]
    n = len(produced)
    time.sleep(0.1)
    assert len(produced) == n

    # break out of a for loop over a video: the thread stops too
    with open_source(moving_frames(40), prefetch=2) as src2:
        for f in src2:
            if f.index == 3:
                break
    assert not [t for t in threading.enumerate() if t.name.startswith("da3stream-prefetch")]


def test_thread_exception_reraised_with_the_source_name():
    def broken():
        yield np.zeros((32, 32, 3), np.uint8)
        yield np.zeros((32, 32, 3), np.uint8)
        raise ValueError("camera unplugged\nsecond line")

    src = open_source(broken())
    with pytest.raises(SourceError) as info:
        list(src)
    msg = str(info.value)
    assert "frame iterable" in msg and "ValueError" in msg and "camera unplugged" in msg and "\n" not in msg


def test_source_options_from_config():
    from da3stream.config import load_config

    cfg = load_config({"source": {"stride": 2, "max_side": 300}})
    opts = source_options(cfg.source)
    assert opts["stride"] == 2 and opts["max_side"] == 300 and opts["prefetch"] == 64


# --------------------------------------------------------------------------- the real video


def test_real_video_robot_unitree(shared_dir):
    path = shared_dir / "data" / "robot_unitree.mp4"
    src = open_source(path)
    t0 = time.perf_counter()
    frames = collect(src)
    seconds = time.perf_counter() - t0
    # The header says 175 frames; the first packet is hidden by the file's edit
    # list (FFmpeg and OpenCV also decode 174).
    assert src.describe()["n_frames"] == 175
    assert len(frames) == 174 and not src.skipped
    assert [f.index for f in frames] == list(range(174))
    assert all(f.image.shape == (576, 1024, 3) for f in frames)
    ts = np.array([f.timestamp for f in frames])
    assert ts[0] == 0.0 and np.all(np.diff(ts) > 0)
    assert np.median(np.diff(ts)) == pytest.approx(0.02, abs=1e-6)
    print(f"robot_unitree.mp4: {len(frames)} frames 1024x576 decoded to RGB in {seconds:.2f} s = {len(frames) / seconds:.0f} frames/s")
    later = collect(open_source(path, start_index=150))
    assert_same_frames(later, frames[150:])
