"""Turn a trained classifier into a shippable model: calibration, threshold, metrics, card, predictions.

Temperature and operating threshold are fitted on the patient-grouped validation set carved from
train. The test split (and the official 16-image val split) are evaluated once, with everything
already fixed, and only reported.
"""

from __future__ import annotations

import io
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrdemo.card import ModelCard
from cxrdemo.data.tensor_cache import load_pixels
from cxrdemo.evaluation.calibration import apply_temperature, choose_thresholds, fit_temperature
from cxrdemo.evaluation.metrics import report
from cxrdemo.imaging import lungs
from cxrdemo.inference.forward import predict_logits
from cxrdemo.models.registry import write_model
from cxrdemo.precision import fastest_inference_precision
from cxrdemo.tasks import get_task
from cxrdemo.training import TrainResult

# The decision rule, written down before any test evaluation (docs/DECISIONS.md): a network trained
# with the class-balanced loss estimates the posterior at equal class priors, so p >= 0.5 (argmax;
# temperature scaling does not move it) is the Bayes decision at equal priors. Unlike Youden's J on
# a validation set whose AUROC saturates near 0.997, it is decided by no handful of images, and it
# does not carry the training prevalence (74 % pneumonia) into a deployment with another one.
BALANCED_PRIOR_THRESHOLD = 0.5


def operating_threshold(thresholds: dict, cfg) -> float:
    """The shipped threshold: the equal-prior decision for class-balanced training, else Youden's."""
    return BALANCED_PRIOR_THRESHOLD if cfg.class_balanced else float(thresholds["youden"])


def threshold_rule(cfg) -> str:
    if cfg.class_balanced:
        return "balanced_prior: p >= 0.5 of a class-balanced network (Bayes decision at equal class priors)"
    return "youden: maximum of sensitivity + specificity - 1 on validation"


def default_model_id(arch: str, task: str) -> str:
    return arch if arch == "autoencoder" else f"{arch}-{task}"


def prediction_rows(
    frame: pd.DataFrame, split: str, y: np.ndarray, logits: np.ndarray, probs: np.ndarray, classes: list[str]
) -> pd.DataFrame:
    rows = pd.DataFrame(
        {
            "path": frame["path"].to_numpy(),
            "split": split,
            "y_true": y,
            "label": frame["label"].to_numpy(),
            "subtype": frame["subtype"].to_numpy(),
        }
    )
    for i, name in enumerate(classes):
        rows[f"logit_{name}"] = logits[:, i]
        rows[f"prob_{name}"] = probs[:, i]
    return rows


def evaluation_frames(result: TrainResult) -> dict[str, pd.DataFrame]:
    """Frames evaluated after training: carved validation, official val, test."""
    dataset = result.data.dataset
    frames = {"val": result.data.val.frame, "official_val": dataset.split("val"), "test": dataset.split("test")}
    if result.config.arch == "autoencoder":
        return frames
    return {k: v for k, v in frames.items() if len(v)}


def finalize(result: TrainResult, *, model_id: str | None = None, n_boot: int = 1000) -> dict:
    """Calibrate on validation, evaluate val/official_val/test, write model + card + predictions to the run dir."""
    cfg = result.config
    model_id = model_id or default_model_id(cfg.arch, cfg.task)
    task = get_task(cfg.task)
    classes = list(task.classes)
    spec = cfg.preprocessing()
    dataset = result.data.dataset
    device = result.data.train.pixels.device
    # every stored figure is computed at the precision the model will be served in
    inference_precision = fastest_inference_precision(result.model, cfg.input_size, device)
    logits_by_split: dict[str, tuple[pd.DataFrame, np.ndarray, np.ndarray]] = {}
    for split, frame in evaluation_frames(result).items():
        pixels = result.data.val.pixels if split == "val" else load_pixels(dataset, frame, spec).to(device)
        logits = predict_logits(result.model, pixels, spec, precision=inference_precision).numpy()
        logits_by_split[split] = (frame, dataset.targets(frame, task), logits)

    _, y_val, val_logits = logits_by_split["val"]
    temperature = fit_temperature(val_logits, y_val)
    thresholds: dict = {}
    threshold = None
    if task.num_classes == 2:
        thresholds = choose_thresholds(y_val, apply_temperature(val_logits, temperature)[:, 1])
        threshold = operating_threshold(thresholds, cfg)

    metrics, tables = {}, []
    for split, (frame, y, logits) in logits_by_split.items():
        probs = apply_temperature(logits, temperature)
        metrics[split] = report(cfg.task, y, probs, threshold if threshold is not None else 0.5, n_boot)
        tables.append(prediction_rows(frame, split, y, logits, probs, classes))
    buffer = io.StringIO()
    pd.concat(tables).to_csv(buffer, index=False, float_format="%.6g")

    card = ModelCard(
        kind="classifier",
        task=cfg.task,
        arch=cfg.arch,
        classes=classes,
        preprocessing=spec.to_dict(),
        threshold=threshold,
        temperature=temperature,
        metrics=metrics,
        training={
            **cfg.to_dict(),
            "best_epoch": result.best_epoch,
            "selected_epoch": result.selected_epoch,
            "best_val_auroc": result.best_val_auroc,
            "precision_used": result.precision,
            "epochs_run": len(result.history),
            "seconds": round(result.seconds, 1),
            "device": str(device),
            "torch": torch.__version__,
            "host": platform.node() or "unknown",
            "imagenet_init": bool(getattr(result.model, "pretrained", False)),
            # the lung model whose boxes cut this model's inputs (a new one changes every crop)
            **({"lung_model": lungs.weights_digest()} if spec.resize == "lung_crop" else {}),
            # a seed average: what each copy took (best_val_auroc above is their mean)
            **({"copies": result.copies} if result.copies else {}),
        },
        data=data_summary(result),
        extra={
            "inference_precision": inference_precision,
            "threshold_rule": threshold_rule(cfg) if threshold is not None else "argmax",
            "thresholds": thresholds,
            "evaluation_command": f"python -m cxrdemo evaluate --model {model_id} --split test",
        },
    )
    tensors = result.model.state_dict()
    return write_model(Path(cfg.out), model_id, tensors, card, buffer.getvalue(), run=True)


def data_summary(result: TrainResult) -> dict:
    dataset = result.data.dataset
    return {
        "dataset": dataset.root.name,
        "manifest_fingerprint": dataset.fingerprint,
        "n_train": int(len(result.data.train.frame)),
        "n_val": int(len(result.data.val.frame)),
        "n_test": int((dataset.frame["split"] == "test").sum()),
        "validation": f"{result.config.val_fraction:.0%} of train grouped by patient_id (seed {result.config.seed})",
    }
