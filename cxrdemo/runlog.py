"""A training run's folder: JSON-lines metrics and a status file, written atomically (`cxrdemo.fileio`).

Layout of RUN_DIR: `config.json`, `metrics.jsonl` (one JSON object per line, appended),
`status.json` (state: running / finished / failed), and on success `model.safetensors`,
`card.json` and `predictions.csv`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cxrdemo.fileio import atomic_write_bytes, atomic_write_json, read_json


class RunLog:
    """Appends metric records and keeps `status.json` current. Inactive (writes nothing) off rank 0."""

    def __init__(self, run_dir: Path, active: bool = True) -> None:
        self.run_dir = run_dir
        self.active = active
        if active:
            run_dir.mkdir(parents=True, exist_ok=True)

    def record(self, **values: Any) -> None:
        if not self.active:
            return
        values.setdefault("time", time.time())
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(values) + "\n")

    def status(self, state: str, **extra: Any) -> None:
        if not self.active:
            return
        path = self.run_dir / "status.json"
        current = read_json(path) if path.exists() else {}
        current.update(extra, state=state, updated=time.time())
        atomic_write_json(path, current)


def read_metrics(run_dir: Path) -> list[dict]:
    """All complete records of `metrics.jsonl` (a torn last line from a killed process is skipped)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def rewrite_metrics(run_dir: Path, records: list[dict]) -> None:
    """Replace `metrics.jsonl` with `records` (a resumed run drops what its killed predecessor wrote late)."""
    atomic_write_bytes(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
