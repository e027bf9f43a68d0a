"""Security properties that are cheap to state as facts about the code and configuration."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from cxrdemo.imaging import MAX_UPLOAD_BYTES
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
        REPO_ROOT / "cxrdemo" / "imaging.py",
        REPO_ROOT / "cxrdemo" / "dicom.py",
        *sorted((REPO_ROOT / "pages").glob("*.py")),
    ]:
        text = path.read_text()
        assert not re.search(r"open\([^)]*['\"][wa]b?['\"]", text), path
        assert ".save(" not in text or "BytesIO" in text, path
        assert "write_bytes(" not in text and "NamedTemporaryFile" not in text, path
