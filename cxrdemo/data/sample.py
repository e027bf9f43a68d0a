"""Build the small bundled sample (`data/sample/`) and compact dataset copies from a full dataset.

The sample lets a fresh clone run end to end: a few images per split, class and subtype, from
distinct patients, at most 320 px, with its own manifest in the full dataset's format.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
from PIL import Image

from cxrdemo.data.dataset import load_dataset

# images per (split, subtype) in the bundled sample
SAMPLE_PLAN = {"train": 12, "test": 4, "val": 4}


def _pick(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n images from n distinct patients, full-resolution sources first, mixing in low-res ones."""
    one_per_patient = frame.drop_duplicates("patient_id").sample(frac=1.0, random_state=seed)
    low = one_per_patient[one_per_patient["low_resolution_source"] == 1]
    full = one_per_patient[one_per_patient["low_resolution_source"] != 1]
    n_low = min(len(low), n // 3)
    return pd.concat([full.head(n - n_low), low.head(n_low)])


def write_image(
    src: Path, dst: Path, *, max_side: int | None = None, size: int | None = None, quality: int = 90
) -> tuple[int, int]:
    """Grayscale JPEG copy: longest side capped at `max_side`, or squashed to `size` x `size`."""
    with Image.open(src) as img:
        img = img.convert("L")
        if size:
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        elif max_side and max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        img.save(dst, format="JPEG", quality=quality)
        return img.size


def make_sample(source: Path, out: Path, seed: int = 0) -> pd.DataFrame:
    """Copy a stratified handful of `source` images into `out` with a manifest."""
    dataset = load_dataset(source)
    rows = []
    for split, n in SAMPLE_PLAN.items():
        part = dataset.split(split)
        for subtype, group in part.groupby("subtype"):
            rows.append(_pick(group, n if split != "val" else n // (1 if subtype == "normal" else 2), seed))
    chosen = pd.concat(rows).reset_index(drop=True)
    return _copy(dataset.root, chosen, out, max_side=320)


def make_compact(source: Path, out: Path, size: int = 224) -> pd.DataFrame:
    """The whole dataset squashed to `size` x `size` grayscale JPEG (quality 90), for the GPU machine."""
    dataset = load_dataset(source)
    return _copy(dataset.root, dataset.frame, out, size=size)


def _copy(root: Path, chosen: pd.DataFrame, out: Path, **resize) -> pd.DataFrame:
    chosen = chosen.copy()
    widths, heights, hashes = [], [], []
    for rel in chosen["path"]:
        dst = out / rel
        w, h = write_image(root / rel, dst, **resize)
        widths.append(w)
        heights.append(h)
        hashes.append(hashlib.sha256(dst.read_bytes()).hexdigest())
    chosen["width"], chosen["height"], chosen["sha256"] = widths, heights, hashes
    chosen.to_csv(out / "manifest.csv", index=False)
    return chosen
