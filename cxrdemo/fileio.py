"""Low-level file I/O every layer shares: atomic writes (temporary file, fsync, rename) and JSON reads.

A reader never sees a half-written weights file, card, run status or password file: either the old
bytes or the new ones.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid and thread in the name: two writers of one path never share a temporary file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, allow_nan=False).encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_benchmark_rows(path: Path, benchmark: str) -> dict | None:
    """A benchmark's JSON result ({"rows": [...], ...}); None when it was never written.

    Raises ValueError when the file exists but holds no rows (JSONDecodeError is one too), so a caller
    can show it in one line.
    """
    if not path.is_file():
        return None
    results = json.loads(path.read_text())
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ValueError(f"{path} holds no {benchmark} benchmark rows")
    return results
