"""Evaluation metrics with bootstrap confidence intervals, returned as JSON-ready dicts.

Point values come from scikit-learn. Intervals are 95 % percentile bootstraps over images: resample `i`
uses row `i` of `np.random.default_rng(seed).integers(0, n, size=(n_boot, n))`, and all metrics of one
report share those resamples. A resample in which a metric is undefined (a zero denominator, or a
class missing for an AUC) is skipped for that metric. The bootstrap is vectorised: each resample is
a row of per-image counts, so threshold metrics are matrix-vector products and AUCs are weighted
rank statistics; `tests/test_metrics.py` checks them against scikit-learn resample by resample.

Convention: an image is predicted positive when `p_pos >= threshold` (as in `sklearn.metrics.roc_curve`).
Undefined values (`nan`) are returned as `None`, so `json.dumps(report, allow_nan=False)` works.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from cxrdemo.tasks import get_task

_CI_PERCENTILES = (2.5, 97.5)
_CHUNK_ELEMENTS = 2_000_000  # bound on resample-count matrix size (float64), about 16 MB


# --- input checks and JSON conversion -------------------------------------------------------------


def _binary_inputs(y_true: np.ndarray, scores: np.ndarray, *, probabilities: bool) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=float)
    if y.ndim != 1 or s.shape != y.shape:
        raise ValueError(f"y_true and scores must be 1-D of equal length, got {y.shape} and {s.shape}")
    if y.size == 0:
        raise ValueError("no samples")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold binary class indices (0 or 1)")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if probabilities and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError("p_pos must be probabilities in [0, 1]")
    return y.astype(np.int64), s


def _num(x: float) -> float | None:
    """A plain float, or None where undefined (JSON has no nan)."""
    x = float(x)
    return x if np.isfinite(x) else None


def _floats(values: np.ndarray) -> list[float | None]:
    return [_num(v) for v in np.asarray(values, dtype=float)]


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.min() != y.max())


# --- bootstrap machinery ------------------------------------------------------------------------


def _resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) matrix: how often each image appears in each resample."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    counts = np.empty((n_boot, n), dtype=float)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, rows):
        block = idx[start : start + rows]
        flat = (block + n * np.arange(block.shape[0])[:, None]).ravel()
        counts[start : start + rows] = np.bincount(flat, minlength=block.size).reshape(block.shape)
    return counts


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, nan where den == 0 (undefined in that resample, so it is skipped)."""
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _grouped_weights(counts: np.ndarray, is_pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative resample weights per distinct score, scores ascending: (n_boot, n_distinct) each."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    w = counts[:, order]
    pos = is_pos[order].astype(float)
    pos_w = np.add.reduceat(w * pos, starts, axis=1)
    neg_w = np.add.reduceat(w * (1.0 - pos), starts, axis=1)
    return pos_w, neg_w


def _boot_auc(counts: np.ndarray, is_pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC of every resample (Mann-Whitney U with ties counted half), nan for single-class resamples."""
    pos_w, neg_w = _grouped_weights(counts, is_pos, score)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    wins = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    return _ratio(wins, pos_w.sum(axis=1) * neg_w.sum(axis=1))


def _boot_average_precision(counts: np.ndarray, is_pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Average precision of every resample, as sklearn: sum over thresholds of (R_k - R_{k-1}) * P_k."""
    pos_w, neg_w = _grouped_weights(counts, is_pos, score)
    tps = np.cumsum(pos_w[:, ::-1], axis=1)  # thresholds from the highest score down
    fps = np.cumsum(neg_w[:, ::-1], axis=1)
    precision = np.zeros_like(tps)
    np.divide(tps, tps + fps, out=precision, where=(tps + fps) > 0)
    recall_gain = np.diff(tps, axis=1, prepend=0.0)  # true-positive weight added at each threshold
    ap = _ratio((recall_gain * precision).sum(axis=1), tps[:, -1])
    ap[neg_w.sum(axis=1) == 0] = np.nan  # AUC metrics need both classes
    return ap


def _ci(values: np.ndarray) -> list[float | None]:
    kept = values[np.isfinite(values)]
    if kept.size == 0:
        return [None, None]
    return _floats(np.percentile(kept, _CI_PERCENTILES))


def _with_ci(value: float, boot: np.ndarray | None) -> dict:
    return {"value": _num(value), "ci": _ci(boot) if boot is not None else [None, None]}


# --- public API ---------------------------------------------------------------------------------


def auroc(y_true: np.ndarray, p_pos: np.ndarray) -> float:
    """ROC AUC from sklearn, or nan when only one class is present (where sklearn would raise)."""
    y, s = _binary_inputs(y_true, p_pos, probabilities=False)
    return float(roc_auc_score(y, s)) if _both_classes(y) else float("nan")


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    return float(average_precision_score(y, s)) if _both_classes(y) else float("nan")


def confusion_at(y_true: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict:
    """Confusion counts and threshold metrics at one threshold; cheap enough for a live slider."""
    y, s = _binary_inputs(y_true, p_pos, probabilities=False)
    pred = (s >= threshold).astype(np.int64)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    # per-class recall: index 1 is sensitivity, index 0 specificity
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=0)
    return {
        "tn": int(tn),
        "fp": int(fp),
        "fn": int(fn),
        "tp": int(tp),
        "sensitivity": float(recall[1]),
        "specificity": float(recall[0]),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision[1]),
        "f1": float(f1[1]),
    }


def roc_points(y_true: np.ndarray, p_pos: np.ndarray) -> dict:
    """ROC curve as lists for plotting; the first threshold (sklearn's inf) becomes 1.0.

    Empty lists when only one class is present (the curve is undefined).
    """
    y, s = _binary_inputs(y_true, p_pos, probabilities=False)
    if not _both_classes(y):
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = roc_curve(y, s)
    thresholds = np.where(np.isinf(thresholds), max(1.0, float(s.max())), thresholds)
    return {"fpr": _floats(fpr), "tpr": _floats(tpr), "thresholds": _floats(thresholds)}


def pr_points(y_true: np.ndarray, p_pos: np.ndarray) -> dict:
    """Precision-recall curve as lists of equal length for plotting.

    sklearn gives one threshold fewer than points: its last point (recall 0, precision 1) has none,
    so it is given 1.0 here, mirroring `roc_points`. Empty lists when only one class is present.
    """
    y, s = _binary_inputs(y_true, p_pos, probabilities=False)
    if not _both_classes(y):
        return {"recall": [], "precision": [], "thresholds": []}
    precision, recall, thresholds = precision_recall_curve(y, s)
    thresholds = np.append(thresholds, max(1.0, float(s.max())))
    return {"recall": _floats(recall), "precision": _floats(precision), "thresholds": _floats(thresholds)}


def reliability(y_true_is_pos: np.ndarray, p: np.ndarray, n_bins: int = 10) -> dict:
    """Reliability diagram and expected calibration error (Guo et al. 2017, equal-width bins).

    Bins match `sklearn.calibration.calibration_curve(strategy="uniform")`: (lo, hi], the first also
    holding 0. For top-label ECE pass `correct = argmax == label` and `p = max probability`.
    Empty bins have `None` mean confidence and fraction positive.
    """
    y, s = _binary_inputs(np.asarray(y_true_is_pos).astype(np.int64), p, probabilities=True)
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], s)
    count = np.bincount(ids, minlength=n_bins)
    conf_sum = np.bincount(ids, weights=s, minlength=n_bins)
    pos_sum = np.bincount(ids, weights=y, minlength=n_bins)
    ece = np.abs(pos_sum - conf_sum).sum() / s.size  # = sum_b |B_b|/n * |acc_b - conf_b|
    bins = [
        {
            "lo": float(edges[b]),
            "hi": float(edges[b + 1]),
            "count": int(count[b]),
            "mean_confidence": float(conf_sum[b] / count[b]) if count[b] else None,
            "fraction_positive": float(pos_sum[b] / count[b]) if count[b] else None,
        }
        for b in range(n_bins)
    ]
    return {"ece": float(ece), "bins": bins}


def binary_report(
    y_true: np.ndarray, p_pos: np.ndarray, threshold: float, *, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Everything the evaluation page shows for a binary model, with 95 % bootstrap intervals.

    `n_boot=0` skips the bootstrap (intervals are `[None, None]`).
    """
    y, s = _binary_inputs(y_true, p_pos, probabilities=True)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if n_boot < 0:
        raise ValueError("n_boot must be >= 0")
    point = confusion_at(y, s, threshold)
    pred = s >= threshold
    is_pos = y == 1

    boot: dict[str, np.ndarray | None] = dict.fromkeys(
        ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc")
    )
    if n_boot:
        counts = _resample_counts(y.size, n_boot, seed)
        tp = counts @ (is_pos & pred).astype(float)
        fp = counts @ (~is_pos & pred).astype(float)
        fn = counts @ (is_pos & ~pred).astype(float)
        tn = counts @ (~is_pos & ~pred).astype(float)
        boot.update(
            accuracy=(tp + tn) / y.size,
            sensitivity=_ratio(tp, tp + fn),
            specificity=_ratio(tn, tn + fp),
            precision=_ratio(tp, tp + fp),
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
            roc_auc=_boot_auc(counts, is_pos, s),
            pr_auc=_boot_average_precision(counts, is_pos, s),
        )

    values = {
        **{k: point[k] for k in ("accuracy", "sensitivity", "specificity", "precision", "f1")},
        "roc_auc": auroc(y, s),
        "pr_auc": _average_precision(y, s),
    }
    rel = reliability(is_pos, s)
    return {
        "n": int(y.size),
        "threshold": float(threshold),
        **{name: _with_ci(values[name], boot[name]) for name in values},
        "ece": {"value": rel["ece"]},
        "confusion": {k: point[k] for k in ("tn", "fp", "fn", "tp")},
        "roc": roc_points(y, s),
        "pr": pr_points(y, s),
        "reliability": rel,
    }


def multiclass_report(
    y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> dict:
    """Report for a softmax classifier (argmax decision), with 95 % bootstrap intervals.

    `macro_roc_auc` is sklearn's one-vs-rest macro average (the mean of per-class AUCs); it is `None`
    when some class is missing from `y_true`. ECE is on the top-label confidence.
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    n_classes = len(classes)
    if p.ndim != 2 or p.shape[1] != n_classes or y.shape != (p.shape[0],):
        raise ValueError(f"need y_true (N,) and probs (N, {n_classes}), got {y.shape} and {p.shape}")
    if y.size == 0:
        raise ValueError("no samples")
    if len(set(map(str, classes))) != n_classes:
        raise ValueError(f"class names must be unique, got {list(classes)}")
    if not np.isin(y, np.arange(n_classes)).all():
        raise ValueError(f"y_true must hold class indices 0..{n_classes - 1}")
    if not np.isfinite(p).all() or p.min() < 0 or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs must be finite, non-negative, with rows summing to 1")
    if n_boot < 0:
        raise ValueError("n_boot must be >= 0")
    y = y.astype(np.int64)
    labels = list(range(n_classes))
    pred = p.argmax(axis=1)
    confidence = np.clip(p.max(axis=1), 0.0, 1.0)  # rows may sum to 1 +- 1e-4

    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    class_auc = [auroc(y == k, p[:, k]) for k in labels]
    macro_auc = float(np.mean(class_auc))  # nan if any class AUC is undefined

    boot: dict[str, np.ndarray | None] = dict.fromkeys(("accuracy", "macro_f1", "macro_roc_auc"))
    if n_boot:
        counts = _resample_counts(y.size, n_boot, seed)
        class_f1 = []
        for k in labels:
            tp = counts @ ((y == k) & (pred == k)).astype(float)
            fp = counts @ ((y != k) & (pred == k)).astype(float)
            fn = counts @ ((y == k) & (pred != k)).astype(float)
            class_f1.append(_ratio(2 * tp, 2 * tp + fp + fn))
        boot.update(
            accuracy=counts @ (pred == y).astype(float) / y.size,
            macro_f1=np.mean(class_f1, axis=0),  # nan (skipped) if some class's F1 is undefined
            macro_roc_auc=np.mean([_boot_auc(counts, y == k, p[:, k]) for k in labels], axis=0),
        )

    values = {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "macro_roc_auc": macro_auc,
    }
    return {
        "n": int(y.size),
        **{name: _with_ci(values[name], boot[name]) for name in values},
        "per_class": {
            str(name): {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "roc_auc": _num(class_auc[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(classes)
        },
        "confusion": {
            "classes": [str(c) for c in classes],
            "matrix": confusion_matrix(y, pred, labels=labels).tolist(),
        },
        "ece": {"value": reliability(pred == y, confidence)["ece"]},
    }


HEADLINE_DROP = ("roc", "pr")  # long curve point lists stay in the predictions file, not the card


def report(task_name: str, y: np.ndarray, probs: np.ndarray, threshold: float, n_boot: int = 1000) -> dict:
    """A card's metrics for one split, with bootstrap intervals; curves dropped (predictions keep them)."""
    task = get_task(task_name)
    if task.num_classes == 2:
        full = binary_report(y, probs[:, 1], threshold, n_boot=n_boot)
    else:
        full = multiclass_report(y, probs, task.classes, n_boot=n_boot)
    return {k: v for k, v in full.items() if k not in HEADLINE_DROP}
