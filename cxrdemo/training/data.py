"""Training data: the training split, optionally subset, split by patient, decoded once onto the device."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from cxrdemo.data.dataset import Dataset, load_dataset, validation_split
from cxrdemo.data.tensor_cache import load_pixels
from cxrdemo.tasks import get_task
from cxrdemo.training.config import TrainConfig


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


def prepare_data(cfg: TrainConfig, device: torch.device) -> PreparedData:
    """Load, subset and patient-split the training split, decode it once, move it to `device`."""
    task = get_task(cfg.task)
    dataset = load_dataset(cfg.data)
    train_frame, val_frame = validation_split(
        dataset, val_fraction=cfg.val_fraction, seed=cfg.seed, subset=cfg.subset, normal_only=cfg.arch == "autoencoder"
    )
    sides = []
    for part in (train_frame, val_frame):
        pixels = load_pixels(dataset, part, cfg.preprocessing()).to(device)
        targets = torch.from_numpy(dataset.targets(part, task)).to(device)
        sides.append(SplitData(part, pixels, targets))
    return PreparedData(dataset, *sides)
