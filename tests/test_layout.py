"""The layers of alignscope, enforced: a module imports only its own package and packages of lower layers.

Every import counts, module-level and function-local alike (a function-local import is still a
dependency; it only hides it from a glance at the top of the file). The order lives here and in
docs/architecture.md, and the two must agree.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# Lowest first. Names are module paths under `alignscope`; a module belongs to the longest name that
# prefixes it (so `models.tiny` sits below `world` while the rest of `models` sits above it).
# Names on one line are peers: each may import lower layers, never the other.
LAYERS: list[tuple[str, ...]] = [
    ("alignscope",),
    ("errors",),
    ("atomic", "options", "console"),
    ("run_files",),
    ("data",),
    ("losses", "diagnostics"),
    ("models.tiny",),
    ("world",),
    ("models",),
    ("rollout", "rewards"),
    ("training", "audits"),
    ("report",),
    ("integrations",),
    ("lab",),
    ("cli",),
]


def _layer_of() -> dict[str, int]:
    return {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def owner(module: str, layers: dict[str, int]) -> str | None:
    """The layer name a module `alignscope.x.y` belongs to: the longest listed prefix of `x.y`."""
    rest = module.split(".")[1:]
    if not rest:
        return "alignscope"
    for n in range(len(rest), 0, -1):
        name = ".".join(rest[:n])
        if name in layers:
            return name
    return None


def _is_module(dotted: str) -> bool:
    base = SRC.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported alignscope module) for every import in the file, at any depth of the syntax tree."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from alignscope import run_files` imports the module alignscope.run_files, not the package.
            subs = [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
            found += [(node.lineno, t) for t in subs or [target]]
    return [(line, name) for line, name in found if name == "alignscope" or name.startswith("alignscope.")]


def violations(paths: list[Path]) -> list[str]:
    layers = _layer_of()
    bad = []
    for path in paths:
        here = owner(module_name(path), layers)
        if here is None:
            bad.append(f"{module_name(path)} is in no layer: add its package to LAYERS (tests/test_layout.py) "
                       "and to docs/architecture.md")
            continue
        for line, target in imports(path):
            there = owner(target, layers)
            if there is None or there == here:
                continue  # unknown targets are reported as modules in no layer
            if layers[there] >= layers[here]:
                kind = "a peer" if layers[there] == layers[here] else "a higher layer"
                bad.append(f"{path.relative_to(ROOT)}:{line}: {here} imports {target}, {kind} ({there})")
    return bad


def sources() -> list[Path]:
    return sorted((SRC / "alignscope").rglob("*.py"))


def test_no_import_goes_up_or_sideways():
    assert violations(sources()) == []


def test_every_package_is_in_a_layer():
    layers = _layer_of()
    packages = {module_name(p) for p in sources()}
    assert all(owner(m, layers) is not None for m in packages)
    assert {name for name in layers if name != "alignscope"} <= {m.split(".", 1)[1] for m in packages if "." in m}


def _documented_layers() -> list[tuple[str, ...]]:
    """The layer lines of docs/architecture.md: '1. `errors` - ...', names in backticks before the dash."""
    rows = []
    for line in ARCHITECTURE.read_text().splitlines():
        m = re.match(r"^\d+\.\s+(.*?)\s+[-\u2014]\s", line)
        if m:
            rows.append(tuple(re.findall(r"`([\w.]+)`", m.group(1))))
    return rows


def test_docs_show_the_same_layers():
    assert _documented_layers() == LAYERS


@pytest.mark.parametrize(("where", "code", "expect"), [
    ("models/upward.py", "from alignscope.lab.demo import run_demo\n", "models imports alignscope.lab.demo, a higher layer"),
    ("world/upward.py", "def f():\n    from alignscope.models import loading\n", "world imports alignscope.models.loading, a higher layer"),
    ("losses/sideways.py", "import alignscope.diagnostics.ches\n", "losses imports alignscope.diagnostics.ches, a peer"),
    ("data/relative.py", "def f():\n    from ..training import loop\n", "data imports alignscope.training.loop, a higher layer"),
    ("newpkg/thing.py", "x = 1\n", "alignscope.newpkg.thing is in no layer"),
])
def test_an_upward_import_is_caught(tmp_path, monkeypatch, where, code, expect):
    """The check itself: a planted upward, sideways or unplaced module is reported with its line."""
    fake = tmp_path / "src"
    for pkg in ("lab", "models", "diagnostics", "training"):
        (fake / "alignscope" / pkg).mkdir(parents=True, exist_ok=True)
    (fake / "alignscope" / "lab" / "demo.py").write_text("")
    (fake / "alignscope" / "models" / "loading.py").write_text("")
    (fake / "alignscope" / "models" / "__init__.py").write_text("")
    (fake / "alignscope" / "diagnostics" / "ches.py").write_text("")
    (fake / "alignscope" / "training" / "loop.py").write_text("")
    planted = fake / "alignscope" / where
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_text(code)
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = violations([planted])
    assert len(found) == 1 and expect in found[0], found
