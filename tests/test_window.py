"""The values the stages pass: AlignmentQuality at the store edge, the window scheduler, the exception tree."""

from __future__ import annotations

import dataclasses
import math

import pytest

from da3stream.errors import Da3StreamError, PredictionError, RejectedWindow
from da3stream.io.store.run_store import ChunkRecord, ChunkStatus
from da3stream.streaming.window import AlignmentQuality
from da3stream.streaming.windows import WindowScheduler


def test_alignment_quality_round_trips_through_the_stored_columns():
    q = AlignmentQuality(inlier_ratio=0.75, residual=0.01, scale=1.5, pose_disagreement=0.02,
                         status=ChunkStatus.GATED, reason="pose_disagreement", n_points=123)
    row = q.to_dict()
    record_fields = {f.name for f in dataclasses.fields(ChunkRecord)}
    assert set(row) <= record_fields  # the keys are the store's own column names
    assert row["status"] == 1 and type(row["status"]) is int and row["flag_reason"] == "pose_disagreement"
    back = AlignmentQuality.from_dict(row)
    assert back.status is ChunkStatus.GATED
    assert back == dataclasses.replace(q, n_points=0)  # n_points is not stored


def test_first_window_quality_and_immutability():
    q = AlignmentQuality.first()
    assert (q.inlier_ratio, q.residual, q.scale, q.pose_disagreement, q.status) == (1.0, 0.0, 1.0, 0.0, ChunkStatus.FIRST)
    fresh = AlignmentQuality()
    assert fresh.status == ChunkStatus.OK and math.isnan(fresh.residual)
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.status = ChunkStatus.OK  # type: ignore[misc]
    assert q.replace(status=ChunkStatus.NEW_SEGMENT).status == ChunkStatus.NEW_SEGMENT and q.status == ChunkStatus.FIRST


def test_scheduler_cuts_windows_and_keeps_the_overlap():
    s = WindowScheduler(chunk_size=5, overlap=2)
    buffer = list(range(12))
    assert not s.full(buffer[:4], 0) and s.full(buffer[:5], 0) and not s.full(buffer[:2], 2)
    window = s.cut(buffer, 0)
    assert window == [0, 1, 2, 3, 4]
    nxt, n_carry = s.after(window, buffer)
    assert nxt == [3, 4] + list(range(5, 12)) and n_carry == 2
    assert s.cut([7, 8], 2) == [7, 8]  # at least one frame beyond the carry (none here: the caller's check)


def test_scheduler_shrinks_after_out_of_memory_and_stops_at_the_overlap():
    s = WindowScheduler(chunk_size=9, overlap=2)
    assert s.shrink_after_oom(9) == 6 and s.chunk_size == 6
    assert s.shrink_after_oom(6) == 4 and s.shrink_after_oom(4) == 3
    with pytest.raises(PredictionError, match="out of memory with a window of 3 frames"):
        s.shrink_after_oom(3)


def test_rejected_window_is_part_of_the_exception_tree():
    assert issubclass(RejectedWindow, PredictionError) and issubclass(RejectedWindow, Da3StreamError)
