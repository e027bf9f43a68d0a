"""One training loop for every classifier (and the autoencoder), on GPU-resident uint8 data.

    python -m cxrdemo train --arch resnet18 --task binary --epochs 40 --out runs/r18
    torchrun --nproc_per_node=2 -m cxrdemo train --arch cnn4 --device cpu --subset 200 --out runs/ddp

Validation is carved out of the training split by patient; checkpoints are chosen and training is
stopped on validation AUROC (ties broken by validation loss, since AUROC saturates on this data).
The test split is never looked at here: `cxrdemo.finalize` evaluates the chosen checkpoint once.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from cxrdemo.augment import AugmentConfig, augment
from cxrdemo.data import Dataset, load_dataset, patient_split
from cxrdemo.metrics import auroc
from cxrdemo.models import create_model
from cxrdemo.preprocess import Preprocessing, normalize
from cxrdemo.runlog import RunLog, atomic_write_json
from cxrdemo.tasks import get_task
from cxrdemo.tensor_cache import load_pixels


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "resnet18"
    task: str = "binary"  # binary | subtype (ignored by the autoencoder, which sees NORMAL only)
    data: str | None = None  # dataset folder; None -> CXRDEMO_DATA, then the bundled sample
    out: str = "runs/latest"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 0.05
    schedule: str = "onecycle"  # onecycle (warmup + cosine) | cosine (no warmup) | constant
    warmup_fraction: float = 0.1
    label_smoothing: float = 0.05
    class_balanced: bool = True  # weight the loss by inverse class frequency
    grad_clip: float = 2.0
    ema_decay: float = 0.0  # >0 keeps an exponential moving average of the weights and selects on it
    mixup_alpha: float = 0.0
    patience: int = 10  # epochs without validation improvement before stopping
    val_fraction: float = 0.15
    subset: int | None = None  # train on a stratified subset of N training images (smoke runs)
    input_size: int = 224
    device: str = "auto"  # auto | cuda | cpu
    compile: bool = False
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(name)


@dataclass
class SplitData:
    """Pixels (N, S, S) uint8 and class indices of one side of the split."""

    frame: pd.DataFrame
    pixels: torch.Tensor
    targets: torch.Tensor


@dataclass
class PreparedData:
    dataset: Dataset
    train: SplitData
    val: SplitData


def stratified_subset(frame: pd.DataFrame, n: int, column: str, seed: int) -> pd.DataFrame:
    """About `n` rows of `frame`, keeping the share of each value of `column` (at least 2 of each)."""
    if n >= len(frame):
        return frame
    share = n / len(frame)
    parts = [g.sample(min(len(g), max(2, round(len(g) * share))), random_state=seed) for _, g in frame.groupby(column)]
    return pd.concat(parts).reset_index(drop=True)


def prepare_data(cfg: TrainConfig, device: torch.device) -> PreparedData:
    """Load, subset and patient-split the training split, decode it once, move it to `device`."""
    task = get_task(cfg.task)
    dataset = load_dataset(cfg.data)
    frame = dataset.split("train")
    if cfg.arch == "autoencoder":
        frame = frame[frame["label"] == "NORMAL"].reset_index(drop=True)
    if cfg.subset:
        frame = stratified_subset(frame, cfg.subset, "subtype", cfg.seed)
    train_frame, val_frame = patient_split(frame, val_fraction=cfg.val_fraction, seed=cfg.seed)
    sides = []
    for part in (train_frame, val_frame):
        pixels = load_pixels(dataset, part, cfg.input_size).to(device)
        targets = torch.from_numpy(dataset.targets(part, task)).to(device)
        sides.append(SplitData(part, pixels, targets))
    return PreparedData(dataset, *sides)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at `step` (linear warmup, then cosine to ~0)."""
    if cfg.schedule == "constant":
        return 1.0
    warmup = int(total * cfg.warmup_fraction) if cfg.schedule == "onecycle" else 0
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(targets, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


@torch.inference_mode()
def predict_logits(model: nn.Module, pixels: torch.Tensor, spec: Preprocessing, batch_size: int = 128) -> torch.Tensor:
    """Logits (N, C) in float32 for uint8 pixels (N, S, S), no augmentation."""
    model.eval()
    device = pixels.device
    outs = []
    for start in range(0, len(pixels), batch_size):
        x = normalize(pixels[start : start + batch_size].unsqueeze(1), spec)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            outs.append(model(x).float())
    return torch.cat(outs) if outs else torch.zeros((0, 0))


def validation_score(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(AUROC, loss): binary AUROC of the positive class, macro one-vs-rest AUROC for 3 classes."""
    loss = float(F.cross_entropy(logits, targets)) if len(targets) else float("nan")
    probs = torch.softmax(logits, 1).cpu().numpy()
    y = targets.cpu().numpy()
    if probs.shape[1] == 2:
        return auroc(y, probs[:, 1]), loss
    scores = [auroc((y == c).astype(int), probs[:, c]) for c in range(probs.shape[1])]
    scores = [s for s in scores if not math.isnan(s)]
    return (float(np.mean(scores)) if scores else float("nan")), loss


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


def epoch_record(
    cfg: TrainConfig,
    epoch: int,
    step: int,
    losses: list[float],
    val_loss: float,
    val_auroc: float,
    lr: float,
    images_per_s: float,
    t0: float,
    best_epoch: int,
) -> dict:
    """One `metrics.jsonl` line after epoch `epoch` (0-based); the admin page draws its curves from these."""
    elapsed = time.time() - t0
    return {
        "event": "epoch",
        "epoch": epoch + 1,
        "epochs": cfg.epochs,
        "step": step,
        "train_loss": float(np.mean(losses)) if losses else None,
        "val_loss": val_loss,
        "val_auroc": None if math.isnan(val_auroc) else val_auroc,
        "lr": lr,
        "images_per_s": images_per_s,
        "elapsed_s": elapsed,
        "eta_s": elapsed / (epoch + 1) * (cfg.epochs - epoch - 1),
        "best_epoch": best_epoch,
    }


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _progress(total: int, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is in requirements; the GPU box may lack it
        return None
    return tqdm(total=total, unit="step", disable=not enabled, dynamic_ncols=True)


@dataclass
class TrainResult:
    model: nn.Module
    config: TrainConfig
    data: PreparedData
    best_epoch: int
    best_val_auroc: float
    history: list[dict]
    seconds: float


def train(cfg: TrainConfig) -> TrainResult:
    """Train `cfg.arch` and return the model restored to its best validation checkpoint."""
    rank, world = _distributed()
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    log = RunLog(Path(cfg.out), active=rank == 0)
    log.status("running", pid=os.getpid(), arch=cfg.arch, task=cfg.task, started=time.time())
    if rank == 0:
        atomic_write_json(Path(cfg.out) / "config.json", cfg.to_dict())
    t0 = time.time()
    data = prepare_data(cfg, device)
    if cfg.arch == "autoencoder":
        from cxrdemo.anomaly import train_autoencoder_loop

        return train_autoencoder_loop(cfg, data, device, log, t0)
    task = get_task(cfg.task)
    model = create_model(cfg.arch, task.num_classes).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    spec = Preprocessing(input_size=cfg.input_size)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(train_model) if cfg.compile else train_model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    weights = class_weights(data.train.targets, task.num_classes) if cfg.class_balanced else None
    criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)

    n_train = len(data.train.targets)
    per_rank = math.ceil(n_train / world)
    steps_per_epoch = max(1, math.ceil(per_rank / cfg.batch_size))
    total_steps = steps_per_epoch * cfg.epochs
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    best = {"auroc": -1.0, "loss": math.inf, "epoch": -1, "state": None}
    history: list[dict] = []
    bar = _progress(total_steps, rank == 0)
    step = 0
    stale = 0
    log.record(
        event="start",
        epochs=cfg.epochs,
        steps=total_steps,
        n_train=n_train,
        n_val=len(data.val.targets),
        device=str(device),
        world_size=world,
    )
    for epoch in range(cfg.epochs):
        model.train()
        epoch_start = time.time()
        order = torch.randperm(n_train, device=device, generator=gen)
        # every rank must take the same number of steps, or DDP's all-reduces pair up across steps and
        # the job hangs (NCCL) or dies (gloo): drop the n % world remainder, like DistributedSampler(drop_last=True)
        order = order[: n_train - n_train % world][rank::world]
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            if len(idx) < 2:
                continue
            x = data.train.pixels[idx].unsqueeze(1).float() / 255.0
            x = normalize(augment(x, cfg.augment, gen), spec)
            y = data.train.targets[idx]
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total_steps, cfg)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                if cfg.mixup_alpha > 0:
                    lam = float(np.random.default_rng(cfg.seed + step).beta(cfg.mixup_alpha, cfg.mixup_alpha))
                    perm = torch.randperm(len(idx), device=device, generator=gen)
                    logits = forward(lam * x + (1 - lam) * x[perm])
                    loss = lam * criterion(logits.float(), y) + (1 - lam) * criterion(logits.float(), y[perm])
                else:
                    loss = criterion(forward(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if ema:
                ema.update(model)
            losses.append(loss.item())
            step += 1
            if bar:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        seconds = time.time() - epoch_start
        judged = ema.model if ema else model
        val_logits = predict_logits(judged, data.val.pixels, spec)
        val_auroc, val_loss = validation_score(val_logits, data.val.targets)
        improved = val_auroc > best["auroc"] + 1e-6 or (
            abs(val_auroc - best["auroc"]) <= 1e-6 and val_loss < best["loss"]
        )
        if improved:
            best.update(
                auroc=val_auroc,
                loss=val_loss,
                epoch=epoch + 1,
                state={k: v.detach().clone() for k, v in judged.state_dict().items()},
            )
            stale = 0
        else:
            stale += 1
        record = epoch_record(
            cfg,
            epoch,
            step,
            losses,
            val_loss,
            val_auroc,
            optimizer.param_groups[0]["lr"],
            len(order) * world / max(seconds, 1e-9),
            t0,
            best["epoch"],
        )
        history.append(record)
        log.record(**record)
        if stale >= cfg.patience:
            log.record(event="early_stop", epoch=epoch + 1)
            break
    if bar:
        bar.close()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(model, cfg, data, best["epoch"], best["auroc"], history, time.time() - t0)
