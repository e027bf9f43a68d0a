"""cxrdemo.evaluation.report: the downloadable PNG and PDF reports, on a real sample X-ray and a withheld CT slice."""

from __future__ import annotations

import re
import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxrdemo.evaluation.report import NOTICE, latin1, model_summary, report_pdf, report_png
from cxrdemo.imaging.decode import LoadedImage, load_image
from cxrdemo.inference.explain import overlay_heatmap
from cxrdemo.inference.predict import Prediction, Predictor
from cxrdemo.models.registry import list_cards
from tests.weights_snapshot import snapshot_weights

CARD = {
    "id": "cnn4-binary",
    "kind": "classifier",
    "arch": "cnn4",
    "task": "binary",
    "classes": ["NORMAL", "PNEUMONIA"],
    "threshold": 0.4321,
    "metrics": {
        "val": {"n": 6, "roc_auc": {"value": 1.0, "ci": [1.0, 1.0]}},
        "test": {
            "n": 624,
            "roc_auc": {"value": 0.9512, "ci": [0.9355, 0.9661]},
            "accuracy": {"value": 0.8846, "ci": [0.8590, 0.9087]},
        },
    },
}


@pytest.fixture(scope="module")
def image(sample_dir: Path) -> LoadedImage:
    path = sorted((sample_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    return load_image(path.read_bytes(), path.name)


@pytest.fixture(scope="module")
def overlay(image: LoadedImage) -> np.ndarray:
    h, w = image.pixels.shape
    heat = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)  # a blob in the middle
    return overlay_heatmap(image.pixels, heat, 0.4)


def _prediction(image: LoadedImage, **changes) -> Prediction:
    values = dict(
        file=image.name,
        model="cnn4-binary",
        prediction="PNEUMONIA",
        probabilities={"NORMAL": 0.2, "PNEUMONIA": 0.8},
        threshold=0.4321,
        warnings=["low resolution (320 x 191); results may be less reliable"],
        subtype={"normal": 0.05, "bacteria": 0.7, "virus": 0.25},
    )
    values.update(changes)
    return Prediction(**values)


def _pdf_text(pdf: bytes) -> str:
    """The text drawn by an uncompressed fpdf2 PDF (the strings inside `(...) Tj`)."""
    strings = re.findall(rb"\(((?:[^\\)]|\\.)*)\)\s*Tj", pdf, flags=re.S)
    return " ".join(re.sub(rb"\\(.)", rb"\1", s).decode("latin-1") for s in strings)


def test_png_report_decodes_with_a_sensible_size(image: LoadedImage, overlay: np.ndarray) -> None:
    data = report_png(image, overlay, _prediction(image), CARD, explained="gradcam heatmap of PNEUMONIA")
    img = Image.open(BytesIO(data))
    assert img.format == "PNG" and img.mode == "RGB"
    width, height = img.size
    assert width == 1200 and 700 <= height <= 2500
    pixels = np.asarray(img)
    assert pixels.std() > 20  # not a blank sheet
    # the overlay's jet colours are in the right half of the image row: some strongly coloured pixels there
    spread = pixels[..., :3].max(axis=2).astype(int) - pixels[..., :3].min(axis=2)
    assert (spread[:, width // 2 :] > 100).mean() > 0.02


def test_png_report_grows_with_warnings(image: LoadedImage, overlay: np.ndarray) -> None:
    short = Image.open(BytesIO(report_png(image, overlay, _prediction(image, warnings=[]), CARD)))
    long = Image.open(
        BytesIO(report_png(image, overlay, _prediction(image, warnings=["a long warning " * 20] * 4), CARD))
    )
    assert long.height > short.height + 4 * 24


def test_pdf_report_has_the_notice_prediction_and_model(image: LoadedImage, overlay: np.ndarray) -> None:
    pdf = report_pdf(image, overlay, _prediction(image), CARD, explained="gradcam heatmap of PNEUMONIA", compress=False)
    assert pdf.startswith(b"%PDF")
    assert NOTICE.encode() in pdf
    text = _pdf_text(pdf)
    for expected in (
        image.name,
        "Prediction: PNEUMONIA",
        "80.0%",
        "0.432",
        "cnn4",
        "Test AUROC",
        "0.951 (95% CI 0.935-0.966), n=624",
        "Test accuracy",
        "bacteria 70%",
        "low resolution",
        "gradcam heatmap of PNEUMONIA",
    ):
        assert expected in text, expected
    assert pdf.count(b"/Subtype /Image") == 2  # the X-ray and its overlay


def test_pdf_report_is_compressed_by_default(image: LoadedImage, overlay: np.ndarray) -> None:
    compressed = report_pdf(image, overlay, _prediction(image), CARD)
    assert compressed.startswith(b"%PDF") and b"/FlateDecode" in compressed
    assert NOTICE.encode() not in compressed  # the text is inside a deflated stream...
    streams = re.findall(rb"stream\r?\n(.*?)\r?\nendstream", compressed, flags=re.S)
    assert any(NOTICE.encode() in zlib.decompress(s) for s in streams if s[:1] == b"x")  # ...but there


def test_reports_survive_text_outside_latin1(overlay: np.ndarray, image: LoadedImage) -> None:
    odd = LoadedImage(image.pixels, "胸部 X線 — scan…→.png", image.source_format, image.original_size)
    prediction = _prediction(odd, warnings=["ölçek düşük ≥ 2 — 注意"])
    pdf = report_pdf(odd, overlay, prediction, CARD, compress=False)
    assert pdf.startswith(b"%PDF") and NOTICE.encode() in pdf
    assert "?? X? - scan...->.png" in _pdf_text(pdf)
    Image.open(BytesIO(report_png(odd, overlay, prediction, CARD))).verify()
    assert latin1("a – b … c ≥ d ☃") == "a - b ... c >= d ?"


def test_three_class_prediction_without_threshold(image: LoadedImage, overlay: np.ndarray) -> None:
    card = {"id": "cnn4-subtype", "arch": "cnn4", "task": "subtype", "classes": ["normal", "bacteria", "virus"]}
    prediction = _prediction(
        image,
        prediction="bacteria",
        probabilities={"normal": 0.1, "bacteria": 0.6, "virus": 0.3},
        threshold=None,
        subtype=None,
        warnings=[],
    )
    pdf = report_pdf(image, overlay, prediction, card, compress=False)
    assert "threshold" not in _pdf_text(pdf).lower()
    assert Image.open(BytesIO(report_png(image, overlay, prediction, card))).size[0] == 1200


def test_model_summary_lines() -> None:
    lines = dict(model_summary(CARD))
    assert lines["Architecture"] == "cnn4"
    assert lines["Task"] == "binary (NORMAL / PNEUMONIA)"
    assert lines["Threshold"] == "0.432 on P(PNEUMONIA)"
    assert lines["Test AUROC"] == "0.951 (95% CI 0.935-0.966), n=624"  # test beats validation
    assert "Validation AUROC" not in lines
    ensemble = dict(model_summary({"id": "ensemble", "kind": "ensemble", "members": ["a", "b"], "task": "binary"}))
    assert ensemble["Architecture"] == "ensemble of a, b"
    knn = dict(model_summary({"id": "knn-binary", "kind": "knn", "k": 7, "backbone": "cnn4-binary"}))
    assert knn["Architecture"] == "k-NN (k=7) on cnn4-binary embeddings"
    assert model_summary({}) == [("Model", "?")]


@pytest.mark.parametrize("card", list(list_cards().values()), ids=list(list_cards()))
def test_reports_for_every_installed_card(card: dict, image: LoadedImage, overlay: np.ndarray) -> None:
    assert report_pdf(image, overlay, _prediction(image), card).startswith(b"%PDF")
    assert report_png(image, overlay, _prediction(image), card).startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def withheld(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedImage, Prediction, dict]:
    """A CT slice (pydicom's sample) through the installed models: flagged, so its verdict is withheld."""
    predictor = Predictor(snapshot_weights(tmp_path_factory.mktemp("report") / "weights"))
    ct = load_image(Path(get_testdata_file("CT_small.dcm")).read_bytes(), "CT_small.dcm")
    prediction = predictor.predict(ct)
    assert prediction.withheld, "the installed out-of-distribution check let a CT slice through"
    return ct, prediction, predictor.cards()[prediction.model]


def test_withheld_reports_say_not_assessed_and_why(withheld: tuple[LoadedImage, Prediction, dict]) -> None:
    ct, prediction, card = withheld
    ct_overlay = overlay_heatmap(ct.pixels, np.outer(*(np.hanning(n) for n in ct.pixels.shape)), 0.4)
    text = _pdf_text(report_pdf(ct, ct_overlay, prediction, card, compress=False))
    assert "Prediction: Not assessed" in text
    for cls in prediction.probabilities:
        assert f"Prediction: {cls}" not in text
    assert "does not look like the pediatric chest X-rays the models were trained on" in text
    assert text.count("does not look like") == 1  # under the headline, not repeated among the warnings
    assert "Model output (not assessed, not a diagnosis):" in text
    for cls, p in prediction.probabilities.items():  # still listed, labelled as not assessed
        assert cls in text and f"{p:.1%}" in text
    assert "not a plain radiograph" in text  # the file's own warnings stay
    if prediction.subtype:
        assert "Subtype model output (not assessed):" in text

    png = Image.open(BytesIO(report_png(ct, ct_overlay, prediction, card)))
    assert png.format == "PNG" and png.size[0] == 1200 and np.asarray(png).std() > 20


@pytest.mark.parametrize("model_id", ["cnn4-subtype", "resnet18-subtype"])
def test_subtype_reports_headline_their_macro_auroc(model_id: str) -> None:
    """The summary reads the keys the metrics module writes, so three-class models keep their AUROC."""
    card = list_cards()[model_id]
    test = card["metrics"]["test"]
    lines = dict(model_summary(card))
    assert lines["Test macro AUROC"].startswith(f"{test['macro_roc_auc']['value']:.3f}")
    assert lines["Test macro F1"].startswith(f"{test['macro_f1']['value']:.3f}")
    assert "Test AUROC" not in lines
