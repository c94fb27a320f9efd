"""The figures and files of ``python -m da3stream.bench gpu``: pairs ours with official, checks targets, writes JSON + Markdown.

:func:`summarise` turns the per-case results into ``comparisons`` (ours over
official per group: peak allocated, peak reserved, frames/s), ``e2e`` (the
end-to-end figures) and ``targets`` (each issue target with its value and
whether it is met; on a CPU run they are reported as not applicable, since
CPU memory and speed say nothing about a GPU). :func:`write_report` writes
``gpu_report.json`` and ``gpu_report.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

from da3stream.bench.gpu_cases import GB, TARGETS

JSON_NAME = "gpu_report.json"
MD_NAME = "gpu_report.md"


def _ok(cases: dict, name: str):
    entry = cases.get(name)
    return entry if entry and entry.get("status") == "ok" else None


def comparisons(cases: dict) -> dict:
    """Ours over official for every group whose two sides both finished."""
    out = {}
    for name, entry in cases.items():
        if not name.endswith("-ours"):
            continue
        group = name[: -len("-ours")]
        ours, off = _ok(cases, name), _ok(cases, group + "-official")
        if ours is None or off is None:
            continue
        out[group] = {
            "peak_allocated_ours_over_official": round(ours["peak_allocated_bytes"] / off["peak_allocated_bytes"], 4),
            "peak_reserved_ours_over_official": round(ours["peak_reserved_bytes"] / off["peak_reserved_bytes"], 4),
            "fps_ours_over_official": round(ours["frames_per_s"] / off["frames_per_s"], 4),
            "ours_peak_allocated_gb": round(ours["peak_allocated_bytes"] / GB, 3),
            "official_peak_allocated_gb": round(off["peak_allocated_bytes"] / GB, 3),
        }
    return out


def e2e_summary(cases: dict) -> dict:
    """The end-to-end case's headline figures (empty when it did not finish)."""
    e = _ok(cases, "e2e-large-robot")
    if e is None:
        return {}
    return {"end_to_end_fps": e["end_to_end_fps"], "source_fps": e["source_fps"],
            "model_only_fps": e["model_only"]["fps"], "new_frame_fraction": e["new_frame_fraction"],
            "target_ratio": e["target_ratio"],
            "peak_gpu_allocated_gb": round(e["peak_allocated_bytes"] / GB, 3) if "peak_allocated_bytes" in e else None,
            "peak_gpu_reserved_gb": round(e["peak_reserved_bytes"] / GB, 3) if "peak_reserved_bytes" in e else None,
            "cpu_stages_main_thread_share": e["cpu_stages"]["main_thread_share"],
            "writer_busy_share": e["cpu_stages"]["writer_busy_share"],
            "hour_predicted_wall_minutes": e["hour"]["predicted_wall_minutes"],
            "frames_committed": e["frames_committed"], "n_chunks": e["n_chunks"], "n_loops": e["n_loops"]}


def _target(name: str, value, applies: bool) -> dict:
    limit = TARGETS[name]
    row = {"target": name, "limit": limit, "value": value}
    if not applies:
        row["met"] = None
        row["note"] = "not applicable: not a CUDA run"
    elif value is None:
        row["met"] = None
        row["note"] = "not measured (case skipped or failed)"
    else:
        row["met"] = bool(value >= limit) if name.endswith("_min") else bool(value <= limit)
    return row


def target_rows(comp: dict, e2e: dict, applies: bool) -> list[dict]:
    """Each issue target with the measured value (the worst over the groups it applies to)."""
    rows = []
    for group in ("large-120", "large-60", "giant-120"):
        c = comp.get(group, {})
        for name, key in (("peak_memory_ours_over_official_max", "peak_allocated_ours_over_official"),
                          ("fps_ours_over_official_min", "fps_ours_over_official")):
            rows.append({**_target(name, c.get(key), applies), "group": group})
    rows.append({**_target("large_120_peak_gb_max", comp.get("large-120", {}).get("ours_peak_allocated_gb"), applies),
                 "group": "large-120"})
    rows.append(_target("e2e_target_ratio_min", e2e.get("target_ratio"), applies))
    rows.append(_target("e2e_peak_gpu_gb_max", e2e.get("peak_gpu_allocated_gb"), applies))
    rows.append(_target("hour_wall_minutes_max", e2e.get("hour_predicted_wall_minutes"), applies))
    return rows


def summarise(cases: dict, device: str) -> dict:
    comp = comparisons(cases)
    e2e = e2e_summary(cases)
    return {"comparisons": comp, "e2e": e2e, "targets": target_rows(comp, e2e, str(device).startswith("cuda"))}


# ----------------------------------------------------------------------------- files
def _gb(entry: dict, key: str) -> str:
    v = entry.get(key)
    return f"{v / GB:.2f}" if isinstance(v, (int, float)) else "–"


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# bench gpu ({report['mode']}{', partial' if report.get('partial') else ''})", "",
             f"{env.get('date_utc')}; GPU {env.get('gpu') or env.get('device')}, driver {env.get('driver') or '–'}, "
             f"torch {env.get('torch')}, CUDA {env.get('cuda') or '–'}; commit {env.get('git_commit') or '–'}; "
             f"weights random: {str(report['weights_random']).lower()}; budget {report['budget_s']:.0f} s.", "",
             "| case | status | preset | views | input | weights / autocast | peak alloc GB | peak reserved GB | frames/s | s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in report["cases"].items():
        plan = e["plan"]
        status = e["status"] + (f" ({e.get('reason') or e.get('error')})" if e["status"] != "ok" else "")
        shape = e.get("input_shape") or e.get("network_hw")
        inp = "x".join(str(v) for v in shape[-2:]) if shape else "–"
        dt = f"{e.get('dtype', e.get('model', {}).get('dtype', '–'))} / {e.get('autocast') or '–'}"
        fps = e.get("frames_per_s", e.get("end_to_end_fps"))
        lines.append(f"| {name} | {status} | {plan['preset']} | {plan['views']} | {inp} | {dt} | "
                     f"{_gb(e, 'peak_allocated_bytes')} | {_gb(e, 'peak_reserved_bytes')} | {_fmt(fps)} | "
                     f"{_fmt(e.get('seconds'))} |")
    if report.get("comparisons"):
        lines += ["", "| group | alloc ours/official | reserved ours/official | frames/s ours/official |", "|---|---|---|---|"]
        for g, c in report["comparisons"].items():
            lines.append(f"| {g} | {c['peak_allocated_ours_over_official']:.3f} | "
                         f"{c['peak_reserved_ours_over_official']:.3f} | {c['fps_ours_over_official']:.3f} |")
    if report.get("e2e"):
        e = report["e2e"]
        lines += ["", f"End to end: {_fmt(e['end_to_end_fps'])} frames/s committed ({_fmt(e['source_fps'])} read), "
                      f"model only {_fmt(e['model_only_fps'])} x new-frame fraction {_fmt(e['new_frame_fraction'])} "
                      f"-> ratio {_fmt(e['target_ratio'])}; peak GPU {_fmt(e['peak_gpu_allocated_gb'])} GB allocated; "
                      f"CPU stages {_fmt(e['cpu_stages_main_thread_share'])} of wall (writer thread "
                      f"{_fmt(e['writer_busy_share'])}); 108,000 frames predicted in "
                      f"{_fmt(e['hour_predicted_wall_minutes'])} min."]
    lines += ["", "| target | group | limit | value | met |", "|---|---|---|---|---|"]
    for t in report.get("targets", []):
        met = {True: "yes", False: "**no**", None: t.get("note", "–")}[t["met"]]
        lines.append(f"| {t['target']} | {t.get('group', '–')} | {t['limit']} | {_fmt(t['value'])} | {met} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out_dir: Path) -> list[Path]:
    """Write ``gpu_report.json`` and ``gpu_report.md`` into ``out_dir`` (replacing them); returns their paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / JSON_NAME, out_dir / MD_NAME]
    for path, text in zip(paths, (json.dumps(report, indent=2, default=float), markdown(report))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return paths
