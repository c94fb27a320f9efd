"""`python -m da3stream.bench gpu`: the smoke mode runs every case's code on the CPU and reports sane figures.

The full mode needs a CUDA card (docs/GPU.md); here the same code runs with
DA3-Small at 4 views and 112 px, so the suite cannot rot between GPU loans.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math

import numpy as np
import pytest

from da3stream.bench import gpu
from da3stream.bench.gpu_cases import TARGETS, Case, full_plan, is_oom, ping_pong, smoke_plan
from da3stream.bench.gpu_report import JSON_NAME, MD_NAME

SMOKE_FRAMES = 16


def _args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    gpu.add_arguments(parser)
    return parser.parse_args(["--out", str(tmp_path / "out"), *extra])


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    from da3stream.io.sources.video_write import write_video

    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, size=(96, 200, 3), dtype=np.uint8)
    frames = [np.roll(base, 6 * i, axis=1)[:, :160] for i in range(12)]
    path = tmp_path_factory.mktemp("video") / "tiny.mp4"
    write_video(path, frames, fps=24.0)
    return path


def test_smoke_mode_reports_every_case(tmp_path, tiny_video):
    report = gpu.run(_args(tmp_path, "--smoke", "--video", str(tiny_video)))
    on_disk = json.loads((tmp_path / "out" / JSON_NAME).read_text())
    assert on_disk["partial"] is False and report["partial"] is False
    assert on_disk["mode"] == "smoke" and on_disk["weights_random"] is True
    env = on_disk["environment"]
    for key in ("gpu", "driver", "torch", "cuda", "date_utc", "device"):
        assert key in env
    assert env["device"] == "cpu" and env["torch"]
    cases = on_disk["cases"]
    assert list(cases) == [c.name for c in smoke_plan()]
    official = importlib.util.find_spec("depth_anything_3") is not None
    for name, entry in cases.items():
        if name.startswith("giant"):
            assert entry["status"] == "skipped" and "smoke" in entry["reason"]
            continue
        if name.endswith("-official") and not official:
            assert entry["status"] == "failed"
            continue
        assert entry["status"] == "ok", (name, entry.get("error"))
        if entry["plan"]["side"] == "engine":  # CUDA peaks only on a GPU; the CPU run reports its RSS
            assert "peak_allocated_bytes" not in entry and entry["peak_rss_mib"] > 1
            continue
        assert entry["peak_allocated_bytes"] > 2**20 and entry["peak_reserved_bytes"] >= entry["peak_allocated_bytes"]
        assert entry["frames_per_s"] > 0 and entry["views"] == entry["plan"]["views"]
    for group, comp in on_disk["comparisons"].items():
        assert group in ("large-120", "large-60")
        assert all(math.isfinite(v) and v > 0 for v in comp.values())
    e2e = cases["e2e-large-robot"]
    assert e2e["frames_read"] == SMOKE_FRAMES and e2e["frames_committed"] == SMOKE_FRAMES  # keyframes off
    assert e2e["video_frames_decoded"] == 12 and abs(e2e["video_fps"] - 24.0) < 0.1
    assert 0 < e2e["new_frame_fraction"] < 1  # overlap frames are predicted twice
    assert e2e["model_only"]["predicted_frames"] == e2e["predicted_frames"] > SMOKE_FRAMES
    assert 0 < e2e["target_ratio"] and 0 <= e2e["cpu_stages"]["main_thread_share"] < 1
    assert e2e["hour"]["predicted_wall_minutes"] == pytest.approx(108000 / e2e["hour"]["source_fps_used"] / 60, rel=1e-3)
    summary = on_disk["e2e"]
    assert summary["target_ratio"] == e2e["target_ratio"] and summary["frames_committed"] == SMOKE_FRAMES
    assert {t["target"] for t in on_disk["targets"]} == set(TARGETS)
    assert all(t["met"] is None and "not a CUDA run" in t["note"] for t in on_disk["targets"])
    md = (tmp_path / "out" / MD_NAME).read_text()
    assert all(f"| {name} |" in md for name in cases) and "weights random: true" in md


def test_budget_cap_skips_cleanly_and_still_writes_the_report(tmp_path, tiny_video):
    report = gpu.run(_args(tmp_path, "--smoke", "--video", str(tiny_video), "--budget-s", "2"))
    assert report["partial"] is False
    assert {e["status"] for e in report["cases"].values()} == {"skipped"}
    assert any("budget" in e["reason"] for e in report["cases"].values())
    assert (tmp_path / "out" / MD_NAME).is_file()


def test_a_failing_case_is_recorded_not_fatal(tmp_path):
    bad = Case("bad-ours", "model", "bad", "ours", "no-such-preset", 2, 112, repeat=0)
    res = gpu._run_case(bad, "cpu", tmp_path / "none.mp4", timeout=120, seed=0)
    assert res["status"] == "failed" and "no-such-preset" in res["error"]


def test_out_of_memory_errors_are_recognised():
    import torch

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate ... out of memory"))
    assert not is_oom(ValueError("shapes do not match"))


def test_dry_run_shows_the_full_gpu_plan_on_a_cpu(tmp_path):
    plan = gpu.run(_args(tmp_path, "--dry-run"))
    assert plan["dry_run"] and plan["mode"] == "full" and plan["weights_random"]
    names = [c["name"] for c in plan["cases"]]
    assert names == [c.name for c in full_plan()]
    rows = {c["name"]: c for c in plan["cases"]}
    assert rows["large-120-ours"]["network_hw"] == [378, 504] and rows["large-120-ours"]["views"] == 120
    assert rows["large-60-official"]["views"] == 60 and rows["giant-120-ours"]["optional"]
    assert rows["e2e-large-robot"]["frames"] >= 2000 and rows["e2e-large-robot"]["views"] == 120
    assert all(rows[n]["would_run"] for n in names if not rows[n]["optional"])
    assert 0 < rows["large-120-ours"]["ours_estimate_gb"] < TARGETS["large_120_peak_gb_max"]
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    short = gpu.run(_args(tmp_path, "--dry-run", "--budget-s", "200"))
    assert not any(c["would_run"] for c in short["cases"] if c["optional"])


def test_full_mode_without_cuda_is_a_one_line_error(tmp_path):
    import torch

    from da3stream.errors import Da3StreamError

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(Da3StreamError, match="no CUDA device"):
        gpu.run(_args(tmp_path))


def test_ping_pong_never_jumps():
    order = ping_pong(5, 20)
    assert order[:10] == [0, 1, 2, 3, 4, 3, 2, 1, 0, 1]
    assert all(abs(a - b) == 1 for a, b in zip(order, order[1:]))
    assert ping_pong(1, 3) == [0, 0, 0]
