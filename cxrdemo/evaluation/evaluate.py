"""Re-evaluate an installed model on a split of a dataset (the `evaluate` command)."""

from __future__ import annotations

import numpy as np
import torch

from cxrdemo.data.dataset import Dataset, card_validation_split, load_dataset
from cxrdemo.data.tensor_cache import DatasetImages
from cxrdemo.evaluation.metrics import report
from cxrdemo.inference.predict import Predictor
from cxrdemo.tasks import get_task

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


@torch.inference_mode()
def batch_probabilities(predictor: Predictor, model_id: str, dataset: Dataset, frame) -> np.ndarray:
    """Calibrated probabilities (N, C) of `frame`'s images under an installed model (any kind)."""
    return predictor.get(model_id).probabilities(DatasetImages(dataset, frame))


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
