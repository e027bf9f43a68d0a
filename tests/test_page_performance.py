"""AppTest of the model performance page (pages/performance.py).

Every installed model with stored predictions is selected in turn; a synthetic registry (from
tests/test_performance.py) adds a 3-class model and a probabilities-only ensemble whatever is installed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.app.ui import MODEL_KEY
from cxrdemo.evaluation import frame, performance, saliency
from cxrdemo.inference.predict import Predictor
from cxrdemo.models.registry import list_cards
from cxrdemo.paths import REPO_ROOT
from tests.test_performance import MISSING_FROM_SAMPLE, write_synthetic_models

INSTALLED = sorted(performance.evaluated_cards())
BINARY = [m for m in INSTALLED if len(list_cards()[m].get("classes", [])) == 2]
MULTICLASS = [m for m in INSTALLED if len(list_cards()[m].get("classes", [])) > 2]
CLASSIFIERS = [m for m in INSTALLED if list_cards()[m].get("kind", "classifier") == "classifier"]


def open_performance() -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("pages/performance.py").run()
    assert not at.exception, at.exception
    return at


def select_model(at: AppTest, model_id: str) -> AppTest:
    at.selectbox(key="performance_model").set_value(model_id).run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def charts(at: AppTest) -> dict[str, dict]:
    """Plotly figures of the page by title."""
    figures = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return {f["layout"].get("title", {}).get("text", ""): f for f in figures}


def table_with(at: AppTest, columns: list[str]):
    """The one dataframe of the page with exactly these columns."""
    (table,) = [d.value for d in at.dataframe if list(d.value.columns) == columns]
    return table


def saliency_overlays(at: AppTest) -> list[str]:
    return [c for img in at.image for c in img.captions if " film; heatmap of " in c]


def confusion_shape(at: AppTest) -> tuple[int, int]:
    figure = next(f for title, f in charts(at).items() if title.startswith("Confusion matrix"))
    heat = figure["data"][0]
    return len(heat["y"]), len(heat["x"])


@pytest.fixture()
def sample_data(monkeypatch: pytest.MonkeyPatch, sample_dir: Path) -> Path:
    monkeypatch.setenv("CXRDEMO_DATA", str(sample_dir))
    return sample_dir


@pytest.fixture()
def synthetic_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_data: Path) -> Path:
    directory = tmp_path / "weights"
    write_synthetic_models(directory)
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(directory))
    return directory


# --- installed models -----------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", INSTALLED)
def test_page_renders_for_every_installed_model(model_id: str, sample_data: Path):
    at = select_model(open_performance(), model_id)
    assert at.subheader[0].value.startswith(model_id)
    table = at.dataframe[0].value
    assert list(table.columns) == ["metric", "value", "95 % CI"] and table["metric"].iloc[0].startswith("AUROC")
    titles = list(charts(at))
    assert any(t.startswith("Confusion matrix") for t in titles) and any(t.startswith("ROC") for t in titles)
    assert any(t.startswith("All models") for t in titles)
    assert at.selectbox(key="performance_split").value == "test"
    for split in performance.available_splits(model_id)[1:]:
        at.selectbox(key="performance_split").set_value(split).run()
        assert not at.exception, (split, at.exception)
    n_classes = len(list_cards()[model_id]["classes"])
    assert confusion_shape(at) == (n_classes, n_classes)


@pytest.mark.parametrize("model_id", BINARY[:1] + [m for m in BINARY[1:] if m == "ensemble"])
def test_threshold_slider_updates_sensitivity(model_id: str, sample_data: Path):
    at = select_model(open_performance(), model_id)
    slider = at.slider(key=f"performance_threshold_{model_id}")
    assert slider.value == pytest.approx(list_cards()[model_id]["threshold"])
    before = metric(at, "Sensitivity")
    slider.set_value(0.0).run()
    assert metric(at, "Sensitivity") == "1.000" and metric(at, "Specificity") == "0.000"
    title = next(t for t in charts(at) if t.startswith("Confusion matrix"))
    assert title == "Confusion matrix at 0.000"
    at.slider(key=f"performance_threshold_{model_id}").set_value(1.0).run()
    assert float(metric(at, "Sensitivity")) <= float(before) and metric(at, "Specificity") == "1.000"
    assert not at.exception


@pytest.mark.parametrize("model_id", MULTICLASS)
def test_installed_three_class_model_shows_a_3x3_matrix(model_id: str, sample_data: Path):
    at = select_model(open_performance(), model_id)
    assert confusion_shape(at) == (3, 3)
    assert not [s for s in at.slider if s.key and s.key.startswith("performance_threshold_")]
    assert len(at.dataframe[1].value) == 3  # per-class table


@pytest.mark.full_data
@pytest.mark.parametrize("model_id", CLASSIFIERS[:1])
def test_gradcam_gallery_on_the_full_dataset(model_id: str, monkeypatch: pytest.MonkeyPatch, full_data_dir: Path):
    monkeypatch.setenv("CXRDEMO_DATA", str(full_data_dir))
    at = select_model(open_performance(), model_id)
    if performance.misclassified(model_id, "test").empty:
        pytest.skip(f"{model_id} makes no mistakes on test")

    def gallery(at) -> list:  # the misclassified images, not the saliency section's example overlays
        return [img for img in at.image if not any("film; heatmap of" in c for c in img.captions)]

    shown = len(gallery(at))
    assert shown > 0 and not [i for i in at.info if "not available" in i.value]
    at.button(key="performance_cam_btn").click().run()
    assert not at.exception and not at.warning
    overlays = [c for img in gallery(at) for c in img.captions if c.startswith("Grad-CAM of")]
    assert len(overlays) == shown and len(gallery(at)) == 2 * shown


def test_saliency_table_for_installed_models(sample_data: Path):
    results = saliency.load_results()
    assert results is not None, "docs/saliency.json is shipped: python -m benchmarks.bench_saliency --json"
    at = open_performance()
    table = table_with(at, list(saliency.RESULT_COLUMNS))
    measured = {(r["model"], r["method"]) for r in results["rows"]}
    assert set(zip(table["Model"], table["CAM method"])) == measured and len(table) == len(results["rows"])
    assert table["ROAD"].notna().any()
    captions = [c.value for c in at.caption]
    assert any(results["command"] in c and results["date"] in c for c in captions)
    # every installed classifier is either in the table or named as missing from the benchmark
    missing = next((c for c in captions if c.startswith("Not in the saliency benchmark")), "")
    installed = [m for m, c in list_cards().items() if c.get("kind") == "classifier"]
    assert installed and all(m in set(table["Model"]) or m in missing for m in installed)
    assert set(table["Model"]) & set(installed)


def test_saliency_examples_render_for_the_active_model(sample_data: Path):
    at = open_performance()
    network, _ = Predictor().explain_network(at.session_state[MODEL_KEY])  # as the Diagnose page explains it
    method = at.selectbox(key="performance_saliency_method")
    assert method.value == "gradcam" and method.label == f"CAM method for example heatmaps of {network}"
    overlays = saliency_overlays(at)
    assert [c.split(" ")[0] for c in overlays] == ["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA"]
    assert not [w.value for w in at.warning if "heatmap" in w.value]
    at.selectbox(key="performance_saliency_method").set_value("eigencam").run()
    assert not at.exception and len(saliency_overlays(at)) == 4


def test_lungs_section_shows_the_frame_probe_and_lung_shares(sample_data: Path):
    results = frame.load_results()
    assert results is not None, "docs/frame.json is shipped: python -m benchmarks.bench_frame"
    at = open_performance()
    assert "Does the model read the lungs?" in [s.value for s in at.subheader]
    assert any("shortcut" in m.value and "at most 2%" in m.value for m in at.markdown)
    probe = table_with(at, frame.PROBE_COLUMNS)
    measured = [(r["model"], r["subset"]) for r in results["rows"]]
    assert list(zip(probe["Model"], probe["Images"])) == measured
    assert probe["Flips width %"].tolist() == pytest.approx([100 * r["flips_width"] for r in results["rows"]])
    metrics = table_with(at, frame.METRIC_COLUMNS)
    assert metrics["Balanced AUROC"].tolist() == pytest.approx([r["balanced"]["auroc"] for r in results["rows"]])
    installed = Predictor().model_ids(task=None)
    assert {m for m, _ in measured} | set(installed) == {m for m, _ in measured}  # every installed model
    titles = list(charts(at))
    assert "Frame probe: validation verdicts that flip when the frame is cut" in titles
    assert "Heatmap mass inside the lungs, per CAM method (validation)" in titles
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Meet the target") and results["command"] in c for c in captions)
    spared = probe["Flips width, lungs spared %"].tolist()
    assert spared == pytest.approx([100 * r["flips_width_spared"] for r in results["rows"]])
    within = [r["model"] for r in results["rows"] if r["subset"] == "all" and frame.meets(r, "flips_width_spared")]
    sparing = next(c for c in captions if "lung-sparing cuts" in c)
    assert f"for the width: {', '.join(within) or 'none'};" in sparing
    assert any(c.startswith("Share of each heatmap's mass inside the lungs") for c in captions)


def test_ood_section_shows_the_installed_autoencoder_thresholds(sample_data: Path):
    card = list_cards().get("autoencoder")
    assert card is not None, "the autoencoder is shipped in weights/"
    at = open_performance()
    signals = table_with(at, ["signal", "threshold", "rule"])
    assert signals["threshold"].tolist() == [card["threshold"], card["image_statistics"]["threshold"]]
    assert signals["rule"].tolist() == [card["threshold_rule"], card["image_statistics"]["rule"]]
    assert any("'Not assessed'" in m.value and "99 % quantile" in m.value for m in at.markdown)


# --- synthetic registry: 3 classes, ensemble without Grad-CAM, images missing from the sample --------


def test_three_class_model_shows_a_3x3_matrix(synthetic_weights: Path):
    at = select_model(open_performance(), "toy-subtype")
    assert confusion_shape(at) == (3, 3)
    per_class = at.dataframe[1].value
    assert per_class["class"].tolist() == ["normal", "bacteria", "virus"]
    assert not [s for s in at.slider if s.key and s.key.startswith("performance_threshold_")]
    assert any(t.startswith("ROC curve (one-vs-rest)") for t in charts(at))
    assert any("Precision-recall curves are drawn for binary models" in i.value for i in at.info)
    # a classifier without weights on disk whose mistakes are in the sample: the button is offered, and
    # Grad-CAM fails with one message per image, not an exception
    shown = len(at.image)
    assert shown > 0 and "performance_cam_btn" in [b.key for b in at.button]
    at.button(key="performance_cam_btn").click().run()
    assert not at.exception
    failed = [w for w in at.warning if w.value.startswith("model toy-subtype: weights file")]
    assert len(failed) == shown, [w.value for w in at.warning]


def test_ensemble_gallery_notes(synthetic_weights: Path):
    at = select_model(open_performance(), "ensemble")
    assert any(i.value.startswith("Images not available with the bundled sample") for i in at.info)
    assert any(c.value.startswith("No Grad-CAM for ensemble") for c in at.caption)
    assert "performance_cam_btn" not in [b.key for b in at.button]
    assert any(MISSING_FROM_SAMPLE in m.value for m in at.markdown)  # shown by path instead of an image
    at.slider(key="performance_threshold_ensemble").set_value(0.0).run()
    assert metric(at, "Sensitivity") == "1.000" and not at.exception
    comparison = charts(at)["All models on the test split (card metrics, 95 % CI)"]
    assert {trace["name"] for trace in comparison["data"]} == {"AUROC", "Accuracy"}


def test_without_benchmark_file_or_autoencoder(
    synthetic_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(saliency, "DEFAULT_JSON", tmp_path / "never-written.json")
    monkeypatch.setattr(frame, "DEFAULT_JSON", tmp_path / "never-written-frame.json")
    at = open_performance()
    infos = [i.value for i in at.info]
    assert any(i.startswith("No saliency benchmark results yet") for i in infos)
    assert any(i.startswith("No frame probe results yet: run `python -m benchmarks.bench_frame") for i in infos)
    assert any(i.startswith("No lung shares yet") for i in infos)
    assert "Does the model read the lungs?" in [s.value for s in at.subheader]
    assert any(i.startswith("No autoencoder is installed") for i in infos)
    # the active model is the synthetic ensemble, whose member has no weights: one line, no overlays
    assert any(w.value.startswith("Cannot load ensemble for example heatmaps") for w in at.warning)
    assert not saliency_overlays(at)


def test_no_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_data: Path):
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(tmp_path))
    at = open_performance()
    assert "No installed model has stored predictions" in at.info[0].value
