"""Security properties that are cheap to state as facts about the code and configuration."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from cxrdemo.imaging.decode import MAX_UPLOAD_BYTES
from cxrdemo.paths import REPO_ROOT


def _sources() -> list[Path]:
    return sorted((REPO_ROOT / "cxrdemo").glob("*.py")) + sorted((REPO_ROOT / "pages").glob("*.py"))


def test_upload_limit_configured_and_enforced_in_code():
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 1024 * 1024 == MAX_UPLOAD_BYTES


def test_no_pickle_and_safe_torch_load():
    for path in _sources():
        text = path.read_text()
        assert not re.search(r"^\s*(import pickle|from pickle)", text, re.M), path
        for call in re.findall(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call, f"{path}: torch.load without weights_only=True"


def test_uploads_never_written_to_disk():
    """Pages and the image loader never open files for writing or save uploads."""
    for path in [
        REPO_ROOT / "cxrdemo" / "imaging" / "decode.py",
        REPO_ROOT / "cxrdemo" / "imaging" / "dicom.py",
        *sorted((REPO_ROOT / "pages").glob("*.py")),
    ]:
        text = path.read_text()
        assert not re.search(r"open\([^)]*['\"][wa]b?['\"]", text), path
        assert not saves_outside_memory(text), path
        assert "write_bytes(" not in text and "NamedTemporaryFile" not in text, path


def saves_outside_memory(source: str) -> list[str]:
    """`.save(target, ...)` calls whose target is not an in-memory buffer (a `BytesIO()` or a name bound to one)."""
    import ast

    tree = ast.parse(source)

    def is_buffer(node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "BytesIO"

    buffers = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and is_buffer(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "save":
            target = node.args[0] if node.args else None
            if not (is_buffer(target) or (isinstance(target, ast.Name) and target.id in buffers)):
                bad.append(ast.unparse(node))
    return bad


def test_the_save_check_catches_a_file_on_disk():
    assert saves_outside_memory("img.save('upload.png')") == ["img.save('upload.png')"]
    assert saves_outside_memory("buf = io.BytesIO()\nimg.save(buf, format='PNG')") == []
