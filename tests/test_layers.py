"""The backend's layers (docs/ARCHITECTURE.md): who may import whom, and no import cycle.

Read from the source with `ast`, so imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cxrdemo.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "cxrdemo"

# every backend module and its layer; a new module must be placed here (the test says so)
LAYERS: dict[str, str] = {
    "cxrdemo.paths": "base",
    "cxrdemo.tasks": "base",
    "cxrdemo.fileio": "base",
    "cxrdemo.runlog": "base",
    "cxrdemo.card": "base",
    "cxrdemo.precision": "base",
    "cxrdemo.data": "data",
    "cxrdemo.rsna": "data",
    "cxrdemo.sample": "data",
    "cxrdemo.explore": "evaluation",
    "cxrdemo.tensor_cache": "data",
    "cxrdemo.imaging": "imaging",
    "cxrdemo.dicom": "imaging",
    "cxrdemo.preprocess": "imaging",
    "cxrdemo.augment": "imaging",
    "cxrdemo.ood_corpus": "imaging",
    "cxrdemo.models": "models",
    "cxrdemo.registry": "models",
    "cxrdemo.forward": "inference",
    "cxrdemo.served": "inference",
    "cxrdemo.predict": "inference",
    "cxrdemo.explain": "inference",
    "cxrdemo.knn": "inference",
    "cxrdemo.ood": "inference",
    "cxrdemo.metrics": "evaluation",
    "cxrdemo.calibration": "evaluation",
    "cxrdemo.evaluate": "evaluation",
    "cxrdemo.performance": "evaluation",
    "cxrdemo.saliency": "evaluation",
    "cxrdemo.report": "evaluation",
    "cxrdemo.finalize": "training",
    "cxrdemo.anomaly": "training",
    "cxrdemo.knn_build": "training",
    "cxrdemo.ensemble": "training",
    "cxrdemo.zoo": "training",
    "cxrdemo.jobs": "training",
    "cxrdemo.diagnosis": "app",
    "cxrdemo.auth": "app",
    "cxrdemo.ui": "app",
    "cxrdemo.cli": "app",
    "cxrdemo.__main__": "app",
    "cxrdemo": "base",
}
TRAINING_PACKAGE = "cxrdemo.training"
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
    if module == TRAINING_PACKAGE or module.startswith(TRAINING_PACKAGE + "."):
        return "training"
    return LAYERS[module]


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """cxrdemo modules imported by `path` (inside functions too, unless `top_level_only`)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cxrdemo")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cxrdemo"):
            found.add(node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if not m.startswith(TRAINING_PACKAGE) and m not in LAYERS]
    assert not unplaced, f"place these modules in a layer in tests/test_layers.py: {unplaced}"


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
    graph = {m: {i for i in imports(p, top_level_only=True) if i in MODULES} for m, p in MODULES.items()}
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
