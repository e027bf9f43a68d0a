"""Training data: the training split, optionally subset, split by patient, decoded once onto the device."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from cxrdemo.data import Dataset, load_dataset, patient_split
from cxrdemo.tasks import NORMAL, get_task
from cxrdemo.tensor_cache import load_pixels
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
        frame = frame[frame["label"] == NORMAL].reset_index(drop=True)
    if cfg.subset:
        frame = stratified_subset(frame, cfg.subset, "subtype", cfg.seed)
    train_frame, val_frame = patient_split(frame, val_fraction=cfg.val_fraction, seed=cfg.seed)
    sides = []
    for part in (train_frame, val_frame):
        pixels = load_pixels(dataset, part, cfg.input_size).to(device)
        targets = torch.from_numpy(dataset.targets(part, task)).to(device)
        sides.append(SplitData(part, pixels, targets))
    return PreparedData(dataset, *sides)
