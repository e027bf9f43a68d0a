"""Does a model read the lungs or the frame? The frame probe and frame-balanced validation (issue 22).

The training films carry a shortcut: pneumonia films are wider, so the frame's aspect ratio alone
separates PNEUMONIA from NORMAL (AUROC 0.873 on the full-resolution training images), and the validation
set carved from train carries the same cue. A validation AUROC of 0.998 can therefore come from the
frame. Two measures tell the lungs from the frame; `python -m benchmarks.bench_frame` runs both for every
installed model and writes `DEFAULT_JSON`, which the performance page shows.

**Frame probe** (`probe`). Each of a model's validation images (its card's patient split,
`card_validation_split`) is decoded once like an upload (`decode.load_image_file`), kept at most
`MAX_SIDE` px on its longer side (aspect kept: every model input is smaller), and answered three times
through the serving path (`Predictor.get(id).probabilities(PixelImages(...))`): as it is, with
`CROP_FRACTION` (10 %) of the width cut off each side, and with 10 % of the height cut off top and
bottom. The lungs lie inside the middle 80 % of a film, so a model that reads them hardly changes its
answer; one that reads the frame's shape does. A *flip* is a changed verdict, by the Predictor's rule
(`predict.decided_class`: the card's threshold for a binary model or k-NN, the argmax class for a
subtype model, so bacteria -> virus counts too); *dP* is the mean change of P(PNEUMONIA) (a subtype
model: 1 - P(normal)). Target: at most `MAX_FLIP_SHARE` (2 %) flips for each crop (docs/DECISIONS.md,
the lung-crop campaign's gate 5). Full-resolution images and the 224x224 squashed copies are reported
apart: the copies' frame is already squashed, and they are 70 % of validation.

**Lung-sparing probe** (`crop_sparing`, docs/DECISIONS.md, addendum of 2026-12-07). The height probe
cuts lung on about half of the films (the lungs reach 10 % of the top and 90 % of the height on average),
so it cannot tell the frame from cut-off lungs. This probe cuts only what lies outside the film's manual
lung mask (its bounding box plus `SPARED_MARGIN` of the dimension), at most `CROP_FRACTION` a side, on the
validation films that have a manual mask; the rest of the film is answered as it is.

**Frame-balanced validation** (`frame_balanced_weights`). Only images whose original size is known take
part: full-resolution images (the dataset manifest's `source_width` x `source_height`) and the 224x224
copies the lung-mask manifest restores (`original_width` x `original_height`); the others get weight 0.
The rule, exactly:

1. aspect a = original width / original height;
2. `N_BINS` (10) quantile bins of a over the taking-part images, both classes pooled (edges at the
   10 %, 20 %, ... quantiles; repeated edges merged);
3. a bin where either class has fewer than `MIN_PER_CLASS` (5) images is dropped (weight 0): there the
   frame alone decides (no NORMAL validation film is wider than about 1.57), so no weighting can
   balance it; `FrameWeights.n_kept` says how many images remain;
4. in a kept bin b, an image of class c gets w = (n_b / N) / (n_bc / N_c), with n_b the bin's images,
   n_bc its images of class c, N and N_c the same over all kept bins.

So each class keeps its total weight (sum of w over class c = N_c) and the weighted share of every bin is
n_b / N in both classes: the aspect ratio (to bin resolution) no longer tells the classes apart. AUROC,
accuracy and specificity are then computed with these sample weights beside the plain ones (every
validation image, weight 1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

from cxrdemo.data.dataset import Dataset, card_validation_split
from cxrdemo.evaluation.saliency import RealLungMasks
from cxrdemo.fileio import read_benchmark_rows
from cxrdemo.imaging.decode import load_image_file
from cxrdemo.imaging.preprocess import PixelImages
from cxrdemo.inference.predict import Predictor, decided_class
from cxrdemo.paths import REPO_ROOT
from cxrdemo.tasks import PNEUMONIA, TASKS

# Where `python -m benchmarks.bench_frame` writes by default (the performance page reads it).
DEFAULT_JSON = REPO_ROOT / "docs" / "frame.json"

CROP_FRACTION = 0.10  # cut off each side (width probe) or top and bottom (height probe)
MAX_SIDE = 512  # decoded validation images are kept at most this long (every model input is smaller)
MAX_FLIP_SHARE = 0.02  # the target: a model that reads the lungs flips at most 2 % of its verdicts
N_BINS = 10  # frame-balanced weights: quantile bins of the original aspect ratio
MIN_PER_CLASS = 5  # a bin with fewer images of either class is dropped
NORMAL_CLASSES = {task.classes[0] for task in TASKS.values()}  # NORMAL (binary), normal (subtype)
VARIANTS = ("whole", "width", "height")  # the image, 10 % off each side, 10 % off top and bottom
SUBSETS = ("full-res", "224 copies", "all")  # the rows of each model, in this order
SPARED_VARIANTS = ("width_spared", "height_spared")  # the same cuts, stopped short of the lungs
SPARED_MARGIN = 0.03  # the lung-sparing cuts keep this share of the dimension around the lung box
CROPS = {  # chart legend -> results key
    "width -10 % each side": "flips_width",
    "height -10 % top and bottom": "flips_height",
    "width, lungs spared": "flips_width_spared",
    "height, lungs spared": "flips_height_spared",
}


# --- the images ----------------------------------------------------------------------------------


def downscaled(pixels: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """HxW uint8 with its longer side at most `max_side` (aspect kept, area-averaged)."""
    h, w = pixels.shape
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))


def crop(pixels: np.ndarray, variant: str, fraction: float = CROP_FRACTION) -> np.ndarray:
    """The image with `fraction` of its width cut off each side ("width"), of its height cut off top and
    bottom ("height"), or unchanged ("whole")."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if not 0 <= fraction < 0.5:
        raise ValueError(f"fraction must be in [0, 0.5), got {fraction}")
    h, w = pixels.shape
    if variant == "width":
        cut = round(fraction * w)
        return np.ascontiguousarray(pixels[:, cut : w - cut])
    if variant == "height":
        cut = round(fraction * h)
        return np.ascontiguousarray(pixels[cut : h - cut, :])
    return pixels


Box = tuple[int, int, int, int]  # top, bottom, left, right (end exclusive)


def lung_box(mask: np.ndarray) -> Box | None:
    """The bounding box of a HxW bool lung mask; None when it holds no lung pixel."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def spared_cuts(length: int, start: int, end: int, fraction: float, margin: float) -> tuple[int, int]:
    """Pixels cut off the low and the high end of a dimension whose lungs span [start, end): at most
    `fraction` of `length` a side, never closer to the lungs than `margin` of `length`."""
    limit, keep = round(fraction * length), round(margin * length)
    return min(limit, max(0, start - keep)), min(limit, max(0, length - end - keep))


def crop_sparing(
    pixels: np.ndarray, box: Box, variant: str, fraction: float = CROP_FRACTION, margin: float = SPARED_MARGIN
) -> np.ndarray:
    """The image with what lies outside the lung box cut off left and right ("width_spared") or top and
    bottom ("height_spared"), `spared_cuts` a side."""
    if variant not in SPARED_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(SPARED_VARIANTS)}")
    h, w = pixels.shape
    top, bottom, left, right = box
    if variant == "width_spared":
        low, high = spared_cuts(w, left, right, fraction, margin)
        return np.ascontiguousarray(pixels[:, low : w - high])
    low, high = spared_cuts(h, top, bottom, fraction, margin)
    return np.ascontiguousarray(pixels[low : h - high, :])


def original_aspect(frame: pd.DataFrame, masks_root: Path | None = None) -> np.ndarray:
    """Original width / height of each row (NaN when unknown).

    Full-resolution rows: the dataset manifest's source size. A 224x224 copy (`low_resolution_source` 1):
    the lung-mask manifest's original size, matched on the image path, when `masks_root` has one.
    """
    low = frame.get("low_resolution_source", pd.Series(0, index=frame.index)).fillna(0).astype(int).to_numpy() == 1
    aspect = np.full(len(frame), np.nan)
    if {"source_width", "source_height"} <= set(frame.columns):
        full = ~low
        aspect[full] = frame["source_width"].to_numpy(float)[full] / frame["source_height"].to_numpy(float)[full]
    manifest = Path(masks_root) / "manifest.csv" if masks_root else None
    if manifest is not None and manifest.is_file() and low.any():
        sizes = pd.read_csv(manifest, usecols=["image", "original_width", "original_height"]).set_index("image")
        matched = sizes.reindex(frame["path"])
        restored = matched["original_width"].to_numpy(float) / matched["original_height"].to_numpy(float)
        aspect[low] = restored[low]
    return aspect


def source_of(frame: pd.DataFrame) -> np.ndarray:
    """The subset of each row: "full-res" or "224 copies" (the dataset's `low_resolution_source`)."""
    low = frame.get("low_resolution_source", pd.Series(0, index=frame.index)).fillna(0).astype(int).to_numpy()
    return np.where(low == 1, SUBSETS[1], SUBSETS[0])


@dataclass
class ValidationImages:
    """A model's validation images, decoded once and downscaled, with what the measures need per row."""

    frame: pd.DataFrame  # the validation rows (path, label, low_resolution_source, ...)
    pixels: list[np.ndarray]  # HxW uint8, longer side <= MAX_SIDE
    aspect: np.ndarray  # original width / height, NaN when unknown
    boxes: list[Box | None] = field(default_factory=list)  # manual lung box per image (empty: no masks)
    _batches: dict[tuple[str, float], PixelImages] = field(default_factory=dict, repr=False)

    @property
    def y(self) -> np.ndarray:
        """1 for PNEUMONIA, 0 for NORMAL."""
        return (self.frame["label"] == PNEUMONIA).to_numpy(dtype=np.int64)

    @property
    def source(self) -> np.ndarray:
        return source_of(self.frame)

    @property
    def has_box(self) -> np.ndarray:
        """(N,) bool: the image has a manual lung mask (takes part in the lung-sparing probe)."""
        return np.array([b is not None for b in self.boxes], bool) if self.boxes else np.zeros(len(self.pixels), bool)

    def variants(self) -> tuple[str, ...]:
        """The probe's variants for these images: the lung-sparing ones only where manual masks exist."""
        return VARIANTS + (SPARED_VARIANTS if self.has_box.any() else ())

    def _cropped(self, index: int, variant: str, fraction: float) -> np.ndarray:
        pixels = self.pixels[index]
        if variant not in SPARED_VARIANTS:
            return crop(pixels, variant, fraction)
        box = self.boxes[index] if self.boxes else None
        return pixels if box is None else crop_sparing(pixels, box, variant, fraction)

    def cut_share(self, variant: str, fraction: float = CROP_FRACTION) -> np.ndarray:
        """(N,) share of the width (width variants) or height removed from each image by `variant`."""
        axis = 1 if variant.startswith("width") else 0
        return np.array(
            [1 - self._cropped(i, variant, fraction).shape[axis] / p.shape[axis] for i, p in enumerate(self.pixels)]
        )

    def batch(self, variant: str, fraction: float = CROP_FRACTION) -> PixelImages:
        """The images as one serving batch, cropped; kept, so models with one preprocessing share squares."""
        key = (variant, fraction)
        if key not in self._batches:
            self._batches[key] = PixelImages([self._cropped(i, variant, fraction) for i in range(len(self.pixels))])
        return self._batches[key]


def load_validation(
    dataset: Dataset,
    card: dict,
    masks_root: Path | None = None,
    *,
    limit: int | None = None,
    decoded: dict[str, np.ndarray] | None = None,
) -> ValidationImages:
    """The validation side of `card`'s patient split, decoded (`decoded`: path -> pixels, shared across
    models so each file is read once). `limit`: a deterministic subset of that many rows, class shares kept."""
    _, val = card_validation_split(dataset, card)
    if limit is not None and limit < len(val):
        parts = [g.sample(max(1, round(len(g) * limit / len(val))), random_state=0) for _, g in val.groupby("label")]
        val = pd.concat(parts).sort_values("path").reset_index(drop=True)
    decoded = {} if decoded is None else decoded
    for path in val["path"]:
        if path not in decoded:
            decoded[path] = downscaled(load_image_file(dataset.absolute(path)).pixels)
    pixels = [decoded[p] for p in val["path"]]
    boxes: list[Box | None] = []
    if masks_root is not None and (Path(masks_root) / "manifest.csv").is_file():
        real = RealLungMasks(Path(masks_root))
        for path, image in zip(val["path"], pixels):
            mask = real.get(path, image.shape)
            boxes.append(None if mask is None else lung_box(mask))
    return ValidationImages(val, pixels, original_aspect(val, masks_root), boxes)


# --- the probe -----------------------------------------------------------------------------------


def pneumonia_probability(probabilities: np.ndarray, classes: list[str]) -> np.ndarray:
    """P(PNEUMONIA) (N,) of a binary model, 1 - P(normal) of a subtype model."""
    if PNEUMONIA in classes:
        return probabilities[:, classes.index(PNEUMONIA)]
    normal = [c for c in classes if c in NORMAL_CLASSES]
    if not normal:
        raise ValueError(f"cannot read P(PNEUMONIA) from classes {classes}")
    return 1.0 - probabilities[:, classes.index(normal[0])]


@dataclass
class ModelAnswers:
    """One model's answers to one batch: the served verdict and P(PNEUMONIA) per image."""

    verdict: np.ndarray  # (N,) class names, by the Predictor's rule
    p_pneumonia: np.ndarray  # (N,)

    @property
    def says_pneumonia(self) -> np.ndarray:
        """(N,) bool: the verdict is a pneumonia class (any subtype but normal)."""
        return ~np.isin(self.verdict, list(NORMAL_CLASSES))


@torch.inference_mode()
def answers(predictor: Predictor, model_id: str, images: PixelImages) -> ModelAnswers:
    """What the Predictor would answer for each image: `probabilities(images)`, then its verdict rule."""
    model = predictor.get(model_id)
    probabilities = model.probabilities(images)
    classes = model.classes
    threshold = model.threshold if len(classes) == 2 else None
    verdict = np.array([decided_class(p, classes, threshold) for p in probabilities], dtype=object)
    return ModelAnswers(verdict, pneumonia_probability(probabilities, classes))


@dataclass
class FrameProbe:
    """A model's answers to the whole images and to both crops."""

    model: str
    answers: dict[str, ModelAnswers]  # variant -> answers

    def flips(self, variant: str) -> np.ndarray:
        """(N,) bool: the crop changed the verdict."""
        return self.answers[variant].verdict != self.answers["whole"].verdict

    def delta_p(self, variant: str) -> np.ndarray:
        """(N,) change of P(PNEUMONIA) from the whole image to the crop."""
        return self.answers[variant].p_pneumonia - self.answers["whole"].p_pneumonia


def probe(predictor: Predictor, model_id: str, images: ValidationImages, fraction: float = CROP_FRACTION) -> FrameProbe:
    """The frame probe of one model on its validation images (see the module docstring)."""
    return FrameProbe(
        model_id,
        {variant: answers(predictor, model_id, images.batch(variant, fraction)) for variant in images.variants()},
    )


# --- frame-balanced weights and metrics ----------------------------------------------------------


@dataclass
class FrameWeights:
    """`frame_balanced_weights`' answer: a weight and a bin (-1: not taking part) per image."""

    weights: np.ndarray  # (N,) >= 0
    bins: np.ndarray  # (N,) bin index, -1 for an unknown size or a dropped bin
    edges: np.ndarray  # the quantile edges of the aspect ratio
    n_known: int  # images with a known original size
    n_kept: int  # of them, in kept bins (weight > 0)


def frame_balanced_weights(
    aspect: np.ndarray, y: np.ndarray, *, n_bins: int = N_BINS, min_per_class: int = MIN_PER_CLASS
) -> FrameWeights:
    """Weights that give the original aspect ratio the same distribution in both classes (module docstring)."""
    aspect, y = np.asarray(aspect, float), np.asarray(y, np.int64)
    known = np.isfinite(aspect)
    weights, bins = np.zeros(len(y)), np.full(len(y), -1)
    if not known.any():
        return FrameWeights(weights, bins, np.zeros(0), 0, 0)
    edges = np.unique(np.quantile(aspect[known], np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:  # one aspect ratio for every image: a single bin
        edges = np.array([edges[0], edges[0]])
    index = np.clip(np.searchsorted(edges, aspect[known], side="right") - 1, 0, len(edges) - 2)
    counts = np.zeros((len(edges) - 1, 2), np.int64)
    np.add.at(counts, (index, y[known]), 1)
    kept_bins = (counts >= min_per_class).all(axis=1) & (counts > 0).all(axis=1)
    keep = np.zeros(len(y), bool)
    keep[known] = kept_bins[index]
    bins[keep] = index[kept_bins[index]]
    if keep.any():
        kept = counts * kept_bins[:, None]
        n_b, n_c, n = kept.sum(axis=1), kept.sum(axis=0), kept.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            table = (n_b[:, None] / n) / (kept / n_c[None, :])  # w[b, c] = (n_b / N) / (n_bc / N_c)
        weights[keep] = table[bins[keep], y[keep]]
    return FrameWeights(weights, bins, edges, int(known.sum()), int(keep.sum()))


def binary_metrics(
    y: np.ndarray, p_pneumonia: np.ndarray, says_pneumonia: np.ndarray, weights: np.ndarray | None = None
) -> dict[str, float | None]:
    """AUROC of P(PNEUMONIA), accuracy and specificity of the verdict; weighted when `weights` is given.

    None where a class has no (weighted) image.
    """
    y, p, pred = np.asarray(y), np.asarray(p_pneumonia), np.asarray(says_pneumonia).astype(np.int64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, float)
    take = w > 0
    y, p, pred, w = y[take], p[take], pred[take], w[take]
    both = len(np.unique(y)) == 2
    return {
        "auroc": float(roc_auc_score(y, p, sample_weight=w)) if both else None,
        "accuracy": float(accuracy_score(y, pred, sample_weight=w)) if len(y) else None,
        "specificity": float(recall_score(y, pred, pos_label=0, sample_weight=w)) if (y == 0).any() else None,
    }


def _share(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summary(result: FrameProbe, images: ValidationImages, subset: str) -> dict:
    """One results row: the probe and both kinds of metrics on one subset ("full-res", "224 copies", "all")."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    rows = np.ones(len(images.frame), bool) if subset == "all" else images.source == subset
    y, whole = images.y[rows], result.answers["whole"]
    p, pneumonia = whole.p_pneumonia[rows], whole.says_pneumonia[rows]
    balanced = frame_balanced_weights(images.aspect[rows], y)
    return {
        "model": result.model,
        "subset": subset,
        "n": int(rows.sum()),
        "labels": {"NORMAL": int((y == 0).sum()), "PNEUMONIA": int((y == 1).sum())},
        "flips_width": _share(result.flips("width")[rows]),
        "flips_height": _share(result.flips("height")[rows]),
        "mean_dp_width": _share(result.delta_p("width")[rows]),
        "mean_dp_height": _share(result.delta_p("height")[rows]),
        "mean_abs_dp_width": _share(np.abs(result.delta_p("width")[rows])),
        "mean_abs_dp_height": _share(np.abs(result.delta_p("height")[rows])),
        "plain": binary_metrics(y, p, pneumonia),
        "balanced": binary_metrics(y, p, pneumonia, balanced.weights),
        "balanced_n_known": balanced.n_known,
        "balanced_n_kept": balanced.n_kept,
        **spared_summary(result, images, rows),
    }


def spared_summary(result: FrameProbe, images: ValidationImages, rows: np.ndarray) -> dict:
    """The lung-sparing probe's figures over the rows' images that have a manual lung mask."""
    taking_part = rows & images.has_box
    out: dict = {"n_spared": int(taking_part.sum())}
    for variant in SPARED_VARIANTS:
        known = variant in result.answers and taking_part.any()
        out[f"flips_{variant}"] = _share(result.flips(variant)[taking_part]) if known else None
        out[f"mean_dp_{variant}"] = _share(result.delta_p(variant)[taking_part]) if known else None
        out[f"cut_{variant}"] = _share(images.cut_share(variant)[taking_part]) if known else None
    return out


def networks_of(model_id: str, cards: dict[str, dict]) -> dict[str, str | None]:
    """id -> weights_sha256 of every model whose weights the answer of `model_id` uses (the model itself,
    a k-NN's backbone, an ensemble's members): the results go stale when any of them is retrained."""
    card = cards.get(model_id, {})
    found = {model_id: card.get("weights_sha256")}
    for other in [card.get("backbone"), *card.get("members", [])]:
        if other:
            found |= networks_of(other, cards)
    return found


# --- the benchmark's results (docs/frame.json), for the performance page ------------------------


def load_results(path: Path | None = None) -> dict | None:
    """The benchmark's JSON (`DEFAULT_JSON` unless `path`); None when it was never written, ValueError when
    it is not a frame benchmark result."""
    return read_benchmark_rows(DEFAULT_JSON if path is None else Path(path), "frame")


# column of `results_table` -> (how to read it from a row, what it means); the page shows these as help
RESULT_COLUMNS: dict[str, tuple[str, str]] = {
    "Model": ("model", "Installed model id (classifiers, the k-NN and the ensemble)."),
    "Images": ("subset", "Which validation images: full-resolution films, 224x224 squashed copies, or all."),
    "n": ("n", "Validation images in the row."),
    "Flips width %": (
        "flips_width",
        f"Verdicts that change when {CROP_FRACTION:.0%} of the width is cut off each side "
        f"(target <= {MAX_FLIP_SHARE:.0%}).",
    ),
    "Flips height %": (
        "flips_height",
        f"Verdicts that change when {CROP_FRACTION:.0%} of the height is cut off top and bottom "
        f"(target <= {MAX_FLIP_SHARE:.0%}).",
    ),
    "Mean ΔP width": ("mean_dp_width", "Mean change of P(PNEUMONIA) under the width crop (negative: more normal)."),
    "Mean ΔP height": ("mean_dp_height", "Mean change of P(PNEUMONIA) under the height crop."),
    "AUROC": ("plain.auroc", "Validation AUROC of P(PNEUMONIA), every image weighted alike."),
    "Accuracy": ("plain.accuracy", "Validation accuracy of the verdict (pneumonia or not)."),
    "Specificity": ("plain.specificity", "Share of NORMAL validation films called normal."),
    "Balanced AUROC": (
        "balanced.auroc",
        "AUROC with frame-balanced weights: the original aspect ratio has the same distribution in both "
        "classes, so the frame's shape cannot separate them.",
    ),
    "Balanced accuracy": ("balanced.accuracy", "Accuracy with frame-balanced weights."),
    "Balanced specificity": ("balanced.specificity", "Specificity with frame-balanced weights."),
    "Balanced n": (
        "balanced_n_kept",
        "Images with a known original size in aspect-ratio bins that hold both classes (the rest weigh 0).",
    ),
}
RESULT_COLUMNS |= {
    "Flips width, lungs spared %": (
        "flips_width_spared",
        f"Verdicts that change when only what lies outside the manual lung box (plus {SPARED_MARGIN:.0%}) is cut "
        f"off left and right, at most {CROP_FRACTION:.0%} a side (films with a manual mask).",
    ),
    "Flips height, lungs spared %": (
        "flips_height_spared",
        "The same, top and bottom: the frame probe without cutting lung.",
    ),
    "Width cut, lungs spared %": ("cut_width_spared", "Mean share of the width that the lung-sparing cut removed."),
    "Height cut, lungs spared %": ("cut_height_spared", "Mean share of the height that the lung-sparing cut removed."),
    "n spared": ("n_spared", "Films with a manual lung mask (the lung-sparing probe's images)."),
}
PERCENT_COLUMNS = (
    "Flips width %",
    "Flips height %",
    "Flips width, lungs spared %",
    "Flips height, lungs spared %",
    "Width cut, lungs spared %",
    "Height cut, lungs spared %",
)
PROBE_COLUMNS = ["Model", "Images", "n", "Flips width %", "Flips height %", "Mean ΔP width", "Mean ΔP height"]
PROBE_COLUMNS += ["Flips width, lungs spared %", "Flips height, lungs spared %"]
PROBE_COLUMNS += ["Width cut, lungs spared %", "Height cut, lungs spared %", "n spared"]
METRIC_COLUMNS = ["Model", "Images", "n", "AUROC", "Balanced AUROC", "Accuracy", "Balanced accuracy"]
METRIC_COLUMNS += ["Specificity", "Balanced specificity", "Balanced n"]


def _value(row: dict, key: str):
    value = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def results_table(results: dict) -> pd.DataFrame:
    """One row per (model, subset) of the benchmark with the columns of `RESULT_COLUMNS` (flips in %)."""
    rows = []
    for row in results["rows"]:
        values = {column: _value(row, key) for column, (key, _) in RESULT_COLUMNS.items()}
        for column in PERCENT_COLUMNS:
            values[column] = None if values[column] is None else 100.0 * values[column]
        rows.append(values)
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def flips_long(results: dict, subsets: Iterable[str] = SUBSETS[:2]) -> pd.DataFrame:
    """model, subset, crop, flips % (long format for a grouped bar chart)."""
    rows = [
        {"model": r["model"], "subset": r["subset"], "crop": crop_name, "flips %": 100.0 * r[key]}
        for r in results["rows"]
        if r["subset"] in set(subsets)
        for crop_name, key in CROPS.items()
        if r.get(key) is not None
    ]
    return pd.DataFrame(rows, columns=["model", "subset", "crop", "flips %"])


def meets(row: dict, key: str) -> bool:
    """Whether a results row's flip share under `key` is measured and within `MAX_FLIP_SHARE`."""
    return row.get(key) is not None and row[key] <= MAX_FLIP_SHARE


def passing(results: dict, *, spared: bool = False) -> dict[str, bool]:
    """model -> whether its "all" row meets the target for both crops (`spared`: the lung-sparing ones)."""
    keys = ("flips_width_spared", "flips_height_spared") if spared else ("flips_width", "flips_height")
    return {
        r["model"]: all(meets(r, k) for k in keys)
        for r in results["rows"]
        if r["subset"] == "all" and all(r.get(k) is not None for k in keys)
    }


CARD_KEY = "frame_probe"  # where `bench_frame --cards` stores a model's rows in its card


def card_entry(results: dict, model_id: str) -> dict:
    """What a model card keeps of the benchmark: its rows by subset, with how and when they were measured."""
    rows = {
        r["subset"]: {k: v for k, v in r.items() if k not in ("model", "subset", "kind", "task")}
        for r in results["rows"]
        if r["model"] == model_id
    }
    if not rows:
        raise ValueError(f"{model_id} is not in the frame benchmark results")
    meta = {k: results.get(k) for k in ("command", "date", "machine", "split", "crop_fraction", "target_max_flips")}
    spared = passing(results, spared=True).get(model_id)
    return {**meta, "passes": passing(results).get(model_id), "passes_lungs_spared": spared, "rows": rows}


def coverage(results: dict, cards: dict[str, dict], installed: list[str]) -> dict[str, list[str]]:
    """Installed models the benchmark left out ("missing") or measured on other weights ("stale")."""
    measured = {r["model"]: r.get("networks") or {} for r in results["rows"]}

    def retrained(model_id: str) -> bool:
        return any(cards.get(i, {}).get("weights_sha256") != sha for i, sha in measured[model_id].items())

    stale = [m for m in installed if m in measured and retrained(m)]
    return {"missing": [m for m in installed if m not in measured], "stale": stale}
