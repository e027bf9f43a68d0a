"""Shared fixtures: the bundled sample, the full dataset when present, a private weights folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR

FULL_DATA = Path(os.environ.get("CXRDEMO_DATA") or REPO_ROOT.parent / "shared" / "data" / "chest_xray")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    """The full Kermany dataset; CI has it, so a missing copy fails there instead of skipping."""
    if not (FULL_DATA / "manifest.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"full dataset missing at {FULL_DATA}")
        pytest.skip(f"full dataset not at {FULL_DATA}")
    return FULL_DATA


@pytest.fixture(scope="session")
def sample_jpeg_bytes(sample_dir: Path) -> bytes:
    """A real chest X-ray from the bundled sample (test split, pneumonia)."""
    path = sorted((sample_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    return path.read_bytes()


@pytest.fixture()
def weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of `weights/` that the test may change; CXRDEMO_WEIGHTS points at it."""
    target = tmp_path / "weights"
    shutil.copytree(REPO_ROOT / "weights", target)
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(target))
    return target
