"""The batched forward pass over uint8 pixels that training, evaluation, k-NN and the autoencoder share."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrdemo.imaging.preprocess import Preprocessing, normalize
from cxrdemo.precision import autocast, channels_last_input


@torch.inference_mode()
def batched(
    model: nn.Module,
    pixels: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    apply: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    *,
    precision: str = "fp32",
    batch_size: int = 128,
) -> torch.Tensor:
    """`apply(model, prepare(batch))` over uint8 pixels (N, S, S) in batches, float32 on the CPU."""
    model.eval()
    outs = []
    for start in range(0, len(pixels), batch_size):
        x = channels_last_input(prepare(pixels[start : start + batch_size].unsqueeze(1)))
        with autocast(pixels.device, precision):
            outs.append(apply(model, x).float().cpu())
    return torch.cat(outs) if outs else torch.zeros((0, 0))


def classify(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Logits of a `Classifier`: the trunk at `precision` (bf16 where it is faster), the head in fp32.

    Serving, evaluation and the Grad-CAM fast path all compute logits this way, so their numbers agree.
    """
    with autocast(x.device, precision):
        features = model.features(x)
    return model.head(features.float())


def predict_logits(
    model: nn.Module, pixels: torch.Tensor, spec: Preprocessing, *, precision: str = "fp32", batch_size: int = 128
) -> torch.Tensor:
    """Logits (N, C) for uint8 pixels (N, S, S), no augmentation."""
    return batched(
        model, pixels, lambda b: normalize(b, spec), lambda m, x: classify(m, x, precision), batch_size=batch_size
    )


def embeddings(model: nn.Module, pixels: torch.Tensor, spec: Preprocessing, *, batch_size: int = 128) -> np.ndarray:
    """L2-normalised penultimate-layer embeddings (N, D) float32 (k-NN's input)."""
    out = batched(model, pixels, lambda b: normalize(b, spec), lambda m, x: F.normalize(m.embed(x).float(), dim=1))
    return out.numpy()


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 255.0


def reconstruction_errors(model: nn.Module, pixels: torch.Tensor, *, batch_size: int = 128) -> np.ndarray:
    """Mean squared reconstruction error per image (N,) for uint8 pixels (N, S, S)."""
    out = batched(model, pixels, to_unit, lambda m, x: ((m(x) - x) ** 2).mean(dim=(1, 2, 3)), batch_size=batch_size)
    return out.numpy() if out.numel() else np.zeros(0)
