"""Saliency measures on real chest X-rays from the bundled sample, and the benchmark end to end."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import bench_saliency
from cxrdemo.data.dataset import load_dataset, patient_split
from cxrdemo.evaluation.saliency import (
    RESULT_COLUMNS,
    border_band,
    border_share,
    cam_at_input,
    cam_grid,
    faithfulness,
    load_results,
    lung_mask,
    lung_share_long,
    mass_inside,
    method_summary,
    results_table,
    road_combined,
    validation_sample,
)
from cxrdemo.imaging.decode import load_image_file
from cxrdemo.imaging.preprocess import to_input
from cxrdemo.inference.explain import explain
from cxrdemo.models.registry import load_model

SMALL_MODEL = "cnn4-binary"


@pytest.fixture(scope="module")
def sample_images(sample_dir: Path) -> list[np.ndarray]:
    dataset = load_dataset(sample_dir)
    return [load_image_file(dataset.absolute(p)).pixels for p in dataset.frame["path"]]


def test_lung_mask_is_plausible_on_every_sample_image(sample_images: list[np.ndarray]) -> None:
    assert len(sample_images) >= 40
    for pixels in sample_images:
        mask = lung_mask(pixels)
        assert mask.shape == pixels.shape and mask.dtype == bool
        assert 0.15 <= mask.mean() <= 0.60, mask.mean()
        # mostly away from the edges: little of it in the outer 10 % band, none on the outermost pixels
        assert mask[border_band(mask.shape)].sum() / mask.sum() < 0.15
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
        # two lungs: something on each side of the midline, little on the midline itself (mediastinum)
        half = pixels.shape[1] // 2
        assert mask[:, :half].mean() > 0.1 and mask[:, half:].mean() > 0.1
        centre = mask[:, half - pixels.shape[1] // 50 : half + pixels.shape[1] // 50 + 1]
        assert centre.mean() < 0.1


def test_lung_mask_is_a_deterministic_function_of_the_image(sample_images: list[np.ndarray]) -> None:
    pixels = sample_images[0]
    assert np.array_equal(lung_mask(pixels), lung_mask(pixels.copy()))
    assert not np.array_equal(lung_mask(pixels), lung_mask(sample_images[1]))


def test_mass_inside_of_the_mask_itself_and_of_its_complement(sample_images: list[np.ndarray]) -> None:
    mask = lung_mask(sample_images[3])
    assert mass_inside(mask.astype(np.float32), mask) == 1.0
    assert mass_inside((~mask).astype(np.float32), mask) == 0.0
    uniform = np.full(mask.shape, 0.5, np.float32)
    assert mass_inside(uniform, mask) == pytest.approx(mask.mean())
    assert math.isnan(mass_inside(np.zeros(mask.shape, np.float32), mask))  # a flat CAM has no mass to place
    with pytest.raises(ValueError):
        mass_inside(uniform[:-1], mask)


def test_border_share_of_uniform_and_of_central_maps() -> None:
    assert border_share(np.ones((200, 300), np.float32)) == pytest.approx(1 - 0.8 * 0.8)
    centre = np.zeros((200, 300), np.float32)
    centre[60:140, 90:210] = 1.0
    assert border_share(centre) == 0.0
    corner = np.zeros((200, 300), np.float32)
    corner[:15, :20] = 1.0  # a side marker in a corner
    assert border_share(corner) == 1.0


def test_validation_sample_is_balanced_and_from_the_validation_side(sample_dir: Path) -> None:
    dataset = load_dataset(sample_dir)
    card = load_model(SMALL_MODEL).card["training"]
    train_side, val = patient_split(dataset.split("train"), val_fraction=card["val_fraction"], seed=card["seed"])
    picked = validation_sample(val, 4)
    assert (picked["split"] == "train").all()  # carved from train, never the test split
    assert not set(picked["patient_id"]) & set(train_side["patient_id"])
    assert picked["label"].value_counts().to_dict() == {"NORMAL": 2, "PNEUMONIA": 2}
    assert picked["path"].tolist() == validation_sample(val, 4)["path"].tolist()


def test_faithfulness_of_a_real_gradcam_is_finite_and_reproducible(sample_images: list[np.ndarray]) -> None:
    model = load_model(SMALL_MODEL)
    spec = model.preprocessing
    pixels = sample_images[0]
    e = explain(model.module, pixels, spec)
    x = to_input(pixels, spec)
    cam = cam_at_input(e.heatmap, spec.input_size)
    assert cam.shape == (spec.input_size, spec.input_size)
    state = torch.random.get_rng_state()
    score = faithfulness(model.module, x, cam, e.target_class)
    assert torch.equal(state, torch.random.get_rng_state())  # the imputer's noise comes from its own seed
    assert -1.0 <= score <= 1.0
    assert faithfulness(model.module, x, cam, e.target_class) == score
    # reversing the map's order swaps "most" and "least" relevant, and so (about) the sign of the score
    reversed_score = faithfulness(model.module, x, 1.0 - cam, e.target_class)
    assert abs(score + reversed_score) < 0.5 * max(abs(score), 0.02) + 0.02
    assert math.isnan(road_combined(model.module, x, np.zeros_like(cam), e.target_class)[0])
    assert cam_grid(model.module, spec.input_size) == (spec.input_size // 16, spec.input_size // 16)


@pytest.fixture(scope="module")
def benchmark_run(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str, Path]:
    """The benchmark's main on the bundled sample: (rows, printed table, the JSON it wrote)."""
    out = tmp_path_factory.mktemp("saliency") / "saliency.json"
    argv = ["--data", str(sample_dir), "--n", "2", "--models", SMALL_MODEL, "--methods", "gradcam", "--json", str(out)]
    threads = torch.get_num_threads()  # the benchmark sets its own count; give the rest of the suite theirs
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            rows = bench_saliency.main(argv)
    finally:
        torch.set_num_threads(threads)
    return rows, printed.getvalue(), out


def test_benchmark_main_on_the_sample(benchmark_run: tuple[list[dict], str, Path]) -> None:
    rows, printed, out = benchmark_run
    # whatever cnn4-binary is installed (it is retrained at other sizes): its card says how it is fed
    model = load_model(SMALL_MODEL)
    size = model.preprocessing.input_size
    grid = size // 16  # cnn4: four blocks, each halving the resolution
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == SMALL_MODEL and row["method"] == "gradcam" and row["n"] == 2
    assert row["input_px"] == size and row["cam_grid"] == [grid, grid]
    assert row["weights_sha256"] == model.card["weights_sha256"]
    for key in ("road_combined_mean", "road_combined_sd", "lung_mass_share", "border_share", "ms_per_heatmap"):
        assert math.isfinite(row[key]), key
    assert 0 <= row["lung_mass_share"] <= 1 and 0 <= row["border_share"] <= 1
    assert f"| {SMALL_MODEL} | {size} | {grid}×{grid} | gradcam | 2 ({row['n_flat']}) |" in printed
    # the manual lung masks where the images have one (the shared copy, when present), the heuristic for the rest
    assert 0 <= row["lung_masks_real"] <= row["n"]
    assert f"| {row['lung_area_share']:.2f} | {row['lung_masks_real']}/2 |" in printed
    if (bench_saliency.SHARED_DATA.parent / "lung_masks" / "manifest.csv").is_file():
        assert row["lung_masks_real"] > 0
    written = json.loads(out.read_text())
    assert written["rows"] == json.loads(json.dumps(rows))
    assert written["command"].startswith("python -m benchmarks.bench_saliency --data")
    assert written["date"] and written["machine"]


def test_results_table_and_method_summary_from_a_real_benchmark_file(
    benchmark_run: tuple[list[dict], str, Path], tmp_path: Path
) -> None:
    (row,), _, out = benchmark_run
    table = results_table(load_results(out))
    assert list(table.columns) == list(RESULT_COLUMNS) and len(table) == 1
    assert table.loc[0, "Model"] == SMALL_MODEL and table.loc[0, "ROAD"] == row["road_combined_mean"]
    road, lung, area = row["road_combined_mean"], row["lung_mass_share"], row["lung_area_share"]
    expected = (
        f"Saliency benchmark: ROAD {road:+.2f}, {lung:.0%} of the heatmap on the lung fields "
        f"(a uniform map: {area:.0%}) ({SMALL_MODEL}, 2 validation images)"
    )
    assert table.loc[0, "Manual masks"] == row["lung_masks_real"]
    shares, uniform = lung_share_long(load_results(out))
    assert shares[["model", "method"]].values.tolist() == [[SMALL_MODEL, "gradcam"]]
    assert shares.loc[0, "lung share"] == lung and uniform == pytest.approx(area)
    assert method_summary("gradcam", SMALL_MODEL, path=out) == expected
    assert method_summary("gradcam", path=out) == expected  # all models: here the one measured
    assert method_summary("scorecam", SMALL_MODEL, path=out) is None  # not measured
    assert method_summary("gradcam", "resnet18-binary", path=out) is None  # model not in the file
    assert method_summary("gradcam", SMALL_MODEL, path=tmp_path / "missing.json") is None
    assert load_results(tmp_path / "missing.json") is None
    (tmp_path / "other.json").write_text('{"not": "a benchmark"}')
    with pytest.raises(ValueError):
        load_results(tmp_path / "other.json")


def test_diagnose_tooltip_names_what_the_benchmark_found_for_every_method() -> None:
    from cxrdemo.app.diagnosis import cam_method_help
    from cxrdemo.evaluation.saliency import method_summary
    from cxrdemo.inference.explain import CAM_METHODS

    text = cam_method_help("resnet18-binary")
    assert all(f"**{m}**" in text for m in CAM_METHODS)
    measured = [m for m in CAM_METHODS if method_summary(m, "resnet18-binary")]
    assert measured and all(method_summary(m, "resnet18-binary") in text for m in measured)


def test_merge_keeps_other_models_rows(benchmark_run: tuple[list[dict], str, Path], tmp_path: Path) -> None:
    """`--merge`: a model's new rows replace its old ones; other models' rows stay, with their own date."""
    (row,), _, out = benchmark_run
    written = json.loads(out.read_text())
    assert row["measured"] == written["date"]
    other = {**row, "model": "zubinrnet-binary"}
    other.pop("measured")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({**written, "date": "2026-01-01 00:00 UTC", "rows": [row, other]}))
    kept = bench_saliency.kept_rows(earlier, {SMALL_MODEL})
    assert [r["model"] for r in kept] == ["zubinrnet-binary"]
    assert kept[0]["measured"] == "2026-01-01 00:00 UTC"
    assert bench_saliency.kept_rows(earlier, {SMALL_MODEL, "zubinrnet-binary"}) == []
