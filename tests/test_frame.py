"""The frame probe, frame-balanced validation and the manual-mask lung share, on real images and manifests."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from benchmarks import bench_frame
from cxrdemo.data.dataset import card_validation_split, load_dataset
from cxrdemo.evaluation import frame
from cxrdemo.evaluation.saliency import RealLungMasks, lung_mask, lung_masks, mass_inside
from cxrdemo.imaging.decode import load_image_file
from cxrdemo.inference.explain import explain
from cxrdemo.inference.predict import Predictor
from cxrdemo.models.registry import list_cards
from cxrdemo.paths import REPO_ROOT

SMALL_MODELS = ("cnn4-binary", "cnn4-subtype")
MASKS = REPO_ROOT.parent / "shared" / "data" / "lung_masks"


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor()


@pytest.fixture(scope="module")
def sample_validation(sample_dir: Path) -> frame.ValidationImages:
    return frame.load_validation(load_dataset(sample_dir), list_cards()[SMALL_MODELS[0]])


@pytest.fixture(scope="session")
def masks_dir() -> Path:
    """The manual lung masks (V7 Labs) beside the dataset; CI has them, so a missing copy fails there."""
    if not (MASKS / "manifest.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"lung masks missing at {MASKS}")
        pytest.skip(f"lung masks not at {MASKS}")
    return MASKS


def test_crops_cut_the_frame_and_downscaling_keeps_the_aspect(sample_dir: Path) -> None:
    pixels = load_image_file(next((sample_dir / "test" / "NORMAL").glob("*.jpeg"))).pixels
    h, w = pixels.shape
    assert frame.crop(pixels, "width").shape == (h, w - 2 * round(0.1 * w))
    assert frame.crop(pixels, "height").shape == (h - 2 * round(0.1 * h), w)
    assert np.array_equal(frame.crop(pixels, "width", 0.0), pixels) and frame.crop(pixels, "whole") is pixels
    small = frame.downscaled(pixels, 160)
    assert max(small.shape) == 160 and abs(small.shape[1] / small.shape[0] - w / h) < 0.02
    assert frame.downscaled(pixels) is pixels  # the sample's films are below MAX_SIDE already
    with pytest.raises(ValueError, match="choose one of"):
        frame.crop(pixels, "diagonal")


def test_spared_cuts_stop_short_of_the_lungs() -> None:
    # 100 px, lungs at 20..80: 10 px a side (the 10 % limit); lungs at 5..97: 2 px low (5 - 3), none high
    assert frame.spared_cuts(100, 20, 80, 0.10, 0.03) == (10, 10)
    assert frame.spared_cuts(100, 5, 97, 0.10, 0.03) == (2, 0)
    assert frame.spared_cuts(100, 0, 100, 0.10, 0.03) == (0, 0)
    assert frame.lung_box(np.zeros((4, 4), bool)) is None
    mask = np.zeros((10, 20), bool)
    mask[2:7, 5:15] = True
    assert frame.lung_box(mask) == (2, 7, 5, 15)


def test_the_lung_sparing_probe_never_cuts_a_manual_lung_pixel(
    sample_dir: Path, masks_dir: Path, sample_validation: frame.ValidationImages
) -> None:
    images = frame.load_validation(load_dataset(sample_dir), list_cards()[SMALL_MODELS[0]], masks_dir)
    real = RealLungMasks(masks_dir)
    assert images.has_box.any() and images.variants() == frame.VARIANTS + frame.SPARED_VARIANTS
    for path, pixels, box in zip(images.frame["path"], images.pixels, images.boxes):
        if box is None:
            assert path not in real
            continue
        mask = real.get(path, pixels.shape)
        h, w = pixels.shape
        top, bottom, left, right = box
        low, high = frame.spared_cuts(w, left, right, frame.CROP_FRACTION, frame.SPARED_MARGIN)
        assert not mask[:, :low].any() and not mask[:, w - high :].any()
        assert frame.crop_sparing(pixels, box, "width_spared").shape == (h, w - low - high)
        low, high = frame.spared_cuts(h, top, bottom, frame.CROP_FRACTION, frame.SPARED_MARGIN)
        assert not mask[:low].any() and not mask[h - high :].any()
        assert frame.crop_sparing(pixels, box, "height_spared").shape == (h - low - high, w)
    cut = images.cut_share("height_spared")
    assert (cut <= 2 * frame.CROP_FRACTION + 0.01).all() and (cut[~images.has_box] == 0).all()
    # the plain height cut takes lung off some of these films; the lung-sparing one by construction never
    plain = images.cut_share("height")
    assert (plain >= cut - 1e-9).all() and plain.mean() > cut.mean()
    assert sample_validation.boxes == [] and sample_validation.variants() == frame.VARIANTS


@pytest.mark.parametrize("model_id", SMALL_MODELS)
def test_probe_on_the_sample_answers_like_the_predictor(
    model_id: str, predictor: Predictor, sample_validation: frame.ValidationImages
) -> None:
    images = sample_validation
    assert len(images.pixels) >= 4 and (images.frame["split"] == "train").all()  # carved from train
    result = frame.probe(predictor, model_id, images)
    for subset in frame.SUBSETS:
        row = frame.summary(result, images, subset)
        if not row["n"]:
            continue
        for key in ("flips_width", "flips_height", "mean_abs_dp_width", "mean_abs_dp_height"):
            assert 0.0 <= row[key] <= 1.0, (subset, key, row[key])
        assert -1.0 <= row["mean_dp_width"] <= 1.0 and -1.0 <= row["mean_dp_height"] <= 1.0
    # the whole-image answers are what an upload of the same file gets from the Predictor
    model = predictor.get(model_id)
    for i, pixels in enumerate(images.pixels):
        single, _ = predictor.probabilities(pixels, model_id)
        expected = frame.pneumonia_probability(single[None], model.classes)[0]
        assert result.answers["whole"].p_pneumonia[i] == pytest.approx(expected, abs=1e-5)
    # cutting nothing flips nothing
    unchanged = frame.probe(predictor, model_id, images, fraction=0.0)
    assert not unchanged.flips("width").any() and not unchanged.flips("height").any()
    assert np.abs(unchanged.delta_p("width")).max() < 1e-6 and np.abs(unchanged.delta_p("height")).max() < 1e-6


def test_a_subtype_models_pneumonia_probability_is_one_minus_normal() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    assert frame.pneumonia_probability(probabilities, ["normal", "bacteria", "virus"]) == pytest.approx([0.3, 0.9])
    assert frame.pneumonia_probability(probabilities[:, :2], ["NORMAL", "PNEUMONIA"]) == pytest.approx([0.2, 0.3])
    answers = frame.ModelAnswers(np.array(["normal", "virus", "NORMAL", "PNEUMONIA"], dtype=object), np.zeros(4))
    assert answers.says_pneumonia.tolist() == [False, True, False, True]


def _assert_balanced(weights: frame.FrameWeights, y: np.ndarray) -> None:
    kept = weights.weights > 0
    assert kept.sum() == weights.n_kept and (weights.bins[kept] >= 0).all() and (weights.bins[~kept] == -1).all()
    bins = np.unique(weights.bins[kept])
    shares = {
        c: np.array([weights.weights[(y == c) & (weights.bins == b)].sum() for b in bins])
        / weights.weights[y == c].sum()
        for c in (0, 1)
    }
    np.testing.assert_allclose(shares[0], shares[1], atol=1e-12)  # the same aspect distribution in both classes
    overall = np.array([(weights.bins == b).sum() for b in bins]) / weights.n_kept
    np.testing.assert_allclose(shares[0], overall, atol=1e-12)  # each bin at its overall share
    for c in (0, 1):  # each class keeps its weight
        assert weights.weights[y == c].sum() == pytest.approx(((y == c) & kept).sum())


@pytest.mark.full_data
def test_frame_balanced_weights_equalise_the_aspect_ratio_on_validation(full_data_dir: Path, masks_dir: Path) -> None:
    _, val = card_validation_split(load_dataset(full_data_dir), list_cards()["resnet18-binary"])
    aspect = frame.original_aspect(val, masks_dir)
    y = (val["label"] == "PNEUMONIA").to_numpy(dtype=np.int64)
    full = val["low_resolution_source"].to_numpy() == 0
    restored = val["path"].isin(pd.read_csv(masks_dir / "manifest.csv")["image"]).to_numpy()
    assert np.isfinite(aspect).sum() == (full | restored).sum() and np.isfinite(aspect[full]).all()
    weights = frame.frame_balanced_weights(aspect, y)
    assert weights.n_known == np.isfinite(aspect).sum() and 0 < weights.n_kept < weights.n_known
    _assert_balanced(weights, y)
    known, kept = np.isfinite(aspect), weights.weights > 0
    assert roc_auc_score(y[known], aspect[known]) > 0.8  # the shortcut: the aspect ratio alone separates them
    assert abs(roc_auc_score(y[kept], aspect[kept], sample_weight=weights.weights[kept]) - 0.5) < 0.05
    # the widest films are all pneumonia: no weighting can balance them, so they weigh nothing
    assert (weights.weights[aspect > aspect[y == 0].max()] == 0).all()


def test_frame_balanced_weights_on_the_sample_manifest(sample_dir: Path) -> None:
    frame_ = load_dataset(sample_dir).frame
    aspect = frame.original_aspect(frame_)  # no mask folder: the 224 copies' size is unknown
    assert np.isnan(aspect[frame_["low_resolution_source"].to_numpy() == 1]).all()
    y = (frame_["label"] == "PNEUMONIA").to_numpy(dtype=np.int64)
    weights = frame.frame_balanced_weights(aspect, y, n_bins=3, min_per_class=1)
    assert weights.n_kept == weights.n_known == np.isfinite(aspect).sum()
    _assert_balanced(weights, y)
    known = np.isfinite(aspect)
    plain = frame.binary_metrics(y[known], aspect[known], aspect[known] > 1.4)
    none = frame.frame_balanced_weights(np.full(len(y), np.nan), y)
    assert none.n_known == 0 and not none.weights.any()
    assert frame.binary_metrics(y, np.zeros(len(y)), np.zeros(len(y), bool), none.weights) == {
        "auroc": None,
        "accuracy": None,
        "specificity": None,
    }
    assert 0 <= plain["auroc"] <= 1


@pytest.mark.full_data
def test_manual_mask_lung_share_differs_from_the_ellipse(sample_dir: Path, masks_dir: Path) -> None:
    real = RealLungMasks(masks_dir)
    path = "train/PNEUMONIA/person437_bacteria_1884.jpeg"  # in the sample, smaller than the dataset's copy
    pixels = load_image_file(sample_dir / path).pixels
    mask = real.get(path, pixels.shape)
    assert mask is not None and mask.shape == pixels.shape and 0.15 < mask.mean() < 0.6
    model = Predictor().get(SMALL_MODELS[0])
    heatmap = explain(model.module, pixels, model.preprocessing).heatmap
    share, ellipse = mass_inside(heatmap, mask), mass_inside(heatmap, lung_mask(pixels))
    assert 0.0 <= share <= 1.0 and abs(share - ellipse) > 0.01, (share, ellipse)
    # an image without a manual mask falls back to the heuristic, and says so
    missing = "train/PNEUMONIA/person898_bacteria_2823.jpeg"
    assert missing not in real and real.get(missing, pixels.shape) is None
    other = load_image_file(sample_dir / missing).pixels
    masks, sources = lung_masks([path, missing], [pixels, other], real)
    assert sources == ["real", "heuristic"] and np.array_equal(masks[1], lung_mask(other))


@pytest.fixture(scope="module")
def benchmark_run(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str, Path]:
    out = tmp_path_factory.mktemp("frame") / "frame.json"
    argv = ["--data", str(sample_dir), "--models", *SMALL_MODELS, "--threads", "1", "--json", str(out)]
    threads = torch.get_num_threads()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            rows = bench_frame.main(argv)
    finally:
        torch.set_num_threads(threads)
    return rows, printed.getvalue(), out


def test_benchmark_main_on_the_sample(benchmark_run: tuple[list[dict], str, Path]) -> None:
    rows, printed, out = benchmark_run
    assert [(r["model"], r["subset"]) for r in rows] == [(m, s) for m in SMALL_MODELS for s in frame.SUBSETS]
    for model_id in SMALL_MODELS:
        full, copies, both = (r for r in rows if r["model"] == model_id)
        assert full["n"] + copies["n"] == both["n"] and both["labels"]["NORMAL"] and both["labels"]["PNEUMONIA"]
        assert f"| {model_id} | all | {both['n']} | " in printed
        assert both["networks"] == {model_id: list_cards()[model_id]["weights_sha256"]}
    written = frame.load_results(out)
    assert written["rows"] == json.loads(json.dumps(rows)) and written["command"].startswith(
        "python -m benchmarks.bench_frame --data"
    )
    table = frame.results_table(written)
    assert list(table.columns) == list(frame.RESULT_COLUMNS) and len(table) == len(rows)
    assert table["Flips width %"].tolist() == pytest.approx([100 * r["flips_width"] for r in rows])
    assert table["Balanced n"].tolist() == [r["balanced_n_kept"] for r in rows]
    assert set(frame.PROBE_COLUMNS) <= set(table.columns) and set(frame.METRIC_COLUMNS) <= set(table.columns)
    flips = frame.flips_long(written)
    assert set(flips["subset"]) <= {"full-res", "224 copies"} and set(flips["crop"]) == set(frame.CROPS)
    assert set(frame.passing(written)) == set(SMALL_MODELS)
    # the shared lung masks sit beside the dataset here and in CI: the lung-sparing rows are filled in
    for row in (r for r in rows if r["subset"] == "all"):
        assert 0 < row["n_spared"] <= row["n"]
        assert 0.0 <= row["flips_width_spared"] <= 1.0 and 0.0 <= row["flips_height_spared"] <= 1.0
        assert 0.0 <= row["cut_height_spared"] <= 2 * frame.CROP_FRACTION
    assert set(frame.passing(written, spared=True)) == set(SMALL_MODELS)


def test_results_coverage_and_unreadable_files(benchmark_run: tuple[list[dict], str, Path], tmp_path: Path) -> None:
    _, _, out = benchmark_run
    results = frame.load_results(out)
    cards = list_cards()
    installed = [*SMALL_MODELS, "resnet18-binary"]
    assert frame.coverage(results, cards, installed) == {"missing": ["resnet18-binary"], "stale": []}
    retrained = {**cards, "cnn4-binary": {**cards["cnn4-binary"], "weights_sha256": "0" * 64}}
    assert frame.coverage(results, retrained, installed)["stale"] == ["cnn4-binary"]
    assert frame.networks_of("ensemble", cards).keys() == {"ensemble", *cards["ensemble"]["members"]}
    assert frame.load_results(tmp_path / "missing.json") is None
    (tmp_path / "other.json").write_text('{"not": "a benchmark"}')
    with pytest.raises(ValueError):
        frame.load_results(tmp_path / "other.json")
