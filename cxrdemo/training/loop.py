"""The training loop in the shape of torchvision's classification reference: `train_one_epoch`,
`evaluate`, and `fit`, which runs epochs and reports through callbacks (it knows nothing of files,
progress bars or the UI).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from cxrdemo.imaging.augment import augment
from cxrdemo.precision import autocast, channels_last_input
from cxrdemo.training.checkpoint import TrainState
from cxrdemo.training.config import TrainConfig
from cxrdemo.training.data import PreparedData


class Objective(Protocol):
    augment: object

    def prepare(self, x01: torch.Tensor) -> torch.Tensor: ...
    def loss(self, forward, x: torch.Tensor, y: torch.Tensor, step: int, gen: torch.Generator) -> torch.Tensor: ...
    def validate(self, model: nn.Module, val) -> tuple[float, float]: ...


class EMA:
    """Exponential moving average of parameters and buffers (Polyak averaging)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_v, v in zip(self.model.state_dict().values(), model.state_dict().values(), strict=True):
            if ema_v.dtype.is_floating_point:
                ema_v.lerp_(v, 1 - self.decay)
            else:
                ema_v.copy_(v)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at `step` (linear warmup, then cosine to ~0)."""
    if cfg.schedule == "constant":
        return 1.0
    warmup = int(total * cfg.warmup_fraction) if cfg.schedule == "onecycle" else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class FitContext:
    """Everything one run's epochs share."""

    cfg: TrainConfig
    model: nn.Module  # the bare module (its state is what is checkpointed and shipped)
    forward: nn.Module  # what the step calls: the module, its DDP wrapper or its compiled form
    objective: Objective
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    generator: torch.Generator
    data: PreparedData
    device: torch.device
    precision: str  # resolved: bf16 | fp32
    rank: int = 0
    world: int = 1

    @property
    def judged(self) -> nn.Module:
        """The weights validation scores and selection keeps: the EMA when there is one."""
        return self.ema.model if self.ema else self.model

    @property
    def steps_per_epoch(self) -> int:
        per_rank = math.ceil(len(self.data.train.targets) / self.world)
        return max(1, math.ceil(per_rank / self.cfg.batch_size))

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs


class Callback:
    """Hooks `fit` calls; every one is optional."""

    def on_fit_start(self, ctx: FitContext, state: TrainState) -> None: ...
    def on_step_end(self, ctx: FitContext, state: TrainState, loss: float) -> None: ...
    def on_epoch_end(self, ctx: FitContext, state: TrainState, record: dict) -> None: ...
    def on_fit_end(self, ctx: FitContext, state: TrainState) -> None: ...


def train_one_epoch(ctx: FitContext, state: TrainState, callbacks: Sequence[Callback] = ()) -> tuple[list[float], int]:
    """One pass over this rank's share of the training images; returns (step losses, images seen)."""
    cfg, model, gen = ctx.cfg, ctx.model, ctx.generator
    model.train()
    n_train = len(ctx.data.train.targets)
    order = torch.randperm(n_train, device=ctx.device, generator=gen)
    # every rank must take the same number of steps, or DDP's all-reduces pair up across steps and
    # the job hangs (NCCL) or dies (gloo): drop the n % world remainder, like DistributedSampler(drop_last=True)
    order = order[: n_train - n_train % ctx.world][ctx.rank :: ctx.world]
    losses: list[float] = []
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        if len(idx) < 2:  # BatchNorm cannot train on one image
            continue
        x = ctx.data.train.pixels[idx].unsqueeze(1).float() / 255.0
        x = ctx.objective.prepare(augment(x, ctx.objective.augment, gen))
        if cfg.channels_last:
            x = channels_last_input(x)
        for group in ctx.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(state.step, ctx.total_steps, cfg)
        with autocast(ctx.device, ctx.precision):
            loss = ctx.objective.loss(ctx.forward, x, ctx.data.train.targets[idx], state.step, gen)
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        ctx.optimizer.step()
        if ctx.ema:
            ctx.ema.update(model)
        losses.append(loss.item())
        state.step += 1
        for cb in callbacks:
            cb.on_step_end(ctx, state, losses[-1])
    return losses, len(order) * ctx.world


def evaluate(ctx: FitContext) -> tuple[float, float]:
    """(validation score, validation loss) of the judged weights; higher scores are better."""
    return ctx.objective.validate(ctx.judged, ctx.data.val)


def improved(state: TrainState, score: float, loss: float) -> bool:
    """A better score, or the same score (AUROC saturates on this data) with a lower loss."""
    if math.isnan(score):
        return loss < state.best_loss
    return score > state.best_score + 1e-6 or (abs(score - state.best_score) <= 1e-6 and loss < state.best_loss)


def epoch_record(
    ctx: FitContext, state: TrainState, losses: list[float], score: float, loss: float, images_per_s: float
) -> dict:
    """One `metrics.jsonl` line after an epoch; the admin page draws its curves from these."""
    cfg = ctx.cfg
    return {
        "event": "epoch",
        "epoch": state.epoch,
        "epochs": cfg.epochs,
        "step": state.step,
        "train_loss": float(np.mean(losses)) if losses else None,
        "val_loss": loss,
        "val_auroc": None if math.isnan(score) or cfg.arch == "autoencoder" else score,
        "lr": ctx.optimizer.param_groups[0]["lr"],
        "images_per_s": images_per_s,
        "elapsed_s": state.seconds,
        "eta_s": state.seconds / state.epoch * (cfg.epochs - state.epoch),
        "best_epoch": state.best_epoch,
    }


def run_epoch(ctx: FitContext, state: TrainState, callbacks: Sequence[Callback]) -> None:
    """Train one epoch, validate, update the best-so-far, and hand the epoch record to the callbacks."""
    started = time.time()
    losses, images = train_one_epoch(ctx, state, callbacks)
    train_seconds = time.time() - started
    score, loss = evaluate(ctx)
    state.epoch += 1
    state.seconds += time.time() - started
    better = improved(state, score, loss)
    if better:
        state.best_score, state.best_loss, state.best_epoch, state.stale = score, loss, state.epoch, 0
    else:
        state.stale += 1
    record = epoch_record(ctx, state, losses, score, loss, images / max(train_seconds, 1e-9))
    record["improved"] = better
    state.history.append(record)
    for cb in callbacks:
        cb.on_epoch_end(ctx, state, record)


def fit(ctx: FitContext, state: TrainState, callbacks: Sequence[Callback] = ()) -> TrainState:
    """Run epochs `state.epoch + 1 .. cfg.epochs` (or until a callback sets `state.stop`)."""
    for cb in callbacks:
        cb.on_fit_start(ctx, state)
    try:
        while state.epoch < ctx.cfg.epochs and not state.stop:
            run_epoch(ctx, state, callbacks)
    finally:  # a failed epoch (a full disk, an interrupt) still closes the progress bar before the error
        for cb in callbacks:
            cb.on_fit_end(ctx, state)
    return state
