"""The training loop in process and across a killed process: checkpoints, exact resume, precision choice."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR
from cxrdemo.precision import cpu_has_native_bf16, resolve_precision
from cxrdemo.runlog import read_metrics
from cxrdemo.training import TrainConfig, train
from cxrdemo.training.checkpoint import load_checkpoint
from cxrdemo.training.loop import Callback

# everything an epoch record says about the optimisation itself (timings differ run to run)
DETERMINISTIC = ("epoch", "step", "train_loss", "val_loss", "val_auroc", "lr", "best_epoch", "improved")
TINY = dict(
    arch="resnet18",
    data=str(SAMPLE_DIR),
    epochs=4,
    subset=54,
    input_size=48,
    batch_size=8,
    ema_decay=0.9,
    mixup_alpha=0.2,  # exercises the per-step mixing draw and the generator's state
    device="cpu",
    threads=1,
)


def epoch_records(run_dir: Path) -> list[dict]:
    return [{k: r.get(k) for k in DETERMINISTIC} for r in read_metrics(run_dir) if r["event"] == "epoch"]


class Interrupt(Exception):
    pass


class StopAtStep(Callback):
    """Raises in the middle of an epoch, as a kill would stop the process there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, ctx, state, loss: float) -> None:
        if state.step == self.step:
            raise Interrupt


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the tiny recipe."""
    out = tmp_path_factory.mktemp("reference")
    result = train(TrainConfig(**TINY, out=str(out)))
    assert len(result.history) == 4
    return out


def test_fit_in_process_trains_and_checkpoints(reference: Path):
    records = epoch_records(reference)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in records)
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})
    state, payload = load_checkpoint(reference)
    assert state.epoch == 4 and state.step == records[-1]["step"]
    assert {"model", "optimizer", "ema", "generator", "torch_rng"} <= payload.keys()
    assert payload["optimizer"]["state"], "the optimizer's moments are saved"
    assert [r["epoch"] for r in state.history] == [1, 2, 3, 4]


def test_interrupted_mid_epoch_then_resumed_matches_uninterrupted(reference: Path, tmp_path: Path):
    cfg = TrainConfig(**TINY, out=str(tmp_path))
    steps_per_epoch = epoch_records(reference)[0]["step"]
    with pytest.raises(Interrupt):
        train(cfg, callbacks=[StopAtStep(2 * steps_per_epoch + 2)])  # two steps into epoch 3
    assert [r["epoch"] for r in epoch_records(tmp_path)] == [1, 2]
    assert load_checkpoint(tmp_path)[0].epoch == 2
    result = train(cfg, resume=True)
    assert epoch_records(tmp_path) == epoch_records(reference)
    events = [r["event"] for r in read_metrics(tmp_path)]
    assert events.count("resume") == 1 and events.count("epoch") == 4
    reference_state = load_checkpoint(reference)[1]["model"]
    for name, value in result.model.state_dict().items():
        if value.dtype.is_floating_point:
            assert name in reference_state
    resumed = load_checkpoint(tmp_path)[1]["model"]
    for name, value in reference_state.items():
        assert torch.equal(value, resumed[name]), name


def test_killed_process_resumes_from_its_last_epoch(reference: Path, tmp_path: Path):
    """SIGKILL the real command line during training, then `train --resume RUN_DIR`."""
    args = [sys.executable, "-m", "cxrdemo", "train", "--out", str(tmp_path)]
    for key, value in TINY.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(r["epoch"] >= 1 for r in epoch_records(tmp_path)):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [r["epoch"] for r in epoch_records(tmp_path)]
    assert done and done[-1] < 4
    resumed = subprocess.run(
        [sys.executable, "-m", "cxrdemo", "train", "--resume", str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert epoch_records(tmp_path) == epoch_records(reference)
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "finished"
    assert (tmp_path / "card.json").exists()


def test_resume_of_a_folder_that_is_no_run_is_one_line(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, "-m", "cxrdemo", "train", "--resume", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path} is not a training run (no config.json)"


def test_precision_follows_the_processor():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    with pytest.raises(ValueError, match="choose one of auto, bf16, fp32"):
        resolve_precision("fp8", cpu)


def test_config_round_trips_through_its_json(reference: Path):
    saved = json.loads((reference / "config.json").read_text())
    rebuilt = TrainConfig.from_dict({**saved, "retired_option": 1})
    assert rebuilt.augment.scale == tuple(saved["augment"]["scale"])
    assert json.loads(json.dumps(rebuilt.to_dict())) == saved
