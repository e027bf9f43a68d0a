"""Models that answer for themselves (cxrdemo.inference.served) on the shipped weights and the bundled sample."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from cxrdemo.data.dataset import load_dataset
from cxrdemo.data.tensor_cache import DatasetImages
from cxrdemo.imaging.decode import load_image_file
from cxrdemo.imaging.preprocess import PixelImages
from cxrdemo.inference.served import ServedClassifier, ServedEnsemble, ServedKnn, serve
from cxrdemo.models.registry import list_cards, load_model


@cache
def served(model_id: str):
    return serve(load_model(model_id), served)


@pytest.fixture(scope="module")
def sample(sample_dir: Path):
    dataset = load_dataset(sample_dir)
    frame = dataset.split("test").sort_values("path").groupby("label").head(3).reset_index(drop=True)
    return dataset, frame, [load_image_file(dataset.absolute(p)).pixels for p in frame["path"]]


BINARY = sorted(
    i
    for i, c in list_cards().items()
    if "error" not in c and c.get("task") == "binary" and c.get("kind") != "autoencoder"
)


def test_every_kind_is_shipped() -> None:
    kinds = {type(served(i)) for i in BINARY}
    assert kinds == {ServedClassifier, ServedKnn, ServedEnsemble}


@pytest.mark.parametrize("model_id", BINARY)
def test_a_batch_answers_like_its_images_one_by_one(model_id: str, sample) -> None:
    _, frame, pixels = sample
    model = served(model_id)
    batch = model.probabilities(PixelImages(pixels))
    assert batch.shape == (len(pixels), 2)
    np.testing.assert_allclose(batch.sum(1), 1.0, atol=1e-5)
    singles = np.concatenate([model.probabilities(PixelImages([p])) for p in pixels])
    np.testing.assert_allclose(batch, singles, atol=2e-3)
    # the sample's pneumonia images score higher than its normal ones on average: a real answer
    positive = frame["label"].to_numpy() == "PNEUMONIA"
    assert batch[positive, 1].mean() > batch[~positive, 1].mean()


@pytest.mark.parametrize("model_id", BINARY)
def test_dataset_rows_answer_like_the_decoded_files(model_id: str, sample) -> None:
    """Evaluation's cached pixels (DatasetImages) and an upload's pixels (PixelImages) give one answer.

    The cache decodes with the upload path's decoder, so what evaluation measures is what a user is served.
    """
    dataset, frame, pixels = sample
    model = served(model_id)
    np.testing.assert_allclose(
        model.probabilities(DatasetImages(dataset, frame)), model.probabilities(PixelImages(pixels)), atol=1e-5
    )


def test_each_kind_names_the_network_that_explains_it() -> None:
    ensemble = served("ensemble")
    assert ensemble.explained_network().id == ensemble.members[0]
    assert ensemble.members[0] in ensemble.heatmap_note()
    knn = served("knn-binary")
    assert knn.explained_network().id == knn.card["backbone"] and knn.card["backbone"] in knn.heatmap_note()
    default = served("resnet18-binary")
    assert default.explained_network() is default and default.heatmap_note() is None


def test_the_autoencoder_stays_a_plain_loaded_model() -> None:
    model = served("autoencoder")
    assert not hasattr(model, "probabilities") and model.module is not None
