"""The one place images become model inputs, for training and serving alike.

A model card stores its `Preprocessing`; inference rebuilds it from the card so the two cannot drift.
Images are squashed (not cropped) to a square because 3,577 training images only exist as 224x224
squashed copies (see the dataset README): serving must see the same geometry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    input_size: int = 224
    mean: float = 0.5  # applied to pixels scaled to [0, 1]
    std: float = 0.25
    resize: str = "squash"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(**{k: values[k] for k in ("input_size", "mean", "std", "resize") if k in values})


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 -> size x size uint8 (area-averaging when shrinking, like the dataset copies)."""
    if pixels.shape == (size, size):
        return pixels
    img = Image.fromarray(pixels)
    if min(img.size) > 2 * size:
        img = img.reduce(max(1, min(img.size) // (2 * size)))  # fast box pre-shrink for big uploads
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def normalize(batch: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 (N, 1, S, S) or float in [0, 1] -> normalised float32."""
    x = batch.float()
    if batch.dtype == torch.uint8:
        x = x / 255.0
    return (x - spec.mean) / spec.std


def to_input(pixels: np.ndarray, spec: Preprocessing) -> torch.Tensor:
    """One grayscale uint8 image -> (1, 1, S, S) normalised tensor."""
    square = resize_square(pixels, spec.input_size)
    return normalize(torch.from_numpy(np.array(square, dtype=np.uint8))[None, None], spec)


def to_unit(pixels: np.ndarray, size: int) -> torch.Tensor:
    """One grayscale uint8 image -> (1, 1, S, S) float in [0, 1] (the autoencoder's input)."""
    square = resize_square(pixels, size)
    return torch.from_numpy(np.array(square, dtype=np.uint8))[None, None].float() / 255.0


class Images(Protocol):
    """A batch of images a model can ask for at its own input size (ensemble members differ)."""

    def at(self, size: int) -> torch.Tensor:
        """(N, size, size) uint8, squashed like `resize_square`."""
        ...


@dataclass
class PixelImages:
    """In-memory grayscale uint8 images of any size (one upload is a batch of one)."""

    pixels: list[np.ndarray]
    _squares: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def at(self, size: int) -> torch.Tensor:
        if size not in self._squares:
            squares = [np.array(resize_square(p, size), dtype=np.uint8) for p in self.pixels]
            self._squares[size] = torch.from_numpy(np.stack(squares))
        return self._squares[size]
