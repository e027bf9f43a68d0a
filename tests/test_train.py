"""Real CPU training runs of every architecture through `python -m cxrdemo train`, plus a 2-process DDP run.

The runs are tiny (24 sample images at 64 px, one epoch) and start together when the module's first
test asks for them, two processes at a time; each test then checks its own run folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrdemo.data.dataset import load_dataset
from cxrdemo.models.architectures import list_models
from cxrdemo.models.registry import load_model, promote
from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR
from cxrdemo.runlog import read_metrics

RUNS = [(arch, "binary") for arch in list_models()] + [("cnn4", "subtype")]
SLOW_FIRST = ("resnet50", "vgg16")  # started first so the two slowest runs overlap the rest
EPOCH_KEYS = {"epoch", "step", "train_loss", "val_loss", "val_auroc", "lr", "images_per_s"}
TIMEOUT_S = 400
# DDP: 15 training images over 2 ranks with batches of 6 leave rank 0 a last batch of 2 and rank 1 a
# last batch of 1 (which the loop skips); the ranks must still take the same number of steps.
DDP_ARGS = [
    "--arch",
    "cnn4",
    "--epochs",
    "2",
    "--subset",
    "17",
    "--batch-size",
    "6",
    "--device",
    "cpu",
    "--input-size",
    "64",
    "--data",
    "data/sample",
]


def run_id(arch: str, task: str) -> str:
    return f"{arch}-{task}"


def train_command(arch: str, task: str, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrdemo",
        "train",
        "--arch",
        arch,
        "--task",
        task,
        "--epochs",
        "1",
        "--subset",
        "24",
        "--device",
        "cpu",
        "--input-size",
        "64",
        "--data",
        "data/sample",
        "--out",
        str(out),
    ]


@pytest.fixture(scope="module")
def train_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of the training processes: private cache, runs and weights, no ImageNet cache."""
    root = tmp_path_factory.mktemp("train-env")
    env = dict(os.environ)
    for name in ("cache", "torch-home", "weights", "runs"):
        (root / name).mkdir()
    env.update(
        CXRDEMO_CACHE=str(root / "cache"),
        TORCH_HOME=str(root / "torch-home"),
        CXRDEMO_WEIGHTS=str(root / "weights"),
        CXRDEMO_RUNS=str(root / "runs"),
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("CXRDEMO_DATA", None)
    return env


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, train_env: dict):
    """Start the training runs that the selected tests of this module need; yields {key: (Future, run dir)}."""
    module = request.module
    wanted: list[str] = []
    for item in request.session.items:
        if item.module is not module:
            continue
        if item.originalname == "test_cli_training_run":
            wanted.append(run_id(item.callspec.params["arch"], item.callspec.params["task"]))
        elif item.originalname == "test_distributed_training_then_predict":
            wanted.append("ddp")
    wanted = sorted(set(wanted), key=lambda key: (not key.startswith(SLOW_FIRST), key))
    root = tmp_path_factory.mktemp("runs")

    def launch(key: str) -> subprocess.CompletedProcess:
        out = root / key
        if key == "ddp":
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node=2",
                "-m",
                "cxrdemo",
                "train",
                *DDP_ARGS,
                "--out",
                str(out),
            ]
        else:
            cmd = train_command(*key.rsplit("-", 1), out)
        return subprocess.run(cmd, cwd=REPO_ROOT, env=train_env, capture_output=True, text=True, timeout=TIMEOUT_S)

    pool = ThreadPoolExecutor(max_workers=2)
    futures = {key: (pool.submit(launch, key), root / key) for key in wanted}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def finished(runs: dict, key: str) -> tuple[subprocess.CompletedProcess, Path]:
    future, out = runs[key]
    assert isinstance(future, Future)
    result = future.result(timeout=TIMEOUT_S + 60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result, out


def check_metrics_log(out: Path, *, epochs: int, world_size: int | None) -> list[dict]:
    records = read_metrics(out)
    events = [r["event"] for r in records]
    assert events == ["start"] + ["epoch"] * epochs + ["end"], events
    start = records[0]
    assert start["epochs"] == epochs and start["n_train"] > 0 and start["n_val"] > 0
    assert start["device"] == "cpu"
    if world_size is not None:
        assert start["world_size"] == world_size
    epoch_records = records[1:-1]
    assert [r["epoch"] for r in epoch_records] == list(range(1, epochs + 1))
    for record in epoch_records:
        assert EPOCH_KEYS <= record.keys()
        assert np.isfinite(record["train_loss"]) and np.isfinite(record["val_loss"])
        assert record["step"] >= 1 and record["lr"] > 0 and record["images_per_s"] > 0
    assert [r["step"] for r in epoch_records] == sorted(r["step"] for r in epoch_records)
    return records


def check_ci(metric: dict) -> None:
    lo, hi = metric["ci"]
    assert lo is not None and hi is not None
    assert lo - 1e-9 <= metric["value"] <= hi + 1e-9


@pytest.mark.parametrize(("arch", "task"), RUNS, ids=[run_id(*r) for r in RUNS])
def test_cli_training_run(arch: str, task: str, runs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    result, out = finished(runs, run_id(arch, task))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    model_id = "autoencoder" if arch == "autoencoder" else run_id(arch, task)
    assert summary["model"] == model_id

    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["model_id"] == model_id
    config = json.loads((out / "config.json").read_text())
    assert (config["arch"], config["epochs"], config["subset"], config["input_size"]) == (arch, 1, 24, 64)
    records = check_metrics_log(out, epochs=1, world_size=None if arch == "autoencoder" else 1)
    assert records[-1]["model_id"] == model_id

    card = json.loads((out / "card.json").read_text())
    weights = (out / "model.safetensors").read_bytes()
    assert card["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert card["weights_bytes"] == len(weights)
    assert card["id"] == model_id and card["arch"] == arch
    assert card["preprocessing"]["input_size"] == 64
    assert card["training"]["epochs"] == 1 and card["training"]["subset"] == 24 and card["training"]["arch"] == arch
    assert card["training"]["best_epoch"] == 1
    sample = load_dataset(SAMPLE_DIR)
    assert card["data"]["manifest_fingerprint"] == sample.fingerprint
    n_test = int((sample.frame["split"] == "test").sum())
    predictions = pd.read_csv(out / "predictions.csv")

    if arch == "autoencoder":
        assert card["kind"] == "autoencoder" and card["classes"] == []
        assert card["threshold"] > 0
        assert card["metrics"]["val_normal"]["n"] == card["data"]["n_val"]
        assert card["metrics"]["test"]["n"] == n_test
        assert set(predictions["split"]) == {"val", "test"}
        assert (predictions.loc[predictions["split"] == "val", "label"] == "NORMAL").all()
        assert (predictions["score"] > 0).all() and np.isfinite(predictions["score"]).all()
    else:
        classes = ["NORMAL", "PNEUMONIA"] if task == "binary" else ["normal", "bacteria", "virus"]
        assert card["kind"] == "classifier" and card["task"] == task and card["classes"] == classes
        assert card["temperature"] > 0
        if task == "binary":
            assert 0.0 <= card["threshold"] <= 1.0
            headline = ("accuracy", "roc_auc", "sensitivity", "specificity")
        else:
            assert card["threshold"] is None
            headline = ("accuracy", "macro_f1")
        for split in ("val", "test"):
            for key in headline:
                check_ci(card["metrics"][split][key])
        assert card["metrics"]["test"]["n"] == n_test
        assert card["metrics"]["val"]["n"] == card["data"]["n_val"]
        assert {"val", "test"} <= set(predictions["split"])
        assert (predictions["split"] == "test").sum() == n_test
        probs = predictions[[f"prob_{c}" for c in classes]].to_numpy()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
        assert predictions["y_true"].isin(range(len(classes))).all()

    # the run installs and reloads: card, fp16 weights and architecture agree
    monkeypatch.setenv("CXRDEMO_CACHE", str(tmp_path / "cache"))
    installed = promote(out, directory=tmp_path / "weights")
    assert installed["id"] == model_id
    loaded = load_model(model_id, tmp_path / "weights")
    assert loaded.preprocessing.input_size == 64
    if arch != "autoencoder":
        # re-evaluating the installed model reproduces the stored test probabilities
        from cxrdemo.evaluation.evaluate import batch_probabilities
        from cxrdemo.inference.predict import Predictor

        test = sample.split("test")
        again = batch_probabilities(Predictor(tmp_path / "weights"), model_id, sample, test)
        stored = predictions[predictions["split"] == "test"].set_index("path").loc[test["path"]]
        np.testing.assert_allclose(again, stored[[f"prob_{c}" for c in classes]].to_numpy(), atol=0.02)


def test_distributed_training_then_predict(runs: dict, weights_copy: Path, sample_dir: Path, train_env: dict):
    _, out = finished(runs, "ddp")
    records = check_metrics_log(out, epochs=2, world_size=2)  # one writer: each record exactly once
    assert records[0]["n_train"] == 15
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["subset"] == 17 and card["training"]["batch_size"] == 6
    assert card["weights_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert not list(out.glob(".*.tmp")), "a temporary file was left in the run folder"

    promote(out, "cnn4-ddp")  # into the private weights copy (CXRDEMO_WEIGHTS)
    image = sorted((sample_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    env = {**train_env, "CXRDEMO_WEIGHTS": str(weights_copy)}
    result = subprocess.run(
        [sys.executable, "-m", "cxrdemo", "predict", str(image), "--model", "cnn4-ddp", "--json"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    answer = json.loads(lines[0])
    assert answer["model"] == "cnn4-ddp" and answer["file"] == str(image)
    assert answer["prediction"] in ("NORMAL", "PNEUMONIA")
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    assert answer["threshold"] == pytest.approx(card["threshold"])
