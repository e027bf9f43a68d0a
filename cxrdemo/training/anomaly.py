"""The autoencoder: trained on NORMAL training images only; anomaly score = reconstruction error.

The score answers "does this look like the pediatric chest X-rays the models were trained on?".
Its threshold is a high quantile of the scores of validation normals (patient-grouped, from train).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cxrdemo.card import ModelCard
from cxrdemo.evaluation.calibration import anomaly_threshold
from cxrdemo.evaluation.metrics import auroc
from cxrdemo.inference.forward import reconstruction_errors
from cxrdemo.tasks import NORMAL, PNEUMONIA

THRESHOLD_QUANTILE = 0.99


def finalize_autoencoder(result, *, model_id: str = "autoencoder") -> dict:
    """Threshold from validation normals; report flagged fractions and normal-vs-pneumonia AUROC."""
    import io

    import pandas as pd

    from cxrdemo.data.tensor_cache import load_pixels
    from cxrdemo.models.registry import write_model

    cfg = result.config
    dataset = result.data.dataset
    device = result.data.train.pixels.device
    val_scores = reconstruction_errors(result.model, result.data.val.pixels)
    threshold = anomaly_threshold(val_scores, THRESHOLD_QUANTILE)
    test = dataset.split("test")
    tables = [
        pd.DataFrame({"path": result.data.val.frame["path"], "split": "val", "label": NORMAL, "score": val_scores})
    ]
    metrics: dict = {"val_normal": {"n": int(len(val_scores)), "flagged": float(np.mean(val_scores > threshold))}}
    if len(test):
        scores = reconstruction_errors(result.model, load_pixels(dataset, test, cfg.input_size).to(device))
        is_pneumonia = (test["label"] == PNEUMONIA).to_numpy()
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
    card = ModelCard(
        kind="autoencoder",
        task="anomaly",
        arch="autoencoder",
        classes=[],
        preprocessing={"input_size": cfg.input_size, "mean": 0.0, "std": 1.0, "resize": "squash"},
        threshold=threshold,
        metrics=metrics,
        training={
            **cfg.to_dict(),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "seconds": round(result.seconds, 1),
            "device": str(device),
            "precision_used": result.precision,
            "trained_on": "NORMAL only",
        },
        data={
            "dataset": dataset.root.name,
            "manifest_fingerprint": dataset.fingerprint,
            "n_train": int(len(result.data.train.frame)),
            "n_val": int(len(result.data.val.frame)),
        },
        extra={
            "image_statistics": statistics,
            "threshold_rule": f"{THRESHOLD_QUANTILE:.0%} quantile of validation-normal reconstruction MSE",
        },
    )
    return write_model(Path(cfg.out), model_id, result.model.state_dict(), card, buffer.getvalue(), run=True)


def fit_image_statistics(dataset, val_fraction: float, seed: int) -> dict:
    """The second out-of-distribution signal (see `cxrdemo.inference.ood`), fitted on all training images."""
    from cxrdemo.data.dataset import validation_split
    from cxrdemo.data.tensor_cache import load_pixels
    from cxrdemo.inference.ood import STATISTICS_SIZE, fit_statistics

    train_side, val_side = validation_split(dataset, val_fraction=val_fraction, seed=seed)
    return fit_statistics(
        load_pixels(dataset, train_side, STATISTICS_SIZE), load_pixels(dataset, val_side, STATISTICS_SIZE)
    )


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
