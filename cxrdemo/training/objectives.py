"""What a training step minimises and how validation is scored, per kind of model.

`fit` knows nothing about classes or reconstructions: it asks its objective for a loss on a batch
and for a validation (score, loss), where a higher score is better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrdemo.evaluation.metrics import auroc
from cxrdemo.imaging.augment import AugmentConfig
from cxrdemo.imaging.preprocess import Preprocessing, normalize
from cxrdemo.inference.forward import predict_logits, reconstruction_errors
from cxrdemo.training.data import SplitData

# gentle: the autoencoder must learn what normal chest films look like, not every distortion
AE_AUGMENT = AugmentConfig(
    rotation_deg=5, translate=0.03, scale=(0.95, 1.05), blur_prob=0.1, downsample_prob=0.1, noise_std=0.0
)

Forward = Callable[[torch.Tensor], torch.Tensor]


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    counts = torch.bincount(targets, minlength=num_classes).float().clamp(min=1)
    return counts.sum() / (num_classes * counts)


def validation_score(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(AUROC, loss): binary AUROC of the positive class, macro one-vs-rest AUROC for 3 classes."""
    targets = targets.cpu()
    loss = float(F.cross_entropy(logits, targets)) if len(targets) else float("nan")
    probs = torch.softmax(logits, 1).numpy()
    y = targets.numpy()
    if probs.shape[1] == 2:
        return auroc(y, probs[:, 1]), loss
    scores = [auroc((y == c).astype(int), probs[:, c]) for c in range(probs.shape[1])]
    scores = [s for s in scores if not math.isnan(s)]
    return (float(np.mean(scores)) if scores else float("nan")), loss


@dataclass
class ClassifierObjective:
    """Cross-entropy with label smoothing and class weights, optional mixup; validation AUROC."""

    spec: Preprocessing
    criterion: nn.Module
    augment: AugmentConfig
    mixup_alpha: float = 0.0
    seed: int = 0
    precision: str = "fp32"

    def prepare(self, x01: torch.Tensor) -> torch.Tensor:
        return normalize(x01, self.spec)

    def loss(self, forward: Forward, x: torch.Tensor, y: torch.Tensor, step: int, gen: torch.Generator) -> torch.Tensor:
        if self.mixup_alpha <= 0:
            return self.criterion(forward(x).float(), y)
        # the mixing weight comes from (seed, step), so a resumed run draws the same one
        lam = float(np.random.default_rng(self.seed + step).beta(self.mixup_alpha, self.mixup_alpha))
        perm = torch.randperm(len(y), device=y.device, generator=gen)
        logits = forward(lam * x + (1 - lam) * x[perm]).float()
        return lam * self.criterion(logits, y) + (1 - lam) * self.criterion(logits, y[perm])

    def validate(self, model: nn.Module, val: SplitData) -> tuple[float, float]:
        if not len(val.targets):
            return math.nan, math.nan
        return validation_score(predict_logits(model, val.pixels, self.spec, precision=self.precision), val.targets)


@dataclass
class ReconstructionObjective:
    """Mean squared reconstruction error on [0, 1] pixels; validation score = minus the mean error."""

    augment: AugmentConfig = AE_AUGMENT

    def prepare(self, x01: torch.Tensor) -> torch.Tensor:
        return x01

    def loss(self, forward: Forward, x: torch.Tensor, y: torch.Tensor, step: int, gen: torch.Generator) -> torch.Tensor:
        return F.mse_loss(forward(x).float(), x)

    def validate(self, model: nn.Module, val: SplitData) -> tuple[float, float]:
        if not len(val.pixels):
            return math.nan, math.nan
        loss = float(np.mean(reconstruction_errors(model, val.pixels)))
        return -loss, loss
