"""cxrdemo.app.charts: the pages' figures from the installed models' stored predictions and the sample."""

from __future__ import annotations

import pytest

from cxrdemo.app import charts
from cxrdemo.data.dataset import load_dataset
from cxrdemo.evaluation import explore, performance
from cxrdemo.paths import SAMPLE_DIR

BINARY, SUBTYPE = "resnet18-binary", "cnn4-subtype"


@pytest.fixture(scope="module")
def binary_report() -> dict:
    return performance.report_for(BINARY, "test", n_boot=0)


def test_roc_and_pr_mark_the_operating_point(binary_report: dict) -> None:
    point = performance.operating_point(BINARY, "test", binary_report["threshold"])
    roc = charts.roc_figure(performance.roc_curves(binary_report), point, one_vs_rest=False)
    marker = [t for t in roc.data if t.name == "threshold"]
    assert len(marker) == 1 and marker[0].x[0] == pytest.approx(1 - point["specificity"])
    assert marker[0].y[0] == pytest.approx(point["sensitivity"])
    assert roc.layout.title.text == "ROC curve"
    pr = charts.pr_figure(performance.pr_curve(binary_report), point)
    assert [t.y[0] for t in pr.data if t.name == "threshold"] == [pytest.approx(point["precision"])]
    assert not [
        t
        for t in charts.roc_figure(performance.roc_curves(binary_report), None, one_vs_rest=False).data
        if t.name == "threshold"
    ]


def test_three_class_curves_and_reliability() -> None:
    report = performance.report_for(SUBTYPE, "test", n_boot=0)
    roc = charts.roc_figure(performance.roc_curves(report), None, one_vs_rest=True)
    assert {t.name for t in roc.data} == {"normal", "bacteria", "virus"}
    assert "one-vs-rest" in roc.layout.title.text
    rel = charts.reliability_figure(performance.reliability_frame(report), report["ece"]["value"], binary=False)
    assert rel.layout.xaxis.title.text == "mean top-label confidence"
    assert f"{report['ece']['value']:.3f}" in rel.layout.title.text


def test_confusion_and_comparison(binary_report: dict) -> None:
    point = performance.operating_point(BINARY, "test", binary_report["threshold"])
    confusion = performance.confusion_frame(point)
    fig = charts.confusion_figure(confusion, "at the card threshold")
    assert fig.data[0].z.sum() == binary_report["n"]
    cards = performance.evaluated_cards()
    table = performance.comparison_table(cards, "test")
    bars = charts.comparison_figure(table, "test")
    assert {m for t in bars.data for m in t.x} == set(table["model"])


def test_explorer_figures_on_the_sample() -> None:
    dataset = load_dataset(SAMPLE_DIR)
    stats = explore.overview(dataset.frame, dataset)
    classes = charts.class_frequency_figure(stats["class_counts"])
    assert sum(sum(t.y) for t in classes.data) == stats["images"]
    assert charts.patients_figure(stats["patients_per_split"]).layout.title.text == "Distinct patients per split"


def test_training_curves_from_epoch_records() -> None:
    records = [{"epoch": 1, "train_loss": 0.6, "val_loss": 0.5}, {"epoch": 2, "train_loss": 0.4, "val_loss": None}]
    fig = charts.training_curve_figure(records, {"train_loss": "train", "val_loss": "validation"}, "Loss")
    assert [t.name for t in fig.data] == ["train", "validation"] and list(fig.data[0].y) == [0.6, 0.4]
