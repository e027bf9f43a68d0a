"""The quality table of every installed model, from its model card (metrics with 95 % intervals).

    python -m benchmarks.quality_table [--split test]

Every number was measured by `cxrdemo.training.finalize` (or `knn`, `ensemble`, `anomaly`) on the named split
after all choices were made on validation; `python -m cxrdemo evaluate --model ID --split test`
re-measures one.
"""

from __future__ import annotations

import argparse

from cxrdemo.models.registry import list_cards

COLUMNS = ("accuracy", "roc_auc", "sensitivity", "specificity", "f1", "pr_auc", "macro_roc_auc", "macro_f1")


def cell(metric: dict | None) -> str:
    if not isinstance(metric, dict) or metric.get("value") is None:
        return "–"
    ci = metric.get("ci") or [None, None]
    interval = f" ({ci[0]:.3f}–{ci[1]:.3f})" if None not in ci else ""
    return f"{metric['value']:.3f}{interval}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    cards = list_cards()
    shown = [c for c in COLUMNS if any(c in card.get("metrics", {}).get(args.split, {}) for card in cards.values())]
    print(f"| model | task | input | trained | threshold | {' | '.join(shown)} |")
    print("|---|---|---|---|---|" + "---|" * len(shown))
    for model_id, card in cards.items():
        metrics = card.get("metrics", {}).get(args.split)
        if not metrics or "accuracy" not in metrics:
            continue
        training = card.get("training") or {}
        trained = (
            f"{training.get('device', '?')}, {training.get('epochs_run', '?')} ep"
            if "epochs_run" in training
            else card.get("kind", "")
        )
        threshold = f"{card['threshold']:.3f}" if card.get("threshold") is not None else "argmax"
        preprocessing = card.get("preprocessing") or {}  # null for the ensemble
        size = preprocessing.get("input_size")
        size = f"{size} px {preprocessing.get('resize', 'squash').replace('_', ' ')}" if size else "–"
        print(
            f"| {model_id} | {card.get('task')} | {size} | {trained} | {threshold} | "
            + " | ".join(cell(metrics.get(c)) for c in shown)
            + " |"
        )


if __name__ == "__main__":
    main()
