"""Post-hoc calibration and operating points, all fitted on the VALIDATION split, never on test.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides the logits
by one scalar T fitted by minimising the validation negative log-likelihood; it changes confidences,
not the argmax. Thresholds are chosen on validation probabilities and then reported on test.
"""

from __future__ import annotations

import math

import numpy as np

T_MIN, T_MAX = 0.05, 20.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
_TOL_LOG_T = 1e-7  # about 1e-5 % relative precision on T


def _as_logits(logits: np.ndarray) -> np.ndarray:
    """(N, C) float logits; a 1-D array is a binary model's positive-class logit, read as (N, 2) [0, z]."""
    z = np.asarray(logits, dtype=float)
    if z.ndim == 1:
        z = np.stack([np.zeros_like(z), z], axis=1)  # softmax([0, z])[1] == sigmoid(z)
    if z.ndim != 2 or z.shape[1] < 2 or z.shape[0] == 0:
        raise ValueError(f"logits must be (N, C) with C >= 2 or (N,) binary logits, got {np.shape(logits)}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    return z


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)  # exp never overflows
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities softmax(logits / T), shape (N, C); 1-D binary logits give (N, 2)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    return np.exp(_log_softmax(_as_logits(logits) / temperature))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature T in [0.05, 20] minimising the NLL of softmax(logits / T); fit on VALIDATION logits.

    The NLL is convex in 1/T, hence unimodal in log T, so a golden-section search over log T finds
    the minimum on the interval deterministically, with no optimiser state or seed.
    """
    z = _as_logits(logits)
    y = np.asarray(y_true)
    if y.shape != (z.shape[0],) or not np.isin(y, np.arange(z.shape[1])).all():
        raise ValueError(f"y_true must be (N,) class indices 0..{z.shape[1] - 1} matching logits")
    true_logit = z[np.arange(z.shape[0]), y.astype(np.int64)]

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        scaled = z / t
        peak = scaled.max(axis=1)
        log_norm = peak + np.log(np.exp(scaled - peak[:, None]).sum(axis=1))
        return float(np.mean(log_norm - true_logit / t))

    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > _TOL_LOG_T:
        if fa <= fb:  # minimum lies in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(a)
        else:  # minimum lies in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(b)
    return float(min(max(math.exp((lo + hi) / 2.0), T_MIN), T_MAX))


def _binary_scores(y_true: np.ndarray, p_pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(p_pos, dtype=float)
    if y.ndim != 1 or p.shape != y.shape or not np.isin(y, (0, 1)).all():
        raise ValueError("need 1-D y_true of 0/1 and p_pos of the same length")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError("p_pos must be probabilities in [0, 1]")
    if y.min() == y.max():
        raise ValueError("threshold selection needs both classes in y_true")
    return y.astype(np.int64), p


def _threshold_below(scores: np.ndarray, k: int) -> float:
    """Midpoint between the k-th distinct score (descending) and the next lower one, clipped to [0, 1].

    On the data it fitted it classifies exactly as the score itself would, but it leaves a margin on
    both sides, so a probability recomputed in another precision does not flip across it.
    """
    upper = min(float(scores[k]), 1.0)  # sklearn's first threshold is inf: "nothing positive"
    lower = float(scores[k + 1]) if k + 1 < scores.size else 0.0
    middle = (upper + lower) / 2.0
    if not lower < middle <= upper:  # adjacent floats: the midpoint rounds onto one of them
        middle = upper
    return float(np.clip(middle, 0.0, 1.0))


def choose_thresholds(y_true: np.ndarray, p_pos: np.ndarray, *, min_sensitivity: float = 0.95) -> dict:
    """Two operating points chosen on VALIDATION data (choosing them on test would overstate both).

    `youden` maximises Youden's J = sensitivity + specificity - 1; `high_sensitivity` is the highest
    threshold whose sensitivity is at least `min_sensitivity` (a screening setting that trades
    specificity for missed pneumonia). Both sit at the midpoint between the chosen score and the next
    lower validation score; predictions are positive when `p_pos >= threshold`.
    """
    from sklearn.metrics import roc_curve  # here, not at import: serving needs only apply_temperature

    from cxrdemo.evaluation.metrics import confusion_at

    if not 0.0 < min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity must be in (0, 1], got {min_sensitivity}")
    y, p = _binary_scores(y_true, p_pos)
    # every distinct score is a candidate, so the midpoint is taken with the next distinct score
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    youden_k = int(np.argmax(tpr - fpr))  # first maximum = highest threshold among ties
    sensitive_k = int(np.flatnonzero(tpr >= min_sensitivity)[0])  # tpr reaches 1 at the lowest score
    youden = _threshold_below(thresholds, youden_k)
    high = _threshold_below(thresholds, sensitive_k)
    at_youden, at_high = confusion_at(y, p, youden), confusion_at(y, p, high)
    return {
        "youden": youden,
        "high_sensitivity": high,
        "youden_sensitivity": at_youden["sensitivity"],
        "youden_specificity": at_youden["specificity"],
        "high_sensitivity_sensitivity": at_high["sensitivity"],
        "high_sensitivity_specificity": at_high["specificity"],
    }


def anomaly_threshold(normal_scores: np.ndarray, quantile: float = 0.99) -> float:
    """Score above which an image is flagged as unlike the training data, from VALIDATION normals.

    The `quantile` of the normals' scores (numpy's linear interpolation), so about `1 - quantile` of
    normal images are flagged.
    """
    scores = np.asarray(normal_scores, dtype=float).ravel()
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("normal_scores must be a non-empty array of finite values")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    return float(np.quantile(scores, quantile))
