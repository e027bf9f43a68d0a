"""What happens around the loop: JSON log, progress bar, early stopping, checkpoints and best weights."""

from __future__ import annotations

from pathlib import Path

import torch

from cxrdemo.runlog import RunLog
from cxrdemo.training.checkpoint import BEST, TrainState, save_checkpoint, save_torch
from cxrdemo.training.loop import Callback, FitContext


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class JsonLog(Callback):
    """Appends each epoch record to `metrics.jsonl`."""

    def __init__(self, log: RunLog) -> None:
        self.log = log

    def on_epoch_end(self, ctx: FitContext, state: TrainState, record: dict) -> None:
        self.log.record(**record)
        if state.stop:
            self.log.record(event="early_stop", epoch=state.epoch)


class EarlyStopping(Callback):
    """Stops after `patience` epochs without a validation improvement (before the checkpoint is written)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, ctx: FitContext, state: TrainState, record: dict) -> None:
        if state.stale >= self.patience:
            state.stop = True


class BestWeights(Callback):
    """Keeps the judged weights of the best epoch in memory and, when `active`, in `best.pt` for resume."""

    def __init__(self, run_dir: Path, active: bool, state: dict[str, torch.Tensor] | None = None) -> None:
        self.run_dir = run_dir
        self.active = active
        self.state = state

    def on_epoch_end(self, ctx: FitContext, state: TrainState, record: dict) -> None:
        if record["improved"]:
            self.state = clone_state(ctx.judged)
            if self.active:
                save_torch(self.run_dir / BEST, self.state)


class Checkpoint(Callback):
    """Writes `checkpoint.pt` atomically at the end of every epoch (rank 0 only)."""

    def __init__(self, run_dir: Path, active: bool) -> None:
        self.run_dir = run_dir
        self.active = active

    def on_epoch_end(self, ctx: FitContext, state: TrainState, record: dict) -> None:
        if not self.active:
            return
        payload = {
            "model": ctx.model.state_dict(),
            "optimizer": ctx.optimizer.state_dict(),
            "ema": ctx.ema.model.state_dict() if ctx.ema else None,
            "generator": ctx.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        save_checkpoint(self.run_dir, state, payload)


class ProgressBar(Callback):
    """A tqdm bar over all steps of the run (stderr), resumed at the step the run is at."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def on_fit_start(self, ctx: FitContext, state: TrainState) -> None:
        import sys

        from tqdm import tqdm

        # into a log file (a background campaign) a line every 30 s, not one per step
        interval = 0.1 if sys.stderr.isatty() else 30.0
        self.bar = tqdm(
            total=ctx.total_steps,
            initial=state.step,
            unit="step",
            disable=not self.enabled,
            dynamic_ncols=True,
            mininterval=interval,
        )

    def on_step_end(self, ctx: FitContext, state: TrainState, loss: float) -> None:
        self.bar.update(1)
        self.bar.set_postfix(epoch=state.epoch + 1, loss=f"{loss:.3f}")

    def on_fit_end(self, ctx: FitContext, state: TrainState) -> None:
        self.bar.close()
