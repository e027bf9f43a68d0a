"""Model performance: metrics, curves and mistakes of each installed model, from its STORED predictions.

Pick a model and a split; metrics with 95 % bootstrap intervals, the confusion matrix at a threshold
you choose (binary models), ROC / PR / reliability curves, a comparison of all models, and the most
confident mistakes with Grad-CAM on request; whether each model reads the lungs or the frame (the
frame probe, frame-balanced validation metrics and the heatmaps' share inside the lungs); how faithful
each CAM method's heatmaps are (the saliency benchmark, with live example overlays) and how the
out-of-distribution check decides. All numbers come from `cxrdemo.evaluation.performance`,
`cxrdemo.evaluation.frame` and `cxrdemo.evaluation.saliency`.
"""

from __future__ import annotations

import streamlit as st

from cxrdemo.app import charts
from cxrdemo.app.ui import MODEL_KEY, page_frame
from cxrdemo.data.dataset import Dataset, load_dataset
from cxrdemo.evaluation import explore, frame, performance, saliency
from cxrdemo.inference.explain import CAM_METHODS
from cxrdemo.paths import SAMPLE_DIR, data_dir

GALLERY_SIZE = 6
GALLERY_COLUMNS = 3
CAM_KEY = "performance_cam"
SALIENCY_METHOD_KEY = "performance_saliency_method"
DATAFRAME_ROW_PX = 35  # Streamlit's dataframe row height


@st.cache_data(show_spinner="Bootstrapping 95 % intervals…", max_entries=64)
def report_of(model_id: str, split: str, stamp: tuple) -> dict:
    return performance.report_for(model_id, split)


@st.cache_data(show_spinner=False, max_entries=256)
def operating_point_of(model_id: str, split: str, threshold: float, stamp: tuple) -> dict:
    return performance.operating_point(model_id, split, threshold)


@st.cache_data(show_spinner=False, max_entries=64)
def misclassified_of(model_id: str, split: str, threshold: float | None, stamp: tuple):
    return performance.misclassified(model_id, split, threshold)


@st.cache_data(show_spinner=False, max_entries=4)
def dataset_at(root: str) -> Dataset:
    return load_dataset(root)


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail_of(root: str, path: str) -> bytes | None:
    file = performance.image_path(dataset_at(root), path)
    return None if file is None else explore.thumbnail(file, 320)


@st.cache_data(show_spinner=False, max_entries=128)
def overlay_of(_predictor, model_id: str, stamp: tuple, root: str, path: str, target: int):
    return performance.gradcam_overlay(_predictor, model_id, dataset_at(root), path, target)


@st.cache_data(show_spinner="Computing heatmaps…", max_entries=128)
def saliency_example_of(_predictor, model_id: str, weights: str | None, method: str, path: str):
    """Cached per weights hash, so a retrained model never shows the old model's heatmaps."""
    return performance.saliency_example(_predictor, model_id, dataset_at(str(SAMPLE_DIR)), path, method)


def keep_valid(key: str, options: list) -> None:
    """Forget a remembered choice that is no longer offered (a model was removed, a split is missing)."""
    if key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


def choose_model_ui(cards: dict) -> tuple[str, str]:
    ids = list(cards)
    keep_valid("performance_model", ids)
    active = st.session_state.get(MODEL_KEY)  # the sidebar's model, unless one was picked here
    left, right = st.columns(2)
    model_id = left.selectbox(
        "Model",
        ids,
        key="performance_model",
        index=ids.index(active) if active in ids else 0,
        format_func=lambda i: f"{i} ({cards[i].get('kind', 'classifier')}, {len(cards[i].get('classes', []))} classes)",
    )
    splits = performance.available_splits(model_id)
    keep_valid("performance_split", splits)
    split = right.selectbox("Split", splits, key="performance_split", format_func=performance.SPLIT_LABELS.get)
    return model_id, split


def metrics_ui(report: dict) -> None:
    table = performance.metrics_table(report)
    st.dataframe(
        table[["metric", "value", "95 % CI"]],
        hide_index=True,
        width="stretch",
        column_config={"value": st.column_config.NumberColumn(format="%.3f")},
    )
    at = f" at the card threshold {report['threshold']:.3f}" if "threshold" in report else " (argmax decision)"
    st.caption(f"{report['n']} images; 95 % percentile bootstrap intervals over images (1000 resamples){at}.")


def threshold_ui(model_id: str, split: str, card: dict, stamp: tuple) -> tuple[float, dict]:
    """Threshold slider, the metrics at that threshold and its confusion matrix (binary models)."""
    default = performance.card_threshold(card)
    key = f"performance_threshold_{model_id}"
    choices = card.get("thresholds") or {}
    named = ", ".join(
        f"{name.replace('_', ' ')} {choices[name]:.3f}"
        for name in ("youden", "high_sensitivity")
        if isinstance(choices.get(name), float)
    )
    threshold = st.slider(
        "Decision threshold on P(" + card["classes"][1] + ")",
        0.0,
        1.0,
        value=default,
        step=0.001,
        format="%.3f",
        key=key,
        help=f"Default: the card's threshold {default:.3f}, chosen on validation"
        + (f" ({named})" if named else "")
        + ".",
    )
    point = operating_point_of(model_id, split, threshold, stamp)
    cols = st.columns(4)
    for col, (name, label) in zip(
        cols,
        (
            ("sensitivity", "Sensitivity"),
            ("specificity", "Specificity"),
            ("accuracy", "Accuracy"),
            ("precision", "Precision (PPV)"),
        ),
    ):
        col.metric(label, f"{point[name]:.3f}")
    return threshold, point


def curves_ui(report: dict, point: dict | None) -> None:
    cols = st.columns(3)
    roc = performance.roc_curves(report)
    cols[0].plotly_chart(charts.roc_figure(roc, point, one_vs_rest="roc_by_class" in report), key="chart_roc")
    pr = performance.pr_curve(report)
    if len(pr):
        cols[1].plotly_chart(charts.pr_figure(pr, point), key="chart_pr")
    else:
        cols[1].info("Precision-recall curves are drawn for binary models.")
    rel = performance.reliability_frame(report)
    figure = charts.reliability_figure(rel, report["ece"]["value"], binary="roc_by_class" not in report)
    cols[2].plotly_chart(figure, key="chart_reliability")


def comparison_ui(cards: dict, split: str) -> None:
    table = performance.comparison_table(cards, split)
    if table.empty:
        st.info(f"No model card records metrics on the {split} split.")
        return
    fig = charts.comparison_figure(table, split)
    st.plotly_chart(fig, key="chart_comparison")
    with st.expander("All models as a table"):
        st.dataframe(performance.model_table(cards), hide_index=True, width="stretch")


def gallery_ui(pred, model_id: str, split: str, threshold: float | None, card: dict, stamp: tuple) -> None:
    mistakes = misclassified_of(model_id, split, threshold, stamp)
    if mistakes.empty:
        st.success("No misclassified images at this threshold.")
        return
    shown = mistakes.head(GALLERY_SIZE)
    st.caption(f"{len(mistakes)} misclassified images; the {len(shown)} most confident mistakes:")
    root = str(data_dir())
    try:
        dataset = dataset_at(root)
    except (FileNotFoundError, ValueError) as err:
        st.warning(f"Cannot read the dataset at {root}: {err}")
        dataset = None
    note = performance.gallery_note(dataset, shown["path"].tolist()) if dataset else None
    if note:
        st.info(note)
    reason = performance.cam_unavailable({**card, "id": model_id})
    if reason:
        st.caption(reason)
    elif dataset is not None and st.button(
        f"Compute Grad-CAM for these {len(shown)} images", key="performance_cam_btn"
    ):
        st.session_state[CAM_KEY] = model_id
    with_cam = not reason and dataset is not None and st.session_state.get(CAM_KEY) == model_id
    for start in range(0, len(shown), GALLERY_COLUMNS):
        cols = st.columns(GALLERY_COLUMNS)
        for col, (_, row) in zip(cols, shown.iloc[start : start + GALLERY_COLUMNS].iterrows()):
            caption = f"true {row['true']} → predicted {row['predicted']} (p = {row['p_predicted']:.2f})"
            thumb = thumbnail_of(root, row["path"]) if dataset is not None else None
            with col:
                if thumb is None:
                    st.markdown(f"`{row['path']}`  \n{caption}")
                    continue
                st.image(thumb, caption=caption, width="stretch")
                if with_cam:
                    try:
                        overlay = overlay_of(pred, model_id, stamp, root, row["path"], int(row["predicted_index"]))
                        st.image(overlay, caption=f"Grad-CAM of {row['predicted']}", width="stretch")
                    except (ValueError, FileNotFoundError, RuntimeError) as err:
                        st.warning(str(err))
    with st.expander(f"All {len(mistakes)} misclassified images"):
        st.dataframe(mistakes.drop(columns=["predicted_index"]), hide_index=True, width="stretch")


def _benchmark_results(load, what: str, missing: str) -> dict | None:
    """A benchmark's results, or None after telling the user in one line why there are none."""
    try:
        results = load()
    except ValueError as err:
        st.warning(f"Cannot read the {what}: {err}")
        return None
    if results is None:
        st.info(missing)
    return results


def saliency_table_ui() -> None:
    results = _benchmark_results(
        saliency.load_results,
        "saliency benchmark results",
        "No saliency benchmark results yet: run `python -m benchmarks.bench_saliency --json`.",
    )
    if results is None:
        return
    number = {"ROAD": "%+.3f", "ROAD sd": "%.3f", "Lung share": "%.2f", "Lung area": "%.2f"}
    number |= {"Border share": "%.2f", "ms / heatmap": "%.0f"}
    table = saliency.results_table(results)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        height=DATAFRAME_ROW_PX * (len(table) + 1) + 3,  # every row at once: no scrolling inside the table
        key="saliency_table",
        column_config={
            column: st.column_config.NumberColumn(column, help=meaning, format=number[column])
            if column in number
            else st.column_config.Column(column, help=meaning)
            for column, (_, meaning) in saliency.RESULT_COLUMNS.items()
        },
    )
    st.caption(
        f"Measured {results.get('date', 'on an unrecorded date')} on {results.get('machine', 'an unrecorded machine')} "
        f"with `{results['command']}`, on {results.get('split', 'validation images')}. Higher ROAD is more faithful "
        "(removing what the map calls important hurts the prediction more than removing the rest). Compare "
        f"'Lung share' with 'Lung area' and 'Border share' with {saliency.UNIFORM_BORDER_SHARE:.2f}: that is what a "
        "uniform map would get."
    )
    coverage = performance.saliency_coverage(results)
    if coverage["missing"]:
        st.caption(f"Not in the saliency benchmark: {', '.join(coverage['missing'])}.")
    if coverage["stale"]:
        st.caption(f"Measured on earlier weights (retrained since): {', '.join(coverage['stale'])}.")


def saliency_examples_ui(pred) -> None:
    active = st.session_state.get(MODEL_KEY)
    if active is None:
        st.info("No active model: choose one in the sidebar to see example heatmaps.")
        return
    try:
        model_id, _ = pred.explain_network(active)  # an ensemble's first member, a k-NN's backbone
    except (performance.ModelLoadError, KeyError, OSError, ValueError) as err:
        st.warning(f"Cannot load {active} for example heatmaps: {err}")
        return
    method = st.selectbox(
        f"CAM method for example heatmaps of {model_id}",
        list(CAM_METHODS),
        key=SALIENCY_METHOD_KEY,
        help="Heatmaps of the sidebar's active model"
        + (f" ({active} is explained through {model_id}, as on the Diagnose page)" if model_id != active else "")
        + ", computed live on bundled sample images.",
    )
    st.caption(saliency.method_summary(method, model_id) or f"{model_id} with {method} is not in the benchmark.")
    examples = performance.saliency_examples(dataset_at(str(SAMPLE_DIR)))
    weights = performance.weights_hash(model_id)
    for col, path in zip(st.columns(len(examples)), examples["path"]):
        with col:
            try:
                overlay, caption = saliency_example_of(pred, model_id, weights, method, path)
            except (ValueError, FileNotFoundError, RuntimeError) as err:
                st.warning(f"{path}: {err}")
                continue
            st.image(overlay, caption=caption, width="stretch")


def _column_config(columns: list[str], meanings: dict[str, tuple[str, str]], formats: dict[str, str]) -> dict:
    return {
        c: st.column_config.NumberColumn(c, help=meanings[c][1], format=formats[c])
        if c in formats
        else st.column_config.Column(c, help=meanings[c][1])
        for c in columns
    }


FRAME_FORMATS = {"n": "%d", "Flips width %": "%.1f", "Flips height %": "%.1f"}
FRAME_FORMATS |= {"Mean ΔP width": "%+.3f", "Mean ΔP height": "%+.3f", "Balanced n": "%d"}
FRAME_FORMATS |= {c: "%.3f" for c in ("AUROC", "Accuracy", "Specificity")}
FRAME_FORMATS |= {f"Balanced {c}": "%.3f" for c in ("AUROC", "accuracy", "specificity")}
FRAME_FORMATS |= {c: "%.1f" for c in frame.PERCENT_COLUMNS} | {"n spared": "%d"}


def frame_probe_ui(pred) -> None:
    results = _benchmark_results(
        frame.load_results,
        "frame probe results",
        "No frame probe results yet: run `python -m benchmarks.bench_frame --data ../shared/data/chest_xray`.",
    )
    if results is None:
        return
    target = 100 * frame.MAX_FLIP_SHARE
    st.plotly_chart(charts.frame_flips_figure(frame.flips_long(results), target), key="chart_frame_flips")
    table = frame.results_table(results)
    st.dataframe(
        table[frame.PROBE_COLUMNS],
        hide_index=True,
        width="stretch",
        key="frame_probe_table",
        column_config=_column_config(frame.PROBE_COLUMNS, frame.RESULT_COLUMNS, FRAME_FORMATS),
    )
    passed = frame.passing(results)
    meets = [m for m, ok in passed.items() if ok]
    when = results.get("date", "on an unrecorded date")
    machine = results.get("machine", "an unrecorded machine")
    st.caption(
        f"Meet the target (≤ {target:g} % flips for both cuts, all validation images): "
        + (", ".join(meets) if meets else "none of the measured models")
        + f". Measured {when} on {machine} with `{results['command']}`, on {results.get('split', 'validation images')}."
    )
    spared = frame.passing(results, spared=True)
    if spared:
        width = [r["model"] for r in results["rows"] if r["subset"] == "all" and frame.meets(r, "flips_width_spared")]
        st.caption(
            "The height cut takes lung off about half of the films, so the lung-sparing cuts stop "
            f"{frame.SPARED_MARGIN:.0%} short of the lungs' box (manual masks). Meet ≤ {target:g} % for the width: "
            + (", ".join(width) or "none")
            + "; for both: "
            + (", ".join(m for m, ok in spared.items() if ok) or "none of the measured models")
            + ". A lung-crop window that then reaches past the cut film is padded black, and that band moves "
            "verdicts too (docs/RESULTS.md, frame probe)."
        )
    st.markdown(
        "**Frame-balanced validation.** The validation images whose original size is known, weighted so that "
        "the original aspect ratio (width / height) has the same distribution in both classes: what is left "
        "for a model to score on is the film, not its shape. Aspect-ratio bins that hold too few images of a "
        "class (no normal film is as wide as the widest pneumonia films) weigh nothing; 'Balanced n' counts "
        "the images that take part."
    )
    st.dataframe(
        table[frame.METRIC_COLUMNS],
        hide_index=True,
        width="stretch",
        key="frame_metrics_table",
        column_config=_column_config(frame.METRIC_COLUMNS, frame.RESULT_COLUMNS, FRAME_FORMATS),
    )
    coverage = frame.coverage(results, pred.cards(), pred.model_ids(task=None))
    if coverage["missing"]:
        st.caption(f"Not in the frame probe: {', '.join(coverage['missing'])}.")
    if coverage["stale"]:
        st.caption(f"Frame probe measured on earlier weights (retrained since): {', '.join(coverage['stale'])}.")


def lung_share_ui() -> None:
    results = _benchmark_results(
        saliency.load_results,
        "saliency benchmark results",
        "No lung shares yet: run `python -m benchmarks.bench_saliency --json`.",
    )
    if results is None:
        return
    shares, uniform = saliency.lung_share_long(results)
    if shares.empty:
        st.info("The saliency benchmark results hold no lung shares.")
        return
    st.plotly_chart(charts.lung_share_figure(shares, uniform or 0.0), key="chart_lung_share")
    manual = shares["manual masks"].dropna()
    masks = (
        f"{int(manual.sum())} of {int(shares.loc[manual.index, 'images'].sum())} heatmaps scored on manual lung masks, "
        "the rest on the heuristic ellipse mask"
        if len(manual)
        else "all on the heuristic ellipse mask: measured before the manual lung masks were used"
    )
    st.caption(
        f"Share of each heatmap's mass inside the lungs; {masks}. A uniform map would put "
        f"{uniform or 0.0:.2f} there. Measured {results.get('date', 'on an unrecorded date')} with "
        f"`{results['command']}`."
    )


def lungs_section_ui(pred) -> None:
    st.markdown(
        "The training films carry a shortcut: pneumonia films are wider, so the frame's aspect ratio alone "
        "separates the classes (AUROC 0.873 on the full-resolution training images), and the validation set "
        "carved from train carries the same cue. A model that reads the lungs barely changes its verdict when "
        f"{frame.CROP_FRACTION:.0%} of the frame is cut off each side; **the target is at most "
        f"{frame.MAX_FLIP_SHARE:.0%} flipped verdicts for each cut**, on validation images, through the same "
        "path an upload takes."
    )
    frame_probe_ui(pred)
    lung_share_ui()


def ood_ui() -> None:
    signals = performance.ood_signals()
    if signals is None:
        st.info("No autoencoder is installed, so the out-of-distribution check is off.")
        return
    st.markdown(
        "Before it gives a verdict, the Diagnose page checks that the image looks like the chest X-rays the "
        "models were trained on, with two signals: the reconstruction error of an autoencoder trained on "
        "normal films only (an image unlike them reconstructs poorly), and the Mahalanobis distance of simple "
        "image statistics (intensity histogram, left-right symmetry, gradient energy, row and column profiles) "
        "from the training images, which catches smooth or textured non-X-rays an autoencoder reconstructs "
        "well. Each threshold is the 99 % quantile of its signal on patient-grouped validation images carved "
        "from train (normal films for the autoencoder, all films for the statistics; nothing was tuned on "
        "test). **When either signal exceeds its threshold, the verdict is withheld: the Diagnose page shows "
        "'Not assessed'** with the reason."
    )
    st.dataframe(
        signals,
        hide_index=True,
        width="stretch",
        key="ood_table",
        column_config={
            "signal": st.column_config.Column("Signal"),
            "threshold": st.column_config.NumberColumn("Threshold", format="%.4g", help="Flagged above this."),
            "rule": st.column_config.Column("How it was chosen (from the autoencoder's card)"),
        },
    )
    rates = performance.ood_flag_rates()
    if rates:
        flagged = ", ".join(f"{share:.1%} of {group}" for group, share in rates.items())
        st.caption(f"The reconstruction-error threshold flags {flagged} (the autoencoder's card).")


pred = page_frame("Model performance")
cards = performance.evaluated_cards()
if not cards:
    st.info("No installed model has stored predictions yet. Train and promote one from the Admin page.")
    st.stop()

model_id, split = choose_model_ui(cards)
card = cards[model_id]
stamp = performance.predictions_stamp(model_id)
try:
    report = report_of(model_id, split, stamp)
except (ValueError, KeyError, performance.ModelLoadError) as err:
    st.error(f"Cannot evaluate {model_id} on {split}: {err}")
    st.stop()

binary = len(report["classes"]) == 2
st.subheader(f"{model_id} on the {performance.SPLIT_LABELS[split]} split")
left, right = st.columns([2, 3])
with left:
    metrics_ui(report)
with right:
    if binary:
        threshold, point = threshold_ui(model_id, split, card, stamp)
        st.plotly_chart(
            charts.confusion_figure(performance.confusion_frame(point), f"Confusion matrix at {threshold:.3f}"),
            key="chart_confusion",
        )
    else:
        threshold, point = None, None
        st.plotly_chart(
            charts.confusion_figure(performance.confusion_frame(report), "Confusion matrix (argmax)"),
            key="chart_confusion",
        )
        st.dataframe(
            performance.per_class_table(report),
            hide_index=True,
            width="stretch",
            column_config={
                c: st.column_config.NumberColumn(format="%.3f") for c in ("precision", "recall", "f1", "roc_auc")
            },
        )

curves_ui(report, point)
st.subheader("All models")
comparison_ui(cards, split)
st.subheader("Misclassified images")
gallery_ui(pred, model_id, split, threshold, card, stamp)
st.subheader("Does the model read the lungs?")
lungs_section_ui(pred)
st.subheader("Saliency")
st.markdown(
    "Which heatmap to believe: each CAM method of each installed classifier, measured on validation images "
    "by the saliency benchmark. Then live examples on bundled sample images."
)
saliency_table_ui()
saliency_examples_ui(pred)
st.subheader("Out-of-distribution check")
ood_ui()
