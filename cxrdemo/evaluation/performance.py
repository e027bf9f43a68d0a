"""Per-model performance from the STORED per-image predictions (`weights/<id>.predictions.csv`).

Nothing here runs a model over a split: metrics, curves, operating points and the list of mistakes are
recomputed from the predictions saved when the model was built, so they match its card. Grad-CAM of a
misclassified image is the one exception, computed on request for one image at a time.

The stored calibrated probabilities (`prob_<class>`, written with 6 significant digits) are used as
they are; the card's metrics were computed from the same probabilities before rounding, so recomputed
values agree with the card up to what that rounding can change (ties between near-equal scores).
Only a file without probability columns falls back to `softmax(logits / T)` with the card's temperature.

    from cxrdemo.evaluation import performance
    report = performance.report_for("resnet18-binary", "test")
    report["roc_auc"]  # {"value": ..., "ci": [lo, hi]}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrdemo.card import decision_threshold
from cxrdemo.data.dataset import Dataset
from cxrdemo.evaluation.calibration import apply_temperature
from cxrdemo.evaluation.metrics import binary_report, confusion_at, multiclass_report, reliability, roc_points
from cxrdemo.models.registry import ModelLoadError, artifact_paths, list_cards, load_card, load_predictions
from cxrdemo.paths import SAMPLE_DIR, weights_dir

EVALUATED_KINDS = ("classifier", "knn", "ensemble")  # models that make class predictions
SPLITS = ("test", "val", "official_val")
SPLIT_LABELS = {"test": "test", "val": "validation (patient split of train)", "official_val": "official val (16)"}
SALIENCY_EXAMPLES_PER_LABEL = 2  # overlays on the page: this many NORMAL and PNEUMONIA images of the sample
OOD_MODEL_ID = "autoencoder"  # the id the Predictor loads for its out-of-distribution check
NO_CAM_KINDS = {"knn": "k-NN votes over stored embeddings", "ensemble": "an average of other models"}
# headline metrics per task: (key in the report, label); the first two drive the comparison chart
BINARY_METRICS = (
    ("roc_auc", "AUROC"),
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("precision", "Precision (PPV)"),
    ("f1", "F1"),
    ("pr_auc", "PR AUC (average precision)"),
)
MULTICLASS_METRICS = (
    ("macro_roc_auc", "AUROC (macro, one-vs-rest)"),
    ("accuracy", "Accuracy"),
    ("macro_f1", "F1 (macro)"),
)


# --- models ---------------------------------------------------------------------------------------


def _directory(directory: Path | None) -> Path:
    return directory or weights_dir()


def evaluated_cards(cards: dict[str, dict] | None = None, directory: Path | None = None) -> dict[str, dict]:
    """Cards of models with class predictions (classifier, k-NN, ensemble) and stored predictions."""
    directory = _directory(directory)
    cards = list_cards(directory) if cards is None else cards
    return {
        model_id: card
        for model_id, card in cards.items()
        if "error" not in card
        and card.get("kind", "classifier") in EVALUATED_KINDS
        and artifact_paths(directory, model_id)["predictions"].exists()
    }


def predictions_stamp(model_id: str, directory: Path | None = None) -> tuple[int, int]:
    """Modification times of the card and the predictions: a cache key that changes on promotion."""
    paths = artifact_paths(_directory(directory), model_id)
    return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in (paths["card"], paths["predictions"]))


def _headline(card: dict) -> tuple[tuple[str, str], ...]:
    return BINARY_METRICS if len(card.get("classes", [])) == 2 else MULTICLASS_METRICS


def model_table(cards: dict[str, dict]) -> pd.DataFrame:
    """One row per evaluated model: id, kind, arch, task, classes, threshold, n_test and the test/val
    AUROC and accuracy with their 95 % intervals, as recorded in the card."""
    rows = []
    for model_id, card in cards.items():
        if "error" in card or card.get("kind", "classifier") not in EVALUATED_KINDS:
            continue
        (auc_key, _), (acc_key, _) = _headline(card)[:2]
        row = {
            "model": model_id,
            "kind": card.get("kind", "classifier"),
            "arch": card.get("arch"),
            "task": card.get("task"),
            "classes": len(card.get("classes", [])),
            "threshold": card.get("threshold") if len(card.get("classes", [])) == 2 else None,
        }
        for split in ("test", "val"):
            metrics = card.get("metrics", {}).get(split, {})
            row[f"n_{split}"] = metrics.get("n")
            for name, key in (("auroc", auc_key), ("accuracy", acc_key)):
                value, (lo, hi) = _value_ci(metrics.get(key))
                row[f"{split}_{name}"], row[f"{split}_{name}_lo"], row[f"{split}_{name}_hi"] = value, lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


def _value_ci(entry: dict | None) -> tuple[float | None, tuple[float | None, float | None]]:
    if not entry:
        return None, (None, None)
    ci = entry.get("ci") or [None, None]
    return entry.get("value"), (ci[0], ci[1])


def comparison_table(cards: dict[str, dict], split: str = "test") -> pd.DataFrame:
    """Long table for a grouped bar chart: model, metric, value, error_minus, error_plus (CI half-widths)."""
    table = model_table(cards)
    rows = []
    for _, row in table.iterrows():
        for name, label in (("auroc", "AUROC"), ("accuracy", "Accuracy")):
            value = row.get(f"{split}_{name}")
            if value is None or pd.isna(value):
                continue
            lo, hi = row.get(f"{split}_{name}_lo"), row.get(f"{split}_{name}_hi")
            rows.append(
                {
                    "model": row["model"],
                    "metric": label,
                    "value": float(value),
                    "error_minus": float(value - lo) if pd.notna(lo) else 0.0,
                    "error_plus": float(hi - value) if pd.notna(hi) else 0.0,
                    "ci": _ci_text(lo, hi),
                }
            )
    return pd.DataFrame(rows, columns=["model", "metric", "value", "error_minus", "error_plus", "ci"])


def _ci_text(lo, hi) -> str:
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return "–"
    return f"{lo:.3f} – {hi:.3f}"


# --- predictions ----------------------------------------------------------------------------------


def available_splits(model_id: str, directory: Path | None = None) -> list[str]:
    """Splits present in the model's stored predictions, in SPLITS order."""
    present = set(load_predictions(model_id, _directory(directory))["split"])
    return [s for s in SPLITS if s in present]


def split_predictions(
    model_id: str, split: str = "test", directory: Path | None = None
) -> tuple[np.ndarray, np.ndarray, list[str], pd.DataFrame]:
    """(y_true (N,), probabilities (N, C), classes, the prediction rows) of one split.

    The stored probabilities; from the stored logits and the card's temperature only when the file has
    no probability columns. (Recomputing from 6-digit logits loses more precision than the 6-digit
    probabilities do near 0 and 1: it changed a test AUROC by 1e-5 where the stored probabilities
    reproduce the card exactly.)
    """
    directory = _directory(directory)
    card = load_card(model_id, directory)
    classes = [str(c) for c in card.get("classes", [])]
    table = load_predictions(model_id, directory)
    frame = table[table["split"] == split].reset_index(drop=True)
    if frame.empty:
        known = ", ".join(s for s in SPLITS if (table["split"] == s).any()) or "none"
        raise ValueError(f"model {model_id} has no stored predictions for split {split!r} (available: {known})")
    logit_cols = [f"logit_{c}" for c in classes]
    prob_cols = [f"prob_{c}" for c in classes]
    if all(c in frame for c in prob_cols):
        probs = frame[prob_cols].to_numpy(dtype=float)
    elif all(c in frame for c in logit_cols):
        probs = apply_temperature(frame[logit_cols].to_numpy(dtype=float), float(card.get("temperature") or 1.0))
    else:
        raise ModelLoadError(f"model {model_id}: stored predictions lack columns {', '.join(prob_cols)}")
    y = frame["y_true"].to_numpy(dtype=np.int64)
    return y, probs, classes, frame


def card_threshold(card: dict) -> float | None:
    """The card's operating threshold on P(positive) for binary models, None for more classes."""
    if len(card.get("classes", [])) != 2:
        return None
    return decision_threshold(card.get("threshold"))


def report_for(
    model_id: str,
    split: str = "test",
    threshold: float | None = None,
    *,
    n_boot: int = 1000,
    directory: Path | None = None,
) -> dict:
    """Metrics with 95 % bootstrap intervals, curves and reliability of one model on one split.

    Binary models: `metrics.binary_report` at `threshold` (default: the card's), plus `classes`.
    More classes: `metrics.multiclass_report` (argmax decision) plus one-vs-rest ROC curves per class
    (`roc_by_class`) and the top-label reliability diagram. Both carry model, split, kind, task,
    classes and `headline` (the metric keys and labels to tabulate). Arguments are plain values, so
    a caller may cache the result.
    """
    directory = _directory(directory)
    card = load_card(model_id, directory)
    y, probs, classes, _ = split_predictions(model_id, split, directory)
    common = {
        "model": model_id,
        "split": split,
        "kind": card.get("kind", "classifier"),
        "task": card.get("task"),
        "classes": classes,
        "headline": [list(m) for m in _headline(card)],
    }
    if len(classes) == 2:
        threshold = card_threshold(card) if threshold is None else float(threshold)
        return {**binary_report(y, probs[:, 1], threshold, n_boot=n_boot), **common}
    report = multiclass_report(y, probs, classes, n_boot=n_boot)
    pred = probs.argmax(axis=1)
    report["roc_by_class"] = {c: roc_points(y == k, probs[:, k]) for k, c in enumerate(classes)}
    report["reliability"] = reliability(pred == y, np.clip(probs.max(axis=1), 0.0, 1.0))
    return {**report, **common}


def operating_point(model_id: str, split: str, threshold: float, directory: Path | None = None) -> dict:
    """Confusion counts, sensitivity, specificity... of a binary model at `threshold` (cheap: for a slider)."""
    y, probs, classes, _ = split_predictions(model_id, split, directory)
    if len(classes) != 2:
        raise ValueError(f"model {model_id} has {len(classes)} classes; a threshold applies to binary models only")
    point = confusion_at(y, probs[:, 1], threshold)
    # fpr = 1 - specificity: where the operating point sits on the ROC curve
    return {**point, "fpr": 1.0 - point["specificity"], "threshold": float(threshold), "classes": classes}


# --- tables for display ---------------------------------------------------------------------------


def metrics_table(report: dict) -> pd.DataFrame:
    """metric, value, ci_low, ci_high, CI (text) for the report's headline metrics, plus ECE."""
    rows = []
    for key, label in report["headline"]:
        value, (lo, hi) = _value_ci(report.get(key))
        rows.append({"metric": label, "value": value, "ci_low": lo, "ci_high": hi, "95 % CI": _ci_text(lo, hi)})
    ece = report.get("ece", {}).get("value")
    rows.append({"metric": "Expected calibration error", "value": ece, "ci_low": None, "ci_high": None, "95 % CI": "–"})
    return pd.DataFrame(rows)


def per_class_table(report: dict) -> pd.DataFrame:
    """class, precision, recall, f1, roc_auc, support (multiclass reports only)."""
    per = report.get("per_class")
    if not per:
        raise ValueError("per-class metrics exist for multiclass reports only")
    return pd.DataFrame([{"class": name, **values} for name, values in per.items()])


def confusion_frame(result: dict) -> pd.DataFrame:
    """The confusion matrix as a labelled frame (rows: true class, columns: predicted class).

    Takes a multiclass report (`confusion.matrix`) or a binary report / operating point (tn, fp, fn, tp).
    """
    classes = list(result["classes"])
    confusion = result.get("confusion", result)
    if "matrix" in confusion:
        matrix = confusion["matrix"]
    else:
        matrix = [[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]]
    frame = pd.DataFrame(matrix, index=classes, columns=classes)
    frame.index.name, frame.columns.name = "true", "predicted"
    return frame


def reliability_frame(report: dict) -> pd.DataFrame:
    """Non-empty reliability bins: bin_mid, mean_confidence, fraction_positive, count."""
    rows = [
        {
            "bin_mid": (b["lo"] + b["hi"]) / 2,
            "mean_confidence": b["mean_confidence"],
            "fraction_positive": b["fraction_positive"],
            "count": b["count"],
        }
        for b in report["reliability"]["bins"]
        if b["count"]
    ]
    return pd.DataFrame(rows, columns=["bin_mid", "mean_confidence", "fraction_positive", "count"])


def roc_curves(report: dict) -> pd.DataFrame:
    """ROC points in long format: curve, fpr, tpr, threshold (one curve per class for multiclass)."""
    curves = report.get("roc_by_class") or {report["classes"][-1]: report["roc"]}
    parts = [
        pd.DataFrame({"curve": name, "fpr": c["fpr"], "tpr": c["tpr"], "threshold": c["thresholds"]})
        for name, c in curves.items()
    ]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["curve", "fpr", "tpr", "threshold"])


def pr_curve(report: dict) -> pd.DataFrame:
    """Precision-recall points of a binary report: recall, precision, threshold (empty for multiclass)."""
    pr = report.get("pr")
    if not pr:
        return pd.DataFrame(columns=["recall", "precision", "threshold"])
    return pd.DataFrame({"recall": pr["recall"], "precision": pr["precision"], "threshold": pr["thresholds"]})


# --- mistakes -------------------------------------------------------------------------------------


def misclassified(
    model_id: str,
    split: str = "test",
    threshold: float | None = None,
    limit: int | None = None,
    directory: Path | None = None,
) -> pd.DataFrame:
    """Wrongly classified images, most confident mistakes first.

    Binary models decide `P(positive) >= threshold` (default: the card's threshold); others take the
    argmax (`threshold` is ignored). Columns: path, label, subtype, true, predicted, predicted_index,
    p_predicted, p_true.
    """
    directory = _directory(directory)
    card = load_card(model_id, directory)
    y, probs, classes, frame = split_predictions(model_id, split, directory)
    if len(classes) == 2:
        threshold = card_threshold(card) if threshold is None else float(threshold)
        pred = (probs[:, 1] >= threshold).astype(np.int64)
    else:
        pred = probs.argmax(axis=1)
    rows = np.arange(len(y))
    out = pd.DataFrame(
        {
            "path": frame["path"],
            "label": frame["label"],
            "subtype": frame["subtype"],
            "true": [classes[i] for i in y],
            "predicted": [classes[i] for i in pred],
            "predicted_index": pred,
            "p_predicted": probs[rows, pred],
            "p_true": probs[rows, y],
        }
    )
    out = out[pred != y].sort_values(["p_true", "path"], kind="stable").reset_index(drop=True)
    return out if limit is None else out.head(int(limit))


def image_path(dataset: Dataset, relative: str) -> Path | None:
    """The file of a prediction row's path in `dataset` (checked by `Dataset.absolute`), None if absent."""
    try:
        path = dataset.absolute(relative)
    except ValueError:
        return None
    return path if path.is_file() else None


def gallery_note(dataset: Dataset, paths: list[str]) -> str | None:
    """Why some of `paths` cannot be shown, or None when every image is available."""
    missing = [p for p in paths if image_path(dataset, p) is None]
    if not missing:
        return None
    if dataset.root.resolve() == SAMPLE_DIR.resolve():
        return "Images not available with the bundled sample; set CXRDEMO_DATA to the full dataset to see them."
    return f"{len(missing)} of {len(paths)} images are not in the dataset at {dataset.root}."


def cam_unavailable(card: dict) -> str | None:
    """Why Grad-CAM cannot explain this model (k-NN, ensemble), or None when it can."""
    kind = card.get("kind", "classifier")
    if kind in NO_CAM_KINDS:
        return f"No Grad-CAM for {card.get('id', 'this model')}: its predictions are {NO_CAM_KINDS[kind]}."
    return None


def _network_and_image(predictor, model_id: str, dataset: Dataset, relative: str):
    """(the classifier's LoadedModel, the LoadedImage) for explaining one image of `dataset`."""
    from cxrdemo.imaging.decode import load_image_file

    model = predictor.get(model_id)
    reason = cam_unavailable(model.card)
    if reason or model.module is None:
        raise ValueError(reason or f"model {model_id} has no network to explain")
    path = image_path(dataset, relative)
    if path is None:
        raise FileNotFoundError(f"{relative} is not in the dataset at {dataset.root}")
    return model, load_image_file(path)


def gradcam_overlay(
    predictor, model_id: str, dataset: Dataset, relative: str, target_class: int | None = None
) -> np.ndarray:
    """HxWx3 uint8 Grad-CAM overlay for one image of `dataset` (classifiers only).

    `target_class` is the class explained; pass the thresholded decision (`misclassified`'s
    `predicted_index`), since for a binary model it can differ from the argmax that None explains.
    """
    from cxrdemo.inference.explain import explain

    model, image = _network_and_image(predictor, model_id, dataset, relative)
    return explain(model.module, image.pixels, model.preprocessing, target_class=target_class).overlay


# --- saliency examples and the out-of-distribution check ------------------------------------------


def saliency_examples(dataset: Dataset, per_label: int = SALIENCY_EXAMPLES_PER_LABEL) -> pd.DataFrame:
    """The first `per_label` test images of each label (by path): the same examples for every model."""
    test = dataset.split("test").sort_values("path")
    return pd.concat([g.head(per_label) for _, g in test.groupby("label", sort=True)]).reset_index(drop=True)


def weights_hash(model_id: str, directory: Path | None = None) -> str | None:
    """The card's `weights_sha256`: a cache key that changes when the model is retrained."""
    card = list_cards(_directory(directory)).get(model_id, {})
    return card.get("weights_sha256")


def saliency_example(predictor, model_id: str, dataset: Dataset, relative: str, method: str) -> tuple[np.ndarray, str]:
    """(overlay, caption) of one example image: the heatmap of the class the model decides, as on Diagnose
    (for a binary model the card's threshold decides, which can differ from the argmax)."""
    from cxrdemo.inference.explain import explain
    from cxrdemo.inference.predict import decided_class

    model, image = _network_and_image(predictor, model_id, dataset, relative)
    probabilities, _ = predictor.probabilities(image.pixels, model_id)
    decided = decided_class(probabilities, model.classes, card_threshold(model.card))
    target = model.classes.index(decided)
    overlay = explain(model.module, image.pixels, model.preprocessing, method=method, target_class=target).overlay
    label = dataset.frame.set_index("path").at[relative, "label"]
    return overlay, f"{label} film; heatmap of {decided} (p = {probabilities[target]:.2f})"


def saliency_coverage(results: dict, directory: Path | None = None) -> dict[str, list[str]]:
    """Installed classifiers the benchmark left out ("missing") or measured on other weights ("stale")."""
    cards = list_cards(_directory(directory))
    measured = {row["model"]: row.get("weights_sha256") for row in results["rows"]}
    classifiers = [i for i, c in cards.items() if "error" not in c and c.get("kind", "classifier") == "classifier"]
    return {
        "missing": [i for i in classifiers if i not in measured],
        "stale": [i for i in classifiers if measured.get(i) and measured[i] != cards[i].get("weights_sha256")],
    }


def _ood_card(directory: Path | None) -> dict | None:
    card = list_cards(_directory(directory)).get(OOD_MODEL_ID)
    return None if card is None or "error" in card else card


def ood_signals(directory: Path | None = None) -> pd.DataFrame | None:
    """The out-of-distribution check's signals and thresholds, read from the installed autoencoder's card.

    Columns: signal, threshold, rule (how the card says the threshold was chosen). None when no
    autoencoder is installed (the Predictor looks for the id `autoencoder` too).
    """
    card = _ood_card(directory)
    if card is None:
        return None
    size = card.get("preprocessing", {}).get("input_size")
    rows = [
        {
            "signal": f"Autoencoder reconstruction error (mean squared error at {size} px)",
            "threshold": card.get("threshold"),
            "rule": card.get("threshold_rule", "–"),
        }
    ]
    statistics = card.get("image_statistics")
    if statistics:
        rows.append(
            {
                "signal": f"Mahalanobis distance of image statistics (squared, at {statistics.get('size')} px)",
                "threshold": statistics.get("threshold"),
                "rule": statistics.get("rule", "–"),
            }
        )
    return pd.DataFrame(rows, columns=["signal", "threshold", "rule"])


def ood_flag_rates(directory: Path | None = None) -> dict[str, float]:
    """Fractions of images the autoencoder's threshold flags, per group recorded in its card."""
    metrics = (_ood_card(directory) or {}).get("metrics", {})
    found = {
        "validation normals": metrics.get("val_normal", {}).get("flagged"),
        "test images": metrics.get("test", {}).get("flagged"),
    }
    return {name: float(value) for name, value in found.items() if value is not None}
