"""Where things live: repository, shipped weights, bundled sample, dataset, caches, runs."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def weights_dir() -> Path:
    """Shipped models; `CXRDEMO_WEIGHTS` points elsewhere (tests use a temporary copy)."""
    return Path(os.environ.get("CXRDEMO_WEIGHTS") or REPO_ROOT / "weights")


def data_dir(explicit: str | Path | None = None) -> Path:
    """The dataset root: `--data`, then `CXRDEMO_DATA`, then the bundled sample."""
    chosen = explicit or os.environ.get("CXRDEMO_DATA")
    return Path(chosen).expanduser().resolve() if chosen else SAMPLE_DIR


def cache_dir() -> Path:
    """Decoded-tensor caches; safe to delete."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cxrdemo"
    path = Path(os.environ.get("CXRDEMO_CACHE") or default)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir() -> Path:
    """Training runs started from the admin page (job history lives here)."""
    return Path(os.environ.get("CXRDEMO_RUNS") or REPO_ROOT / "runs")
