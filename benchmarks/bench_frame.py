"""Does each installed model read the lungs or the frame? The frame probe and frame-balanced validation.

    python -m benchmarks.bench_frame [--data DIR] [--masks DIR] [--models ID ...] [--limit N]
                                     [--threads N] [--json [OUT] | --no-json]

For every installed classifier, the k-NN and the ensemble (or `--models`), on that model's validation
images (its card's patient split of train, never test), through the serving path
(`Predictor.get(id).probabilities(PixelImages(...))` of images decoded like uploads): the share of
verdicts that flip when 10 % of the width is cut off each side, and when 10 % of the height is cut off
top and bottom, the mean change of P(PNEUMONIA), and AUROC / accuracy / specificity plain and with
frame-balanced weights (the original aspect ratio equally distributed in both classes). Rows: the
full-resolution films, the 224x224 squashed copies, and all. The measures and the weighting rule are in
`cxrdemo.evaluation.frame` (its docstring). Original sizes of the 224 copies come from the lung-mask
manifest (`--masks`, default: `lung_masks` beside the data folder, else ../shared/data/lung_masks).

Writes the rows to `cxrdemo.evaluation.frame.DEFAULT_JSON` (the performance page reads it) unless
`--no-json`; a `--limit` run (a quick look on N images per model) writes only with an explicit `--json`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_saliency import default_data, default_masks  # the same data and mask folders
from cxrdemo.data.dataset import load_dataset
from cxrdemo.evaluation.frame import (
    CARD_KEY,
    CROP_FRACTION,
    DEFAULT_JSON,
    MAX_FLIP_SHARE,
    MIN_PER_CLASS,
    N_BINS,
    SPARED_MARGIN,
    SUBSETS,
    ValidationImages,
    card_entry,
    load_validation,
    networks_of,
    probe,
    summary,
)
from cxrdemo.fileio import atomic_write_json
from cxrdemo.inference.predict import Predictor
from cxrdemo.models.registry import annotate_card, list_cards


def _split_key(card: dict) -> tuple:
    """What decides a card's validation side (`card_validation_split`): equal keys, equal images."""
    training = card.get("training") or {}
    return training.get("val_fraction", 0.15), training.get("seed", 0), training.get("subset")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _metrics(m: dict) -> str:
    return f"{_num(m['auroc'])} / {_num(m['accuracy'])} / {_num(m['specificity'])}"


def print_table(rows: list[dict], command: str) -> None:
    print(
        "| model | images | n | flips width % | flips height % | mean ΔP width / height "
        "| plain AUROC / acc / spec | frame-balanced AUROC / acc / spec (n) "
        "| lungs spared: flips width / height % (cut width / height %, n) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        spared = (
            f"{_pct(r.get('flips_width_spared'))} / {_pct(r.get('flips_height_spared'))} "
            f"({_pct(r.get('cut_width_spared'))} / {_pct(r.get('cut_height_spared'))}, {r.get('n_spared', 0)})"
        )
        print(
            f"| {r['model']} | {r['subset']} | {r['n']} | {_pct(r['flips_width'])} | {_pct(r['flips_height'])} "
            f"| {r['mean_dp_width']:+.3f} / {r['mean_dp_height']:+.3f} | {_metrics(r['plain'])} "
            f"| {_metrics(r['balanced'])} ({r['balanced_n_kept']}) | {spared} |"
        )
    print(
        f"\n`{command}`; crops: {CROP_FRACTION:.0%} of the width off each side, {CROP_FRACTION:.0%} of the height "
        f"off top and bottom; target <= {MAX_FLIP_SHARE:.0%} flips; frame-balanced: {N_BINS} aspect-ratio "
        f"quantile bins, bins with < {MIN_PER_CLASS} images of a class dropped; lungs spared: the same cuts "
        f"stopped {SPARED_MARGIN:.0%} of the dimension short of the manual lung box (films with a manual mask)"
    )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="dataset folder (default: CXRDEMO_DATA, ../shared/data/chest_xray, sample)")
    parser.add_argument("--masks", help="lung-mask folder with manifest.csv (original sizes of the 224 copies)")
    parser.add_argument("--models", nargs="+", help="model ids (default: every classifier, k-NN and ensemble)")
    parser.add_argument("--limit", type=int, help="at most N validation images per model (class shares kept)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--json", nargs="?", const=str(DEFAULT_JSON), help=f"write the rows (default {DEFAULT_JSON})")
    parser.add_argument("--no-json", action="store_true", help="print only")
    parser.add_argument("--cards", action="store_true", help=f"also store each model's rows in its card ('{CARD_KEY}')")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else default_data()
    masks = Path(args.masks) if args.masks else default_masks(data)
    dataset = load_dataset(data)
    predictor = Predictor()
    cards = predictor.cards()
    models = args.models or predictor.model_ids(task=None)
    unknown = [m for m in models if m not in predictor.model_ids(task=None)]
    if unknown:
        parser.error(f"not installed: {', '.join(unknown)}; choose from {', '.join(predictor.model_ids(task=None))}")
    command = ("python -m benchmarks.bench_frame " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, threads {args.threads}"
    print(f"# {machine}; data {data}; masks {masks}; limit {args.limit}")

    decoded: dict[str, np.ndarray] = {}  # path -> pixels: every file decoded once for all models
    splits: dict[tuple, ValidationImages] = {}
    rows = []
    for model_id in models:
        started = time.perf_counter()
        key = _split_key(cards[model_id])
        if key not in splits:
            splits[key] = load_validation(dataset, cards[model_id], masks, limit=args.limit, decoded=decoded)
        images = splits[key]
        result = probe(predictor, model_id, images)
        extra = {"kind": cards[model_id].get("kind"), "task": cards[model_id].get("task")}
        extra["networks"] = networks_of(model_id, cards)
        rows += [{**summary(result, images, subset), **extra} for subset in SUBSETS]
        print(f"{model_id}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print_table(rows, command)

    out = args.json or (None if args.no_json or args.limit else str(DEFAULT_JSON))
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings = {
        "data": str(data),
        "masks": None if masks is None else str(masks),
        "split": "validation (carved from train per model card)",
        "limit": args.limit,
        "crop_fraction": CROP_FRACTION,
        "target_max_flips": MAX_FLIP_SHARE,
        "balanced_bins": N_BINS,
        "balanced_min_per_class": MIN_PER_CLASS,
        "spared_margin": SPARED_MARGIN,
    }
    if out:
        atomic_write_json(Path(out), {"command": command, "date": date, "machine": machine, **settings, "rows": rows})
        print(f"wrote {out}")
    if args.cards:
        record_in_cards({"command": command, "date": date, "machine": machine, **settings, "rows": rows})
    return rows


def record_in_cards(results: dict) -> None:
    """Each measured model's rows into its installed card, when the card still names the measured weights."""
    cards = list_cards()
    for model_id in dict.fromkeys(r["model"] for r in results["rows"]):
        networks = next(r["networks"] for r in results["rows"] if r["model"] == model_id)
        if any(cards.get(i, {}).get("weights_sha256") != sha for i, sha in networks.items()):
            print(f"{model_id}: retrained while measured; card left as it was", file=sys.stderr)
            continue
        annotate_card(model_id, CARD_KEY, card_entry(results, model_id))
        print(f"{model_id}: frame probe stored in its card")


if __name__ == "__main__":
    main()
