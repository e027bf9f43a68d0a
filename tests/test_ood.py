"""The out-of-distribution check flags non-chest images and lets real chest X-rays through."""

from __future__ import annotations

import pytest

from cxrdemo.imaging import ImageLoadError, load_image, load_image_file
from cxrdemo.ood_corpus import ood_images
from cxrdemo.predict import Predictor

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


@pytest.mark.parametrize("item", ood_images(), ids=lambda item: item.name)
def test_non_chest_images_are_flagged(predictor, item):
    try:
        image = load_image(item.data, item.name)
    except ImageLoadError:
        return  # refused outright (too small, undecodable): never classified either
    prediction = predictor.predict(image)
    assert prediction.ood is True
    assert any("does not look like a chest X-ray" in w for w in prediction.warnings)


def test_bundled_chest_xrays_mostly_pass(predictor, sample_dir):
    files = sorted(sample_dir.glob("*/*/*.jpeg"))
    flagged = [f.name for f in files if predictor.out_of_distribution(load_image_file(f).pixels)[0]]
    assert len(flagged) <= 0.1 * len(files), flagged
