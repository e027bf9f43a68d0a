"""Re-evaluate an installed model on a split of a dataset (the `evaluate` command)."""

from __future__ import annotations

import numpy as np
import torch

from cxrdemo.calibration import apply_temperature
from cxrdemo.data import Dataset, card_validation_split, load_dataset
from cxrdemo.forward import predict_logits
from cxrdemo.knn import embed_pixels, memory_probabilities
from cxrdemo.metrics import report
from cxrdemo.precision import serving_precision
from cxrdemo.predict import Predictor
from cxrdemo.tasks import get_task
from cxrdemo.tensor_cache import load_pixels

SPLITS = ("test", "val", "official_val")


def split_frame(dataset: Dataset, card: dict, split: str):
    """`val` is the card's own patient-grouped validation set; `official_val` the 16-image folder."""
    if split == "test":
        return dataset.split("test")
    if split == "official_val":
        return dataset.split("val")
    if split == "val":
        return card_validation_split(dataset, card)[1]
    raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


def batch_probabilities(predictor: Predictor, model_id: str, dataset: Dataset, frame) -> np.ndarray:
    """Calibrated probabilities (N, C) of `frame`'s images under an installed model."""
    model = predictor.get(model_id)
    if model.kind == "ensemble":
        return np.mean([batch_probabilities(predictor, m, dataset, frame) for m in model.card["members"]], axis=0)
    if model.kind == "knn":
        backbone = predictor.get(model.card["backbone"])
        pixels = load_pixels(dataset, frame, backbone.preprocessing.input_size)
        return memory_probabilities(model, embed_pixels(backbone, pixels))
    pixels = load_pixels(dataset, frame, model.preprocessing.input_size)
    with torch.inference_mode():
        precision = serving_precision(model.card.get("inference_precision"), pixels.device)
        logits = predict_logits(model.module, pixels, model.preprocessing, precision=precision).numpy()
    return apply_temperature(logits, model.temperature)


def evaluate_model(
    model_id: str, split: str = "test", data: str | None = None, n_boot: int = 1000, predictor: Predictor | None = None
) -> dict:
    predictor = predictor or Predictor()
    model = predictor.get(model_id)
    task = get_task(model.card["task"])
    dataset = load_dataset(data)
    frame = split_frame(dataset, model.card, split)
    probs = batch_probabilities(predictor, model_id, dataset, frame)
    y = dataset.targets(frame, task)
    metrics = report(task.name, y, probs, model.threshold if task.num_classes == 2 else 0.5, n_boot)
    return {"model": model_id, "split": split, "dataset": dataset.root.name, "n": int(len(frame)), "metrics": metrics}
