"""Place recognition: exclusion before top-k, NMS, IVF vs exact search, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from da3stream.streaming.loops.index import DescriptorIndex
from da3stream.streaming.loops.index.kmeans import spherical_kmeans
from da3stream.streaming.loops.index.selection import exclusion_mask, greedy_nms_1d, suppress_pairs
from da3stream.errors import ConfigError, ShapeError

D = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _near(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector with cosine ``cos`` to the unit vector ``base``."""
    v = rng.standard_normal(base.shape[-1])
    v -= v @ base * base
    v /= np.linalg.norm(v)
    return _unit(cos * base + np.sqrt(1.0 - cos**2) * v)


def _search(index, q, t, d=None, **kw):
    args = dict(top_k=5, min_similarity=0.5, exclude_seconds=20.0, exclude_distance=0.0, nms_radius=0)
    args.update(kw)
    q = np.atleast_2d(q)
    t = np.atleast_1d(np.asarray(t, float))
    d = np.zeros_like(t) if d is None else np.atleast_1d(np.asarray(d, float))
    return index.search(q, t, d, **args)


def _add(index, desc, times, dists=None, frames=None):
    n = desc.shape[0]
    frames = np.arange(n) if frames is None else frames
    dists = np.zeros(n) if dists is None else dists
    index.add(desc, times, dists, frames, frames)


def test_recent_frames_never_returned_even_when_most_similar(rng):
    place = _unit(rng.standard_normal(D))
    n = 300
    desc = _unit(rng.standard_normal((n, D)))
    desc[10] = _near(place, 0.9, rng)  # an old visit of the place
    desc[-50:] = [_near(place, 0.999, rng) for _ in range(50)]  # the last 5 s: the camera is there now
    times = np.arange(n) / 10.0
    index = DescriptorIndex(D, backend="exact")
    _add(index, desc, times)
    now = times[-1] + 0.1
    res = _search(index, place, now, top_k=3, exclude_seconds=20.0)
    assert res.entry.size >= 1
    assert np.all(now - index.times[res.entry] >= 20.0)
    assert res.entry[0] == 10
    # Without the exclusion the recent frames win, so the test above is meaningful.
    res_all = _search(index, place, now, top_k=3, exclude_seconds=0.0)
    assert np.all(res_all.entry >= n - 50)


def test_high_frame_rate_does_not_crowd_out_a_real_loop(rng):
    """1,000 near-duplicate recent frames (100 fps) must not push a real revisit out of the top-k."""
    place = _unit(rng.standard_normal(D))
    old = _near(place, 0.85, rng)
    burst = np.stack([_near(place, 0.995, rng) for _ in range(1000)])
    other = _unit(rng.standard_normal((200, D)))
    desc = np.concatenate([other[:100], old[None], other[100:], burst])
    times = np.concatenate([np.arange(201) * 0.5, 101.0 + np.arange(1000) * 0.01])
    index = DescriptorIndex(D, backend="exact")
    _add(index, desc, times)
    now = times[-1] + 0.01
    # Top-k first, exclusion afterwards would find nothing: all 1,000 best entries are recent.
    sims = desc @ place
    top = np.argsort(-sims)[:1000]
    assert np.all(now - times[top] < 20.0)
    res = _search(index, place, now, top_k=1, exclude_seconds=20.0)
    assert res.entry.tolist() == [100]


def test_travelled_distance_exclusion(rng):
    """A robot that stood still for minutes: old in time but zero distance away is still excluded."""
    place = _unit(rng.standard_normal(D))
    desc = np.stack([_near(place, 0.95, rng) for _ in range(100)])
    times = np.arange(100) * 3.0  # 300 s
    dists = np.concatenate([np.zeros(60), np.linspace(0.0, 50.0, 40)])  # stood still, then walked
    dists[:60] = 0.0
    index = DescriptorIndex(D, backend="exact")
    _add(index, desc, times, dists)
    now, here = 400.0, 0.2
    by_time = _search(index, place, now, here, top_k=100, exclude_seconds=20.0, exclude_distance=0.0)
    assert np.any(by_time.entry < 60)
    both = _search(index, place, now, here, top_k=100, exclude_seconds=20.0, exclude_distance=5.0)
    assert both.entry.size > 0
    assert np.all(np.abs(index.distances[both.entry] - here) >= 5.0)
    assert not np.any(both.entry < 60)


def test_exclusion_mask_matches_definition():
    m = exclusion_mask(np.array([10.0, 50.0]), np.array([0.0, 100.0]), np.array([0.0, 35.0, 45.0]),
                       np.array([0.0, 99.0, 50.0]), exclude_seconds=20.0, exclude_distance=2.0)
    # query 0: |10-0|<20, |10-35|>=20 but not distance, |10-45|>=20 -> [T, F, F]
    # query 1: |50-0|>=20 and |100-0|>=2 -> F; |50-35|<20 -> T; |50-45|<20 -> T
    assert m.tolist() == [[True, False, False], [False, True, True]]
    m2 = exclusion_mask(np.array([50.0]), np.array([100.0]), np.array([0.0]), np.array([99.5]),
                        exclude_seconds=20.0, exclude_distance=2.0)
    assert m2.tolist() == [[True]]


def test_nms_returns_distinct_places(rng):
    a, b = _unit(rng.standard_normal((2, D)))
    run_a = np.stack([_near(a, 0.97 - 0.001 * k, rng) for k in range(6)])  # source frames 0..10 at place A
    run_b = np.stack([_near(b, 0.9, rng) for _ in range(5)])
    query = _unit(a + 0.8 * b)  # similar to both places, more to A
    desc = np.concatenate([run_a, _unit(rng.standard_normal((40, D))), run_b])
    frames = np.arange(desc.shape[0]) * 2  # every other source frame was kept
    times = np.arange(desc.shape[0]) * 1.0
    index = DescriptorIndex(D, backend="exact")
    _add(index, desc, times, frames=frames)
    plain = _search(index, query, 1000.0, top_k=2, min_similarity=0.0, nms_radius=0)
    assert np.all(plain.entry < 6)  # both slots taken by place A
    nms = _search(index, query, 1000.0, top_k=2, min_similarity=0.0, nms_radius=10)
    assert (nms.entry < 6).sum() == 1 and (nms.entry >= 46).sum() == 1
    assert abs(int(frames[nms.entry[0]]) - int(frames[nms.entry[1]])) > 10


@pytest.mark.parametrize("radius", [0, 1, 3, 10])
def test_pooled_nms_equals_nms_over_the_full_list(radius):
    """The candidate pool of top_k * (2 r + 1) gives exactly the survivors of NMS over every entry."""
    rng = np.random.default_rng(radius)
    for trial in range(20):
        n = int(rng.integers(5, 300))
        top_k = int(rng.integers(1, 6))
        frames = np.sort(rng.choice(5 * n, size=n, replace=False))
        # clustered scores: runs of similar frames
        scores = np.repeat(rng.random(n // 5 + 1), 5)[:n] + 0.01 * rng.random(n)
        order_full = np.lexsort((np.arange(n), -scores))
        full = greedy_nms_1d(frames, order_full, radius, top_k)
        pool = top_k * (2 * radius + 1)
        cut = np.argpartition(-scores, min(pool, n) - 1)[: min(pool, n)]
        order_pool = cut[np.lexsort((cut, -scores[cut]))]
        pooled = greedy_nms_1d(frames, order_pool, radius, top_k)
        assert full.tolist() == pooled.tolist(), (trial, n, top_k)


def test_suppress_pairs_merges_the_same_revisit():
    q = np.array([100, 104, 100, 300, 108])
    m = np.array([10, 13, 500, 40, 25])
    s = np.array([0.9, 0.95, 0.85, 0.8, 0.7])
    keep, support = suppress_pairs(q, m, s, radius=10)
    # (104, 13) is best; (100, 10) is within 10 on both sides -> absorbed; (108, 25): |25-13| > 10 -> kept
    assert keep.tolist() == [1, 2, 3, 4]
    assert support.tolist() == [2, 1, 1, 1]
    with pytest.raises(ShapeError):
        suppress_pairs(q, m[:-1], s, radius=10)


def _clustered(n: int, n_places: int, rng: np.random.Generator, noise: float = 0.5):
    places = _unit(rng.standard_normal((n_places, D)))
    place_of = rng.integers(n_places, size=n)
    desc = _unit(places[place_of] + rng.standard_normal((n, D)) * noise / np.sqrt(D))
    return places, place_of, desc


def test_ivf_finds_the_same_places_as_exact(rng):
    n = 6000
    places, place_of, desc = _clustered(n, 300, rng)
    times = np.arange(n) * 0.1
    exact = DescriptorIndex(D, backend="exact")
    ivf = DescriptorIndex(D, backend="ivf", ivf_min_size=2000, ivf_probe=8)
    for idx in (exact, ivf):
        _add(idx, desc, times)
    assert ivf.uses_ivf and not exact.uses_ivf
    q_place = rng.integers(300, size=100)
    queries = _unit(places[q_place] + rng.standard_normal((100, D)) * 0.5 / np.sqrt(D))
    hits = 0
    for q, p in zip(queries, q_place):
        r_e = _search(exact, q, 10_000.0, top_k=1, min_similarity=0.0)
        r_i = _search(ivf, q, 10_000.0, top_k=1, min_similarity=0.0)
        assert place_of[r_e.entry[0]] == p
        hits += int(r_i.entry.size == 1 and place_of[r_i.entry[0]] == p)
    assert hits >= 95


def test_index_does_not_depend_on_insertion_batches(rng):
    n = 3000
    _, _, desc = _clustered(n, 100, rng)
    times = np.arange(n) * 0.1
    a = DescriptorIndex(D, backend="auto", ivf_min_size=1000)
    b = DescriptorIndex(D, backend="auto", ivf_min_size=1000)
    _add(a, desc, times)
    pos = 0
    for size in rng.integers(1, 200, size=1000):
        if pos >= n:
            break
        sl = slice(pos, min(n, pos + int(size)))
        rows = np.arange(sl.start, sl.stop)
        b.add(desc[sl], times[sl], np.zeros(rows.size), rows, rows)
        pos = sl.stop
    assert a.uses_ivf and b.uses_ivf
    np.testing.assert_array_equal(a._centroids, b._centroids)
    q = desc[rng.integers(n, size=10)]
    for qi in q:
        ra = _search(a, qi, 1e6, top_k=5, min_similarity=0.0, nms_radius=3)
        rb = _search(b, qi, 1e6, top_k=5, min_similarity=0.0, nms_radius=3)
        assert ra.entry.tolist() == rb.entry.tolist()
        np.testing.assert_array_equal(ra.similarity, rb.similarity)


def test_search_is_deterministic_and_respects_min_similarity(rng):
    _, _, desc = _clustered(500, 20, rng)
    index = DescriptorIndex(D, backend="exact")
    _add(index, desc, np.arange(500) * 0.1)
    q = desc[:4]
    r1 = _search(index, q, np.full(4, 1e3), top_k=3, min_similarity=0.9, nms_radius=2)
    r2 = _search(index, q, np.full(4, 1e3), top_k=3, min_similarity=0.9, nms_radius=2)
    assert r1.entry.tolist() == r2.entry.tolist() and r1.query.tolist() == r2.query.tolist()
    assert np.all(r1.similarity >= 0.9)
    for qi in range(4):
        s = r1.similarity[r1.query == qi]
        assert np.all(np.diff(s) <= 0) and s.size <= 3


def test_empty_index_and_bad_shapes():
    index = DescriptorIndex(D)
    assert len(_search(index, np.ones(D), 0.0)) == 0
    with pytest.raises(ShapeError, match="DescriptorIndex.add.descriptors."):
        index.add(np.ones((3, D + 1), np.float32), np.zeros(3), np.zeros(3), np.arange(3), np.arange(3))
    with pytest.raises(ShapeError, match="timestamps"):
        index.add(np.ones((3, D), np.float32), np.zeros(2), np.zeros(3), np.arange(3), np.arange(3))
    with pytest.raises(ShapeError, match="NaN"):
        index.add(np.full((1, D), np.nan, np.float32), np.zeros(1), np.zeros(1), np.arange(1), np.arange(1))
    with pytest.raises(ConfigError, match="index_backend"):
        DescriptorIndex(D, backend="faiss")


def test_spherical_kmeans_is_deterministic_and_unit_norm(rng):
    _, _, desc = _clustered(800, 10, rng, noise=0.3)
    c1 = spherical_kmeans(desc, 10, iters=5, seed=3)
    c2 = spherical_kmeans(desc, 10, iters=5, seed=3)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1.0, rtol=1e-5)
    # every point is served well by some centroid (the clusters are recovered)
    assert np.median(np.max(desc @ c1.T, axis=1)) > 0.8


def test_blocked_rows_append_index_and_iterate(rng):
    from da3stream.streaming.loops.index.blocked_rows import BlockedRows

    ref = rng.standard_normal((1000, 3))
    arr = BlockedRows(np.float64, (3,), block_rows=64)
    pos = 0
    for n in (0, 1, 63, 64, 65, 200, 607):
        arr.append(ref[pos:pos + n])
        pos += n
    assert len(arr) == 1000 and arr.shape == (1000, 3)
    np.testing.assert_array_equal(np.asarray(arr), ref)
    idx = rng.integers(-1000, 1000, size=(7, 11))
    np.testing.assert_array_equal(arr[idx], ref[idx])
    np.testing.assert_array_equal(arr[130:700], ref[130:700])
    np.testing.assert_array_equal(arr[5:900:7], ref[5:900:7])
    np.testing.assert_array_equal(arr[-1], ref[-1])
    seen = [(first, view.shape[0]) for first, view in arr.blocks(100, 300)]
    assert seen == [(100, 28), (128, 64), (192, 64), (256, 44)]
    with pytest.raises(IndexError):
        arr[1000]
    with pytest.raises(IndexError):
        arr[np.array([0, 1000])]
    # rows never move: a block holds 64 rows, so 1000 rows take 16 blocks and nothing more
    assert arr.nbytes_allocated == 16 * 64 * 3 * 8


def test_index_memory_grows_by_the_rows_appended():
    """Fixed-size blocks and bfloat16 storage: 2 D + 32 bytes per entry, no doubling slack."""
    rng = np.random.default_rng(3)
    dim, n = 256, 40000
    index = DescriptorIndex(dim, backend="exact", block=4096)
    for a in range(0, n, 500):
        b = min(n, a + 500)
        _add(index, _unit(rng.standard_normal((b - a, dim))), np.arange(a, b) / 30.0, frames=np.arange(a, b))
    blocks = -(-n // 4096)
    assert index.nbytes == blocks * 4096 * (2 * dim + 32)  # 10 blocks of 4096 entries for 40,000 entries
    f32 = DescriptorIndex(dim, backend="exact", block=4096, storage_dtype="float32")
    _add(f32, _unit(rng.standard_normal((10, dim))), np.arange(10.0))
    assert f32.nbytes == 4096 * (4 * dim + 32)


def test_bfloat16_storage_finds_what_float32_finds(rng):
    """Similarities from bfloat16 storage are within 4e-3 of float32's (2^-8 per component); the same
    places come back."""
    n = 3000
    base = _unit(rng.standard_normal((n, 128)))
    desc = base.copy()
    for k in range(0, n, 37):
        desc[k] = _near(base[(k * 7) % n], 0.93, rng)
    times = np.arange(n) / 30.0
    results = []
    for dtype in ("bfloat16", "float32"):
        index = DescriptorIndex(128, backend="exact", block=512, storage_dtype=dtype)
        _add(index, desc, times)
        results.append(_search(index, desc[::50], times[::50] + 100.0, top_k=3, min_similarity=0.3, nms_radius=2))
    h, f = results
    np.testing.assert_array_equal(h.query, f.query)
    np.testing.assert_array_equal(h.entry, f.entry)
    assert np.max(np.abs(h.similarity - f.similarity)) < 4e-3
    assert np.median(np.abs(h.similarity - f.similarity)) < 5e-4
    with pytest.raises(ConfigError):
        DescriptorIndex(8, storage_dtype="int8")


def test_config_accepts_exactly_the_index_storage_types():
    """loop.index_dtype is validated by the config, which cannot import the index: the two lists agree."""
    from da3stream.config import load_config
    from da3stream.streaming.loops.index import STORAGE_DTYPES

    for name in STORAGE_DTYPES:
        assert load_config(None, {"loop.index_dtype": name}).loop.index_dtype == name
    with pytest.raises(ConfigError, match="loop.index_dtype"):
        load_config(None, {"loop.index_dtype": "float16"})
