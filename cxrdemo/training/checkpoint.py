"""Per-epoch training state on disk: written atomically, read back to resume exactly.

`RUN_DIR/checkpoint.pt` holds everything the next epoch depends on (model, optimizer, EMA, the
augmentation generator and torch's global RNG, the step that drives the schedule, the epoch
records); `RUN_DIR/best.pt` holds the best validation weights so far.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from cxrdemo.fileio import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


@dataclass
class TrainState:
    """Where training stands after `epoch` completed epochs."""

    epoch: int = 0
    step: int = 0
    best_score: float = float("-inf")
    best_loss: float = float("inf")
    best_epoch: int = 0
    stale: int = 0  # epochs since the last improvement
    stop: bool = False  # early stopping fired
    seconds: float = 0.0  # training wall time, summed over resumed sessions
    history: list[dict] = field(default_factory=list)


def save_torch(path: Path, value: object) -> None:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(run_dir: Path, state: TrainState, payload: dict) -> None:
    """`payload`: model, optimizer, ema (or None), generator and rng states."""
    save_torch(run_dir / CHECKPOINT, {"state": asdict(state), **payload})


def load_checkpoint(run_dir: Path) -> tuple[TrainState, dict] | None:
    """(state, payload) of the last completed epoch, or None when the run has none yet."""
    path = run_dir / CHECKPOINT
    if not path.exists():
        return None
    saved = load_torch(path)
    return TrainState(**saved.pop("state")), saved
