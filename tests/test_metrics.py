"""Metrics: hand-computed values, agreement with scikit-learn, and the bootstrap against a slow reference."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from cxrdemo.evaluation import metrics
from cxrdemo.paths import SAMPLE_DIR
from cxrdemo.tasks import TASKS

# 10 images, threshold 0.5: TP 4 (0.9 0.8 0.7 0.6), FN 2 (0.3 0.2), FP 1 (0.55), TN 3 (0.4 0.1 0.05)
Y10 = np.array([1, 1, 1, 1, 1, 1, 0, 0, 0, 0])
P10 = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2, 0.55, 0.4, 0.1, 0.05])
# AUC: the four high positives beat all 4 negatives, 0.3 and 0.2 beat two each -> 20 / 24
AUC10 = 20 / 24
# AP: positives at ranks 1-4 (precision 1), 7 (5/7) and 8 (6/8): (4 + 5/7 + 3/4) / 6
AP10 = (4 + 5 / 7 + 3 / 4) / 6

SUBTYPES = TASKS["subtype"].classes


def synthetic_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and overlapping scores, rounded so that positives and negatives share scores (ties)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0.0, 1.0), 2)
    return y, p


def synthetic_multiclass(n: int, seed: int, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    z = rng.normal(size=(n, n_classes))
    z[np.arange(n), y] += 1.2
    z = np.round(z, 1)  # ties in the scores
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return y, probs


def width(interval: list[float]) -> float:
    return interval[1] - interval[0]


# --- point metrics ------------------------------------------------------------------------------


def test_confusion_at_hand_computed():
    c = metrics.confusion_at(Y10, P10, 0.5)
    assert (c["tn"], c["fp"], c["fn"], c["tp"]) == (3, 1, 2, 4)
    assert c["sensitivity"] == pytest.approx(4 / 6)
    assert c["specificity"] == pytest.approx(3 / 4)
    assert c["accuracy"] == pytest.approx(7 / 10)
    assert c["precision"] == pytest.approx(4 / 5)
    assert c["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))


def test_confusion_at_counts_score_equal_to_threshold_as_positive():
    assert metrics.confusion_at(Y10, P10, 0.55)["fp"] == 1
    assert metrics.confusion_at(Y10, P10, 0.5500001)["fp"] == 0


def test_confusion_at_zero_division_is_zero():
    c = metrics.confusion_at(Y10, P10, 0.95)  # nothing predicted positive
    assert c["tp"] == c["fp"] == 0
    assert c["precision"] == 0.0 and c["f1"] == 0.0 and c["specificity"] == 1.0


def test_auroc_hand_computed_and_single_class_nan():
    assert metrics.auroc(Y10, P10) == pytest.approx(AUC10)
    assert np.isnan(metrics.auroc(np.ones(5, dtype=int), np.linspace(0, 1, 5)))


def test_binary_report_hand_computed():
    r = metrics.binary_report(Y10, P10, 0.5, n_boot=50)
    assert r["n"] == 10 and r["threshold"] == 0.5
    assert r["confusion"] == {"tn": 3, "fp": 1, "fn": 2, "tp": 4}
    assert r["accuracy"]["value"] == pytest.approx(0.7)
    assert r["sensitivity"]["value"] == pytest.approx(4 / 6)
    assert r["specificity"]["value"] == pytest.approx(0.75)
    assert r["precision"]["value"] == pytest.approx(0.8)
    assert r["f1"]["value"] == pytest.approx(8 / 11)
    assert r["roc_auc"]["value"] == pytest.approx(AUC10)
    assert r["pr_auc"]["value"] == pytest.approx(AP10)


def test_binary_report_matches_sklearn():
    y, p = synthetic_binary(400, seed=3)
    r = metrics.binary_report(y, p, 0.42, n_boot=0)
    pred = p >= 0.42
    assert r["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert r["sensitivity"]["value"] == pytest.approx(recall_score(y, pred))
    assert r["specificity"]["value"] == pytest.approx(recall_score(y, pred, pos_label=0))
    assert r["precision"]["value"] == pytest.approx(precision_score(y, pred))
    assert r["f1"]["value"] == pytest.approx(f1_score(y, pred))
    assert r["roc_auc"]["value"] == pytest.approx(roc_auc_score(y, p))
    assert r["pr_auc"]["value"] == pytest.approx(average_precision_score(y, p))
    tn, fp, fn, tp = confusion_matrix(y, pred).ravel()
    assert r["confusion"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    assert r["ece"]["value"] == r["reliability"]["ece"]
    assert r["accuracy"]["ci"] == [None, None]  # n_boot=0 skips the bootstrap


def test_roc_and_pr_points_match_sklearn():
    y, p = synthetic_binary(200, seed=4)
    roc = metrics.roc_points(y, p)
    fpr, tpr, thr = roc_curve(y, p)
    assert roc["fpr"] == pytest.approx(fpr.tolist()) and roc["tpr"] == pytest.approx(tpr.tolist())
    assert np.isinf(thr[0]) and roc["thresholds"][0] == 1.0
    assert roc["thresholds"][1:] == pytest.approx(thr[1:].tolist())

    pr = metrics.pr_points(y, p)
    precision, recall, thr = precision_recall_curve(y, p)
    assert pr["precision"] == pytest.approx(precision.tolist()) and pr["recall"] == pytest.approx(recall.tolist())
    assert pr["thresholds"] == pytest.approx([*thr.tolist(), 1.0])
    assert len(pr["thresholds"]) == len(pr["recall"]) == len(pr["precision"])


def test_reliability_hand_computed():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.15, 0.85, 0.95, 0.95])
    r = metrics.reliability(y, p, n_bins=10)
    # bins 0, 1, 8, 9 hold 1, 2, 1, 2 images with gaps 0.05, 0.35, 0.15, 0.45
    assert r["ece"] == pytest.approx((0.05 + 2 * 0.35 + 0.15 + 2 * 0.45) / 6)
    assert [b["count"] for b in r["bins"]] == [1, 2, 0, 0, 0, 0, 0, 0, 1, 2]
    assert r["bins"][1]["fraction_positive"] == pytest.approx(0.5)
    assert r["bins"][9]["mean_confidence"] == pytest.approx(0.95)
    assert r["bins"][4]["mean_confidence"] is None and r["bins"][4]["fraction_positive"] is None
    assert r["bins"][0]["lo"] == 0.0 and r["bins"][-1]["hi"] == 1.0


def test_reliability_bins_match_sklearn_calibration_curve():
    rng = np.random.default_rng(5)
    p = np.r_[rng.random(500), np.linspace(0, 1, 11)]  # include values on the bin edges
    y = rng.random(p.size) < p
    r = metrics.reliability(y, p, n_bins=10)
    frac, conf = calibration_curve(y, p, n_bins=10)
    filled = [b for b in r["bins"] if b["count"]]
    assert [b["fraction_positive"] for b in filled] == pytest.approx(frac.tolist())
    assert [b["mean_confidence"] for b in filled] == pytest.approx(conf.tolist())
    expected = sum(b["count"] * abs(b["fraction_positive"] - b["mean_confidence"]) for b in filled) / p.size
    assert r["ece"] == pytest.approx(expected)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="probabilities"):
        metrics.binary_report(Y10, P10 + 0.5, 0.5)
    with pytest.raises(ValueError, match="binary"):
        metrics.binary_report(Y10 * 2, P10, 0.5)
    with pytest.raises(ValueError, match="probs"):
        metrics.multiclass_report(np.zeros(3, int), np.full((3, 3), 0.5), SUBTYPES)


# --- bootstrap ----------------------------------------------------------------------------------


def reference_binary_cis(y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int, seed: int) -> dict:
    """The documented bootstrap, one sklearn call per resample; undefined resamples skipped."""
    rows = np.random.default_rng(seed).integers(0, y.size, size=(n_boot, y.size))
    values: dict[str, list[float]] = {k: [] for k in ("accuracy", "sensitivity", "specificity", "precision", "f1")}
    values.update(roc_auc=[], pr_auc=[])
    for row in rows:
        yb, pb = y[row], p[row]
        pred = (pb >= threshold).astype(int)
        values["accuracy"].append(accuracy_score(yb, pred))
        values["sensitivity"].append(recall_score(yb, pred, zero_division=np.nan))
        values["specificity"].append(recall_score(yb, pred, pos_label=0, zero_division=np.nan))
        values["precision"].append(precision_score(yb, pred, zero_division=np.nan))
        values["f1"].append(f1_score(yb, pred, zero_division=np.nan))
        if yb.min() != yb.max():
            values["roc_auc"].append(roc_auc_score(yb, pb))
            values["pr_auc"].append(average_precision_score(yb, pb))
    out = {}
    for name, vals in values.items():
        kept = np.array(vals, dtype=float)
        kept = kept[~np.isnan(kept)]
        out[name] = np.percentile(kept, [2.5, 97.5]).tolist()
    return out


@pytest.mark.parametrize("n, threshold", [(10, 0.5), (60, 0.45)])
def test_binary_bootstrap_matches_per_resample_sklearn(n, threshold):
    # n=10 with 3 negatives: ~3 % of resamples have one class, exercising the skip rule
    y, p = (Y10, P10) if n == 10 else synthetic_binary(n, seed=6)
    r = metrics.binary_report(y, p, threshold, n_boot=150, seed=11)
    expected = reference_binary_cis(y, p, threshold, n_boot=150, seed=11)
    for name, ci in expected.items():
        assert r[name]["ci"] == pytest.approx(ci, abs=1e-12), name


def test_vectorised_auc_and_ap_equal_sklearn_on_each_resample():
    y, p = synthetic_binary(80, seed=7)
    p = np.round(p, 1)  # many ties across classes, counted half by AUC
    counts = metrics._resample_counts(y.size, 40, seed=2)
    rows = np.random.default_rng(2).integers(0, y.size, size=(40, y.size))
    auc = metrics._boot_auc(counts, y == 1, p)
    ap = metrics._boot_average_precision(counts, y == 1, p)
    for i, row in enumerate(rows):
        assert np.array_equal(np.bincount(row, minlength=y.size), counts[i])
        assert auc[i] == pytest.approx(roc_auc_score(y[row], p[row]), abs=1e-12)
        assert ap[i] == pytest.approx(average_precision_score(y[row], p[row]), abs=1e-12)


def test_ci_contains_point_and_narrows_with_n():
    small = metrics.binary_report(*synthetic_binary(100, seed=8), 0.5, n_boot=500)
    large = metrics.binary_report(*synthetic_binary(2000, seed=8), 0.5, n_boot=500)
    for name in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc", "pr_auc"):
        for report in (small, large):
            lo, hi = report[name]["ci"]
            assert lo <= report[name]["value"] <= hi, name
        assert width(large[name]["ci"]) < width(small[name]["ci"]) / 2, name


def test_bootstrap_is_seeded():
    y, p = synthetic_binary(150, seed=9)
    a = metrics.binary_report(y, p, 0.5, n_boot=200, seed=1)
    assert metrics.binary_report(y, p, 0.5, n_boot=200, seed=1) == a
    b = metrics.binary_report(y, p, 0.5, n_boot=200, seed=2)
    assert b["roc_auc"]["ci"] != a["roc_auc"]["ci"] and b["accuracy"]["ci"] != a["accuracy"]["ci"]
    assert b["roc_auc"]["value"] == a["roc_auc"]["value"]


def test_binary_report_is_fast():
    y, p = synthetic_binary(1500, seed=10)
    start = time.perf_counter()
    metrics.binary_report(y, p, 0.5, n_boot=1000)
    assert time.perf_counter() - start < 3.0  # about 0.2 s here; a per-resample sklearn loop takes ~10 s


# --- JSON and single-class input ----------------------------------------------------------------


def test_reports_are_strict_json():
    y, p = synthetic_binary(300, seed=12)
    ym, probs = synthetic_multiclass(300, seed=12)
    for report in (metrics.binary_report(y, p, 0.5, n_boot=100), metrics.multiclass_report(ym, probs, SUBTYPES)):
        assert json.loads(json.dumps(report, allow_nan=False)) == report  # only plain types survive unchanged


def test_single_class_gives_none_auc_without_crashing():
    y = np.ones(20, dtype=int)
    p = np.linspace(0.05, 0.95, 20)
    r = metrics.binary_report(y, p, 0.5, n_boot=100)
    json.dumps(r, allow_nan=False)
    assert r["roc_auc"] == {"value": None, "ci": [None, None]}
    assert r["pr_auc"] == {"value": None, "ci": [None, None]}
    assert r["specificity"]["value"] == 0.0 and r["specificity"]["ci"] == [None, None]  # no negatives
    assert r["sensitivity"]["value"] == pytest.approx(0.5)
    assert r["roc"] == {"fpr": [], "tpr": [], "thresholds": []}
    assert r["pr"] == {"recall": [], "precision": [], "thresholds": []}


# --- multiclass ---------------------------------------------------------------------------------

# true 0 0 0 1 1 1 2 2 2 2, predicted 0 0 1 1 1 2 2 2 2 0, confidence 0.8 everywhere
Y_MC = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
PRED_MC = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
PROBS_MC = np.full((10, 3), 0.1)
PROBS_MC[np.arange(10), PRED_MC] = 0.8


def test_multiclass_report_hand_computed():
    r = metrics.multiclass_report(Y_MC, PROBS_MC, SUBTYPES, n_boot=50)
    assert r["n"] == 10
    assert r["confusion"] == {"classes": list(SUBTYPES), "matrix": [[2, 1, 0], [0, 2, 1], [1, 0, 3]]}
    assert r["accuracy"]["value"] == pytest.approx(0.7)
    normal, bacteria, virus = (r["per_class"][c] for c in SUBTYPES)
    assert normal["precision"] == pytest.approx(2 / 3) and normal["recall"] == pytest.approx(2 / 3)
    assert bacteria["f1"] == pytest.approx(2 / 3) and virus["f1"] == pytest.approx(3 / 4)
    assert [normal["support"], bacteria["support"], virus["support"]] == [3, 3, 4]
    assert r["macro_f1"]["value"] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4) / 3)
    # class 0 scores: positives 0.8 0.8 0.1, negatives six 0.1 and one 0.8 -> (6.5 + 6.5 + 3) / 21
    assert normal["roc_auc"] == pytest.approx(16 / 21)
    assert r["ece"]["value"] == pytest.approx(0.1)  # confidence 0.8, accuracy 0.7


def test_multiclass_report_matches_sklearn():
    y, probs = synthetic_multiclass(500, seed=13)
    r = metrics.multiclass_report(y, probs, SUBTYPES, n_boot=0)
    pred = probs.argmax(axis=1)
    assert r["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert r["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert r["macro_roc_auc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert r["confusion"]["matrix"] == confusion_matrix(y, pred).tolist()
    for k, name in enumerate(SUBTYPES):
        assert r["per_class"][name]["recall"] == pytest.approx(recall_score(y == k, pred == k))
        assert r["per_class"][name]["roc_auc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))


def test_multiclass_bootstrap_matches_per_resample_sklearn():
    y, probs = synthetic_multiclass(30, seed=14)
    r = metrics.multiclass_report(y, probs, SUBTYPES, n_boot=200, seed=5)
    rows = np.random.default_rng(5).integers(0, y.size, size=(200, y.size))
    acc, f1, auc = [], [], []
    for row in rows:
        yb, pb = y[row], probs[row]
        pred = pb.argmax(axis=1)
        acc.append(accuracy_score(yb, pred))
        per_class = f1_score(yb, pred, labels=[0, 1, 2], average=None, zero_division=np.nan)
        if not np.isnan(per_class).any():
            f1.append(per_class.mean())
        if len(np.unique(yb)) == 3:
            auc.append(roc_auc_score(yb, pb, multi_class="ovr"))
    for name, vals in (("accuracy", acc), ("macro_f1", f1), ("macro_roc_auc", auc)):
        assert r[name]["ci"] == pytest.approx(np.percentile(vals, [2.5, 97.5]).tolist(), abs=1e-12), name
        lo, hi = r[name]["ci"]
        assert lo <= r[name]["value"] <= hi


def test_multiclass_missing_class_gives_none_auc():
    keep = Y_MC != 2
    r = metrics.multiclass_report(Y_MC[keep], PROBS_MC[keep], SUBTYPES, n_boot=50)
    json.dumps(r, allow_nan=False)
    assert r["macro_roc_auc"] == {"value": None, "ci": [None, None]}
    assert r["per_class"]["virus"]["roc_auc"] is None and r["per_class"]["virus"]["support"] == 0
    assert r["per_class"]["normal"]["roc_auc"] is not None


# --- the bundled sample -------------------------------------------------------------------------


def test_reports_on_bundled_sample_labels_are_consistent():
    manifest = pd.read_csv(SAMPLE_DIR / "manifest.csv")
    y = manifest["label"].map(TASKS["binary"].classes.index).to_numpy()
    ys = manifest["subtype"].map(SUBTYPES.index).to_numpy()
    assert len(y) == 54 and set(y) == {0, 1} and set(ys) == {0, 1, 2}
    rng = np.random.default_rng(2024)
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, y.size), 0, 1)

    r = metrics.binary_report(y, p, 0.5, n_boot=200)
    c = r["confusion"]
    assert c["tn"] + c["fp"] + c["fn"] + c["tp"] == r["n"] == 54
    assert c["tp"] + c["fn"] == int(y.sum())
    assert r["sensitivity"]["value"] == pytest.approx(c["tp"] / (c["tp"] + c["fn"]))
    assert r["specificity"]["value"] == pytest.approx(c["tn"] / (c["tn"] + c["fp"]))
    assert sum(b["count"] for b in r["reliability"]["bins"]) == 54
    assert r["roc"]["fpr"][0] == 0.0 and r["roc"]["tpr"][-1] == 1.0
    json.dumps(r, allow_nan=False)

    logits = rng.normal(size=(ys.size, 3)) + 1.5 * np.eye(3)[ys]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = metrics.multiclass_report(ys, probs, SUBTYPES, n_boot=200)
    matrix = np.array(m["confusion"]["matrix"])
    assert matrix.sum() == m["n"] == 54
    assert matrix.sum(axis=1).tolist() == [m["per_class"][c]["support"] for c in SUBTYPES]
    assert m["accuracy"]["value"] == pytest.approx(np.trace(matrix) / 54)
    json.dumps(m, allow_nan=False)
