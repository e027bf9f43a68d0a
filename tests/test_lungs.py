"""The lung fields and the lung crop: the shipped segmenter on real films, and the input it makes.

What must hold: the lungs are found on every bundled film (and agree with the manual masks), a
224x224 squashed copy gives nearly the same model input as its full-resolution original (so the frame's
aspect ratio no longer reaches the model), narrowing the frame leaves the crop where it was, and an
image without plausible lungs is told so and not assessed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrdemo.imaging import lungs
from cxrdemo.imaging.decode import load_image, load_image_file
from cxrdemo.imaging.ood_corpus import ood_images
from cxrdemo.imaging.preprocess import crop_window, lung_crop_spec, model_square, paste_back
from cxrdemo.inference.predict import Predictor
from cxrdemo.paths import REPO_ROOT

MASKS = REPO_ROOT.parent / "shared" / "data" / "lung_masks"
SPEC = lung_crop_spec(224)


def sample_films(sample_dir: Path) -> list[Path]:
    return sorted(sample_dir.glob("*/*/*.jpeg"))


def squashed_copy(pixels: np.ndarray, size: int = 224) -> np.ndarray:
    """How the dataset's 3,577 low-resolution copies were made: the whole film squashed to 224x224."""
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BOX))


def test_lung_model_is_installed_with_its_card():
    card = pd.read_json(lungs.weights_path().with_suffix(".json"), typ="series")
    assert lungs.installed()
    assert "CC BY 4.0" in card["licence"] and "v7labs" in card["data_source"]
    for part in ("val_dice_full_resolution", "val_dice_224_copies"):
        assert 0.9 < card["metrics"][part]["mean"] <= 1.0
    assert card["cpu_ms_per_image"] > 0


def test_lungs_found_on_every_sample_film(sample_dir: Path):
    films = sample_films(sample_dir)
    assert len(films) >= 20
    for path in films:
        pixels = load_image_file(path).pixels
        fields = lungs.find_lungs(pixels)
        assert fields.plausible, f"{path.name}: {fields.reason}"
        box = fields.box
        assert 0 <= box.x0 < box.x1 <= 1 and 0 <= box.y0 < box.y1 <= 1
        # lungs take the middle of a chest film, not its edge strips
        assert box.x0 < 0.35 and box.x1 > 0.65 and box.y0 < 0.4
        mask = fields.mask(*pixels.shape)
        assert mask.shape == pixels.shape and 0.1 < mask.mean() < 0.7
        square = model_square(pixels, SPEC, fields)
        assert square.shape == (224, 224) and square.dtype == np.uint8


@pytest.mark.skipif(not (MASKS / "manifest.csv").exists(), reason="lung masks not beside the repository")
def test_masks_agree_with_the_manual_ones_on_the_sample(sample_dir: Path):
    manifest = pd.read_csv(MASKS / "manifest.csv").set_index("image")
    scores = []
    for path in sample_films(sample_dir):
        key = path.relative_to(sample_dir).as_posix()
        if key not in manifest.index:
            continue
        pixels = load_image_file(path).pixels
        mask = Image.open(MASKS / manifest.loc[key, "mask"]).convert("L")  # at the dataset copy's size
        truth = np.asarray(mask.resize(pixels.shape[::-1], Image.Resampling.BILINEAR)) > 127
        pred = lungs.find_lungs(pixels).mask(*pixels.shape)
        scores.append(2 * np.logical_and(pred, truth).sum() / (pred.sum() + truth.sum()))
    assert len(scores) >= 10
    assert np.median(scores) > 0.93 and min(scores) > 0.8


def test_squashed_copy_gives_nearly_the_same_input(sample_dir: Path):
    """The crop cancels the squash: a 224x224 copy and its original give one picture of the lungs."""
    crop_gaps, squash_gaps, correlations = [], [], []
    for path in sample_films(sample_dir):
        pixels = load_image_file(path).pixels
        copy = squashed_copy(pixels)
        full, small = model_square(pixels, SPEC).astype(float), model_square(copy, SPEC).astype(float)
        crop_gaps.append(np.abs(full - small).mean())
        correlations.append(np.corrcoef(full.ravel(), small.ravel())[0, 1])
        # the whole-film squash of the original is what the copy already is; the crops must be as close
        squash_gaps.append(np.abs(squashed_copy(pixels).astype(float) - model_square(pixels, SPEC)).mean())
    print(
        f"correlation min {min(correlations):.3f} median {np.median(correlations):.3f}; "
        f"mean |difference| median {np.median(crop_gaps):.2f}"
    )
    assert min(correlations) > 0.93 and np.median(correlations) > 0.98
    assert np.median(crop_gaps) < 5.0  # grey levels of 255
    assert np.median(crop_gaps) < np.median(squash_gaps)  # and closer than an uncropped input would be


def test_narrowing_the_frame_leaves_the_lung_window_in_place(sample_dir: Path):
    """Cutting 10 % of the width off each side (the frame probe) must not move the crop on the lungs."""
    moved = []
    for path in sample_films(sample_dir)[:12]:
        pixels = load_image_file(path).pixels
        h, w = pixels.shape
        cut = int(round(0.1 * w))
        narrow = pixels[:, cut : w - cut]
        x0, y0, x1, y1 = crop_window(pixels.shape, lungs.find_lungs(pixels).box, SPEC.margin)
        n0, m0, n1, m1 = crop_window(narrow.shape, lungs.find_lungs(narrow).box, SPEC.margin)
        moved.append(max(abs(x0 - (n0 + cut)), abs(x1 - (n1 + cut)), abs(y0 - m0), abs(y1 - m1)) / w)
    assert np.median(moved) < 0.03


def test_heatmap_goes_back_onto_the_crop_window(sample_dir: Path):
    pixels = load_image_file(sample_films(sample_dir)[0]).pixels
    fields = lungs.find_lungs(pixels)
    back = paste_back(np.ones((7, 7), np.float32), pixels.shape, SPEC, fields)
    assert back.shape == pixels.shape
    x0, y0, x1, y1 = crop_window(pixels.shape, fields.box, SPEC.margin)
    inside = np.zeros(pixels.shape, bool)
    inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
    assert back[inside].min() == pytest.approx(1.0) and back[~inside].max() == 0.0


def test_images_without_lungs_are_told_and_not_assessed():
    corpus = {image.name: image for image in ood_images()}
    predictor = Predictor()
    names = [n for n in ("text.png", "coins.png", "white.png", "document_0.png", "CT_small.dcm") if n in corpus]
    assert len(names) >= 3
    for name in names:
        image = load_image(corpus[name].data, name)
        fields = lungs.find_lungs(image.pixels)
        assert not fields.plausible and fields.reason, name
        result = predictor.predict(image)
        assert result.withheld and result.lungs_found is False and result.lung_box is None
        assert "no plausible lungs found" in result.withheld_reason


def test_a_chest_film_prediction_carries_its_lung_box(sample_dir: Path):
    path = sample_films(sample_dir)[0]
    result = Predictor().predict(load_image_file(path))
    assert result.lungs_found is True and len(result.lung_box) == 4
