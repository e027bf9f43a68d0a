"""Build a run from its config, resume it from its last checkpoint if it has one, fit, select weights.

Validation is carved out of the training split by patient; the test split is never looked at here:
`cxrdemo.training.finalize` evaluates the chosen weights once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from cxrdemo.fileio import atomic_write_json
from cxrdemo.models.architectures import SeedAverage, create_model
from cxrdemo.precision import resolve_precision, to_channels_last
from cxrdemo.runlog import RunLog, read_metrics, rewrite_metrics
from cxrdemo.tasks import get_task
from cxrdemo.training.callbacks import BestWeights, Checkpoint, EarlyStopping, JsonLog, ProgressBar
from cxrdemo.training.checkpoint import BEST, TrainState, load_checkpoint, load_torch, save_torch
from cxrdemo.training.config import TrainConfig, resolve_device
from cxrdemo.training.data import PreparedData, prepare_data
from cxrdemo.training.loop import EMA, Callback, FitContext, fit
from cxrdemo.training.objectives import ClassifierObjective, ReconstructionObjective, class_weights


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    data: PreparedData
    best_epoch: int
    best_val_auroc: float
    history: list[dict]
    seconds: float
    precision: str = "fp32"
    selected_epoch: int = 0
    copies: list[dict] = field(default_factory=list)  # a seed average: each copy's seed, epochs, time


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def build_context(cfg: TrainConfig, data: PreparedData, device: torch.device, rank: int, world: int) -> FitContext:
    """Model, objective, optimizer and EMA for `cfg` (fresh weights; a checkpoint is loaded over them)."""
    precision = resolve_precision(cfg.precision, device)
    spec = cfg.preprocessing()
    if cfg.arch == "autoencoder":
        model = create_model("autoencoder").to(device)
        objective = ReconstructionObjective()
        weight_decay = 1e-4
    else:
        task = get_task(cfg.task)
        model = create_model(cfg.arch, task.num_classes).to(device)
        weights = class_weights(data.train.targets, task.num_classes) if cfg.class_balanced else None
        criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
        objective = ClassifierObjective(spec, criterion, cfg.augment, cfg.mixup_alpha, cfg.init_seed, precision)
        weight_decay = cfg.weight_decay
    if cfg.channels_last:
        model = to_channels_last(model)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    forward: nn.Module = model
    if world > 1:
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        forward = torch.compile(forward)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=weight_decay)
    generator = torch.Generator(device=device).manual_seed(cfg.init_seed)
    return FitContext(cfg, model, forward, objective, optimizer, ema, generator, data, device, precision, rank, world)


def restore(ctx: FitContext, run_dir: Path) -> tuple[TrainState, dict | None]:
    """Load the last checkpoint of `run_dir` into `ctx`; (fresh state, None) when there is none."""
    loaded = load_checkpoint(run_dir)
    if loaded is None:
        return TrainState(), None
    state, payload = loaded
    ctx.model.load_state_dict(payload["model"])
    ctx.optimizer.load_state_dict(payload["optimizer"])
    if ctx.ema and payload.get("ema") is not None:
        ctx.ema.model.load_state_dict(payload["ema"])
    ctx.generator.set_state(payload["generator"])
    torch.set_rng_state(payload["torch_rng"])
    best_path = run_dir / BEST
    best = load_torch(best_path) if best_path.exists() else None
    return state, best


def train(cfg: TrainConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train `cfg.arch`, continuing from `cfg.out`'s checkpoint when `resume`, and return the selected weights.

    `callbacks` run after the built-in ones (progress, early stopping, best weights, log, checkpoint).
    With `cfg.seeds` > 1 the copies are trained one after another and returned as their `SeedAverage`.
    """
    if cfg.seeds > 1:
        return train_seed_average(cfg, resume=resume, callbacks=callbacks)
    return _train_one(cfg, resume=resume, callbacks=callbacks)


COPY_WEIGHTS = "copy.pt"  # in a finished copy's folder: its selected weights and what it took


def copy_config(cfg: TrainConfig, k: int) -> TrainConfig:
    """Copy k of a seed average: the same recipe and validation split, weights seed `init_seed + k`."""
    return replace(cfg, seeds=1, weights_seed=cfg.init_seed + k, out=str(Path(cfg.out) / f"seed-{k}"))


def train_seed_average(cfg: TrainConfig, *, resume: bool, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train `cfg.seeds` copies in `RUN_DIR/seed-K/` (each resumable; a finished one is loaded), then average.

    Rank 0 only: the copies are ordinary single-process runs (docs/DECISIONS.md, 2026-12-07).
    """
    if cfg.arch == "autoencoder":
        raise ValueError("--seeds is for classifiers; the autoencoder is trained once")
    run_dir = Path(cfg.out)
    log = RunLog(run_dir)
    log.status("running", pid=os.getpid(), arch=cfg.arch, task=cfg.task, started=time.time(), seeds=cfg.seeds)
    atomic_write_json(run_dir / "config.json", cfg.to_dict())
    copies: list[nn.Module] = []
    records: list[dict] = []
    history: list[dict] = []
    for k in range(cfg.seeds):
        sub = copy_config(cfg, k)
        done = Path(sub.out) / COPY_WEIGHTS
        if not (resume and done.exists()):
            result = _train_one(sub, resume=resume, callbacks=callbacks)
            record = {
                "weights_seed": sub.init_seed,
                "epochs_run": len(result.history),
                "selected_epoch": result.selected_epoch,
                "best_val_auroc": result.best_val_auroc,
                "seconds": round(result.seconds, 1),
                "precision_used": result.precision,
            }
            save_torch(done, {"model": result.model.state_dict(), "record": record, "history": result.history})
            del result
        saved = load_torch(done)
        model = create_model(cfg.arch, get_task(cfg.task).num_classes)
        model.load_state_dict(saved["model"])
        copies.append(model)
        records.append(saved["record"])
        if k == 0:
            history = saved["history"]  # the card's epoch records: the first copy's (all have the same recipe)
        log.record(event="copy", copy=k, **saved["record"])
    device = resolve_device(cfg.device)
    average = SeedAverage(copies).to(device)
    average = to_channels_last(average) if cfg.channels_last else average
    average.eval()
    return TrainResult(
        model=average,
        config=cfg,
        data=prepare_data(cfg, device),
        best_epoch=records[-1]["selected_epoch"],
        best_val_auroc=sum(r["best_val_auroc"] for r in records) / len(records),  # the copies' mean
        history=history,
        seconds=sum(r["seconds"] for r in records),
        precision=records[0]["precision_used"],
        selected_epoch=records[-1]["selected_epoch"],
        copies=records,
    )


def _train_one(cfg: TrainConfig, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> TrainResult:
    rank, world = _distributed()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.init_seed)
    run_dir = Path(cfg.out)
    log = RunLog(run_dir, active=rank == 0)
    log.status("running", pid=os.getpid(), arch=cfg.arch, task=cfg.task, started=time.time())
    if rank == 0:
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
    data = prepare_data(cfg, device)
    ctx = build_context(cfg, data, device, rank, world)
    state, best = restore(ctx, run_dir) if resume else (TrainState(), None)
    if rank == 0:
        if resume:  # drop epoch records the killed process wrote after its last checkpoint
            kept = [r for r in read_metrics(run_dir) if r.get("event") != "epoch" or r["epoch"] <= state.epoch]
            rewrite_metrics(run_dir, kept)
        log.record(
            event="resume" if state.epoch else "start",
            from_epoch=state.epoch,
            epochs=cfg.epochs,
            steps=ctx.total_steps,
            n_train=len(data.train.targets),
            n_val=len(data.val.targets),
            device=str(device),
            precision=ctx.precision,
            threads=torch.get_num_threads(),
            world_size=world,
        )
    keeper = BestWeights(run_dir, rank == 0 and cfg.select == "best", best)
    built_in = [
        ProgressBar(rank == 0),
        EarlyStopping(cfg.patience),
        keeper,
        JsonLog(log),
        Checkpoint(run_dir, rank == 0),
    ]
    state = fit(ctx, state, [*built_in, *callbacks])
    selected = state.epoch
    if cfg.select == "best" and keeper.state is not None:
        ctx.model.load_state_dict(keeper.state)
        selected = state.best_epoch
    elif ctx.ema:
        ctx.model.load_state_dict(ctx.ema.model.state_dict())
    ctx.model.eval()
    best_auroc = state.best_score if cfg.arch != "autoencoder" else float("nan")
    return TrainResult(
        ctx.model, cfg, data, state.best_epoch, best_auroc, state.history, state.seconds, ctx.precision, selected
    )
