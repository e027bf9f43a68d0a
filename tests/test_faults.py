"""Training that runs out of disk space fails cleanly: one-line error, status failed, weights untouched."""

from __future__ import annotations

import hashlib
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cxrdemo.models.registry import ModelLoadError, promote
from cxrdemo.paths import REPO_ROOT

FILE_SIZE_LIMIT = 200 * 1024  # bytes: logs and status fit, the pixel cache and the model do not


def _disk_full() -> None:
    """Child process: writes past FILE_SIZE_LIMIT fail with EFBIG, as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*")) if p.is_file()}


def test_disk_full_during_training(tmp_path: Path, weights_copy: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CXRDEMO_CACHE", str(tmp_path / "cache"))
    before = _digest(weights_copy)
    run = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxrdemo",
            "train",
            "--arch",
            "zubinrnet",
            "--epochs",
            "1",
            "--subset",
            "24",
            "--device",
            "cpu",
            "--input-size",
            "64",
            "--data",
            str(REPO_ROOT / "data" / "sample"),
            "--out",
            str(run),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        preexec_fn=_disk_full,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "File too large" in error[0]
    status = (run / "status.json").read_text()
    assert '"state": "failed"' in status and "File too large" in status
    assert not (run / "model.safetensors").exists()
    assert not list(run.glob(".*.tmp"))  # no half-written temporary file left behind
    with pytest.raises(ModelLoadError):
        promote(run, directory=weights_copy)
    assert _digest(weights_copy) == before
