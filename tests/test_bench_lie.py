"""`python -m da3stream.bench lie` runs, and the figures it reports are sane."""

from __future__ import annotations

import argparse

from da3stream.bench import lie


def test_lie_benchmark_reports_timings_and_round_trips():
    res = lie.run(argparse.Namespace(sizes=[64], repeat=1, seed=0))
    row = res["sizes"]["64"]
    assert all(row["ours"][k] > 0 for k in ("exp_ms", "log_ms", "act_ms"))
    assert row["ours"]["log_roundtrip_max_abs"] < 1e-12
    if res["pypose_installed"]:  # not a dependency: compared only where it is installed
        assert row["pypose"]["exp_max_abs_difference_from_ours"] < 1e-10
    else:
        assert row["pypose"] is None
