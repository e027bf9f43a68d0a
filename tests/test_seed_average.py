"""Seed averaging (docs/DECISIONS.md, 2026-12-07): copies trained on one validation split, shipped as one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrdemo.data.dataset import load_dataset, validation_split
from cxrdemo.imaging.preprocess import Preprocessing, to_input
from cxrdemo.inference.explain import fast_gradcam
from cxrdemo.models.architectures import SeedAverage, cam_target_layer, create_model
from cxrdemo.models.folding import serving_form
from cxrdemo.models.registry import load_model, promote
from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR
from cxrdemo.training.config import TrainConfig
from cxrdemo.training.run import COPY_WEIGHTS, copy_config

SPEC = Preprocessing(input_size=64)


def _copies(n: int) -> list:
    torch.manual_seed(0)
    return [create_model("cnn4", 2).eval() for _ in range(n)]


def _x(sample_dir: Path) -> torch.Tensor:
    path = sorted((sample_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    return to_input(np.asarray(Image.open(path).convert("L")), SPEC)


def test_the_average_answers_the_mean_probability_of_its_copies(sample_dir: Path) -> None:
    copies = _copies(3)
    x = _x(sample_dir)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(c(x), dim=1) for c in copies]).mean(dim=0)
        average = SeedAverage(copies).eval()
        got = torch.softmax(average(x), dim=1)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(torch.softmax(copies[0](x), 1), torch.softmax(copies[1](x), 1), atol=1e-3)


def test_gradcam_of_the_average_is_the_library_gradcam_over_all_trunks(sample_dir: Path) -> None:
    average = SeedAverage(_copies(2)).eval()
    x = _x(sample_dir)
    assert cam_target_layer(average) is average.features
    _, cam = fast_gradcam(average, x, 1)
    assert cam.shape == average.features(x).shape[-2:] and cam.max() == pytest.approx(1.0)
    with GradCAM(model=average, target_layers=[average.features]) as reference:
        expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(1)])[0]
    ours = scale_cam_image(scale_cam_image(cam[None], x.shape[-2:][::-1]))[0]
    assert np.abs(ours - expected).max() < 1e-4


def test_folded_serving_form_gives_the_same_answer(sample_dir: Path) -> None:
    average = SeedAverage(_copies(2)).eval()
    x = _x(sample_dir)
    with torch.no_grad():
        before = average(x)
        after = serving_form(average)(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(before, after, atol=1e-4)


def test_copies_share_the_validation_split_and_differ_in_weights_seed() -> None:
    cfg = TrainConfig(arch="cnn4", seeds=3, seed=0, out="runs/x")
    subs = [copy_config(cfg, k) for k in range(3)]
    assert [s.init_seed for s in subs] == [0, 1, 2] and {s.seed for s in subs} == {0}
    assert {s.seeds for s in subs} == {1} and subs[2].out == str(Path("runs/x") / "seed-2")
    dataset = load_dataset(SAMPLE_DIR)
    splits = [validation_split(dataset, seed=s.seed)[1]["path"].tolist() for s in subs]
    assert splits[0] == splits[1] == splits[2]


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-copy cnn4 run on the bundled sample, through the command line."""
    root = tmp_path_factory.mktemp("seeds")
    run = root / "run"
    cmd = [sys.executable, "-m", "cxrdemo", "train", "--arch", "cnn4", "--task", "binary", "--data", str(SAMPLE_DIR)]
    cmd += ["--out", str(run), "--epochs", "2", "--input-size", "48", "--batch-size", "8", "--seeds", "2"]
    env = {**os.environ, "CXRDEMO_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def test_a_seed_run_ships_one_model_whose_card_names_its_copies(seed_run: Path) -> None:
    card = json.loads((seed_run / "card.json").read_text())
    assert card["training"]["seeds"] == 2
    assert [c["weights_seed"] for c in card["training"]["copies"]] == [0, 1]
    assert all(c["epochs_run"] == 2 for c in card["training"]["copies"])
    assert (seed_run / "seed-0" / COPY_WEIGHTS).exists() and (seed_run / "seed-1" / COPY_WEIGHTS).exists()
    assert "val" in card["metrics"] and "test" in card["metrics"]


def test_the_promoted_average_loads_and_reproduces_its_validation_predictions(seed_run: Path, tmp_path: Path) -> None:
    promote(seed_run, "cnn4-seeds", directory=tmp_path)
    loaded = load_model("cnn4-seeds", tmp_path)
    assert isinstance(loaded.module, SeedAverage) and loaded.module.copies == 2
    stored = pd.read_csv(tmp_path / "cnn4-seeds.predictions.csv")
    val = stored[stored["split"] == "val"].head(6)
    spec = loaded.preprocessing
    x = torch.cat([to_input(np.asarray(Image.open(SAMPLE_DIR / p).convert("L")), spec) for p in val["path"]])
    with torch.no_grad():
        logits = loaded.module.eval()(x).numpy()
    # the shipped weights are fp16, the stored logits came from the fp32 (bf16 trunk) network
    assert np.abs(logits[:, 1] - val["logit_PNEUMONIA"].to_numpy()).max() < 0.05


def test_resuming_a_finished_seed_run_loads_the_copies_instead_of_training(seed_run: Path) -> None:
    stamps = [(seed_run / f"seed-{k}" / COPY_WEIGHTS).stat().st_mtime_ns for k in range(2)]
    env = {**os.environ, "CXRDEMO_CACHE": str(seed_run.parent / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cxrdemo", "train", "--resume", str(seed_run)]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [(seed_run / f"seed-{k}" / COPY_WEIGHTS).stat().st_mtime_ns for k in range(2)] == stamps
    assert json.loads(result.stdout.splitlines()[-1])["model"] == "cnn4-binary"


def test_the_autoencoder_is_not_seed_averaged(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "cxrdemo", "train", "--arch", "autoencoder", "--data", str(SAMPLE_DIR)]
    cmd += ["--out", str(tmp_path / "ae"), "--epochs", "1", "--seeds", "2"]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "--seeds is for classifiers" in result.stderr and "Traceback" not in result.stderr
