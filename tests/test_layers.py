"""The backend's layers (docs/ARCHITECTURE.md): who may import whom, and no import cycle.

Read from the source with `ast`, so imports inside functions count too, for the layers and for cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cxrdemo.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "cxrdemo"

# A module's layer is its subpackage (cxrdemo/imaging/decode.py is in "imaging"); the modules at the top
# of the package are the base layer and the two entry points. A new top-level module must be placed here.
LAYER_PACKAGES = ("imaging", "data", "models", "inference", "evaluation", "training", "app")
TOP_LEVEL: dict[str, str] = {
    "cxrdemo": "base",
    "cxrdemo.paths": "base",
    "cxrdemo.tasks": "base",
    "cxrdemo.fileio": "base",
    "cxrdemo.runlog": "base",
    "cxrdemo.card": "base",
    "cxrdemo.precision": "base",
    "cxrdemo.zoo": "training",  # `python -m cxrdemo.zoo`, the campaign
    "cxrdemo.__main__": "app",  # `python -m cxrdemo`
}
# a layer may import its own and the layers listed for it
MAY_IMPORT = {
    "base": {"base"},
    "data": {"base", "data", "imaging"},  # tensor_cache decodes DICOMs like uploads
    "imaging": {"base", "imaging"},
    "models": {"base", "imaging", "models"},
    "inference": {"base", "data", "imaging", "models", "inference", "evaluation"},
    "evaluation": {"base", "data", "imaging", "models", "inference", "evaluation"},
    "training": {"base", "data", "imaging", "models", "inference", "evaluation", "training"},
    "app": {"base", "data", "imaging", "models", "inference", "evaluation", "training", "app"},
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYER_PACKAGES:
        return parts[1]
    return TOP_LEVEL[module]


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """cxrdemo modules imported by `path`, inside functions too.

    `from cxrdemo.data import rsna` imports the package and its module `cxrdemo.data.rsna`: both count.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cxrdemo")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cxrdemo"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return found


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if m.split(".")[1:2] not in ([p] for p in LAYER_PACKAGES) and m not in TOP_LEVEL]
    assert not unplaced, f"move these modules into a layer's subpackage or place them in TOP_LEVEL: {unplaced}"
    assert {m.split(".")[1] for m in MODULES if "." in m} >= set(LAYER_PACKAGES)  # every layer is a package


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str):
    layer = layer_of(module)
    wrong = sorted(m for m in imports(MODULES[module]) if layer_of(m) not in MAY_IMPORT[layer])
    assert not wrong, f"{module} ({layer}) may not import {wrong}"


def test_inference_and_evaluation_never_import_training():
    for module, path in MODULES.items():
        if layer_of(module) in ("inference", "evaluation"):
            assert not [m for m in imports(path) if layer_of(m) == "training"], module


def test_no_import_cycle():
    """Imports inside functions count: a deferred import is still a circle, only one hidden from Python."""
    graph = {m: {i for i in imports(p) if i in MODULES} for m, p in MODULES.items()}
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node) :] + [node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
