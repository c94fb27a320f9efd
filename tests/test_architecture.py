"""The import arrows of docs/ARCHITECTURE.md hold in the code.

The page's table "Who may import whom" is parsed here, so the page and this test
cannot drift apart: every ``import da3stream.X`` / ``from da3stream.X import``
in the package, at module level or inside a function, is checked against it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "da3stream"
PAGE = ROOT / "docs" / "ARCHITECTURE.md"


def _rules() -> dict[str, set[str]]:
    """``{room: rooms it may import}`` from the page's table (rows ``| `room` | `a`, `b` |``)."""
    text = PAGE.read_text()
    section = text.split("## Who may import whom", 1)[1].split("\n## ", 1)[0]
    rules = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`"):
            continue
        room = cells[0].strip("`")
        rules[room] = set(re.findall(r"`([\w.]+)`", cells[1]))
    return rules


def _room(module: str, rooms: set[str]) -> str:
    """The most specific room of a dotted module name (``da3stream.io.store.layout`` -> ``io``)."""
    parts = module.split(".")[1:]
    if not parts:  # da3stream/__init__.py re-exports the exception root only
        return "errors"
    for k in range(len(parts), 0, -1):
        name = ".".join(parts[:k])
        if name in rooms:
            return name
    raise AssertionError(f"{module}: no room of docs/ARCHITECTURE.md holds it; add it to the table")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("da3stream")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("da3stream"):
            if node.module == "da3stream":  # `from da3stream import errors`: the named submodules
                found += [(node.lineno, f"da3stream.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def test_the_page_names_every_room_and_only_rooms_that_exist():
    rules = _rules()
    assert {"errors", "config", "alignment", "core", "io", "streaming", "synthetic", "viewer", "bench"} <= set(rules)
    for room in rules:
        path = PACKAGE.joinpath(*room.split("."))
        assert path.is_dir() or path.with_suffix(".py").is_file(), f"{room}: no such package or module"
    for room, allowed in rules.items():
        assert allowed <= set(rules), f"{room} may import unknown rooms {allowed - set(rules)}"


def test_no_import_crosses_a_boundary_the_page_forbids():
    rules = _rules()
    rooms = set(rules)
    crossings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _room(_module_name(path), rooms)
        for line, target in _imports(path):
            if target == "da3stream":
                continue
            dst = _room(target, rooms)
            if dst != src and dst not in rules[src]:
                crossings.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {target} ({dst})")
    assert not crossings, "imports the page forbids:\n" + "\n".join(crossings)


def test_the_checker_sees_a_forbidden_import(tmp_path):
    """The check itself can fail: a core module importing the simulator is a crossing."""
    rules = _rules()
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from da3stream.synthetic import make_sequence\n")
    (_, target), = _imports(bad)
    assert _room(target, set(rules)) == "synthetic" and "synthetic" not in rules["core"]
    assert "streaming" not in rules["alignment"] and "viewer" not in rules["io"]


@pytest.mark.parametrize("room", ["core", "alignment", "streaming.loops.index"])
def test_the_lower_rooms_import_nothing_above_them(room):
    allowed = _rules()[room]
    assert not allowed & {"streaming", "io", "synthetic", "viewer", "bench", "cli", "demo"}, allowed


@pytest.mark.parametrize("module, forbidden", [
    ("da3stream.streaming.loops.index", ("da3stream.streaming.pipeline", "da3stream.io", "da3stream.core")),
    ("da3stream.alignment.registration", ("da3stream.streaming", "da3stream.io", "da3stream.core")),
    ("da3stream.core.da3_predictor", ("da3stream.synthetic", "da3stream.streaming", "da3stream.io")),
    ("da3stream.streaming.pipeline", ("da3stream.synthetic", "da3stream.viewer", "da3stream.bench")),
])
def test_importing_a_room_loads_nothing_above_it(module, forbidden):
    """At run time too (package __init__ files included): a fresh interpreter imports ``module`` alone."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    loaded = [m for m in out.split() if m.startswith(forbidden)]
    assert not loaded, f"importing {module} loads {loaded}"
