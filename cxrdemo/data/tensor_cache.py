"""Decode a dataset once into a uint8 tensor at training resolution and cache it on disk.

Training then never touches PIL inside the epoch loop: the whole split lives in one (N, S, S)
uint8 tensor (5,856 images at 224 px are 294 MB) that can sit on the GPU.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrdemo.data.dataset import Dataset
from cxrdemo.imaging import lungs
from cxrdemo.imaging.decode import load_image_file
from cxrdemo.imaging.preprocess import Preprocessing, model_square
from cxrdemo.paths import cache_dir

# Bumped whenever _decode changes, so that no cache written by an older decoder is read.
DECODER_VERSION = "upload-decoder-1"


def _decode(path: Path, spec: Preprocessing) -> np.ndarray:
    """The upload path's decoder (EXIF orientation, DICOM windowing, 16-bit), then the serving square.

    Evaluation must score the pixels a user's upload would give: a JPEG decoded at reduced DCT scale
    (`Image.draft`, faster) moved one 128 px model's probabilities by up to 0.07 against the served path.
    """
    return model_square(load_image_file(path).pixels, spec)


def _as_spec(size: int | Preprocessing) -> Preprocessing:
    return size if isinstance(size, Preprocessing) else Preprocessing(input_size=size)


def cache_key(dataset: Dataset, frame: pd.DataFrame, size: int | Preprocessing) -> str:
    spec = _as_spec(size)
    geometry = str(spec.input_size)
    if spec.resize != "squash":  # squash keys stay as they were; a crop depends on the lung model too
        geometry += f"|{spec.resize}|{spec.margin}|{lungs.weights_digest()}"
    text = f"{DECODER_VERSION}|{dataset.root}|{geometry}|" + "|".join(frame["path"])
    if "sha256" in frame:
        text += "|" + "|".join(frame["sha256"].astype(str))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load_pixels(
    dataset: Dataset, frame: pd.DataFrame, size: int | Preprocessing = 224, *, use_cache: bool = True
) -> torch.Tensor:
    """(N, S, S) uint8 tensor of `frame`'s images, in row order, from cache when possible.

    `size` alone squashes; a `Preprocessing` gives its own square (the lung crop).
    """
    spec = _as_spec(size)
    size = spec.input_size
    path = cache_dir() / f"pixels-{cache_key(dataset, frame, spec)}.npy"
    if use_cache and path.exists():
        return torch.from_numpy(np.load(path))
    files = [dataset.absolute(p) for p in frame["path"]]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda f: _decode(f, spec), files))
    array = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    if use_cache:
        _save(array, path)
    return torch.from_numpy(array)


def _save(array: np.ndarray, path: Path) -> None:
    """Atomic write (a killed run never leaves a half-written cache); a full disk only costs the cache."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    except OSError as err:
        logging.getLogger(__name__).warning("pixel cache not written (%s); continuing without it", err.strerror)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class DatasetImages:
    """A dataset's rows as `preprocess.Images`: pixels at any size from the decode-once cache."""

    dataset: Dataset
    frame: pd.DataFrame

    def at(self, spec: Preprocessing) -> torch.Tensor:
        return load_pixels(self.dataset, self.frame, spec)
