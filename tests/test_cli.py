"""`python -m cxrdemo` as a user runs it: predict (every odd upload), Grad-CAM overlays, models, evaluate."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from cxrdemo.inference.predict import Predictor
from cxrdemo.models.registry import list_cards
from cxrdemo.paths import REPO_ROOT
from tests.corpus import bad_input_corpus
from tests.weights_snapshot import snapshot_weights


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    weights = snapshot_weights(root / "weights")
    env = dict(
        os.environ,
        CXRDEMO_WEIGHTS=str(weights),
        CXRDEMO_CACHE=str(root / "cache"),
        CXRDEMO_RUNS=str(root / "runs"),
        OMP_NUM_THREADS="1",
    )
    env.pop("CXRDEMO_DATA", None)
    return env


@pytest.fixture(scope="module")
def default_model(cli_env: dict) -> str:
    return Predictor(Path(cli_env["CXRDEMO_WEIGHTS"])).default_model_id()


def cxrdemo(env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "cxrdemo", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result


def test_predict_json_on_real_images_and_every_bad_input(
    cli_env: dict, default_model: str, sample_dir: Path, sample_jpeg_bytes: bytes, tmp_path: Path
):
    images = [sorted((sample_dir / "test" / label).glob("*.jpeg"))[0] for label in ("NORMAL", "PNEUMONIA")]
    corpus = bad_input_corpus(sample_jpeg_bytes)
    folder = tmp_path / "uploads"
    folder.mkdir()
    for item in corpus:
        (folder / item.name).write_bytes(item.data)
    files = [str(p) for p in images] + [str(folder / item.name) for item in corpus]
    expected = [(True, None, None)] * 2 + [(c.readable, c.expect_warning, c.expect_error) for c in corpus]
    files.append(str(folder / "missing.jpeg"))  # a path that does not exist
    expected.append((False, None, "could not be opened"))

    result = cxrdemo(cli_env, "predict", "--json", *files)
    assert result.returncode == 2, result.stderr[-2000:]  # some files could not be read; the rest were answered
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(files)
    answers = [json.loads(line) for line in lines]
    cards = list_cards(Path(cli_env["CXRDEMO_WEIGHTS"]))
    classes = cards[default_model]["classes"]
    has_autoencoder = "autoencoder" in cards and "error" not in cards["autoencoder"]
    for path, answer, (readable, warning, error) in zip(files, answers, expected, strict=True):
        assert answer["file"] == path
        if not readable:
            assert set(answer) == {"file", "error"}, answer
            assert "\n" not in answer["error"] and answer["error"]
            assert error in answer["error"], (path, answer["error"])
            continue
        assert "error" not in answer, (path, answer)
        assert answer["model"] == default_model
        if answer["withheld"]:  # flagged as not like the training X-rays: no class, the reason first
            assert answer["prediction"] is None and answer["ood"] is True
            assert answer["warnings"][0].startswith("Not assessed: "), answer["warnings"]
        else:
            assert answer["prediction"] in classes
        assert list(answer["probabilities"]) == classes
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in answer["probabilities"].values())
        assert isinstance(answer["warnings"], list)
        assert all(isinstance(w, str) and "\n" not in w for w in answer["warnings"])
        if warning:
            assert any(warning in w for w in answer["warnings"]), (path, answer["warnings"])
        assert {"ood", "ood_score", "threshold"} <= answer.keys()
        if has_autoencoder:
            assert isinstance(answer["ood"], bool) and answer["ood_score"] > 0
        else:
            assert answer["ood"] is None and answer["ood_score"] is None
    assert not answers[0]["withheld"] and not answers[1]["withheld"]
    # both real X-rays came back without any warning about the file itself
    assert all("transparent" not in w and "colour" not in w for a in answers[:2] for w in a["warnings"])


def test_predict_withholds_the_verdict_on_a_ct_slice(cli_env: dict, default_model: str, sample_dir: Path):
    ct = get_testdata_file("CT_small.dcm")
    xray = str(sorted((sample_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0])
    assert _has_autoencoder(cli_env), "no autoencoder installed in weights/: nothing can be withheld"
    result = cxrdemo(cli_env, "predict", "--json", ct, xray)
    assert result.returncode == 0, result.stderr[-2000:]  # a withheld answer is an answer, not an error
    withheld, answered = (json.loads(line) for line in result.stdout.strip().splitlines())
    assert '"prediction": null' in result.stdout and '"withheld": true' in result.stdout
    assert withheld["file"] == ct and withheld["prediction"] is None and withheld["withheld"] is True
    reason = withheld["warnings"][0]
    assert reason.startswith("Not assessed: this image does not look like the pediatric chest X-rays")
    assert re.search(r"> threshold [0-9.]+", reason), reason
    classes = list_cards(Path(cli_env["CXRDEMO_WEIGHTS"]))[default_model]["classes"]
    assert list(withheld["probabilities"]) == classes
    assert sum(withheld["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert answered["withheld"] is False and answered["prediction"] in classes

    text = cxrdemo(cli_env, "predict", ct)
    assert text.returncode == 0, text.stderr[-2000:]
    first, reason_line, *_ = text.stdout.splitlines()
    assert first.startswith(f"{ct}: Not assessed (model output, not a diagnosis: ")
    assert reason_line == f"  warning: {reason}"
    assert not any(f": {c} (" in text.stdout for c in classes)  # no verdict anywhere


def _has_autoencoder(cli_env: dict) -> bool:
    cards = list_cards(Path(cli_env["CXRDEMO_WEIGHTS"]))
    return "autoencoder" in cards and "error" not in cards["autoencoder"]


def test_predict_writes_gradcam_overlays(cli_env: dict, default_model: str, sample_dir: Path, tmp_path: Path):
    images = sorted((sample_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:2]
    out = tmp_path / "cams"
    result = cxrdemo(cli_env, "predict", "--json", "--cam", "gradcam", "--cam-out", str(out), *map(str, images))
    assert result.returncode == 0, result.stderr[-2000:]
    answers = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert len(answers) == 2
    for image, answer in zip(images, answers):
        cam = Path(answer["cam"])
        assert cam == out / f"{image.stem}.{default_model}.gradcam.png"
        with Image.open(cam) as overlay:
            assert overlay.format == "PNG" and overlay.mode == "RGB"
            with Image.open(image) as original:
                assert overlay.size == original.size
            pixels = np.asarray(overlay).astype(int)
        # a heatmap was blended in: the overlay is coloured, unlike the grayscale X-ray
        assert (pixels.max(axis=2) - pixels.min(axis=2)).mean() > 5


def test_predict_cam_for_the_ensemble_explains_its_first_member(cli_env: dict, sample_dir: Path, tmp_path: Path):
    image = sorted((sample_dir / "test" / "NORMAL").glob("*.jpeg"))[0]
    ensemble = json.loads((Path(cli_env["CXRDEMO_WEIGHTS"]) / "ensemble.json").read_text())
    out = tmp_path / "cams"
    result = cxrdemo(
        cli_env, "predict", "--json", "--model", "ensemble", "--cam", "gradcam++", "--cam-out", str(out), str(image)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout)
    assert answer["model"] == "ensemble"
    assert Path(answer["cam"]) == out / f"{image.stem}.{ensemble['members'][0]}.gradcam++.png"
    assert Path(answer["cam"]).exists()


def test_models_json_lists_the_installed_models(cli_env: dict):
    result = cxrdemo(cli_env, "models", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    cards = list_cards(Path(cli_env["CXRDEMO_WEIGHTS"]))
    # the lung segmenter comes last, with its card's data source, licence, Dice and CPU time
    segmenter = rows.pop()
    assert segmenter["id"] == "lung-unet" and segmenter["kind"] == "segmenter"
    assert "CC BY 4.0" in segmenter["licence"] and "v7labs" in segmenter["data_source"]
    assert segmenter["dice_full_resolution"] >= 0.95 and segmenter["dice_224_copies"] >= 0.95
    assert 0 < segmenter["cpu_ms_per_image"] < 100
    assert [row["id"] for row in rows] == list(cards)
    assert rows, "no models installed"
    for row in rows:
        card = cards[row["id"]]
        assert (row["kind"], row["arch"], row["task"]) == (card.get("kind"), card.get("arch"), card.get("task"))
        assert row["error"] is None
        test = card.get("metrics", {}).get("test", {})
        if "accuracy" in test:
            assert row["test"]["accuracy"] == pytest.approx(test["accuracy"]["value"], abs=1e-4)


def test_evaluate_default_model_on_sample_val(cli_env: dict, default_model: str, sample_dir: Path):
    result = cxrdemo(cli_env, "evaluate", "--model", default_model, "--split", "val", "--data", "data/sample", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == default_model and report["split"] == "val" and report["dataset"] == sample_dir.name
    assert report["n"] > 0 and report["metrics"]["n"] == report["n"]
    accuracy = report["metrics"]["accuracy"]
    assert 0.0 <= accuracy["value"] <= 1.0
    assert len(accuracy["ci"]) == 2


def test_unknown_model_is_one_line_and_exit_1(cli_env: dict, sample_dir: Path):
    image = str(sorted((sample_dir / "test" / "NORMAL").glob("*.jpeg"))[0])
    result = cxrdemo(cli_env, "predict", "--model", "no-such-model", image)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no model 'no-such-model'")
    assert "available:" in lines[0]
