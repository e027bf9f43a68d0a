"""The Diagnose page through Streamlit's AppTest: uploads of every kind, batches with bad files,
examples, compare-all, heatmap settings and report buttons, plus the page's non-Streamlit glue.

Runs against a private copy of the installed models (whatever `weights/` holds when the module starts),
so a model promoted by a background job mid-run cannot change the answers under a test.
"""

from __future__ import annotations

import html
import json
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from streamlit.testing.v1 import AppTest

from cxrdemo.app import diagnosis
from cxrdemo.imaging.decode import load_image
from cxrdemo.imaging.preprocess import to_input
from cxrdemo.inference.predict import Prediction, Predictor
from cxrdemo.models.architectures import create_model
from cxrdemo.models.registry import write_model
from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR
from tests import corpus
from tests.corpus import dicom_bytes
from tests.weights_snapshot import snapshot_weights

APP = str(REPO_ROOT / "app.py")
PATIENT = "Doe^Janet^Private"


@pytest.fixture(scope="module", autouse=True)
def _weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A frozen copy of the installed models; CXRDEMO_WEIGHTS points the app at it."""
    target = snapshot_weights(tmp_path_factory.mktemp("diagnose") / "weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CXRDEMO_WEIGHTS", str(target))
        yield target


@pytest.fixture(scope="module", autouse=True)
def _one_intra_op_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine OpenMP's spinning makes small models much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def predictor(_weights: Path) -> Predictor:
    pred = Predictor(_weights)
    if not pred.model_ids("binary"):
        pytest.skip("no binary classifier installed in weights/")
    return pred


def _sample(label: str, index: int = 0) -> Path:
    return sorted((SAMPLE_DIR / "test" / label).glob("*.jpeg"))[index]


def _app() -> AppTest:
    return AppTest.from_file(APP, default_timeout=60).run()


def _upload(at: AppTest, *files: tuple[str, bytes, str]) -> AppTest:
    at.file_uploader(key="uploads").set_value(list(files)).run()
    return at


def _png(path: Path) -> bytes:
    buffer = BytesIO()
    Image.open(path).convert("L").save(buffer, format="PNG")
    return buffer.getvalue()


def _dicom(path: Path, bits: int = 16) -> bytes:
    """A CR DICOM (MONOCHROME2, explicit VR little endian) holding a sample X-ray, with a patient name."""
    arr = np.asarray(Image.open(path).convert("L"))
    pixels = (arr.astype(np.uint16) << 4) if bits == 16 else arr  # 12 bits stored in 16, or plain 8-bit
    return dicom_bytes(
        pixels, modality="CR", bits_stored=12 if bits == 16 else None, patient_name=PATIENT, patient_id="PID-DIAGNOSE-1"
    )


def _texts(at: AppTest) -> list[str]:
    """Every text a user can read on the page (tables included)."""
    out = [
        e.value
        for kind in ("title", "subheader", "markdown", "caption", "error", "warning", "info")
        for e in getattr(at, kind)
    ]
    out += [e.label for e in at.expander]
    out += [df.value.to_csv() for df in at.dataframe]
    return [str(t) for t in out]


def _result_expanders(at: AppTest) -> list:
    """The batch's per-file expanders ("name — **verdict**"), not the ones inside a result."""
    return [e for e in at.expander if " — **" in e.label]


def _table_with(at: AppTest, column: str):
    """The first st.dataframe holding `column` (AppTest exposes no key for dataframes)."""
    tables = [df.value for df in at.dataframe if column in df.value.columns]
    assert tables, f"no table with a {column!r} column"
    return tables[0]


_BAR = re.compile(r'data-class="([^"]*)" data-probability="([0-9.]+)"')
_MARKER = re.compile(r'data-class="([^"]*)"[^>]*>(?:(?!data-class).)*?data-threshold="([0-9.]+)"')


def _bars_of(body: str) -> dict[str, float]:
    """class -> probability of the probability bars in one Markdown body (empty when it has none)."""
    return {html.unescape(name): float(p) for name, p in _BAR.findall(body)}


def _threshold_markers(body: str) -> dict[str, float]:
    """class -> threshold of the markers drawn on bars."""
    return {html.unescape(name): float(t) for name, t in _MARKER.findall(body)}


def _probability_bars(at: AppTest) -> list[dict[str, float]]:
    """The probability bars on the page, one dict per result."""
    return [bars for node in at.markdown if (bars := _bars_of(node.value))]


def _assert_prediction_shown(at: AppTest, predictor: Predictor) -> None:
    assert not at.exception
    classes = set(predictor.get(predictor.default_model_id()).classes)
    assert any(s.value in classes for s in at.subheader), [s.value for s in at.subheader]
    assert _probability_bars(at), "no probability bars"
    assert len(at.image) >= 2  # the X-ray and its heatmap overlay


# --- first render and single uploads -----------------------------------------------------------------


def test_first_render_has_no_exception(predictor: Predictor) -> None:
    at = _app()
    assert not at.exception
    assert at.file_uploader(key="uploads").accept_multiple_files
    assert {".dcm", ".png", ".jpeg"} <= set(at.file_uploader(key="uploads").allowed_type)
    assert [b for b in at.button if b.key and b.key.startswith("example_")], "no example buttons"
    assert not at.error
    # what a first answer draws is on the page before any upload, so the browser has its code already
    assert at.radio(key="diagnose_mode").value == diagnosis.SINGLE
    assert at.selectbox(key="cam_method").value == "gradcam"
    assert at.slider(key="cam_opacity").value == pytest.approx(0.4)
    assert any(m.value.startswith("<style>") and diagnosis.PROBABILITY_BARS_CLASS in m.value for m in at.markdown)
    assert not _probability_bars(at)


def test_file_details_are_a_literal_markdown_table() -> None:
    table = diagnosis.facts_table([("format", "DICOM"), ("StudyDescription", "CHEST | PA *portable*")])
    assert table.splitlines()[:3] == ["| field | value |", "|---|---|", "| format | DICOM |"]
    assert table.splitlines()[3] == r"| StudyDescription | CHEST \| PA \*portable\* |"


@pytest.mark.parametrize("label", ["PNEUMONIA", "NORMAL"])
def test_jpeg_upload_shows_prediction_chart_overlay_and_threshold(label: str, predictor: Predictor) -> None:
    path = _sample(label)
    at = _upload(_app(), (path.name, path.read_bytes(), "image/jpeg"))
    _assert_prediction_shown(at, predictor)
    assert not at.error
    model = predictor.get(predictor.default_model_id())
    (bars,) = _probability_bars(at)
    assert list(bars) == model.classes
    assert sum(bars.values()) == pytest.approx(1.0, abs=1e-5)
    if len(model.classes) == 2:  # the operating threshold is drawn on the positive bar
        (body,) = [node.value for node in at.markdown if _bars_of(node.value)]
        assert _threshold_markers(body) == {model.classes[1]: pytest.approx(model.threshold, abs=1e-6)}
    assert any("heatmap of" in (c or "") for img in at.image for c in img.captions)


def test_png_upload_works(predictor: Predictor) -> None:
    path = _sample("PNEUMONIA", 1)
    at = _upload(_app(), (path.stem + ".png", _png(path), "image/png"))
    _assert_prediction_shown(at, predictor)
    assert not at.error


@pytest.mark.parametrize("bits", [16, 8])
def test_dicom_upload_works_and_hides_patient_tags(bits: int, predictor: Predictor) -> None:
    # These generated DICOMs carry no window, so the reader auto-windows them (a percentile stretch); the
    # OOD statistics are contrast-normalised, so the film is still answered (see docs/RELIABILITY.md).
    path = _sample("NORMAL", 2)
    at = _upload(_app(), ("study.dcm", _dicom(path, bits), "application/dicom"))
    _assert_prediction_shown(at, predictor)
    assert not at.error
    text = "\n".join(_texts(at))
    assert "DICOM" in text
    assert "Doe" not in text and "PID-DIAGNOSE" not in text


# --- images the models were not made for: the verdict is withheld -------------------------------------


def _ct_slice() -> tuple[str, bytes, str]:
    return ("CT_small.dcm", Path(get_testdata_file("CT_small.dcm")).read_bytes(), "application/dicom")


def test_non_chest_upload_is_not_assessed_and_the_output_waits_in_an_expander(predictor: Predictor) -> None:
    at = _upload(_app(), _ct_slice())
    assert not at.exception and not at.error
    classes = predictor.get(predictor.default_model_id()).classes
    assert [s.value for s in at.subheader] == ["Not assessed"]
    reason = at.warning[0]
    assert reason.icon == ":material/block:"
    assert reason.value.startswith("Not assessed: this image does not look like the pediatric chest X-rays")
    assert "> threshold" in reason.value
    assert sum("does not look like" in w.value for w in at.warning) == 1  # shown once, as the headline's reason

    (output,) = [e for e in at.expander if e.label == "Show the model's output anyway"]
    assert not output.proto.expanded  # collapsed: one deliberate click away
    inside = list(output)
    inside_ids = {id(node) for node in inside}
    bars = [bars for node in inside if node.type == "markdown" and (bars := _bars_of(node.value))]
    assert len(bars) == 1 and len(_probability_bars(at)) == 1  # the only bars are in the expander
    assert list(bars[0]) == classes
    assert sum(bars[0].values()) == pytest.approx(1.0, abs=1e-5)
    (body,) = [node.value for node in inside if node.type == "markdown" and _bars_of(node.value)]
    assert diagnosis.PREDICTED_COLOUR not in body  # no bar marked as the verdict
    assert any(n.type == "caption" and n.value.startswith("Not a diagnosis") for n in inside)
    heatmaps = [img for img in at.image if any("heatmap of" in (c or "") for c in img.captions)]
    assert len(heatmaps) == 1 and id(heatmaps[0]) in inside_ids  # the heatmap is in there too
    # outside the expander: no class as a headline, no decision rule, no subtype verdict
    outside = [n for kind in ("subheader", "caption", "markdown", "metric") for n in at.get(kind)]
    outside = [n for n in outside if id(n) not in inside_ids]
    assert not any(n.type == "metric" for n in outside)
    for node in outside:
        text = str(getattr(node, "value", ""))
        assert text not in classes and not text.startswith("P(") and "subtype" not in text.lower(), text
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Report (PNG)" in labels and "Report (PDF)" in labels


def test_batch_table_and_csv_mark_withheld_rows(predictor: Predictor) -> None:
    xray = _sample("PNEUMONIA")
    at = _upload(_app(), _ct_slice(), (xray.name, xray.read_bytes(), "image/jpeg"))
    assert not at.exception and not at.error
    classes = predictor.get(predictor.default_model_id()).classes
    labels = [e.label for e in _result_expanders(at)]
    assert labels[0].endswith("**Not assessed**") and labels[1].split("**")[1] in classes
    table = _table_with(at, "withheld")
    assert list(table["file"]) == ["CT_small.dcm", xray.name]
    assert list(table["withheld"]) == [True, False]
    assert table["prediction"][0] == "Not assessed" and table["prediction"][1] in classes

    items = []
    for name, data, _ in (_ct_slice(), (xray.name, xray.read_bytes(), "image/jpeg")):
        image = load_image(data, name)
        items.append(diagnosis.BatchItem(name, image, predictor.predict(image)))
    frame = pd.read_csv(BytesIO(diagnosis.batch_csv(items)))
    assert list(frame["withheld"]) == [True, False]
    assert frame["prediction"][0] == "Not assessed" and frame["prediction"][1] in classes
    assert frame["warnings"][0].startswith("Not assessed: ")
    for cls in classes:  # probabilities still there for the withheld row, as the model's output
        assert 0.0 <= frame[f"P({cls})"][0] <= 1.0
    assert frame[[f"P({c})" for c in classes]].sum(axis=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-3)


# --- batches and bad input ---------------------------------------------------------------------------


def test_batch_with_one_bad_file_shows_the_good_ones_and_one_error(predictor: Predictor) -> None:
    good = [_sample("PNEUMONIA", 2), _sample("NORMAL", 2)]
    at = _upload(
        _app(),
        *[(p.name, p.read_bytes(), "image/jpeg") for p in good],
        ("notes.png", b"Patient notes: film looks fine.\nSee you Tuesday.\n", "image/png"),
    )
    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    assert "notes.png" in message and "\n" not in message and "Traceback" not in message
    assert len(_result_expanders(at)) == 2  # one result per readable file
    assert len(_probability_bars(at)) == 2
    table = _table_with(at, "file")
    assert list(table["file"]) == [good[0].name, good[1].name, "notes.png"]
    assert table["prediction"].notna().sum() == 2 and table["error"].notna().sum() == 1
    assert str(table["image"][0]).startswith("data:image/png;base64,")
    assert any(b.proto.label == "Download results (CSV)" for b in at.get("download_button"))


def test_unexpected_failure_is_one_generic_line_and_other_files_still_show(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = Predictor.predict

    def flaky(self, image, model_id=None, **kwargs):
        if image.name == "boom.png":
            raise RuntimeError("secret internals /srv/model.py line 12")
        return original(self, image, model_id, **kwargs)

    monkeypatch.setattr(Predictor, "predict", flaky)
    good = _sample("PNEUMONIA", 3)
    at = _upload(
        _app(), (good.name, good.read_bytes(), "image/jpeg"), ("boom.png", _png(_sample("NORMAL", 3)), "image/png")
    )
    assert not at.exception
    assert [e.value for e in at.error] == ["could not analyse boom.png: internal error"]
    assert not any("secret internals" in t for t in _texts(at))
    assert len(_result_expanders(at)) == 1


def test_bad_input_corpus_as_one_batch(predictor: Predictor) -> None:
    files = corpus.bad_input_corpus(_sample("PNEUMONIA").read_bytes())
    at = AppTest.from_file(APP, default_timeout=240).run()
    at.file_uploader(key="uploads").set_value([(f.name, f.data, "application/octet-stream") for f in files]).run()
    assert not at.exception
    unreadable = [f for f in files if not f.readable]
    errors = [e.value for e in at.error]
    assert len(errors) == len(unreadable), errors
    for f, message in zip(unreadable, errors, strict=True):  # errors appear in upload order
        assert f.name in message and "\n" not in message
    results = _result_expanders(at)
    assert len(results) == len(files) - len(unreadable)
    # withheld files (flagged as unlike the training X-rays) are labelled so, and the rest show a class
    classes = predictor.get(predictor.default_model_id()).classes
    assert all(e.label.split("**")[1] in [*classes, "Not assessed"] for e in results)
    text = "\n".join(_texts(at))
    assert corpus.PATIENT_NAME.split("^")[0] not in text and corpus.PATIENT_ID not in text


# --- examples, compare-all, heatmap settings, reports --------------------------------------------------


def test_example_button_loads_an_example(predictor: Predictor) -> None:
    at = _app()
    label, example = diagnosis.sample_examples()[0]
    at.button(key=f"example_{label}").click().run()
    _assert_prediction_shown(at, predictor)
    assert any(example.label in c for img in at.image for c in img.captions if c)
    at.button(key="clear_example").click().run()
    assert not at.exception and not _probability_bars(at)


def test_dataset_explorer_hand_over_is_honoured_and_confined(predictor: Predictor) -> None:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["diagnose_example"] = f"test/NORMAL/{_sample('NORMAL').name}"
    at.run()
    _assert_prediction_shown(at, predictor)

    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["diagnose_example"] = "../../../etc/passwd"
    at.run()
    assert not at.exception
    assert len(at.error) == 1 and "outside the data folder" in at.error[0].value
    at.button(key="clear_example").click().run()  # a broken hand-over can be dismissed
    assert not at.exception and not at.error


def test_compare_all_shows_every_binary_model(predictor: Predictor) -> None:
    path = _sample("PNEUMONIA")
    at = _upload(_app(), (path.name, path.read_bytes(), "image/jpeg"))
    at.radio(key="diagnose_mode").set_value("Compare all").run()
    assert not at.exception
    table = _table_with(at, "model")
    assert list(table["model"]) == predictor.model_ids("binary")
    assert {"prediction", "threshold"} <= set(table.columns)
    assert any(c.startswith("P(") for c in table.columns)


def test_changing_cam_method_target_and_opacity(predictor: Predictor) -> None:
    path = _sample("PNEUMONIA")
    at = _upload(_app(), (path.name, path.read_bytes(), "image/jpeg"))
    at.selectbox(key="cam_method").set_value("gradcam++").run()
    assert not at.exception
    for target in predictor.get(predictor.default_model_id()).classes:
        at.selectbox(key="cam_target").set_value(target).run()
        assert not at.exception and not at.error
        captions = [c for img in at.image for c in img.captions if c]
        assert any(f"gradcam++ heatmap of {target}" in c for c in captions), captions

    def heatmap_image():
        return next(img.value for img in at.image if any("heatmap of" in (c or "") for c in img.captions))

    before = heatmap_image()
    at.slider(key="cam_opacity").set_value(0.9).run()
    assert not at.exception and heatmap_image() != before  # re-blended


def test_lung_outline_crop_and_heatmap_lung_share(predictor: Predictor) -> None:
    """The toggle (on by default) shows the outline and the model's input; the heatmap caption its lung share."""
    path = _sample("PNEUMONIA")
    at = _upload(_app(), (path.name, path.read_bytes(), "image/jpeg"))
    assert not at.exception and at.toggle(key="show_lungs").value is True
    captions = [c for img in at.image for c in img.captions if c]
    assert any("Lung outline (green" in c for c in captions), captions
    assert any(c.startswith(f"What {predictor.default_model_id()} saw:") for c in captions), captions
    assert any("of the heatmap lies inside the lungs" in c for c in captions), captions
    at.toggle(key="show_lungs").set_value(False).run()
    captions = [c for img in at.image for c in img.captions if c]
    assert not at.exception and not any("Lung outline" in c or " saw:" in c for c in captions)


def test_report_download_buttons_exist(predictor: Predictor) -> None:
    path = _sample("NORMAL")
    at = _upload(_app(), (path.name, path.read_bytes(), "image/jpeg"))
    labels = [b.proto.label for b in at.get("download_button")]
    assert "Report (PNG)" in labels and "Report (PDF)" in labels


@pytest.fixture(scope="module")
def combined_weights(_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed models plus, replacing any installed ones: a one-member ensemble, a k-NN whose memory
    is all positive (so it always predicts the positive class), a random subtype model, and a random
    autoencoder with a threshold near 0 (so every image is flagged out-of-distribution)."""
    target = tmp_path_factory.mktemp("combined") / "weights"
    snapshot_weights(target, _weights)
    pred = Predictor(target)
    backbone = next(
        (
            m
            for m in [pred.default_model_id(), *pred.model_ids("binary")]
            if pred.cards()[m].get("kind") == "classifier"
        ),
        None,
    )
    if backbone is None:
        pytest.skip("no single-network binary classifier installed")
    model = pred.get(backbone)
    classes = model.classes
    write_model(
        target,
        "ensemble",
        {},
        {
            "kind": "ensemble",
            "arch": "ensemble",
            "task": "binary",
            "classes": classes,
            "members": [backbone],
            "threshold": 0.5,
        },
    )
    with torch.inference_mode():
        dim = model.module.embed(to_input(np.zeros((64, 64), np.uint8), model.preprocessing)).shape[1]
    memory = torch.nn.functional.normalize(torch.randn(20, dim, generator=torch.Generator().manual_seed(0)), dim=1)
    write_model(
        target,
        "knn-test",
        {"embeddings": memory, "labels": torch.ones(20, dtype=torch.int64)},
        {
            "kind": "knn",
            "arch": "knn",
            "task": "binary",
            "classes": classes,
            "backbone": backbone,
            "k": 5,
            "preprocessing": model.card["preprocessing"],
            "threshold": 0.5,
        },
    )
    small = {"input_size": 64, "mean": 0.5, "std": 0.25, "resize": "squash"}
    torch.manual_seed(0)
    write_model(
        target,
        "cnn4-subtype",
        create_model("cnn4", 3).state_dict(),
        {
            "kind": "classifier",
            "arch": "cnn4",
            "task": "subtype",
            "classes": ["normal", "bacteria", "virus"],
            "preprocessing": small,
        },
    )
    write_model(
        target,
        "autoencoder",
        create_model("autoencoder").state_dict(),
        {
            "kind": "autoencoder",
            "arch": "autoencoder",
            "task": "anomaly",
            "classes": [],
            "threshold": 1e-9,
            "preprocessing": {**small, "mean": 0.0, "std": 1.0},
        },
    )
    return target


@pytest.mark.parametrize(("model_id", "note"), [("ensemble", "first member"), ("knn-test", "its backbone")])
def test_models_without_their_own_network_explain_a_stand_in(
    model_id: str, note: str, combined_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(combined_weights))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["active_model"] = model_id
    at.run()
    path = _sample("PNEUMONIA")
    _upload(at, (path.name, path.read_bytes(), "image/jpeg"))
    assert not at.exception and not at.error
    assert len(at.image) >= 2
    assert any(note in c.value for c in at.caption), [c.value for c in at.caption]
    assert any(f"({model_id})" in c.value for c in at.caption)  # the decision names the chosen model
    at.radio(key="diagnose_mode").set_value("Compare all").run()
    assert model_id in list(_table_with(at, "model")["model"])


def test_ood_warning_subtype_and_reconstruction(combined_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(combined_weights))
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["active_model"] = "knn-test"  # always predicts the positive class
    at.run()
    path = _sample("NORMAL")
    _upload(at, (path.name, path.read_bytes(), "image/jpeg"))
    assert not at.exception and not at.error
    assert [s.value for s in at.subheader] == ["Not assessed"]  # every image is flagged: withheld
    assert at.warning[0].value.startswith("Not assessed: ") and at.warning[0].icon == ":material/block:"
    assert "autoencoder reconstruction error" in at.warning[0].value
    subtype_classes = Predictor(combined_weights).get("cnn4-subtype").classes
    assert [m.label for m in at.metric] == subtype_classes
    images = len(at.image)
    at.checkbox(key="show_reconstruction").check().run()
    assert not at.exception and len(at.image) == images + 2


# --- the page's glue, without Streamlit ----------------------------------------------------------------


def test_memo_is_a_bounded_lru() -> None:
    store: dict = {}
    calls = []
    for key in ["a", "b", "a", "c", "d"]:
        diagnosis.memo(store, key, lambda k=key: calls.append(k) or k.upper(), max_entries=2)
    assert calls == ["a", "b", "c", "d"]  # the second "a" was a hit
    assert list(store) == ["c", "d"]


def test_every_binary_model_can_be_explained(predictor: Predictor) -> None:
    pixels = load_image(_sample("PNEUMONIA").read_bytes(), "x.jpeg").pixels
    for model_id in predictor.model_ids("binary"):
        prediction = predictor.predict(load_image(_sample("PNEUMONIA").read_bytes(), "x.jpeg"), model_id)
        heat = diagnosis.heatmap(predictor, pixels, model_id, method="gradcam", target=prediction.prediction)
        assert heat.heatmap.shape == pixels.shape and heat.heatmap.dtype == np.uint8
        assert heat.target == prediction.prediction
        kind = predictor.get(model_id).kind
        assert (heat.note is None) == (kind == "classifier") and (heat.network == model_id) == (kind == "classifier")


def test_probability_bars_mark_threshold_only_for_binary() -> None:
    binary = Prediction("x", "m", "B", {"A": 0.3, "B": 0.7}, 0.42)
    body = diagnosis.probability_bars_html(binary)
    assert _bars_of(body) == {"A": 0.3, "B": 0.7}
    assert _threshold_markers(body) == {"B": 0.42}
    assert f'style="width: 70.00%; background: {diagnosis.PREDICTED_COLOUR}"' in body  # the decided class stands out
    three = Prediction("x", "m", "b", {"a": 0.2, "b": 0.5, "c": 0.3}, None)
    assert _bars_of(diagnosis.probability_bars_html(three)) == {"a": 0.2, "b": 0.5, "c": 0.3}
    assert not _threshold_markers(diagnosis.probability_bars_html(three))
    odd = Prediction("x", "m", None, {"<b>A&</b>": 0.5, "B": 0.5}, 0.5)  # withheld; names are escaped
    assert "<b>A&" not in diagnosis.probability_bars_html(odd)
    assert diagnosis.PREDICTED_COLOUR not in diagnosis.probability_bars_html(odd)
    assert "most probable" in diagnosis.decision_text(three)
    assert "at or above the threshold 0.420" in diagnosis.decision_text(binary)


def test_the_uploader_is_on_the_page_before_the_backend_is_imported(_weights: Path) -> None:
    """Cold start: in a fresh process the page draws its uploader before torch is imported, then finishes."""
    code = textwrap.dedent(f"""
        import json, sys
        import streamlit as st
        from streamlit.testing.v1 import AppTest

        torch_loaded_at_uploader = []
        real_uploader = st.file_uploader

        def recording_uploader(*args, **kwargs):
            torch_loaded_at_uploader.append("torch" in sys.modules)
            return real_uploader(*args, **kwargs)

        st.file_uploader = recording_uploader
        at = AppTest.from_file({APP!r}, default_timeout=180).run()
        from cxrdemo.app.ui import predictor
        predictor().wait_until_warm(180)  # exiting while the warm-up thread is inside torch aborts the process
        print(json.dumps({{"at_uploader": torch_loaded_at_uploader, "after": "torch" in sys.modules,
                          "exceptions": [e.value for e in at.exception], "info": [i.value for i in at.info]}}))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["at_uploader"] == [False]  # drawn once, before torch
    assert report["after"] is True  # and the page went on to load the backend
    assert report["exceptions"] == []
    assert any("Upload one or more chest X-rays" in text for text in report["info"])


def test_the_server_warms_the_models_up_before_any_browser_connects(tmp_path: Path) -> None:
    """`streamlit run app.py` starts the app's `st.App`, whose lifespan imports the backend and answers a
    blank image at once: the first upload after a start does not pay for torch's import or a model load."""
    from benchmarks.streamlit_server import serve
    from cxrdemo.app.ui import WARMED_UP

    log = tmp_path / "server.log"
    with serve(log=log):  # waits for /_stcore/health only: no session runs the page
        deadline = time.monotonic() + 120
        while WARMED_UP not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
    (line,) = [line for line in text.splitlines() if WARMED_UP in line]
    assert line.endswith("(no errors)"), line
    assert "Traceback" not in text
