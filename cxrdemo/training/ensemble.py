"""The ensemble: calibrated probabilities of binary models averaged.

The shipped ensemble's members are fixed in advance (`cxrdemo.zoo.ENSEMBLE_MEMBERS`, docs/DECISIONS.md):
validation AUROC saturates near 0.997 on this data and log-loss selection was decided by a handful
of images. Without a fixed list, members are chosen by greedy forward selection on validation
log-loss. The threshold is the equal-prior decision p >= 0.5 (the members are class-balanced
networks). Test predictions are only combined and reported afterwards.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from cxrdemo.card import ModelCard
from cxrdemo.evaluation.calibration import choose_thresholds
from cxrdemo.evaluation.metrics import auroc, report
from cxrdemo.models.registry import list_cards, load_predictions, write_model
from cxrdemo.tasks import get_task
from cxrdemo.training.finalize import BALANCED_PRIOR_THRESHOLD


def _aligned(model_ids: list[str], directory: Path, split: str) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    tables = {m: load_predictions(m, directory) for m in model_ids}
    tables = {m: t[t["split"] == split].set_index("path") for m, t in tables.items()}
    common = sorted(set.intersection(*(set(t.index) for t in tables.values())))
    first = next(iter(tables.values())).loc[common]
    return first, {m: t.loc[common, "prob_PNEUMONIA"].to_numpy() for m, t in tables.items()}


def log_loss(y: np.ndarray, p_pos: np.ndarray) -> float:
    p = np.clip(p_pos, 1e-6, 1 - 1e-6)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def select_members(val_probs: dict[str, np.ndarray], y: np.ndarray, max_members: int = 5) -> list[str]:
    """Greedy forward selection (without replacement) on validation log-loss; ties go to fewer members."""
    chosen: list[str] = []
    best = np.inf
    while len(chosen) < max_members:
        trials = [
            (log_loss(y, np.mean([val_probs[m] for m in chosen + [c]], axis=0)), c)
            for c in sorted(val_probs)
            if c not in chosen
        ]
        if not trials:
            break
        score, candidate = min(trials)
        if score >= best - 1e-6:
            break
        chosen.append(candidate)
        best = score
    return chosen


def build_ensemble(
    directory: Path, candidates: list[str] | None = None, model_id: str = "ensemble", *, fixed: bool = False
) -> dict:
    """Combine `candidates` (all of them when `fixed`, else a validation-selected subset) into one model."""
    cards = list_cards(directory)
    missing = [m for m in candidates or [] if m not in cards]
    if missing:
        raise ValueError(f"ensemble members not installed: {', '.join(missing)}")
    candidates = candidates or [
        i for i, c in cards.items() if c.get("kind") == "classifier" and c.get("task") == "binary"
    ]
    if not candidates:
        raise ValueError("no binary classifiers to combine")
    val_rows, val_probs = _aligned(candidates, directory, "val")
    y_val = val_rows["y_true"].to_numpy()
    if not len(val_rows):
        raise ValueError(f"{', '.join(candidates)} share no validation images (trained on different data or splits)")
    members = list(candidates) if fixed else select_members(val_probs, y_val)
    p_val = np.mean([val_probs[m] for m in members], axis=0)
    thresholds = choose_thresholds(y_val, p_val)
    threshold = BALANCED_PRIOR_THRESHOLD
    metrics = {"val": report("binary", y_val, np.stack([1 - p_val, p_val], 1), threshold)}
    tables = [val_rows.reset_index().assign(split="val", prob_NORMAL=1 - p_val, prob_PNEUMONIA=p_val)]
    test_rows, test_probs = _aligned(members, directory, "test")
    if len(test_rows):
        p_test = np.mean([test_probs[m] for m in members], axis=0)
        metrics["test"] = report("binary", test_rows["y_true"].to_numpy(), np.stack([1 - p_test, p_test], 1), threshold)
        tables.append(test_rows.reset_index().assign(split="test", prob_NORMAL=1 - p_test, prob_PNEUMONIA=p_test))
    keep = ["path", "split", "y_true", "label", "subtype", "prob_NORMAL", "prob_PNEUMONIA"]
    buffer = io.StringIO()
    pd.concat(tables)[keep].to_csv(buffer, index=False, float_format="%.6g")
    card = ModelCard(
        kind="ensemble",
        task="binary",
        arch="ensemble",
        classes=list(get_task("binary").classes),
        threshold=threshold,
        metrics=metrics,
        data={"manifest_fingerprint": cards[members[0]].get("data", {}).get("manifest_fingerprint")},
        extra={
            "members": members,
            "candidates": candidates,
            "combination": "mean of temperature-scaled probabilities",
            "selection": "fixed in advance" if fixed else "greedy forward selection on validation log-loss",
            "threshold_rule": "balanced_prior: mean probability >= 0.5 of class-balanced members",
            "validation_auroc": auroc(y_val, p_val),
            "thresholds": thresholds,
        },
    )
    return write_model(directory, model_id, {}, card, buffer.getvalue())
