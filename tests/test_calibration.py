"""Temperature scaling, operating thresholds and the anomaly threshold, on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss

from cxrdemo.evaluation import calibration, metrics


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution."""
    return (rng.random(len(probs))[:, None] > probs.cumsum(axis=1)).sum(axis=1)


def overconfident(n: int, n_classes: int, seed: int, temperature: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z), returned with logits z * temperature (too confident by that factor)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, size=(n, n_classes))
    return z * temperature, sample_labels(softmax(z), rng)


# --- temperature scaling ------------------------------------------------------------------------


@pytest.mark.parametrize("n_classes", [2, 3])
def test_fit_temperature_recovers_known_temperature(n_classes):
    logits, y = overconfident(20_000, n_classes, seed=n_classes)
    assert calibration.fit_temperature(logits, y) == pytest.approx(3.0, rel=0.15)
    assert calibration.fit_temperature(logits / 3.0, y) == pytest.approx(1.0, rel=0.15)


def test_fit_temperature_accepts_single_binary_logit():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, 20_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(int)
    assert calibration.fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=0.15)
    probs = calibration.apply_temperature(3.0 * z, 3.0)
    assert probs.shape == (z.size, 2)
    np.testing.assert_allclose(probs[:, 1], 1 / (1 + np.exp(-z)), rtol=1e-12)


def test_fit_temperature_minimises_sklearn_log_loss():
    logits, y = overconfident(3_000, 3, seed=7, temperature=1.7)
    t = calibration.fit_temperature(logits, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    losses = [log_loss(y, softmax(logits / g), labels=[0, 1, 2]) for g in grid[::10]]
    best = grid[::10][int(np.argmin(losses))]
    assert t == pytest.approx(best, rel=0.02)
    assert log_loss(y, calibration.apply_temperature(logits, t), labels=[0, 1, 2]) <= min(losses) + 1e-9


def test_fit_temperature_is_deterministic_and_bounded():
    logits, y = overconfident(2_000, 3, seed=8)
    assert calibration.fit_temperature(logits, y) == calibration.fit_temperature(logits, y)
    # labels unrelated to the logits: the flattest allowed softmax wins
    noise = np.random.default_rng(0).integers(0, 3, len(y))
    assert calibration.fit_temperature(logits, noise) == pytest.approx(calibration.T_MAX, rel=1e-4)
    # always right with a wide margin: sharper is always better, down to the lower bound
    separable = np.eye(3)[y] * 50.0
    assert calibration.fit_temperature(separable, y) == pytest.approx(calibration.T_MIN, rel=1e-4)


def test_temperature_scaling_lowers_ece_on_held_out_data():
    logits, y = overconfident(10_000, 3, seed=9)
    val, test = slice(0, 5_000), slice(5_000, None)
    t = calibration.fit_temperature(logits[val], y[val])

    def top_label_ece(probs: np.ndarray) -> float:
        return metrics.reliability(probs.argmax(axis=1) == y[test], probs.max(axis=1))["ece"]

    before = top_label_ece(calibration.apply_temperature(logits[test], 1.0))
    after = top_label_ece(calibration.apply_temperature(logits[test], t))
    assert after < before / 3
    assert after < 0.03


def test_apply_temperature_is_a_stable_softmax():
    z = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1e4, -1e4, 0.0], [-800.0, -801.0, -802.0]])
    probs = calibration.apply_temperature(z, 2.0)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(probs[0], np.exp([0.5, 1.0, 1.5]) / np.exp([0.5, 1.0, 1.5]).sum())
    np.testing.assert_allclose(probs[1], 1 / 3)
    np.testing.assert_allclose(probs[2], [1.0, 0.0, 0.0], atol=1e-300)
    np.testing.assert_allclose(probs[3], softmax(np.array([[0.0, -1.0, -2.0]]) / 2.0)[0])
    assert (probs.argmax(axis=1) == calibration.apply_temperature(z, 0.1).argmax(axis=1)).all()
    with pytest.raises(ValueError, match="temperature"):
        calibration.apply_temperature(z, 0.0)


# --- operating thresholds -----------------------------------------------------------------------

# negatives 0.05 0.1 0.2 0.3 0.45, positives 0.15 0.5 0.6 0.7 0.8
Y_T = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
P_T = np.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.15, 0.5, 0.6, 0.7, 0.8])


def test_choose_thresholds_known_points():
    t = calibration.choose_thresholds(Y_T, P_T)
    # J peaks at score 0.5 (sensitivity 4/5, specificity 1); next lower score 0.45 -> midpoint 0.475
    assert t["youden"] == pytest.approx(0.475)
    assert t["youden_sensitivity"] == pytest.approx(0.8) and t["youden_specificity"] == pytest.approx(1.0)
    # sensitivity first reaches 0.95 at score 0.15 (all five); next lower 0.1 -> 0.125, specificity 2/5
    assert t["high_sensitivity"] == pytest.approx(0.125)
    assert t["high_sensitivity_sensitivity"] == 1.0
    assert t["high_sensitivity_specificity"] == pytest.approx(0.4)
    # a lower target is met by a higher threshold: 4/5 at score 0.5
    assert calibration.choose_thresholds(Y_T, P_T, min_sensitivity=0.8)["high_sensitivity"] == pytest.approx(0.475)


def test_choose_thresholds_against_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    p = np.round(np.clip(rng.normal(0.4 + 0.25 * y, 0.2), 0, 1), 3)
    t = calibration.choose_thresholds(y, p, min_sensitivity=0.95)

    scores = np.unique(p)
    youden = [metrics.confusion_at(y, p, s) for s in scores]
    best_j = max(c["sensitivity"] + c["specificity"] - 1 for c in youden)
    assert t["youden_sensitivity"] + t["youden_specificity"] - 1 == pytest.approx(best_j)
    assert t["youden_sensitivity"] == metrics.confusion_at(y, p, t["youden"])["sensitivity"]

    high = t["high_sensitivity"]
    assert metrics.confusion_at(y, p, high)["sensitivity"] >= 0.95
    assert t["high_sensitivity_sensitivity"] >= 0.95
    # it sits strictly between two validation scores and classifies them as the upper score does;
    # the score above that one is the first threshold that misses the target
    below, (upper, next_up) = scores[scores < high].max(), np.sort(scores[scores > high])[:2]
    assert below < high < upper and high == pytest.approx((below + upper) / 2)
    assert metrics.confusion_at(y, p, upper) == metrics.confusion_at(y, p, high)
    assert metrics.confusion_at(y, p, next_up)["sensitivity"] < 0.95


def test_choose_thresholds_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        calibration.choose_thresholds(np.ones(5, int), np.linspace(0, 1, 5))


# --- anomaly threshold --------------------------------------------------------------------------


def test_anomaly_threshold_is_the_quantile_of_normal_scores():
    scores = np.arange(1.0, 101.0)
    t = calibration.anomaly_threshold(scores, 0.99)
    assert t == pytest.approx(99.01)  # linear interpolation between 99 and 100
    assert np.mean(scores > t) == pytest.approx(0.01)
    assert calibration.anomaly_threshold(scores, 0.9) == pytest.approx(90.1)
    with pytest.raises(ValueError):
        calibration.anomaly_threshold(np.array([]))
    with pytest.raises(ValueError, match="quantile"):
        calibration.anomaly_threshold(scores, 1.5)
