"""Per-model performance from stored predictions (`cxrdemo.evaluation.performance`).

Every installed model with predictions must reproduce its card's numbers; a small synthetic registry
(a 3-class classifier with logits and a binary ensemble with probabilities only, on the bundled
sample's test images) covers the code paths whatever the background job has installed so far.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdemo.data.dataset import load_dataset
from cxrdemo.evaluation import performance
from cxrdemo.evaluation.calibration import apply_temperature
from cxrdemo.evaluation.metrics import report
from cxrdemo.inference.predict import Predictor
from cxrdemo.models.registry import list_cards, write_model
from cxrdemo.paths import SAMPLE_DIR
from cxrdemo.tasks import get_task
from cxrdemo.training.finalize import prediction_rows

INSTALLED = sorted(performance.evaluated_cards())
CLASSIFIERS = [m for m in INSTALLED if list_cards()[m].get("kind", "classifier") == "classifier"]
MISSING_FROM_SAMPLE = "test/PNEUMONIA/person9999_bacteria_9999.jpeg"  # a path only the full dataset could hold


def _csv(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, float_format="%.6g")  # as finalize/ensemble/knn write them
    return buffer.getvalue()


def write_synthetic_models(directory: Path) -> dict[str, dict]:
    """`toy-subtype` (3-class classifier, logits stored) and `ensemble` (binary, probabilities only)."""
    dataset = load_dataset(SAMPLE_DIR)
    test = dataset.split("test")
    rng = np.random.default_rng(7)

    task = get_task("subtype")
    y = dataset.targets(test, task)
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += 1.5
    probs = apply_temperature(logits, 1.3)
    card = {
        "kind": "classifier",
        "arch": "cnn4",
        "task": "subtype",
        "classes": list(task.classes),
        "preprocessing": {"input_size": 64, "mean": 0.5, "std": 0.25, "resize": "squash"},
        "temperature": 1.3,
        "threshold": None,
        "metrics": {"test": report("subtype", y, probs, 0.5, 200)},
    }
    write_model(
        directory, "toy-subtype", {}, card, _csv(prediction_rows(test, "test", y, logits, probs, list(task.classes)))
    )

    task = get_task("binary")
    frame = pd.concat([test, test.head(1).assign(path=MISSING_FROM_SAMPLE)], ignore_index=True)
    y = dataset.targets(frame, task)
    p = np.clip(0.35 * y + rng.uniform(0.0, 0.65, size=len(y)), 0.0, 1.0)
    p[-1] = 0.01 if y[-1] == 1 else 0.99  # the image missing from the sample: the most confident mistake
    rows = frame[["path", "label", "subtype"]].assign(split="test", y_true=y, prob_NORMAL=1 - p, prob_PNEUMONIA=p)
    card = {
        "kind": "ensemble",
        "arch": "ensemble",
        "task": "binary",
        "classes": list(task.classes),
        "members": ["toy-member"],  # never loaded: the performance page reads stored predictions
        "threshold": 0.5,
        "temperature": 1.0,
        "metrics": {"test": report("binary", y, np.stack([1 - p, p], 1), 0.5, 200)},
    }
    write_model(
        directory,
        "ensemble",
        {},
        card,
        _csv(rows[["path", "split", "y_true", "label", "subtype", "prob_NORMAL", "prob_PNEUMONIA"]]),
    )
    return list_cards(directory)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("weights")
    write_synthetic_models(directory)
    return directory


def _headline_keys(card: dict) -> tuple[str, str]:
    return ("roc_auc", "accuracy") if len(card["classes"]) == 2 else ("macro_roc_auc", "accuracy")


# --- installed models reproduce their cards ---------------------------------------------------------


ROUNDING = 1e-6  # stored probabilities have 6 significant digits: each is off by at most 5e-7


def _rounding_slack(key: str, y: np.ndarray, probs: np.ndarray, threshold: float | None) -> float:
    """How far 6-digit rounding of the stored probabilities can move `key` (beyond 1e-6).

    AUROC: the share of (positive, negative) pairs whose stored scores are within ROUNDING of each
    other (their order may be lost or made up). Accuracy: the share of images whose decision sits
    within ROUNDING of the threshold (or, for argmax, of the runner-up class).
    """
    if key.endswith("roc_auc"):
        slack = []
        for k in range(probs.shape[1]) if key == "macro_roc_auc" else [1]:
            pos, neg = probs[y == k, k], probs[y != k, k]
            close = np.abs(pos[:, None] - neg[None, :]) <= ROUNDING
            slack.append(close.sum() / max(1, close.size))
        return float(np.mean(slack))
    if threshold is not None:
        return float(np.mean(np.abs(probs[:, 1] - threshold) <= ROUNDING))
    top2 = np.sort(probs, axis=1)[:, -2:]
    return float(np.mean(top2[:, 1] - top2[:, 0] <= ROUNDING))


@pytest.mark.parametrize("model_id", INSTALLED)
def test_installed_model_reproduces_its_card(model_id: str):
    """AUROC and accuracy recomputed from the stored predictions equal the card's (to 1e-6, or to what
    6-digit rounding of the stored probabilities can explain)."""
    card = list_cards()[model_id]
    splits = [s for s in performance.available_splits(model_id) if s in card.get("metrics", {})]
    assert "test" in splits
    for split in splits:
        result = performance.report_for(model_id, split, n_boot=0)
        y, probs, _, _ = performance.split_predictions(model_id, split)
        recorded = card["metrics"][split]
        assert result["n"] == recorded["n"]
        for key in _headline_keys(card):
            if recorded[key]["value"] is None:
                assert result[key]["value"] is None
                continue
            difference = abs(result[key]["value"] - recorded[key]["value"])
            if difference <= 1e-6:
                continue  # exact ties (k-NN vote fractions) survive rounding: only near-ties need slack
            slack = _rounding_slack(key, y, probs, result.get("threshold"))
            assert slack < 0.002, (split, key, slack)  # near-ties are rare: the check keeps its teeth
            assert difference <= 1e-6 + slack, (split, key, difference, slack)
        if len(card["classes"]) == 2:
            assert result["threshold"] == pytest.approx(card["threshold"])
            if _rounding_slack("accuracy", y, probs, card["threshold"]) == 0:
                assert result["confusion"] == recorded["confusion"]


@pytest.mark.parametrize("model_id", [m for m in INSTALLED if len(list_cards()[m].get("classes", [])) == 2])
def test_threshold_moves_sensitivity_and_specificity_monotonically(model_id: str):
    points = [performance.operating_point(model_id, "test", t) for t in np.linspace(0.0, 1.0, 41)]
    sens = [p["sensitivity"] for p in points]
    spec = [p["specificity"] for p in points]
    assert all(a >= b for a, b in zip(sens, sens[1:])) and all(a <= b for a, b in zip(spec, spec[1:]))
    assert sens[0] == 1.0 and spec[0] == 0.0  # everything positive at threshold 0
    n = points[0]["tp"] + points[0]["fp"] + points[0]["fn"] + points[0]["tn"]
    assert all(p["tp"] + p["fp"] + p["fn"] + p["tn"] == n for p in points)


@pytest.mark.parametrize("model_id", INSTALLED)
def test_misclassified_is_consistent_with_the_threshold(model_id: str):
    card = list_cards()[model_id]
    y, probs, classes, frame = performance.split_predictions(model_id, "test")
    p_by_path = pd.Series(probs[:, -1], index=frame["path"])
    binary = len(classes) == 2
    for threshold in [None, 0.2, 0.8] if binary else [None]:
        mistakes = performance.misclassified(model_id, "test", threshold)
        assert (mistakes["true"] != mistakes["predicted"]).all()
        if binary:
            t = card["threshold"] if threshold is None else threshold
            point = performance.operating_point(model_id, "test", t)
            assert len(mistakes) == point["fp"] + point["fn"]
            positive = (mistakes["predicted"] == classes[1]).to_numpy()
            p_pos = p_by_path.loc[mistakes["path"]].to_numpy()
            assert (p_pos[positive] >= t).all() and (p_pos[~positive] < t).all()
        else:
            assert len(mistakes) == int((probs.argmax(1) != y).sum())
        assert mistakes["p_true"].is_monotonic_increasing  # most confident mistakes first
        assert len(performance.misclassified(model_id, "test", threshold, limit=3)) == min(3, len(mistakes))


@pytest.mark.parametrize("model_id", INSTALLED)
def test_intervals_contain_the_point_values(model_id: str):
    result = performance.report_for(model_id, "test", n_boot=200)
    table = performance.metrics_table(result)
    with_ci = table.dropna(subset=["ci_low", "ci_high"])
    assert len(with_ci) >= 2
    assert ((with_ci["ci_low"] <= with_ci["value"] + 1e-12) & (with_ci["value"] <= with_ci["ci_high"] + 1e-12)).all()


@pytest.mark.parametrize("model_id", CLASSIFIERS)
def test_gradcam_overlay_of_a_sample_image(model_id: str, sample_dir: Path):
    dataset = load_dataset(sample_dir)
    path = dataset.split("test")["path"].iloc[0]
    overlay = performance.gradcam_overlay(Predictor(), model_id, dataset, path, target_class=1)
    row = dataset.frame.set_index("path").loc[path]
    assert overlay.shape == (row["height"], row["width"], 3) and overlay.dtype == np.uint8


def test_model_table_and_comparison_from_installed_cards():
    cards = performance.evaluated_cards()
    table = performance.model_table(cards)
    assert sorted(table["model"]) == sorted(cards) if cards else table.empty
    comparison = performance.comparison_table(cards)
    assert set(comparison["model"]) <= set(cards)
    assert (comparison["error_minus"] >= -1e-12).all() and (comparison["error_plus"] >= -1e-12).all()


# --- the synthetic registry: 3 classes, probabilities-only ensemble, missing images ------------------


def test_synthetic_models_reproduce_their_cards(synthetic: Path):
    cards = performance.evaluated_cards(directory=synthetic)
    assert sorted(cards) == ["ensemble", "toy-subtype"]
    for model_id, card in cards.items():
        result = performance.report_for(model_id, "test", n_boot=0, directory=synthetic)
        for key in _headline_keys(card):
            assert result[key]["value"] == pytest.approx(card["metrics"]["test"][key]["value"], abs=1e-6)


def test_three_class_report(synthetic: Path):
    result = performance.report_for("toy-subtype", "test", n_boot=100, directory=synthetic)
    assert result["classes"] == ["normal", "bacteria", "virus"]
    confusion = performance.confusion_frame(result)
    assert confusion.shape == (3, 3) and list(confusion.index) == list(confusion.columns) == result["classes"]
    assert confusion.to_numpy().sum() == result["n"]
    per_class = performance.per_class_table(result)
    assert per_class["class"].tolist() == result["classes"] and per_class["support"].sum() == result["n"]
    assert set(performance.roc_curves(result)["curve"]) == set(result["classes"])
    assert performance.pr_curve(result).empty
    assert performance.metrics_table(result)["metric"].iloc[0].startswith("AUROC")
    assert performance.reliability_frame(result)["count"].sum() == result["n"]
    with pytest.raises(ValueError, match="binary models only"):
        performance.operating_point("toy-subtype", "test", 0.5, directory=synthetic)
    mistakes = performance.misclassified("toy-subtype", "test", 0.9, directory=synthetic)  # threshold ignored
    assert len(mistakes) == confusion.to_numpy().sum() - np.trace(confusion.to_numpy())


def test_stored_probabilities_are_the_calibrated_logits(synthetic: Path):
    _, probs, classes, frame = performance.split_predictions("toy-subtype", "test", directory=synthetic)
    assert np.array_equal(probs, frame[[f"prob_{c}" for c in classes]].to_numpy())  # used as stored
    recomputed = apply_temperature(frame[[f"logit_{c}" for c in classes]].to_numpy(), 1.3)
    assert np.abs(probs - recomputed).max() < 1e-5 and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_logits_are_the_fallback_without_probability_columns(synthetic: Path, tmp_path: Path):
    from cxrdemo.models.registry import load_card, load_predictions

    table = load_predictions("toy-subtype", synthetic)
    table = table.drop(columns=[c for c in table if c.startswith("prob_")])
    write_model(tmp_path, "toy-subtype", {}, load_card("toy-subtype", synthetic), _csv(table))
    _, probs, _, _ = performance.split_predictions("toy-subtype", "test", directory=tmp_path)
    stored = performance.split_predictions("toy-subtype", "test", directory=synthetic)[1]
    assert np.abs(probs - stored).max() < 1e-5


def test_unknown_split_lists_the_available_ones(synthetic: Path):
    assert performance.available_splits("ensemble", directory=synthetic) == ["test"]
    with pytest.raises(ValueError, match=r"available: test"):
        performance.split_predictions("ensemble", "val", directory=synthetic)


def test_binary_threshold_changes_the_confusion(synthetic: Path):
    low = performance.confusion_frame(performance.operating_point("ensemble", "test", 0.0, directory=synthetic))
    high = performance.confusion_frame(performance.operating_point("ensemble", "test", 1.01, directory=synthetic))
    assert (low.iloc[:, 0] == 0).all() and (high.iloc[:, 1] == 0).all()  # all positive / all negative
    default = performance.report_for("ensemble", "test", n_boot=0, directory=synthetic)
    assert default["threshold"] == 0.5
    moved = performance.report_for("ensemble", "test", threshold=0.7, n_boot=0, directory=synthetic)
    assert moved["sensitivity"]["value"] <= default["sensitivity"]["value"]
    assert moved["roc_auc"] == default["roc_auc"]  # threshold-free metrics do not move


def test_gallery_notes_and_grad_cam_availability(synthetic: Path, sample_dir: Path):
    sample = load_dataset(sample_dir)
    mistakes = performance.misclassified("ensemble", "test", 0.0, directory=synthetic)  # every negative
    in_sample = [p for p in mistakes["path"] if p != MISSING_FROM_SAMPLE]
    assert performance.gallery_note(sample, in_sample) is None
    note = performance.gallery_note(sample, [*in_sample, MISSING_FROM_SAMPLE])
    assert note.startswith("Images not available with the bundled sample") and "CXRDEMO_DATA" in note
    assert performance.image_path(sample, in_sample[0]) == sample.absolute(in_sample[0])
    assert performance.image_path(sample, "../../../etc/passwd") is None  # refused by Dataset.absolute
    cards = list_cards(synthetic)
    assert "No Grad-CAM" in performance.cam_unavailable(cards["ensemble"])
    assert "No Grad-CAM" in performance.cam_unavailable({"kind": "knn", "id": "knn-binary"})
    assert performance.cam_unavailable(cards["toy-subtype"]) is None


def test_model_table_covers_both_tasks(synthetic: Path):
    cards = performance.evaluated_cards(directory=synthetic)
    table = performance.model_table(cards).set_index("model")
    assert table.loc["toy-subtype", "classes"] == 3 and pd.isna(table.loc["toy-subtype", "threshold"])
    assert table.loc["ensemble", "threshold"] == 0.5
    recorded = cards["toy-subtype"]["metrics"]["test"]["macro_roc_auc"]
    assert table.loc["toy-subtype", "test_auroc"] == recorded["value"]
    assert table.loc["toy-subtype", "test_auroc_lo"] == recorded["ci"][0]
    comparison = performance.comparison_table(cards)
    assert len(comparison) == 4 and set(comparison["metric"]) == {"AUROC", "Accuracy"}
    assert performance.comparison_table(cards, "val").empty  # no card records val here


def test_cards_without_predictions_or_with_errors_are_left_out(synthetic: Path, tmp_path: Path):
    cards = {
        **list_cards(synthetic),
        "broken": {"id": "broken", "error": "unreadable"},
        "autoencoder": {"kind": "autoencoder", "classes": []},
    }
    assert sorted(performance.evaluated_cards(cards, synthetic)) == ["ensemble", "toy-subtype"]
    assert performance.evaluated_cards(directory=tmp_path) == {}
    assert performance.predictions_stamp("toy-subtype", synthetic)[1] > 0


def test_card_threshold_keeps_zero_and_defaults_only_when_missing() -> None:
    binary = {"classes": ["NORMAL", "PNEUMONIA"]}
    assert performance.card_threshold({**binary, "threshold": 0.0}) == 0.0
    assert performance.card_threshold({**binary, "threshold": None}) == 0.5
    assert performance.card_threshold(binary) == 0.5
    assert performance.card_threshold({"classes": ["normal", "bacteria", "virus"], "threshold": 0.3}) is None
