"""The keyframe filter: static stretches dropped, motion kept, max_skip honoured, deterministic."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from da3stream.config import KeyframeConfig
from da3stream.errors import ConfigError, ShapeError
from da3stream.streaming.keyframes import KeyframeFilter
from da3stream.io.sources import Frame


def scene(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    texture = cv2.resize(rng.integers(0, 256, (h // 8 + 40, w // 8 + 40), dtype=np.uint8), None, fx=8, fy=8, interpolation=cv2.INTER_CUBIC)
    return np.repeat(texture[:, :, None], 3, axis=2)


def view(big: np.ndarray, dx: int, h: int = 120, w: int = 160) -> np.ndarray:
    return np.ascontiguousarray(big[40 : 40 + h, dx : dx + w])


def with_noise(image: np.ndarray, rng: np.random.Generator, sigma: float = 2.0) -> np.ndarray:
    return np.clip(image + rng.normal(0, sigma, image.shape), 0, 255).astype(np.uint8)


def decisions(flt: KeyframeFilter, images) -> list[bool]:
    return [flt.accept(im) for im in images]


def test_static_stretch_dropped_and_motion_kept(rng):
    big = scene()
    static = [with_noise(view(big, 0), rng) for _ in range(20)]  # sensor noise only
    moving = [view(big, 12 * k) for k in range(1, 11)]  # 12 px pan per frame
    flt = KeyframeFilter(thumb_size=32, min_change=0.015, max_skip=100)
    got = decisions(flt, static + moving)
    assert got[0] is True
    assert not any(got[1:20])
    assert all(got[20:])


def test_score_is_normalised_and_first_frame_kept():
    flt = KeyframeFilter(thumb_size=16, min_change=0.5, max_skip=10)
    black = np.zeros((64, 64, 3), np.uint8)
    white = np.full((64, 64, 3), 255, np.uint8)
    assert flt.score(black) is None
    assert flt.accept(black) and flt.last_change == 0.0
    assert flt.score(white) == pytest.approx(1.0)
    assert flt.score(black) == 0.0
    assert flt.accept(white) and flt.last_change == pytest.approx(1.0)
    assert flt.accept(Frame(3, 0.1, black))  # Frame objects work too


def test_max_skip_honoured():
    image = scene()[:120, :160]
    flt = KeyframeFilter(thumb_size=32, min_change=0.015, max_skip=5)
    got = decisions(flt, [image] * 25)
    assert [i for i, k in enumerate(got) if k] == [0, 6, 12, 18, 24]  # 5 drops in a row, then one kept
    flt0 = KeyframeFilter(thumb_size=32, min_change=0.015, max_skip=0)
    assert all(decisions(flt0, [image] * 5))


def test_slow_drift_accumulates_against_the_last_kept_frame():
    base = scene()[:120, :160].astype(np.int16)
    ramp = [np.clip(base + k, 0, 255).astype(np.uint8) for k in range(12)]  # +1 grey level per frame
    flt = KeyframeFilter(thumb_size=32, min_change=0.015, max_skip=100)
    got = decisions(flt, ramp)
    # each step is 1/255 = 0.004 < 0.015, but the change since the last kept frame grows
    assert [i for i, k in enumerate(got) if k] == [0, 4, 8]


def test_deterministic_and_resumable(rng):
    big = scene(seed=5)
    images = []
    for k in range(60):
        dx = int(40 * (1 + np.sin(k / 7)))  # back-and-forth pan with pauses
        images.append(with_noise(view(big, dx), rng, sigma=1.5))
    cfg = KeyframeConfig(thumb_size=24, min_change=0.02, max_skip=8)
    a = decisions(KeyframeFilter.from_config(cfg), images)
    b = decisions(KeyframeFilter.from_config(cfg), images)
    assert a == b
    assert 5 < sum(a) < 60  # some dropped, some kept

    # stop half-way, save the state, restore it in a new filter: same decisions
    first = KeyframeFilter.from_config(cfg)
    head = decisions(first, images[:30])
    saved = first.state
    resumed = KeyframeFilter.from_config(cfg)
    resumed.restore(saved)
    assert head + decisions(resumed, images[30:]) == a
    # the state is a value: later decisions do not change a saved copy
    thumb = saved.thumb.copy()
    first.accept(images[-1][::-1].copy())
    np.testing.assert_array_equal(saved.thumb, thumb)


def test_prime_and_reset():
    image = scene()[:120, :160]
    flt = KeyframeFilter()
    flt.prime(image)
    assert flt.accept(image) is False  # primed: the same image is a duplicate
    flt.reset()
    assert flt.accept(image) is True


def test_bad_arguments():
    with pytest.raises(ConfigError, match="thumb_size"):
        KeyframeFilter(thumb_size=0)
    with pytest.raises(ConfigError, match="min_change"):
        KeyframeFilter(min_change=1.5)
    with pytest.raises(ConfigError, match="max_skip"):
        KeyframeFilter(max_skip=-1)
    with pytest.raises(ShapeError, match="keyframe image"):
        KeyframeFilter().accept(np.zeros((10, 10), np.uint8))


def test_real_video_drops_some_frames(shared_dir):
    from da3stream.io.sources import open_source

    flt = KeyframeFilter.from_config(KeyframeConfig())
    with open_source(shared_dir / "data" / "robot_unitree.mp4", max_side=256) as src:
        kept = [f.index for f in src if flt.accept(f)]
    assert kept[0] == 0
    assert 10 < len(kept) <= 174
    assert max(np.diff(kept)) <= KeyframeConfig().max_skip + 1
