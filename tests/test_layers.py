"""The package's layers: core < application < evaluation < cli. No module imports one of a higher layer, and the
modules' imports form no circle; in the core, the rules and the rewriting import nothing of each other; the command
line installs as zennit_resnet_lrp.cli, never as a top-level ``cli``."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "zennit_resnet_lrp"
LAYERS = {"core": 0, "application": 1, "evaluation": 2, "cli": 3}


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for the package and the cli folder (installed as zennit_resnet_lrp.cli)."""
    found = {}
    for folder, prefix in ((ROOT / PACKAGE, PACKAGE), (ROOT / "cli", f"{PACKAGE}.cli")):
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else LAYERS["core"]


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, at any depth of its code, imports for type annotations (under
    ``if TYPE_CHECKING:``) included: a circle in the picture of the package counts, whether or not it runs."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets.add(base)
            targets |= {f"{base}.{alias.name}" for alias in node.names}
    return {target for target in targets if target in modules and target != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_layers_are_all_found():
    layers = {_layer(name) for name in _graph()}
    assert layers == set(LAYERS.values())


def test_no_module_imports_a_higher_layer():
    upward = [(name, target) for name, targets in _graph().items() for target in targets
              if _layer(target) > _layer(name)]
    assert not upward


@pytest.mark.parametrize("half, other", [("rules", "rewriting"), ("rewriting", "rules")])
def test_the_two_halves_of_the_core_import_nothing_of_each_other(half, other):
    """How relevance crosses a module and how operations become modules are independent: they meet only in the
    composites, the registry and the attribution at the top."""
    graph = _graph()
    inside = [name for name in graph if name.startswith(f"{PACKAGE}.{half}")]
    assert len(inside) > 5
    crossing = [(name, target) for name in inside for target in graph[name]
                if target.startswith(f"{PACKAGE}.{other}") or target == PACKAGE]
    assert not crossing


def test_no_import_circle():
    graph = _graph()
    # a package's __init__ importing its own modules is not a circle: drop edges from a package to its children
    graph = {name: {t for t in targets if not t.startswith(name + ".")} for name, targets in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(name, trail):
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(trail[trail.index(target):] + [target] if target in trail else [name, target])
            elif target not in state:
                visit(target, trail + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles


@pytest.mark.parametrize("statement, works", [("import cli", False), ("import zennit_resnet_lrp.cli.main", True)])
def test_the_command_line_installs_under_the_package(tmp_path, statement, works):
    done = subprocess.run([sys.executable, "-c", statement], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode == 0) == works, done.stderr
