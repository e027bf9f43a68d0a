"""Every plotly chart the pages draw, built in one place (the pages only place them).

The Diagnose page draws none: its probability bars are plain HTML (`diagnosis.probability_bars_html`), so
that a session's first answer does not wait for the browser to load plotly.

The pages hand these functions the tables the backend computed (`evaluation.performance`,
`evaluation.explore`, a job's epoch records) and pass the figure to `st.plotly_chart`,
so a chart can be checked without a page and looks the same wherever it appears.
"""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

THRESHOLD_MARKER = {"size": 12, "symbol": "x", "color": "crimson"}
DIAGONAL = {"dash": "dot", "color": "grey"}
TARGET_LINE = {"dash": "dash", "color": "crimson"}


# --- Model performance -----------------------------------------------------------------------------------
def confusion_figure(confusion: pd.DataFrame, title: str) -> go.Figure:
    fig = px.imshow(
        confusion,
        text_auto=True,
        color_continuous_scale="Blues",
        title=title,
        aspect="auto",
        labels={"x": "predicted", "y": "true", "color": "images"},
    )
    fig.update_layout(coloraxis_showscale=False, height=380)
    return fig


def roc_figure(roc: pd.DataFrame, point: dict | None, *, one_vs_rest: bool) -> go.Figure:
    """ROC curves (`performance.roc_curves`), the chance diagonal and the chosen operating point."""
    fig = px.line(
        roc,
        x="fpr",
        y="tpr",
        color="curve",
        title="ROC curve" + (" (one-vs-rest)" if one_vs_rest else ""),
        hover_data=["threshold"],
        labels={"fpr": "1 - specificity", "tpr": "sensitivity"},
        range_x=[0, 1],
        range_y=[0, 1.02],
    )
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=DIAGONAL)
    if point is not None:
        fig.add_scatter(
            x=[point["fpr"]], y=[point["sensitivity"]], mode="markers", name="threshold", marker=THRESHOLD_MARKER
        )
    return fig


def pr_figure(pr: pd.DataFrame, point: dict | None) -> go.Figure:
    """The precision-recall curve (`performance.pr_curve`) with the chosen operating point."""
    fig = px.line(
        pr,
        x="recall",
        y="precision",
        title="Precision-recall curve",
        hover_data=["threshold"],
        range_x=[0, 1],
        range_y=[0, 1.02],
    )
    if point is not None:
        fig.add_scatter(
            x=[point["sensitivity"]], y=[point["precision"]], mode="markers", name="threshold", marker=THRESHOLD_MARKER
        )
    return fig


def reliability_figure(reliability: pd.DataFrame, ece: float, *, binary: bool) -> go.Figure:
    """Calibration bins (`performance.reliability_frame`) against the diagonal of perfect calibration."""
    fig = px.scatter(
        reliability,
        x="mean_confidence",
        y="fraction_positive",
        size="count",
        range_x=[0, 1],
        range_y=[0, 1],
        title=f"Reliability (ECE {ece:.3f})",
        labels={
            "mean_confidence": "mean predicted probability" if binary else "mean top-label confidence",
            "fraction_positive": "observed fraction positive" if binary else "observed accuracy",
        },
    )
    fig.update_traces(mode="lines+markers")
    fig.add_shape(type="line", x0=0, y0=0, x1=1, y1=1, line=DIAGONAL)
    return fig


def comparison_figure(table: pd.DataFrame, split: str) -> go.Figure:
    """Every model's card metrics on one split with their intervals (`performance.comparison_table`)."""
    return px.bar(
        table,
        x="model",
        y="value",
        color="metric",
        barmode="group",
        error_y="error_plus",
        error_y_minus="error_minus",
        hover_data=["ci"],
        range_y=[0, 1.05],
        title=f"All models on the {split} split (card metrics, 95 % CI)",
    )


def frame_flips_figure(flips: pd.DataFrame, target_percent: float) -> go.Figure:
    """Verdicts that flip under each frame crop, per model, full-resolution films and 224 copies apart
    (`frame.flips_long`), with the target line."""
    fig = px.bar(
        flips,
        x="model",
        y="flips %",
        color="crop",
        barmode="group",
        facet_col="subset",
        title="Frame probe: validation verdicts that flip when the frame is cut",
        labels={"flips %": "verdicts flipped (%)", "crop": "cut"},
    )
    fig.add_hline(y=target_percent, line=TARGET_LINE, annotation_text=f"target ≤ {target_percent:g} %")
    fig.update_layout(height=420, legend={"orientation": "h", "y": -0.35})
    return fig


def lung_share_figure(shares: pd.DataFrame, uniform: float) -> go.Figure:
    """Share of each CAM method's heatmap mass inside the lungs, per model (`saliency.lung_share_long`),
    with what a uniform map would get."""
    fig = px.bar(
        shares,
        x="method",
        y="lung share",
        color="model",
        barmode="group",
        range_y=[0, 1],
        hover_data=["images", "manual masks"],
        title="Heatmap mass inside the lungs, per CAM method (validation)",
        labels={"method": "CAM method", "lung share": "share of heatmap mass in the lungs"},
    )
    fig.add_hline(y=uniform, line=TARGET_LINE, annotation_text=f"uniform map {uniform:.2f}")
    return fig


# --- Dataset explorer ------------------------------------------------------------------------------------
def class_frequency_figure(counts: pd.DataFrame) -> go.Figure:
    return px.bar(
        counts, x="split", y="images", color="label", barmode="group", text_auto=True, title="Class frequency per split"
    )


def subtype_figure(counts: pd.DataFrame) -> go.Figure:
    return px.bar(counts, x="split", y="images", color="subtype", text_auto=True, title="Subtypes per split")


def source_width_figure(sizes: pd.DataFrame) -> go.Figure:
    """Source widths on a log scale: the 224 px copy and the full-resolution originals apart."""
    return px.histogram(
        sizes,
        x="source_width",
        color="resolution",
        barmode="overlay",
        nbins=60,
        log_y=True,
        category_orders={"resolution": ["full", "low"]},
        title="Source image width (px), by resolution source",
        labels={"source_width": "source width (px)", "resolution": "source"},
    )


def patients_figure(patients: pd.DataFrame) -> go.Figure:
    return px.bar(
        patients, x="split", y="patients", text_auto=True, hover_data=["images"], title="Distinct patients per split"
    )


# --- Admin -----------------------------------------------------------------------------------------------
def training_curve_figure(records: list[dict], series: dict[str, str], title: str) -> go.Figure:
    """One line per `series` key (record field -> legend name) over a job's epoch records."""
    fig = go.Figure()
    epochs = [r["epoch"] for r in records]
    for key, name in series.items():
        fig.add_trace(go.Scatter(x=epochs, y=[r.get(key) for r in records], mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="epoch", height=300, margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(dtick=1)  # whole epochs only
    return fig
