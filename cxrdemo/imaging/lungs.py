"""The lung fields of a chest X-ray: a small U-Net, its mask, and the box the lung crop is cut from.

The classifiers must read the lungs, not the frame (pneumonia films in the training set are wider and
show more of the arms: the frame's aspect ratio alone separates the classes, AUROC 0.873). So every model
input is cut around the lungs (`preprocess.lung_crop`), and that needs the lungs found first, here.

The network sees the image squashed to `INPUT_SIZE` (like the 224x224 dataset copies were), so its mask
is in fractions of the image's width and height and a box found on a squashed copy is the same box on
the original. Trained on the V7 Labs masks of the Kermany training images (`python -m
cxrdemo.training.lung_seg`); the weights live in `weights/lungs/` apart from the classifiers' registry.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from cxrdemo.paths import weights_dir

MODEL_ID = "lung-unet"
INPUT_SIZE = 128
MEAN, STD = 0.5, 0.25  # on pixels scaled to [0, 1], like the classifiers

# What counts as plausible lungs: each bound lies just outside the range the segmenter gives on the 668
# validation films (area 0.174-0.621, confidence >= 0.928, balance >= 0.320: `python -m
# benchmarks.bench_lungs`, docs/RESULTS.md), chosen on validation alone. Outside them the image gets the
# "no plausible lungs" message and the out-of-distribution signal, and the model input falls back to the
# whole image. The network finds "lungs" in almost anything (it only ever saw chest films); what
# separates a chest film is how sure it is (most non-chest images: confidence 0.83-0.92).
MIN_AREA, MAX_AREA = 0.10, 0.75
MIN_SIDE = 0.25  # the box must span at least a quarter of the image in each direction
MIN_CONFIDENCE = 0.92  # mean lung probability inside the predicted lungs
MIN_BALANCE = 0.25  # each side of the box centre holds at least this share of the lung mask (two lungs)


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class LungUNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with `depth` poolings, 1 channel in, one lung logit per pixel out."""

    def __init__(self, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_Block(1, widths[0])] + [_Block(a, b) for a, b in zip(widths, widths[1:])])
        self.up = nn.ModuleList([_Block(b + a, a) for a, b in zip(widths[:-1], widths[1:])])
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in reversed(self.up):
            skip = skips.pop()
            x = block(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear"), skip], dim=1))
        return self.head(x)


@dataclass(frozen=True)
class LungBox:
    """The lungs' bounding box in fractions of the image (x0 < x1, y0 < y1, all in [0, 1])."""

    x0: float
    y0: float
    x1: float
    y1: float

    def to_list(self) -> list[float]:
        return [round(v, 4) for v in (self.x0, self.y0, self.x1, self.y1)]


@dataclass(frozen=True)
class LungFields:
    """What the segmenter found in one image."""

    probability: np.ndarray  # INPUT_SIZE x INPUT_SIZE float32 lung probability (squashed image)
    box: LungBox | None  # None: no plausible lungs
    area: float  # share of the image that is lung
    confidence: float  # mean probability inside the predicted lungs
    balance: float = 0.0  # the smaller side's share of the mask, left / right of the box centre (two lungs)
    reason: str = ""  # why no plausible lungs were found ("" when they were)

    @property
    def plausible(self) -> bool:
        return self.box is not None

    def mask(self, height: int, width: int) -> np.ndarray:
        """The lung mask at an image's own size (bool HxW)."""
        resized = Image.fromarray(self.probability).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(resized) >= 0.5


def squash(pixels: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """HxW uint8 -> size x size uint8 (box pre-shrink for big images, then bilinear, like the classifiers)."""
    if pixels.shape == (size, size):
        return pixels
    img = Image.fromarray(pixels)
    if min(img.size) > 2 * size:
        img = img.reduce(max(1, min(img.size) // (2 * size)))
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def network_input(squares: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, S, S) uint8 -> (N, 1, S, S) normalised float32."""
    x = squares if isinstance(squares, torch.Tensor) else torch.from_numpy(np.array(squares, dtype=np.uint8))
    return ((x.float() / 255.0 - MEAN) / STD)[:, None]


def weights_path(directory: Path | None = None) -> Path:
    return (directory or weights_dir()) / "lungs" / f"{MODEL_ID}.safetensors"


def installed(directory: Path | None = None) -> bool:
    return weights_path(directory).exists()


@lru_cache(maxsize=4)
def weights_digest(directory: Path | None = None) -> str:
    """Short SHA-256 of the installed weights (pixel caches of lung crops are keyed by it)."""
    return hashlib.sha256(weights_path(directory).read_bytes()).hexdigest()[:16]


_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def load_segmenter(directory: Path | None = None) -> LungUNet:
    """The installed U-Net in eval mode, fp32 (its weights are stored fp16), channels_last."""
    from safetensors.torch import load_file

    path = weights_path(directory)
    if not path.exists():
        raise FileNotFoundError(f"the lung segmentation model is not installed ({path} is missing)")
    with _LOCK:
        model = LungUNet()
        state = {k: v.float() for k, v in load_file(path).items()}
        model.load_state_dict(state)
        return model.eval().to(memory_format=torch.channels_last)


def lung_probability(squares: np.ndarray | torch.Tensor, model: nn.Module | None = None) -> np.ndarray:
    """(N, S, S) uint8 squashed images -> (N, S, S) float32 lung probabilities."""
    model = model or load_segmenter()
    with torch.inference_mode():
        x = network_input(squares).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(model(x))[:, 0].float().numpy()


def box_of(mask: np.ndarray) -> LungBox | None:
    """Bounding box of a bool mask in fractions, ignoring specks (rows / columns under 1 % of the peak)."""
    rows, cols = mask.sum(axis=1), mask.sum(axis=0)
    if rows.max(initial=0) == 0:
        return None
    ys = np.flatnonzero(rows >= max(1, 0.01 * rows.max()))
    xs = np.flatnonzero(cols >= max(1, 0.01 * cols.max()))
    h, w = mask.shape
    return LungBox(float(xs[0] / w), float(ys[0] / h), float((xs[-1] + 1) / w), float((ys[-1] + 1) / h))


def judge(probability: np.ndarray) -> LungFields:
    """Turn a probability map into lung fields, or say why they are not plausible lungs."""
    mask = probability >= 0.5
    area = float(mask.mean())
    confidence = float(probability[mask].mean()) if mask.any() else 0.0
    box = box_of(mask)
    balance = 0.0
    if box is not None:
        centre = int(round((box.x0 + box.x1) / 2 * mask.shape[1]))
        left, total = float(mask[:, :centre].sum()), float(mask.sum())
        balance = min(left, total - left) / total
    reason = ""
    if box is None or area < MIN_AREA:
        reason = f"lungs cover {area:.0%} of the image (expected at least {MIN_AREA:.0%})"
    elif area > MAX_AREA:
        reason = f"lungs would cover {area:.0%} of the image (expected at most {MAX_AREA:.0%})"
    elif min(box.x1 - box.x0, box.y1 - box.y0) < MIN_SIDE:
        reason = "the lung region is too small in one direction"
    elif confidence < MIN_CONFIDENCE:
        reason = f"the lung outline is uncertain (mean confidence {confidence:.2f})"
    elif balance < MIN_BALANCE:
        reason = "no pair of lungs (the region lies on one side)"
    return LungFields(probability, None if reason else box, area, confidence, balance, reason)


def share_inside(weights: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of a non-negative map's mass (a heatmap) that falls inside a bool mask of the same shape."""
    total = float(weights.sum())
    return None if total <= 0 else float(weights[mask].sum()) / total


def find_lungs(pixels: np.ndarray, model: nn.Module | None = None) -> LungFields:
    """Lung fields of one grayscale uint8 image of any size."""
    return judge(lung_probability(squash(pixels)[None], model)[0])


def find_lungs_batch(images: list[np.ndarray], model: nn.Module | None = None) -> list[LungFields]:
    """Lung fields of several images in one forward pass."""
    if not images:
        return []
    probs = lung_probability(np.stack([squash(p) for p in images]), model)
    return [judge(p) for p in probs]
