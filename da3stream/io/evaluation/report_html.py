"""The HTML side of the run report: the style sheet, the Section / Report values, cell formatting, rendering.

:mod:`da3stream.io.evaluation.report` reads the store and builds the sections
and figures; this module turns a :class:`Report` into one self-contained page
(figures inline as base64 PNG, style sheet inline).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["CSS", "Report", "Section", "esc", "fmt_value", "html_note", "html_table", "render_html"]

CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b9c0cc;font-size:13px}
nav{padding:8px 32px;background:#e8ebf0;font-size:14px}nav a{margin-right:16px;color:#1d4f91;text-decoration:none}
main{padding:8px 32px 40px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 20px;margin:16px 0}
h2{font-size:18px;margin:6px 0 10px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #dde1e7;padding:3px 8px;text-align:left}
th{background:#f0f2f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;display:block;margin:8px 0}.note{color:#5b6475;font-size:13px}
.flag{color:#b05f00;font-weight:600}
"""


@dataclass
class Section:
    """One part of the report: a title, HTML paragraphs and tables, and figures (PNG bytes)."""

    id: str
    title: str
    blocks: list = field(default_factory=list)
    """Safe HTML fragments, in order (figures are referenced by ``("figure", name)`` tuples)."""


@dataclass
class Report:
    """A built report: sections plus their figures, ready to render or write."""

    title: str
    subtitle: str
    sections: list
    figures: dict = field(default_factory=dict)
    """name -> PNG bytes."""
    facts: dict = field(default_factory=dict)
    """The summary numbers (JSON-able)."""


def esc(v: Any) -> str:
    """``v`` as text, HTML-escaped (quotes too)."""
    return html.escape(str(v), quote=True)


def fmt_value(v: Any) -> str:
    """A table cell's text: yes/no, 4 significant digits (– for NaN/inf), thousands separators."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if not np.isfinite(v):
            return "–"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return str(v)


def html_table(rows: Sequence[Sequence[Any]], header: Optional[Sequence[str]] = None) -> str:
    """An HTML table of ``rows`` (numbers right-aligned), with an optional header row."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for r in rows:
        cells = []
        for v in r:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            cells.append(f"<td class=\"num\">{esc(fmt_value(v))}</td>" if num else f"<td>{esc(fmt_value(v))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def html_note(text: str) -> str:
    """A grey explanatory paragraph."""
    return f"<p class=\"note\">{esc(text)}</p>"


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (figures inline as base64 PNG)."""
    nav = "".join(f"<a href=\"#{s.id}\">{esc(s.title)}</a>" for s in report.sections)
    parts = [
        "<!DOCTYPE html>",
        "<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{esc(report.title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{esc(report.title)}</h1><p>{esc(report.subtitle)}</p></header>",
        f"<nav>{nav}</nav><main>",
    ]
    for s in report.sections:
        parts.append(f"<section id=\"{esc(s.id)}\"><h2>{esc(s.title)}</h2>")
        for b in s.blocks:
            if isinstance(b, tuple) and b[0] == "figure":
                data = base64.b64encode(report.figures[b[1]]).decode("ascii")
                parts.append(f"<img alt=\"{esc(b[1])}\" src=\"data:image/png;base64,{data}\">")
            else:
                parts.append(b)
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
