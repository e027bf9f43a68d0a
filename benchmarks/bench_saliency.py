"""Saliency quality per model and CAM method: ROAD faithfulness, heatmap mass on the lungs and on the border.

    python -m benchmarks.bench_saliency [--n 24] [--models ID ...] [--methods NAME ...] [--data DIR]
                                        [--masks DIR] [--threads 1] [--json [OUT]]

Images: N validation images per model (balanced NORMAL/PNEUMONIA), carved from the train split with the
model card's `training.val_fraction` and `training.seed` (`cxrdemo.data.dataset.patient_split`), never the test
split: this benchmark is for choosing a CAM method. Heatmaps come from `cxrdemo.inference.explain.explain`, the
app's own path, for the predicted class; the measures are in `cxrdemo.evaluation.saliency` (its docstring explains
ROAD, the lung masks and the heuristic lung-region estimate). Lungs: the image's manual lung mask (`--masks`,
default `lung_masks` beside the data folder, else ../shared/data/lung_masks; matched by image path, resized
with the image) where it has one, the heuristic ellipse mask for the rest ("manual masks" counts them).
Defaults: every installed classifier, every method explain offers, the data in `--data`, CXRDEMO_DATA,
../shared/data/chest_xray, else the bundled sample.

Columns: ROAD combined (mean ± sd over images; softmax probability, higher is more faithful, ~0 for a
random map), the library's cam x image confidence change (mean), lung-mass share (mean) next to the
lung mask's share of the area (what a uniform map gets), border-band share (outer 10 %; a uniform map
gets 0.36) and the median milliseconds of one `explain` call (image -> heatmap and overlay) at the chosen
torch thread count. "n (flat)" counts the images and, of them, the all-zero heatmaps, which are left out
of the means. `--json` writes the same rows (default path `cxrdemo.evaluation.saliency.DEFAULT_JSON`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from cxrdemo.data.dataset import load_dataset, patient_split
from cxrdemo.evaluation.saliency import (
    BORDER_FRACTION,
    DEFAULT_JSON,
    ROAD_PERCENTILES,
    UNIFORM_BORDER_SHARE,
    RealLungMasks,
    border_share,
    cam_at_input,
    cam_grid,
    cam_mult_change,
    is_empty,
    lung_masks,
    mass_inside,
    road_combined,
    validation_sample,
)
from cxrdemo.fileio import atomic_write_json
from cxrdemo.imaging.decode import load_image_file
from cxrdemo.imaging.preprocess import to_input
from cxrdemo.inference.explain import CAM_METHODS, explain
from cxrdemo.models.registry import list_cards, load_model
from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR

SHARED_DATA = REPO_ROOT.parent / "shared" / "data" / "chest_xray"


def default_data() -> Path:
    if os.environ.get("CXRDEMO_DATA"):
        return Path(os.environ["CXRDEMO_DATA"])
    return SHARED_DATA if (SHARED_DATA / "manifest.csv").exists() else SAMPLE_DIR


def installed_classifiers() -> list[str]:
    return [i for i, c in list_cards().items() if "error" not in c and c.get("kind") == "classifier"]


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    kept = [v for v in values if np.isfinite(v)]
    if not kept:
        return None, None
    return float(np.mean(kept)), float(np.std(kept, ddof=1)) if len(kept) > 1 else 0.0


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def default_masks(data: Path) -> Path | None:
    """`lung_masks` beside the data folder, else the shared copy; None when neither exists."""
    for candidate in (data.parent / "lung_masks", SHARED_DATA.parent / "lung_masks"):
        if (candidate / "manifest.csv").is_file():
            return candidate
    return None


def measure(
    model_id: str,
    dataset,
    n: int,
    methods: list[str],
    seed: int,
    percentiles: tuple[int, ...] = ROAD_PERCENTILES,
    real_masks: RealLungMasks | None = None,
) -> list[dict]:
    """One row per method for `model_id` on its N validation images (lungs: manual masks where they exist)."""
    model = load_model(model_id)
    module, spec = model.module, model.preprocessing
    training = model.card.get("training", {})
    _, val = patient_split(
        dataset.split("train"), val_fraction=training.get("val_fraction", 0.15), seed=training.get("seed", 0)
    )
    rows = validation_sample(val, n, seed=seed)
    images = [load_image_file(dataset.absolute(p)).pixels for p in rows["path"]]
    masks, mask_sources = lung_masks(list(rows["path"]), images, real_masks)
    x = torch.cat([to_input(px, spec) for px in images])
    grid = cam_grid(module, spec.input_size)
    lung_area = float(np.mean([m.mean() for m in masks]))
    out = []
    for method in methods:
        started = time.perf_counter()
        explain(module, images[0], spec, method=method)  # warm-up (library import, allocator): not timed
        seconds, heatmaps, targets = [], [], []
        for px in images:
            start = time.perf_counter()
            e = explain(module, px, spec, method=method)
            seconds.append(time.perf_counter() - start)
            heatmaps.append(e.heatmap)
            targets.append(e.target_class)
        cams = np.stack([cam_at_input(h, spec.input_size) for h in heatmaps])
        road = road_combined(module, x, cams, targets, percentiles=percentiles, seed=seed)
        mult = cam_mult_change(module, x, cams, targets)
        flat = [is_empty(h) for h in heatmaps]
        lung = [mass_inside(h, m) for h, m in zip(heatmaps, masks)]
        border = [border_share(h) for h in heatmaps]
        road_mean, road_sd = _mean_sd(list(road))
        out.append(
            {
                "model": model_id,
                "weights_sha256": model.card.get("weights_sha256"),  # which weights: a retrained model differs
                "input_px": spec.input_size,
                "cam_grid": list(grid),
                "method": method,
                "n": len(images),
                "n_flat": int(sum(flat)),
                "road_combined_mean": road_mean,
                "road_combined_sd": road_sd,
                "road_percentiles": list(percentiles),
                "cam_mult_change_mean": _mean_sd([m for m, f in zip(mult, flat) if not f])[0],
                "lung_mass_share": _mean_sd(lung)[0],
                "lung_area_share": lung_area,
                "lung_masks_real": mask_sources.count("real"),  # the rest: the heuristic ellipse mask
                "border_share": _mean_sd(border)[0],
                "border_area_share": UNIFORM_BORDER_SHARE,
                "ms_per_heatmap": statistics.median(seconds) * 1000,
                "labels": rows["label"].value_counts().sort_index().to_dict(),
            }
        )
        print(f"{model_id} {method}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def print_table(rows: list[dict], command: str) -> None:
    print(
        "| model | input px | CAM grid | method | n (flat) | ROAD combined | cam×image Δp | lung mass "
        "| lung area | manual masks | border mass | ms/heatmap |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mean, sd = r["road_combined_mean"], r["road_combined_sd"]
        road = "–" if mean is None else f"{mean:+.3f} ± {sd:.3f}"
        print(
            f"| {r['model']} | {r['input_px']} | {r['cam_grid'][0]}×{r['cam_grid'][1]} | {r['method']} "
            f"| {r['n']} ({r['n_flat']}) | {road} | {_fmt(r['cam_mult_change_mean'])} "
            f"| {_fmt(r['lung_mass_share'], 2)} "
            f"| {r['lung_area_share']:.2f} | {r.get('lung_masks_real', 0)}/{r['n']} "
            f"| {_fmt(r['border_share'], 2)} | {r['ms_per_heatmap']:.0f} |"
        )
    print(
        f"\n`{command}`; border band = outer {BORDER_FRACTION:.0%} "
        f"(a uniform map puts {UNIFORM_BORDER_SHARE:.2f} there); lung mass and area on the manual lung mask "
        "for 'manual masks' of the images, on the heuristic ellipse mask for the rest"
    )


def kept_rows(path: Path, measured: set[str]) -> list[dict]:
    """The rows of an earlier results file for models this run did not measure, each with its own date."""
    earlier = json.loads(path.read_text())
    kept = [row for row in earlier["rows"] if row["model"] not in measured]
    for row in kept:
        row.setdefault("measured", earlier.get("date"))
    return kept


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="validation images per model (balanced by label)")
    parser.add_argument("--models", nargs="+", help="model ids (default: every installed classifier)")
    parser.add_argument("--methods", nargs="+", choices=list(CAM_METHODS), help="default: all of them")
    parser.add_argument("--data", help="dataset folder (default: CXRDEMO_DATA, ../shared/data/chest_xray, sample)")
    parser.add_argument(
        "--masks", help="lung-mask folder with manifest.csv (default: lung_masks beside --data, else shared)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a busy machine)")
    parser.add_argument(
        "--road-percentiles",
        type=int,
        nargs="+",
        default=list(ROAD_PERCENTILES),
        help="removal levels of ROAD in %% (each costs one imputation per image; fewer is faster)",
    )
    parser.add_argument("--seed", type=int, default=0, help="image sample, ROAD noise and tie-breaks")
    parser.add_argument("--json", nargs="?", const=str(DEFAULT_JSON), help=f"write the rows (default {DEFAULT_JSON})")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="with --json: replace only the measured models' rows and keep the others (each row keeps its date)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else default_data()
    dataset = load_dataset(data)
    masks = Path(args.masks) if args.masks else default_masks(data)
    real_masks = RealLungMasks(masks) if masks is not None else None
    models = args.models or installed_classifiers()
    methods = args.methods or list(CAM_METHODS)
    command = "python -m benchmarks.bench_saliency " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads {args.threads}"
    lungs = masks or "none (heuristic only)"
    print(f"# {machine}; data {data}; lung masks {lungs}; {args.n} validation images per model")
    rows = [
        row
        for model_id in models
        for row in measure(
            model_id, dataset, args.n, methods, args.seed, tuple(args.road_percentiles), real_masks=real_masks
        )
    ]
    print_table(rows, command.strip())
    if args.json:
        date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        for row in rows:
            row["measured"] = date
        if args.merge and Path(args.json).exists():
            # one block per model, in model order (a stable sort keeps each model's method order)
            rows = sorted(kept_rows(Path(args.json), set(models)) + rows, key=lambda row: row["model"])
        atomic_write_json(
            Path(args.json),
            {
                "command": command.strip(),
                "date": date,
                "machine": machine,
                "data": str(data),
                "lung_masks": None if masks is None else str(masks),
                "split": "validation (carved from train per model card)",
                "threads": args.threads,
                "torch": torch.__version__,
                "rows": rows,
            },
        )
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
