"""The out-of-distribution check flags non-chest images, which then get no verdict (withheld), and lets
real chest X-rays through."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from cxrdemo.imaging.decode import ImageLoadError, load_image, load_image_file
from cxrdemo.imaging.ood_corpus import ood_images
from cxrdemo.imaging.preprocess import resize_square
from cxrdemo.inference.ood import image_statistics, statistics_distance
from cxrdemo.inference.predict import NOT_ASSESSED, Predictor
from tests.corpus import dicom_bytes

SAMPLE_FILM = sorted((Path(__file__).parents[1] / "data" / "sample").glob("*/NORMAL/*.jpeg"))[0]

# the signal that fired, its value and its threshold, in the reason's parentheses
SIGNAL = (
    r"((autoencoder reconstruction error|image statistics) [0-9.]+ > threshold [0-9.]+"
    r"|no plausible lungs found: [^;]+)"
)
REASON = re.compile(
    r"^Not assessed: this image does not look like the pediatric chest X-rays the models were trained on "
    rf"\(({SIGNAL}; )*{SIGNAL}\)\.$"
)

pytestmark = pytest.mark.filterwarnings("ignore:A download failure occurred")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    pred = Predictor()
    if pred.autoencoder() is None:
        pytest.fail("no autoencoder installed in weights/")
    return pred


def test_corpus_is_varied():
    categories = {item.category for item in ood_images()}
    assert {"photo", "document", "medical-other", "texture", "synthetic"} <= categories


def test_nearly_every_non_chest_image_is_read_and_so_really_checked():
    """The refusals above skip the OOD check: keep them to the two known unreadable files."""
    refused = []
    for item in ood_images():
        try:
            load_image(item.data, item.name)
        except ImageLoadError:
            refused.append(item.name)
    assert len(refused) <= 2, refused


@pytest.mark.parametrize("item", ood_images(), ids=lambda item: item.name)
def test_non_chest_images_are_flagged(predictor, item):
    try:
        image = load_image(item.data, item.name)
    except ImageLoadError as err:
        # refused outright (too small, undecodable): never classified, and the user is told why in one line
        assert str(err).strip() and "\n" not in str(err), repr(str(err))
        return
    prediction = predictor.predict(image)
    assert prediction.ood is True
    assert prediction.withheld is True and prediction.prediction is None
    assert REASON.match(prediction.warnings[0]), prediction.warnings[0]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_withheld_prediction_keeps_probabilities_and_is_json_ready(predictor, name):
    image = load_image(Path(get_testdata_file(name)).read_bytes(), name)
    prediction = predictor.predict(image)
    assert prediction.withheld is True and prediction.prediction is None
    assert prediction.verdict == NOT_ASSESSED
    assert REASON.match(prediction.withheld_reason), prediction.warnings
    assert prediction.warnings[0] == prediction.withheld_reason
    assert prediction.other_warnings == prediction.warnings[1:]
    assert any("not a plain radiograph" in w for w in prediction.other_warnings)  # the file's own warnings stay
    classes = predictor.get(prediction.model).classes
    assert list(prediction.probabilities) == classes
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    answer = json.loads(json.dumps(prediction.to_dict()))
    assert answer["prediction"] is None and answer["withheld"] is True
    assert answer["warnings"][0] == prediction.withheld_reason and answer["probabilities"]


def test_bundled_chest_xray_is_not_withheld(predictor, sample_jpeg_bytes):
    prediction = predictor.predict(load_image(sample_jpeg_bytes, "xray.jpeg"))
    assert prediction.ood is False and prediction.withheld is False
    assert prediction.prediction in predictor.get(prediction.model).classes
    assert prediction.verdict == prediction.prediction and prediction.withheld_reason is None
    assert not any(NOT_ASSESSED in w for w in prediction.warnings)


def test_nothing_is_withheld_without_an_autoencoder(weights_copy):
    for suffix in (".json", ".safetensors", ".predictions.csv"):
        (weights_copy / f"autoencoder{suffix}").unlink(missing_ok=True)
    predictor = Predictor(weights_copy)
    assert predictor.autoencoder() is None
    prediction = predictor.predict(load_image(Path(get_testdata_file("CT_small.dcm")).read_bytes(), "CT_small.dcm"))
    assert prediction.ood is None and prediction.withheld is False
    assert prediction.prediction in predictor.get(prediction.model).classes


def test_bundled_chest_xrays_mostly_pass(predictor, sample_dir):
    files = sorted(sample_dir.glob("*/*/*.jpeg"))
    flagged = [f.name for f in files if predictor.out_of_distribution(load_image_file(f).pixels)[0]]
    assert len(flagged) <= 0.1 * len(files), flagged


# --- contrast: a film's brightness and contrast are the file's, not the anatomy's --------------------


def _windowless_dicom(path: Path, bits: int) -> bytes:
    """A CR DICOM with no window settings holding a bundled X-ray: the reader auto-windows (stretches) it."""
    arr = np.asarray(Image.open(path).convert("L"))
    pixels = (arr.astype(np.uint16) << 4) if bits == 16 else arr
    bits_stored = 12 if bits == 16 else None
    return dicom_bytes(pixels, modality="CR", bits_stored=bits_stored, patient_name="Doe^Ood", patient_id="PID-OOD")


@pytest.mark.parametrize("bits", [8, 16])
def test_bundled_chest_xrays_in_windowless_dicom_mostly_pass(predictor, sample_dir, bits):
    """Before the contrast normalisation 37 of the 54 sample films were withheld when wrapped like this."""
    files = sorted(sample_dir.glob("*/*/*.jpeg"))
    pixels = {f.name: load_image(_windowless_dicom(f, bits), "film.dcm").pixels for f in files}
    flagged = [name for name, p in pixels.items() if predictor.out_of_distribution(p)[0]]
    assert len(flagged) <= 0.1 * len(files), flagged


def test_a_contrast_stretched_copy_has_the_films_statistics():
    film = torch.from_numpy(np.asarray(Image.open(SAMPLE_FILM).convert("L").resize((96, 96))).copy())[None]
    # the same film with its intensities squeezed into 60..180, as a different export would store it
    squeezed = (60 + film.float() * (120 / 255)).round().to(torch.uint8)
    np.testing.assert_allclose(image_statistics(squeezed), image_statistics(film), atol=0.03)
    # the raw statistics of the first card version do tell them apart: the normalisation is what helps
    raw = image_statistics(squeezed, contrast_normalised=False) - image_statistics(film, contrast_normalised=False)
    assert np.abs(raw).max() > 0.2
    flat = torch.full((1, 96, 96), 128, dtype=torch.uint8)
    assert np.isfinite(image_statistics(flat)).all()  # a flat image is not divided by zero


def test_cards_fitted_before_the_contrast_normalisation_keep_their_statistics(predictor):
    statistics = predictor.autoencoder().card["image_statistics"]
    assert "contrast" in statistics  # the shipped card is fitted on normalised images
    pixels = load_image_file(SAMPLE_FILM).pixels
    old_card = {k: v for k, v in statistics.items() if k != "contrast"}
    square = torch.from_numpy(np.array(resize_square(pixels, 96), dtype=np.uint8))[None]
    diff = image_statistics(square, contrast_normalised=False)[0] - np.asarray(statistics["mean"])
    expected = float(diff @ np.asarray(statistics["precision"]) @ diff)
    assert statistics_distance(pixels, old_card) == pytest.approx(expected)
