"""The training campaign (`python -m cxrdemo.zoo`) on the bundled sample: train, promote, skip, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR, weights_dir
from cxrdemo.training.checkpoint import load_checkpoint, save_checkpoint
from cxrdemo.zoo import (
    ENSEMBLE_MEMBERS,
    KEEP_SHIPPED,
    MEMBER_MIN_VAL_AUROC,
    PLANS,
    REJECTED,
    ensemble_members,
    planned_config,
    record_gate,
    same_recipe,
    step_for,
)


def campaign(runs: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cxrdemo.zoo", "--profile", "smoke", "--data", str(SAMPLE_DIR), "--runs", str(runs)]
    result = subprocess.run([*cmd, *extra], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def steps(output: str) -> dict[str, str]:
    return dict(line[3:].split(": ") for line in output.splitlines() if line.startswith("== "))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("campaign")
    (root / "weights").mkdir()
    return {
        **os.environ,
        "CXRDEMO_WEIGHTS": str(root / "weights"),
        "CXRDEMO_CACHE": str(root / "cache"),
        "OMP_NUM_THREADS": "1",
        "CAMPAIGN_ROOT": str(root),
    }


def test_campaign_trains_promotes_then_skips_then_resumes(env: dict):
    root = Path(env["CAMPAIGN_ROOT"])
    runs, weights = root / "runs", Path(env["CXRDEMO_WEIGHTS"])
    first = campaign(runs, env)
    assert steps(first.stdout) == {"cnn4-binary": "train", "autoencoder": "train"}
    for model_id in ("cnn4-binary", "autoencoder"):
        card = json.loads((weights / f"{model_id}.json").read_text())
        assert card["promoted_from"] == model_id
        assert (weights / f"{model_id}.safetensors").exists()
    card = json.loads((weights / "cnn4-binary.json").read_text())
    assert card["training"]["epochs"] == 2 and card["training"]["input_size"] == 48
    assert card["threshold"] == 0.5 and card["threshold_rule"].startswith("balanced_prior")
    assert card["training"]["precision_used"] in ("bf16", "fp32")

    # everything is installed with the planned recipe: nothing is trained again
    again = campaign(runs, env)
    assert steps(again.stdout) == {"cnn4-binary": "skip", "autoencoder": "skip"}

    # a run killed after its first epoch (the installed card is of another recipe): resumed, not restarted
    (weights / "cnn4-binary.json").write_text(json.dumps({**card, "training": {**card["training"], "epochs": 1}}))
    run_dir = runs / "cnn4-binary"
    for name in ("card.json", "model.safetensors", "predictions.csv"):
        (run_dir / name).unlink()
    status = json.loads((run_dir / "status.json").read_text())
    (run_dir / "status.json").write_text(json.dumps({**status, "state": "running"}))
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if '"event": "epoch", "epoch": 2' not in line and '"event": "end"' not in line]
    (run_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    # the checkpoint as the killed process would have left it: one epoch done (exact resumption itself
    # is tested in test_training_loop.py; here the campaign must choose to resume)
    state, payload = load_checkpoint(run_dir)
    assert state.epoch == 2
    state.epoch, state.step, state.history = 1, state.history[0]["step"], state.history[:1]
    save_checkpoint(run_dir, state, payload)
    resumed = campaign(runs, env, "--only", "cnn4-binary")
    assert steps(resumed.stdout) == {"cnn4-binary": "resume"}
    assert "--resume" in resumed.stdout
    events = [json.loads(line)["event"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events.count("resume") == 1 and events[-1] == "end"
    assert json.loads((weights / "cnn4-binary.json").read_text())["training"]["epochs"] == 2


def test_step_for_each_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    arch, task, extra = PLANS["smoke"][0]
    run_dir = tmp_path / "runs" / "cnn4-binary"
    planned = planned_config(arch, task, extra, run_dir, str(SAMPLE_DIR))
    assert step_for(run_dir, planned, "cnn4-binary") == "train"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(planned))
    assert step_for(run_dir, planned, "cnn4-binary") == "resume"
    (run_dir / "status.json").write_text(json.dumps({"state": "finished"}))
    (run_dir / "card.json").write_text(json.dumps({"weights_sha256": "a" * 64}))
    assert step_for(run_dir, planned, "cnn4-binary") == "promote"
    record_gate(run_dir, KEEP_SHIPPED, {"shipped_balanced_auroc": 0.99, "run_balanced_auroc": 0.98})
    assert step_for(run_dir, planned, "cnn4-binary") == "kept"  # the gate kept the shipped model
    (run_dir / "card.json").write_text(json.dumps({"weights_sha256": "b" * 64}))
    assert step_for(run_dir, planned, "cnn4-binary") == "promote"  # new weights: the old decision is not theirs
    with pytest.raises(ValueError, match="decision must be"):
        record_gate(run_dir, "maybe", {})
    (tmp_path / "weights" / "cnn4-binary.json").write_text(json.dumps({"training": {**planned, "out": "elsewhere"}}))
    assert step_for(run_dir, planned, "cnn4-binary") == "skip"
    changed = {**planned, "epochs": planned["epochs"] + 1}
    assert not same_recipe(planned, changed)
    assert step_for(run_dir, changed, "cnn4-binary") == "train"


def test_ensemble_leaves_out_a_failed_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The validation gate (docs/DECISIONS.md): installed fixed members join unless their run failed."""
    for model_id in ("resnet18-binary", "zubinrnet-binary"):
        shutil.copy(weights_dir() / f"{model_id}.json", tmp_path / f"{model_id}.json")
    failed = json.loads((tmp_path / "resnet18-binary.json").read_text())
    failed["metrics"]["val"]["roc_auc"]["value"] = MEMBER_MIN_VAL_AUROC - 0.2
    (tmp_path / "resnet50-binary.json").write_text(json.dumps({**failed, "id": "resnet50-binary"}))
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(tmp_path))
    installed = {p.stem for p in tmp_path.glob("*.json")}
    assert ensemble_members(installed) == ["resnet18-binary", "zubinrnet-binary"]
    assert ensemble_members(installed - {"zubinrnet-binary"}) == ["resnet18-binary"]
    assert set(ensemble_members(installed)) < set(ENSEMBLE_MEMBERS)


def test_the_cpu_plan_is_what_made_the_shipped_weights(tmp_path: Path) -> None:
    """On a machine without run folders, `--dry-run` of the cpu plan skips every model (issue 23)."""
    env = {k: v for k, v in os.environ.items() if k != "CXRDEMO_WEIGHTS"}
    cmd = [sys.executable, "-m", "cxrdemo.zoo", "--profile", "cpu", "--data", str(SAMPLE_DIR), "--runs", str(tmp_path)]
    result = subprocess.run([*cmd, "--dry-run"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    planned = steps(result.stdout)
    assert len(planned) == len(PLANS["cpu"])
    assert planned == dict.fromkeys(planned, "skip")


def test_every_rejected_recipe_is_recorded_in_the_card_it_did_not_replace() -> None:
    for arch, task, extra in REJECTED:
        gate = json.loads((REPO_ROOT / "weights" / f"{arch}-{task}.json").read_text())["replacement_gate"]
        assert gate["decision"] == KEEP_SHIPPED
        assert gate["candidate"] == "lung crop: " + " ".join(extra)
        assert gate["difference"] == pytest.approx(gate["candidate_value"] - gate["shipped"], abs=1e-4)
        assert gate["difference"] < gate["allowed"]
