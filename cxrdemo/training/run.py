"""Build a run from its config, resume it from its last checkpoint if it has one, fit, select weights.

Validation is carved out of the training split by patient; the test split is never looked at here:
`cxrdemo.training.finalize` evaluates the chosen weights once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from cxrdemo.fileio import atomic_write_json
from cxrdemo.models.architectures import create_model
from cxrdemo.precision import resolve_precision, to_channels_last
from cxrdemo.runlog import RunLog, read_metrics, rewrite_metrics
from cxrdemo.tasks import get_task
from cxrdemo.training.callbacks import BestWeights, Checkpoint, EarlyStopping, JsonLog, ProgressBar
from cxrdemo.training.checkpoint import BEST, TrainState, load_checkpoint, load_torch
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
        objective = ClassifierObjective(spec, criterion, cfg.augment, cfg.mixup_alpha, cfg.seed, precision)
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
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
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
    """
    rank, world = _distributed()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
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
