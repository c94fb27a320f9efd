"""Bad source input: one-line errors that name the file and the problem; damaged frames skipped and recorded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from da3stream.errors import ConfigError, ShapeError, SourceError
from da3stream.io.sources.video_write import write_video
from da3stream.io.sources import Frame, open_source


def frames(n: int, h: int = 64, w: int = 96) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    base = cv2.resize(rng.integers(0, 256, (h // 8 + n, w // 8 + n), dtype=np.uint8), None, fx=8, fy=8, interpolation=cv2.INTER_CUBIC)
    return [np.repeat(base[i : i + h, i : i + w, None], 3, axis=2) for i in range(n)]


def write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), im[:, :, ::-1])
    return folder


def source_error(source, **kw) -> str:
    """The message of the SourceError raised by opening and reading ``source``; it must be one line."""
    with pytest.raises(SourceError) as info:
        with open_source(source, **kw) as src:
            list(src)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


def packet_positions(path):
    import av

    with av.open(str(path)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]


def damage(path, out, offset, data):
    blob = bytearray(path.read_bytes())
    blob[offset : offset + len(data)] = data
    out.write_bytes(bytes(blob))
    return out


# --------------------------------------------------------------------------- paths and folders


def test_missing_path(tmp_path):
    msg = source_error(tmp_path / "nothing_here.mp4")
    assert "nothing_here.mp4" in msg and "no such file" in msg
    msg = source_error(str(tmp_path / "nothing_here"))
    assert "no such file or folder" in msg


def test_empty_folder_and_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "folder is empty" in source_error(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hi")
    (tmp_path / "docs" / "sub").mkdir()
    msg = source_error(tmp_path / "docs")
    assert "docs" in msg and "no image files" in msg


def test_all_images_unreadable(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png at all")
    (folder / "b.jpg").write_bytes(b"")
    msg = source_error(folder)
    assert "bad" in msg and "none of 2 images is readable" in msg
    msg = source_error(folder / "a.png")
    assert "a.png" in msg and "not a readable image" in msg


def test_one_bad_image_among_good_ones_is_skipped_and_recorded(tmp_path):
    images = frames(5)
    folder = write_pngs(tmp_path / "seq", images)
    (folder / "img_002.png").write_bytes(b"\x89PNG garbage")
    ok, jpg = cv2.imencode(".jpg", images[3])
    (folder / "img_003.png").unlink()
    (folder / "img_003.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])  # truncated JPEG
    with open_source(folder) as src:
        got = list(src)
    assert [f.index for f in got] == [0, 1, 4]
    np.testing.assert_array_equal(got[2].image, images[4])
    assert [i for i, _ in src.skipped] == [2, 3]
    assert "img_002.png" in src.skipped[0][1] and "not a readable image" in src.skipped[0][1]
    assert "img_003.jpg" in src.skipped[1][1] and "truncated" in src.skipped[1][1]


def test_tiny_frames(tmp_path):
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((20, 40, 3), np.uint8))
    msg = source_error(tmp_path / "tiny.png")
    assert "tiny.png" in msg and "40x20" in msg and "28-pixel" in msg
    cv2.imwrite(str(tmp_path / "wide.png"), np.zeros((60, 2000, 3), np.uint8))
    msg = source_error(tmp_path / "wide.png", max_side=504)
    assert "wide.png" in msg and "after max_side=504" in msg
    msg = source_error([np.zeros((10, 10, 3), np.uint8)])
    assert "frame 0" in msg and "10x10" in msg


# --------------------------------------------------------------------------- videos


def test_not_a_video(tmp_path):
    (tmp_path / "text.mp4").write_text("hello\n" * 100)
    msg = source_error(tmp_path / "text.mp4")
    assert "text.mp4" in msg and "not a readable video" in msg
    (tmp_path / "empty.MKV").write_bytes(b"")
    assert "empty.MKV" in source_error(tmp_path / "empty.MKV")
    (tmp_path / "notes.dat").write_text("plain text\n" * 50)  # unknown suffix: tried as video
    assert "notes.dat" in source_error(tmp_path / "notes.dat")


def test_truncated_header(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, frames(20), 25.0)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # the index (moov) is at the end
    msg = source_error(cut)
    assert "cut.mp4" in msg and "not a readable video" in msg
    mkv = tmp_path / "v.mkv"
    write_video(mkv, frames(20), 25.0)
    head = tmp_path / "head.mkv"
    head.write_bytes(mkv.read_bytes()[:300])
    assert "head.mkv" in source_error(head)


def test_truncated_tail_keeps_what_decodes(tmp_path):
    mkv = tmp_path / "v.mkv"
    write_video(mkv, frames(30), 25.0, gop=5)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(mkv.read_bytes()[: int(mkv.stat().st_size * 0.6)])
    with open_source(cut) as src:
        got = list(src)
    assert 5 <= len(got) < 30
    assert [f.index for f in got] == list(range(len(got)))


def test_no_video_stream(tmp_path):
    import av

    path = tmp_path / "audio.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        frame.pts = 0
        for p in list(s.encode(frame)) + list(s.encode(None)):
            c.mux(p)
    msg = source_error(path)
    assert "audio.mkv" in msg and "no video stream" in msg


def test_zero_decodable_frames(tmp_path):
    path = tmp_path / "v.mov"
    write_video(path, frames(6), 10.0, codec="png", pix_fmt="rgb24")
    blob = bytearray(path.read_bytes())
    for pos, size in packet_positions(path):
        blob[pos : pos + size] = bytes(size)
    bad = tmp_path / "zeros.mov"
    bad.write_bytes(bytes(blob))
    msg = source_error(bad)
    assert "zeros.mov" in msg and "no decodable video frames" in msg


def test_packet_decode_error_mid_file_is_skipped_and_recorded(tmp_path):
    images = frames(12)
    path = tmp_path / "v.mov"
    write_video(path, images, 10.0, codec="png", pix_fmt="rgb24")  # lossless, one PNG per packet
    pos, size = packet_positions(path)[5]
    bad = damage(path, tmp_path / "bad.mov", pos + size // 2, bytes(64))
    with open_source(bad) as src:
        got = list(src)
    assert [f.index for f in got] == [i for i in range(12) if i != 5]
    for f in got:
        np.testing.assert_array_equal(f.image, images[f.index])
    assert [i for i, _ in src.skipped] == [5] and "undecodable" in src.skipped[0][1]
    # resuming past the damage and from before it gives the same frames as the full read
    with open_source(bad, start_index=3) as src3:
        assert [f.index for f in src3] == [f.index for f in got if f.index >= 3]
    assert [i for i, _ in src3.skipped] == [5]


def test_concealed_corruption_mid_file_is_skipped_and_recorded(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, frames(30), 25.0, gop=10)
    pos, size = packet_positions(path)[10]  # the second keyframe: the decoder notices and conceals
    bad = damage(path, tmp_path / "bad.mp4", pos + size // 2, bytes(min(200, size // 2)))
    with open_source(bad) as src:
        got = list(src)
    assert len(src.skipped) >= 1 and all("corrupt" in r or "undecodable" in r for _, r in src.skipped)
    assert len(got) + len(src.skipped) == 30
    assert sorted([f.index for f in got] + [i for i, _ in src.skipped]) == list(range(30))


# --------------------------------------------------------------------------- iterables and options


def test_bad_iterables():
    with pytest.raises(SourceError, match="no frames"):
        open_source([])
    with pytest.raises(SourceError, match="expected shape"):
        open_source(np.zeros((64, 64, 3), np.uint8))  # one image, not a stack
    with pytest.raises(SourceError, match="expected a path or an iterable"):
        open_source(42)
    with pytest.raises(ShapeError, match="frame 0"):
        open_source([np.zeros((64, 64, 3), np.float32) + 2.0])
    with pytest.raises(ShapeError, match=r"frame 1: expected shape \(H, W, 3\)"):
        list(open_source([np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 5), np.uint8)]))
    good = np.zeros((64, 64, 3), np.uint8)
    msg = source_error([(good, 1.0), (good, 0.5)])
    assert "timestamps must not decrease" in msg
    msg = source_error([Frame(5, 0.0, good), Frame(5, 0.1, good)])
    assert "indices must increase" in msg
    msg = source_error([(good, "noon")])
    assert "non-numeric timestamp" in msg


@pytest.mark.parametrize(
    "option",
    [dict(stride=0), dict(fps=-1.0), dict(max_frames=0), dict(prefetch=-1), dict(max_side=0), dict(start_index=-2),
     dict(source_fps=0), dict(aspect_tolerance=2.0)],
)
def test_bad_options(option):
    with pytest.raises(ConfigError, match=next(iter(option))):
        open_source([np.zeros((64, 64, 3), np.uint8)], **option)
