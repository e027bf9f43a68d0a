"""The autoencoder: trained on NORMAL training images only; anomaly score = reconstruction error.

The score answers "does this look like the pediatric chest X-rays the models were trained on?".
Its threshold is a high quantile of the scores of validation normals (patient-grouped, from train).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrdemo.augment import AugmentConfig, augment
from cxrdemo.calibration import anomaly_threshold
from cxrdemo.metrics import auroc
from cxrdemo.models import create_model
from cxrdemo.runlog import RunLog

# gentle: the autoencoder must learn what normal chest films look like, not every distortion
AE_AUGMENT = AugmentConfig(
    rotation_deg=5, translate=0.03, scale=(0.95, 1.05), blur_prob=0.1, downsample_prob=0.1, noise_std=0.0
)
THRESHOLD_QUANTILE = 0.99


@torch.inference_mode()
def reconstruction_scores(model: nn.Module, pixels: torch.Tensor, batch_size: int = 128) -> np.ndarray:
    """Mean squared reconstruction error per image for uint8 pixels (N, S, S)."""
    model.eval()
    scores = []
    for start in range(0, len(pixels), batch_size):
        x = pixels[start : start + batch_size].unsqueeze(1).float() / 255.0
        scores.append(((model(x) - x) ** 2).mean(dim=(1, 2, 3)).float().cpu())
    return torch.cat(scores).numpy() if scores else np.zeros(0)


@torch.inference_mode()
def reconstruct(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """(reconstruction, squared-error map, score) for one image tensor (1, 1, S, S) in [0, 1]."""
    recon = model(x)
    error = (recon - x) ** 2
    return recon[0, 0].numpy(), error[0, 0].numpy(), float(error.mean())


def train_autoencoder_loop(cfg, data, device: torch.device, log: RunLog, t0: float):
    """Train on NORMAL images (prepare_data already filtered them); select on validation MSE."""
    from cxrdemo.train import TrainResult, epoch_record, lr_factor

    model = create_model("autoencoder").to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    n = len(data.train.pixels)
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = steps_per_epoch * cfg.epochs
    best = {"loss": math.inf, "epoch": -1, "state": None}
    history, step, stale = [], 0, 0
    log.record(event="start", epochs=cfg.epochs, steps=total, n_train=n, n_val=len(data.val.pixels), device=str(device))
    for epoch in range(cfg.epochs):
        model.train()
        start_time = time.time()
        losses = []
        for idx in torch.randperm(n, device=device, generator=gen).split(cfg.batch_size):
            if len(idx) < 2:
                continue
            x = augment(data.train.pixels[idx].unsqueeze(1).float() / 255.0, AE_AUGMENT, gen)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(step, total, cfg)
            loss = F.mse_loss(model(x), x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
        val_loss = float(np.mean(reconstruction_scores(model, data.val.pixels))) if len(data.val.pixels) else math.nan
        if val_loss < best["loss"]:
            best.update(loss=val_loss, epoch=epoch + 1, state={k: v.clone() for k, v in model.state_dict().items()})
            stale = 0
        else:
            stale += 1
        record = epoch_record(
            cfg,
            epoch,
            step,
            losses,
            val_loss,
            math.nan,
            optimizer.param_groups[0]["lr"],
            n / max(time.time() - start_time, 1e-9),
            t0,
            best["epoch"],
        )
        history.append(record)
        log.record(**record)
        if stale >= cfg.patience:
            break
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(model, cfg, data, best["epoch"], math.nan, history, time.time() - t0)


def finalize_autoencoder(result, *, model_id: str = "autoencoder") -> dict:
    """Threshold from validation normals; report flagged fractions and normal-vs-pneumonia AUROC."""
    import io

    import pandas as pd

    from cxrdemo.registry import write_model
    from cxrdemo.tensor_cache import load_pixels

    cfg = result.config
    dataset = result.data.dataset
    device = result.data.train.pixels.device
    val_scores = reconstruction_scores(result.model, result.data.val.pixels)
    threshold = anomaly_threshold(val_scores, THRESHOLD_QUANTILE)
    test = dataset.split("test")
    tables = [
        pd.DataFrame({"path": result.data.val.frame["path"], "split": "val", "label": "NORMAL", "score": val_scores})
    ]
    metrics: dict = {"val_normal": {"n": int(len(val_scores)), "flagged": float(np.mean(val_scores > threshold))}}
    if len(test):
        scores = reconstruction_scores(result.model, load_pixels(dataset, test, cfg.input_size).to(device))
        is_pneumonia = (test["label"] == "PNEUMONIA").to_numpy()
        metrics["test"] = {
            "n": int(len(test)),
            "flagged": float(np.mean(scores > threshold)),
            "flagged_normal": float(np.mean(scores[~is_pneumonia] > threshold)) if (~is_pneumonia).any() else None,
            "flagged_pneumonia": float(np.mean(scores[is_pneumonia] > threshold)) if is_pneumonia.any() else None,
            "pneumonia_vs_normal_auroc": _none_if_nan(auroc(is_pneumonia.astype(int), scores)),
        }
        tables.append(pd.DataFrame({"path": test["path"], "split": "test", "label": test["label"], "score": scores}))
    buffer = io.StringIO()
    pd.concat(tables).to_csv(buffer, index=False, float_format="%.6g")
    statistics = fit_image_statistics(dataset, cfg.val_fraction, cfg.seed)
    card = {
        "image_statistics": statistics,
        "kind": "autoencoder",
        "arch": "autoencoder",
        "task": "anomaly",
        "classes": [],
        "preprocessing": {"input_size": cfg.input_size, "mean": 0.0, "std": 1.0, "resize": "squash"},
        "training": {
            **cfg.to_dict(),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "seconds": round(result.seconds, 1),
            "device": str(device),
            "trained_on": "NORMAL only",
        },
        "data": {
            "dataset": dataset.root.name,
            "manifest_fingerprint": dataset.fingerprint,
            "n_train": int(len(result.data.train.frame)),
            "n_val": int(len(result.data.val.frame)),
        },
        "threshold": threshold,
        "threshold_rule": f"{THRESHOLD_QUANTILE:.0%} quantile of validation-normal reconstruction MSE",
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return write_model(Path(cfg.out), model_id, result.model.state_dict(), card, buffer.getvalue(), run=True)


def fit_image_statistics(dataset, val_fraction: float, seed: int) -> dict:
    """The second out-of-distribution signal (see `cxrdemo.ood`), fitted on all training images."""
    from cxrdemo.data import patient_split
    from cxrdemo.ood import STATISTICS_SIZE, fit_statistics
    from cxrdemo.tensor_cache import load_pixels

    train_side, val_side = patient_split(dataset.split("train"), val_fraction=val_fraction, seed=seed)
    return fit_statistics(
        load_pixels(dataset, train_side, STATISTICS_SIZE), load_pixels(dataset, val_side, STATISTICS_SIZE)
    )


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
