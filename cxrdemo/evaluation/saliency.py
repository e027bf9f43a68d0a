"""Is a heatmap faithful to the model, and does it sit on the lungs? Measures for `benchmarks.bench_saliency`,
and its results (`load_results`, `results_table`, `method_summary`) for the performance and Diagnose pages.

Three numbers per heatmap (an HxW float map in [0, 1] from `cxrdemo.inference.explain.explain`):

- **Faithfulness**: ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for
  Attribution Methods", arXiv:2202.00449), computed by pytorch-grad-cam's own `ROADCombined`: pixels
  are removed in order of the map (most relevant first, MoRF, and least relevant first, LeRF) at 10, 20,
  ..., 90 % and filled in by noisy linear imputation; the score is (mean LeRF change - mean MoRF change) / 2
  of the explained class's softmax probability. Higher is better: removing what the map calls important
  should hurt more than removing what it calls unimportant. A random map scores about 0; the scale is
  probability, so it is comparable across models. `cam_mult_change` adds the library's
  `CamMultImageConfidenceChange` (the probability change when the normalised input is multiplied by the map).
- **Lung-mass share**: the fraction of the heatmap's mass inside the lungs: the image's manual lung mask
  (`RealLungMasks`: V7 Labs' annotations in ../shared/data/lung_masks, matched by image path and resized
  with the image) where it has one, else the heuristic `lung_mask(pixels)` below (`lung_masks` says which
  each image got; the benchmark reports the count). Compare it with the mask's own share of the image
  area, which is what a uniform map would get.
- **Border-band share**: the fraction of the mass in the outer `BORDER_FRACTION` (10 %) of the image on
  every side, where the radiographer's side markers, labels, corners and collimation edges are. That band
  is 1 - 0.8^2 = 36 % of the area, so a uniform map scores 0.36.

Lung-region estimate (`lung_mask`, the fallback for images without a manual mask): a deterministic function
of the image; no learned model and nothing downloaded. Like the models, it works on the image squashed to a
square (`LUNG_WORK_SIZE` px):
1. An anatomical prior of two vertical ellipses, one per lung, centred at x = 0.33 and 0.67 and y = 0.45
   of the squared image, semi-axes 0.16 (wide) x 0.30 (tall). These numbers were read off validation images
   of the Kermany set: frontal, roughly centred, lungs spanning about 15-75 % of the height.
2. Refinement by intensity, after a Gaussian blur: the mediastinum level is the median of a central
   vertical strip (|x - 0.5| < 0.04, 0.25 < y < 0.65; spine and heart), the lung level is the 10th
   percentile inside the search region (the ellipses scaled by 1.2). The pixels of the search region darker
   than lung + 0.6 x (mediastinum - lung) are aerated lung.
3. The ellipses scaled by 0.7 (the core) are always lung, so dense consolidation in the middle of a lung
   field still counts as lung. Union of core and dark pixels, opened and closed with a 5x5 square,
   connected components that do not touch the core dropped (dark soft tissue above the clavicles),
   holes filled; then resized back to the image with nearest-neighbour.
On Kermany images it covers about 20-35 % of the image.

Limitations: it is a heuristic, not a segmentation (which is why the manual masks replace it wherever an
image has one). The prior assumes a frontal, centred, upright film; a rotated or off-centre patient, a film
cropped tightly or one that includes much of the abdomen moves the real lungs away from the ellipses.
Dense consolidation or effusion at the lung margins is brighter than the threshold and drops out (only
the core is kept regardless), and the costophrenic angles and the lung behind the heart are mostly
outside the mask. So the lung share is a coarse "on the chest vs elsewhere" indicator for comparing CAM
methods and models on the same images, not a measure of anatomical precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxrdemo.fileio import read_benchmark_rows
from cxrdemo.paths import REPO_ROOT

# Where `python -m benchmarks.bench_saliency --json` writes by default (the performance page reads it).
DEFAULT_JSON = REPO_ROOT / "docs" / "saliency.json"

BORDER_FRACTION = 0.10  # the border band: outer 10 % of the width and of the height on each side
UNIFORM_BORDER_SHARE = 1 - (1 - 2 * BORDER_FRACTION) ** 2  # what a uniform heatmap puts in the band (0.36)
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # pytorch-grad-cam's default for ROADCombined

# --- lung-region estimate (see the module docstring) ---
LUNG_WORK_SIZE = 128
LUNG_CENTRES = ((0.33, 0.45), (0.67, 0.45))  # (x, y) of each ellipse, fractions of the squared image
LUNG_SEMI_AXES = (0.16, 0.30)  # (horizontal, vertical)
LUNG_CORE_SCALE = 0.7  # always lung
LUNG_SEARCH_SCALE = 1.2  # where darker-than-threshold pixels count as lung
MEDIASTINUM_STRIP = (0.04, 0.25, 0.65)  # half-width around x = 0.5, then y from, y to
LUNG_PERCENTILE = 10  # the lung level: this percentile of the search region
THRESHOLD_MIX = 0.6  # threshold = lung + THRESHOLD_MIX * (mediastinum - lung)
BLUR_SIGMA = 2.0  # px at LUNG_WORK_SIZE


def lung_prior(size: int, scale: float = 1.0) -> np.ndarray:
    """(size, size) bool: the two lung ellipses of the prior with both semi-axes times `scale`."""
    centres = (np.arange(size) + 0.5) / size
    y, x = centres[:, None], centres[None, :]
    mask = np.zeros((size, size), bool)
    for cx, cy in LUNG_CENTRES:
        mask |= ((x - cx) / (LUNG_SEMI_AXES[0] * scale)) ** 2 + ((y - cy) / (LUNG_SEMI_AXES[1] * scale)) ** 2 <= 1
    return mask


def _lung_mask_square(square: np.ndarray) -> np.ndarray:
    size = square.shape[0]
    image = cv2.GaussianBlur(square.astype(np.float32), (0, 0), BLUR_SIGMA)
    core, search = lung_prior(size, LUNG_CORE_SCALE), lung_prior(size, LUNG_SEARCH_SCALE)
    centres = (np.arange(size) + 0.5) / size
    half_width, top, bottom = MEDIASTINUM_STRIP
    strip = (np.abs(centres[None, :] - 0.5) < half_width) & (centres[:, None] > top) & (centres[:, None] < bottom)
    mediastinum = float(np.median(image[strip]))
    lung = float(np.percentile(image[search], LUNG_PERCENTILE))
    dark = search & (image < lung + THRESHOLD_MIX * (mediastinum - lung))
    kernel = np.ones((5, 5), np.uint8)
    mask = cv2.morphologyEx((dark | core).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel).astype(bool) | core
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    touching = np.unique(labels[core])
    mask = np.isin(labels, touching[touching > 0]).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(np.zeros_like(mask), contours, -1, 1, cv2.FILLED).astype(bool)


def lung_mask(pixels: np.ndarray) -> np.ndarray:
    """HxW bool estimate of the lung fields of a grayscale uint8 chest X-ray (prior + thresholding)."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a grayscale HxW image, got shape {pixels.shape}")
    square = cv2.resize(
        np.ascontiguousarray(pixels, np.uint8), (LUNG_WORK_SIZE, LUNG_WORK_SIZE), interpolation=cv2.INTER_AREA
    )
    mask = _lung_mask_square(square).astype(np.uint8)
    return cv2.resize(mask, (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


LUNG_MASK_SOURCES = ("real", "heuristic")  # the manual mask of the image, or `lung_mask`'s estimate


class RealLungMasks:
    """The manual lung masks of a lung-mask folder (`manifest.csv`: `image` -> `mask`), by image path.

    The masks are 1-bit PNGs at the pixel size of the dataset's copy of the image; `get` resizes one to
    the pixels actually scored (nearest neighbour), so it stays aligned with a downscaled or
    re-encoded copy of the same film (a resize applies to both; the bundled sample is smaller).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        manifest = pd.read_csv(self.root / "manifest.csv", usecols=["image", "mask"])
        self._masks = dict(zip(manifest["image"], manifest["mask"]))

    def __contains__(self, image_path: str) -> bool:
        return image_path in self._masks

    def get(self, image_path: str, shape: tuple[int, int]) -> np.ndarray | None:
        """HxW bool lung mask of the image at `image_path` (dataset-relative), resized to `shape`; None
        when the image has no manual mask."""
        relative = self._masks.get(image_path)
        if relative is None:
            return None
        mask = np.asarray(Image.open(self.root / relative).convert("L")) > 127
        if mask.shape != tuple(shape):
            resized = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
            mask = resized.astype(bool)
        return mask


def lung_masks(
    paths: Sequence[str], images: Sequence[np.ndarray], real: RealLungMasks | None
) -> tuple[list[np.ndarray], list[str]]:
    """(HxW bool lung mask, source) per image: the manual mask when `real` has one, else the heuristic."""
    masks, sources = [], []
    for path, pixels in zip(paths, images):
        mask = None if real is None else real.get(path, pixels.shape)
        masks.append(lung_mask(pixels) if mask is None else mask)
        sources.append(LUNG_MASK_SOURCES[mask is None])
    return masks, sources


def _check_heatmap(heatmap: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2 or (shape is not None and heatmap.shape != shape):
        raise ValueError(f"need an HxW heatmap{'' if shape is None else f' of shape {shape}'}, got {heatmap.shape}")
    if not np.isfinite(heatmap).all() or (heatmap < 0).any():
        raise ValueError("a heatmap must be finite and non-negative")
    return heatmap


def mass_inside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total mass on the True pixels of `mask` (same shape); NaN for an all-zero map."""
    heatmap = _check_heatmap(heatmap, np.shape(mask))
    total = heatmap.sum()
    return float(heatmap[np.asarray(mask, bool)].sum() / total) if total > 0 else float("nan")


def border_band(shape: tuple[int, int], fraction: float = BORDER_FRACTION) -> np.ndarray:
    """HxW bool: the outer `fraction` of the height (top and bottom) and of the width (left and right)."""
    if not 0 < fraction < 0.5:
        raise ValueError(f"fraction must be in (0, 0.5), got {fraction}")
    height, width = shape
    rows, cols = round(fraction * height), round(fraction * width)
    band = np.ones((height, width), bool)
    band[rows : height - rows, cols : width - cols] = False
    return band


def border_share(heatmap: np.ndarray, fraction: float = BORDER_FRACTION) -> float:
    """Share of the heatmap's mass in the border band; a uniform map gives about 1 - (1 - 2 * fraction)^2."""
    heatmap = _check_heatmap(heatmap)
    return mass_inside(heatmap, border_band(heatmap.shape, fraction))


def is_empty(heatmap: np.ndarray) -> bool:
    """True for a flat map (explain's all-zero result when ReLU removes everything): nothing to score."""
    heatmap = np.asarray(heatmap)
    return bool(heatmap.max() <= heatmap.min())


def cam_at_input(heatmap: np.ndarray, size: int) -> np.ndarray:
    """The HxW heatmap explain returns, squashed back to the model's (size, size) input like the image."""
    heatmap = _check_heatmap(heatmap).astype(np.float32)
    if heatmap.shape == (size, size):
        return heatmap
    interpolation = cv2.INTER_AREA if min(heatmap.shape) > size else cv2.INTER_LINEAR
    return np.clip(cv2.resize(heatmap, (size, size), interpolation=interpolation), 0.0, 1.0)


def _ranks(cam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The map's pixel order as values in [0, 1], ties broken at random.

    pytorch-grad-cam's ROAD keeps the pixels with `cam < np.percentile(cam, p)`, so a plateau (Grad-CAM's
    ReLU zeros often cover half the image) bigger than p % makes that step remove every pixel instead of
    (100 - p) %. ROAD depends on the order of the pixels only, so ranking them with random tie-breaks
    gives each step exactly its share and changes nothing else.
    """
    flat = cam.ravel()
    order = np.lexsort((rng.random(flat.size), flat))
    ranks = np.empty(flat.size, np.float32)
    ranks[order] = np.arange(flat.size, dtype=np.float32) / max(flat.size - 1, 1)
    return ranks.reshape(cam.shape)


def _softmax_targets(targets: Sequence[int]) -> list:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    return [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]


def _as_batch(x: torch.Tensor, cams: np.ndarray, targets: Sequence[int] | int) -> tuple[np.ndarray, list[int]]:
    cams = np.asarray(cams, np.float32)
    if cams.ndim == 2:
        cams = cams[None]
    targets = [targets] if isinstance(targets, int | np.integer) else list(targets)
    if x.ndim != 4 or cams.shape != (x.shape[0], *x.shape[2:]) or len(targets) != x.shape[0]:
        raise ValueError(
            f"need x (N, C, S, S), cams (N, S, S) and N targets; got {tuple(x.shape)}, {cams.shape}, {len(targets)}"
        )
    return cams, targets


def road_combined(
    model: torch.nn.Module,
    x: torch.Tensor,
    cams: np.ndarray,
    targets: Sequence[int] | int,
    *,
    percentiles: Sequence[int] = ROAD_PERCENTILES,
    seed: int = 0,
) -> np.ndarray:
    """ROAD combined score (N,) of heatmaps `cams` (N, S, S) for inputs `x` (N, C, S, S) and class `targets`.

    pytorch-grad-cam's `ROADCombined` on the softmax probability of each target class; NaN for a flat map.
    Deterministic: the imputer's noise and the tie-breaks come from `seed`, and the global RNG is untouched.
    """
    from pytorch_grad_cam.metrics.road import ROADCombined

    from cxrdemo.inference.explain import _in_eval_mode  # the model's lock: no CAM hooks see these forward passes

    cams, targets = _as_batch(x, cams, targets)
    scores = np.full(len(targets), np.nan, np.float32)
    keep = [i for i, cam in enumerate(cams) if not is_empty(cam)]
    if not keep:
        return scores
    rng = np.random.default_rng(seed)
    ranked = np.stack([_ranks(cams[i], rng) for i in keep])
    metric = ROADCombined(percentiles=list(percentiles))
    with _in_eval_mode(model, hooks=False), torch.random.fork_rng(devices=[]), torch.inference_mode(False):
        torch.manual_seed(seed)
        scores[keep] = metric(x[keep], ranked, _softmax_targets([targets[i] for i in keep]), model)
    return scores


def faithfulness(model: torch.nn.Module, x: torch.Tensor, heatmap: np.ndarray, target: int, **kwargs) -> float:
    """ROAD combined score of one heatmap (at the input's S x S) for input x (1, C, S, S); see `road_combined`."""
    return float(road_combined(model, x, heatmap, target, **kwargs)[0])


def cam_mult_change(
    model: torch.nn.Module, x: torch.Tensor, cams: np.ndarray, targets: Sequence[int] | int
) -> np.ndarray:
    """pytorch-grad-cam's `CamMultImageConfidenceChange` (N,): the target's softmax probability with the
    normalised input multiplied by the map, minus without (0 is mean grey: unlit parts become flat grey)."""
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange

    from cxrdemo.inference.explain import _in_eval_mode

    cams, targets = _as_batch(x, cams, targets)
    with _in_eval_mode(model, hooks=False), torch.inference_mode(False):
        return np.asarray(CamMultImageConfidenceChange()(x, cams, _softmax_targets(targets), model), np.float32)


def cam_grid(model: torch.nn.Module, input_size: int, layer: torch.nn.Module | None = None) -> tuple[int, int]:
    """(height, width) of the feature map the CAM is computed on (default: `cam_target_layer(model)`)."""
    from cxrdemo.inference.explain import _in_eval_mode
    from cxrdemo.models.architectures import cam_target_layer

    layer = cam_target_layer(model) if layer is None else layer
    shapes: list[tuple[int, int]] = []
    channels = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels
    device = next(model.parameters()).device
    with _in_eval_mode(model, hooks=True), torch.no_grad():  # alone on the model while the hook is on
        handle = layer.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[-2:])))
        try:
            model(torch.zeros(1, channels, input_size, input_size, device=device))
        finally:
            handle.remove()
    return shapes[0]


def validation_sample(frame: pd.DataFrame, n: int, *, seed: int = 0, column: str = "label") -> pd.DataFrame:
    """Up to `n` rows of a validation frame, balanced over the values of `column` (NORMAL/PNEUMONIA).

    Deterministic for a given frame and seed. When a class has too few rows the others fill the gap.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    groups = {value: g.sort_values("path") for value, g in frame.groupby(column, sort=True)}
    shuffled = {value: g.iloc[rng.permutation(len(g))] for value, g in groups.items()}
    quota = {value: 0 for value in shuffled}
    left = min(n, len(frame))
    while left:  # round-robin, so a class short of rows hands its share to the others
        for value, g in shuffled.items():
            if left and quota[value] < len(g):
                quota[value] += 1
                left -= 1
    picked = [g.iloc[: quota[value]] for value, g in shuffled.items()]
    return pd.concat(picked).reset_index(drop=True) if picked else frame.iloc[:0]


# --- the benchmark's results (docs/saliency.json), for the performance page and the Diagnose tooltip ---


def load_results(path: Path | None = None) -> dict | None:
    """The benchmark's JSON (`DEFAULT_JSON` unless `path`); None when it was never written, ValueError when
    it is not a saliency benchmark result."""
    return read_benchmark_rows(DEFAULT_JSON if path is None else Path(path), "saliency")


# column of `results_table` -> (key in a benchmark row, what it means); the page shows these as help
RESULT_COLUMNS: dict[str, tuple[str, str]] = {
    "Model": ("model", "Installed model id."),
    "CAM method": ("method", "The heatmap method (a key of cxrdemo.inference.explain.CAM_METHODS)."),
    "Input px": ("input_px", "The model's square input size."),
    "Images": ("n", "Validation images (balanced NORMAL/PNEUMONIA) the row averages over."),
    "Flat maps": ("n_flat", "Images whose heatmap came out all zero; left out of the means."),
    "ROAD": (
        "road_combined_mean",
        "ROAD combined faithfulness (probability of the explained class): higher is more faithful; "
        "about 0 for a random map.",
    ),
    "ROAD sd": ("road_combined_sd", "Standard deviation of ROAD over the images."),
    "Lung share": (
        "lung_mass_share",
        "Fraction of the heatmap's mass inside the lungs (the manual lung mask where the image has one, "
        "else a heuristic mask; see 'Manual masks').",
    ),
    "Lung area": (
        "lung_area_share",
        "The lung mask's share of the image area: what a uniform heatmap would get for 'Lung share'.",
    ),
    "Manual masks": (
        "lung_masks_real",
        "Images whose lung share used their manual lung mask (V7 Labs); the others used the heuristic "
        "ellipse mask. Empty: measured before manual masks were used (all heuristic).",
    ),
    "Border share": (
        "border_share",
        f"Fraction of the heatmap's mass in the outer {BORDER_FRACTION:.0%} band (labels, markers, "
        f"collimation edges); a uniform heatmap gets {UNIFORM_BORDER_SHARE:.2f}. Lower is better.",
    ),
    "ms / heatmap": ("ms_per_heatmap", "Median milliseconds of one explain call at the benchmark's thread count."),
}


def results_table(results: dict) -> pd.DataFrame:
    """One row per (model, method) of the benchmark, with the columns of `RESULT_COLUMNS`."""
    rows = [{column: row.get(key) for column, (key, _) in RESULT_COLUMNS.items()} for row in results["rows"]]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def lung_share_long(results: dict) -> tuple[pd.DataFrame, float | None]:
    """(model, method, lung share, lung area, images, manual masks) per benchmark row with a lung share,
    and the mean lung area: what a uniform heatmap would put inside the lungs."""
    rows = [
        {
            "model": r["model"],
            "method": r["method"],
            "lung share": r["lung_mass_share"],
            "lung area": r.get("lung_area_share"),
            "images": r.get("n"),
            "manual masks": r.get("lung_masks_real"),
        }
        for r in results["rows"]
        if r.get("lung_mass_share") is not None
    ]
    table = pd.DataFrame(rows, columns=["model", "method", "lung share", "lung area", "images", "manual masks"])
    areas = table["lung area"].dropna()
    return table, (float(areas.mean()) if len(areas) else None)


def method_summary(method: str, model_id: str | None = None, *, path: Path | None = None) -> str | None:
    """One line on what the saliency benchmark found for a CAM method, for one model or averaged over all.

    None when there is no benchmark file or it has no row for this method (and model).
    """
    results = load_results(path)
    if results is None:
        return None
    rows = [
        r for r in results["rows"] if r.get("method") == method and (model_id is None or r.get("model") == model_id)
    ]
    road = [r["road_combined_mean"] for r in rows if r.get("road_combined_mean") is not None]
    lung = [r["lung_mass_share"] for r in rows if r.get("lung_mass_share") is not None]
    if not road or not lung:
        return None
    area = float(np.mean([r["lung_area_share"] for r in rows]))
    images = {r["n"] for r in rows}
    per_model = f"{images.pop()} validation images" if len(images) == 1 else "validation images"
    models = sorted({r["model"] for r in rows})
    scope = f"{models[0]}, {per_model}" if len(models) == 1 else f"mean of {len(models)} models, {per_model} each"
    return (
        f"Saliency benchmark: ROAD {np.mean(road):+.2f}, {np.mean(lung):.0%} of the heatmap on the lung fields "
        f"(a uniform map: {area:.0%}) ({scope})"
    )
