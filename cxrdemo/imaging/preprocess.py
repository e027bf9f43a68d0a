"""The one place images become model inputs, for training and serving alike.

A model card stores its `Preprocessing`; inference rebuilds it from the card so the two cannot drift.
Two ways to make the square input:

- `squash`: the whole image resized to a square (the first models; 3,577 training images only exist as
  224x224 squashed copies, see the dataset README).
- `lung_crop`: the lungs' bounding box (`imaging/lungs.py`) plus a margin, resized to the square. The
  frame around the lungs (how wide the film is, how much of the arms it shows) separates the training
  classes by itself; cutting at the lungs removes it, and since the box is found in fractions of the
  image, a squashed 224x224 copy and its full-resolution original give the same crop. When no plausible
  lungs are found the whole image is squashed (and the upload is told, `lungs.LungFields.reason`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from cxrdemo.imaging import lungs

RESIZES = ("squash", "lung_crop")
LUNG_MARGIN = 0.05  # lung_crop: margin on each side, as a fraction of the lung box's width / height


@dataclass(frozen=True)
class Preprocessing:
    input_size: int = 224
    mean: float = 0.5  # applied to pixels scaled to [0, 1]
    std: float = 0.25
    resize: str = "squash"  # one of RESIZES
    margin: float = 0.0  # lung_crop only: LUNG_MARGIN

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ValueError(f"unknown resize {self.resize!r}; choose one of {', '.join(RESIZES)}")

    @property
    def key(self) -> tuple:
        """What decides the square's pixels (not the normalisation): equal keys give equal squares."""
        return (self.input_size, self.resize, self.margin)

    def to_dict(self) -> dict:
        values = asdict(self)
        if self.resize == "squash":
            values.pop("margin")  # cards of squash models stay as they were
        return values

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(**{k: values[k] for k in ("input_size", "mean", "std", "resize", "margin") if k in values})


def lung_crop_spec(input_size: int) -> Preprocessing:
    return Preprocessing(input_size=input_size, resize="lung_crop", margin=LUNG_MARGIN)


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 -> size x size uint8 (area-averaging when shrinking, like the dataset copies)."""
    if pixels.shape == (size, size):
        return pixels
    img = Image.fromarray(pixels)
    if min(img.size) > 2 * size:
        img = img.reduce(max(1, min(img.size) // (2 * size)))  # fast box pre-shrink for big uploads
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def crop_window(shape: tuple[int, int], box: lungs.LungBox, margin: float) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in pixels of an HxW image: the box widened by `margin` of its size on each side.

    The window may reach past the image; those pixels are black (collimation), so the crop's geometry
    never depends on where the frame ends.
    """
    h, w = shape
    bw, bh = box.x1 - box.x0, box.y1 - box.y0
    x0, x1 = (box.x0 - margin * bw) * w, (box.x1 + margin * bw) * w
    y0, y1 = (box.y0 - margin * bh) * h, (box.y1 + margin * bh) * h
    return (
        int(round(x0)),
        int(round(y0)),
        max(int(round(x1)), int(round(x0)) + 1),
        max(int(round(y1)), int(round(y0)) + 1),
    )


def lung_crop(pixels: np.ndarray, box: lungs.LungBox, margin: float, size: int) -> np.ndarray:
    """The lung window of an HxW uint8 image (black outside the image), resized to size x size."""
    x0, y0, x1, y1 = crop_window(pixels.shape, box, margin)
    h, w = pixels.shape
    window = np.zeros((y1 - y0, x1 - x0), np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        window[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = pixels[sy0:sy1, sx0:sx1]
    return resize_square(window, size)


def model_square(pixels: np.ndarray, spec: Preprocessing, fields: lungs.LungFields | None = None) -> np.ndarray:
    """HxW uint8 -> the model's S x S uint8 square: squashed, or cut at the lungs (`fields` when known)."""
    if spec.resize == "squash":
        return resize_square(pixels, spec.input_size)
    fields = fields or lungs.find_lungs(pixels)
    if not fields.plausible:
        return resize_square(pixels, spec.input_size)
    return lung_crop(pixels, fields.box, spec.margin, spec.input_size)


def paste_back(
    square_map: np.ndarray, shape: tuple[int, int], spec: Preprocessing, fields: lungs.LungFields | None
) -> np.ndarray:
    """A map over the model's square (a heatmap) put back where those pixels came from in the HxW image.

    Squash: stretched to HxW. Lung crop: stretched over the crop window, zero outside it.
    """
    import cv2

    h, w = shape
    if spec.resize == "squash" or fields is None or not fields.plausible:
        return cv2.resize(square_map, (w, h), interpolation=cv2.INTER_LINEAR)
    x0, y0, x1, y1 = crop_window(shape, fields.box, spec.margin)
    window = cv2.resize(square_map, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((h, w), dtype=square_map.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    out[sy0:sy1, sx0:sx1] = window[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0]
    return out


def normalize(batch: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 (N, 1, S, S) or float in [0, 1] -> normalised float32."""
    x = batch.float()
    if batch.dtype == torch.uint8:
        x = x / 255.0
    return (x - spec.mean) / spec.std


def to_input(pixels: np.ndarray, spec: Preprocessing, fields: lungs.LungFields | None = None) -> torch.Tensor:
    """One grayscale uint8 image -> (1, 1, S, S) normalised tensor."""
    square = model_square(pixels, spec, fields)
    return normalize(torch.from_numpy(np.array(square, dtype=np.uint8))[None, None], spec)


def to_unit(pixels: np.ndarray, size: int) -> torch.Tensor:
    """One grayscale uint8 image -> (1, 1, S, S) float in [0, 1] (the autoencoder's input)."""
    square = resize_square(pixels, size)
    return torch.from_numpy(np.array(square, dtype=np.uint8))[None, None].float() / 255.0


class Images(Protocol):
    """A batch of images a model can ask for in its own preprocessing (ensemble members differ)."""

    def at(self, spec: Preprocessing) -> torch.Tensor:
        """(N, S, S) uint8 squares made by `model_square`."""
        ...


@dataclass
class PixelImages:
    """In-memory grayscale uint8 images of any size (one upload is a batch of one).

    The lungs are found once per image, whatever number of models ask for a lung crop.
    """

    pixels: list[np.ndarray]
    _squares: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)
    _lungs: list[lungs.LungFields] | None = field(default=None, repr=False)

    @property
    def lung_fields(self) -> list[lungs.LungFields]:
        if self._lungs is None:
            self._lungs = lungs.find_lungs_batch(self.pixels)
        return self._lungs

    def at(self, spec: Preprocessing) -> torch.Tensor:
        if spec.key not in self._squares:
            found = self.lung_fields if spec.resize == "lung_crop" else [None] * len(self.pixels)
            squares = [np.array(model_square(p, spec, f), dtype=np.uint8) for p, f in zip(self.pixels, found)]
            self._squares[spec.key] = torch.from_numpy(np.stack(squares))
        return self._squares[spec.key]
