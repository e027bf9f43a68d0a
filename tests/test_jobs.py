"""Background training jobs: real `python -m cxrdemo train` processes on the bundled sample.

Every test points CXRDEMO_RUNS at a temporary folder and CXRDEMO_WEIGHTS at a private copy of
`weights/` (the `weights_copy` fixture), so the repository's runs/ and weights/ are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cxrdemo.models import registry
from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR
from cxrdemo.training import jobs

TINY = dict(arch="cnn4", task="binary", subset=24, device="cpu")  # ~10 s of CPU on the sample


@pytest.fixture()
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights_copy: Path):
    """A private runs folder; any job a test leaves running is cancelled afterwards."""
    path = tmp_path / "runs"
    monkeypatch.setenv("CXRDEMO_RUNS", str(path))
    monkeypatch.setenv("CXRDEMO_DATA", str(SAMPLE_DIR))  # jobs train on the app's data folder: keep them tiny
    yield path
    for job in jobs.list_jobs():
        if job.state == "running":
            jobs.cancel_job(job.id)


def wait_until(job_id: str, done, timeout: float = 120.0) -> jobs.Job:
    deadline = time.monotonic() + timeout
    while True:
        job = jobs.get_job(job_id)
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} still {job.state} after {timeout}s; log:\n" + "\n".join(job.last_log_lines(30))
            )
        time.sleep(0.3)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_tiny_job_finishes_then_promote_and_rollback(runs: Path, weights_copy: Path):
    before = tree_hashes(weights_copy)
    shipped = json.loads((weights_copy / "cnn4-binary.json").read_text())
    job = jobs.start_job(epochs=1, **TINY)
    assert job.state == "running" and job.run_dir.parent == runs.resolve()
    meta = json.loads((job.run_dir / "job.json").read_text())
    assert meta["pid"] == job.pid and meta["command"][1:4] == ["-m", "cxrdemo", "train"]
    assert meta["args"]["subset"] == 24 and meta["args"]["data"].endswith("sample")

    job = wait_until(job.id, lambda j: j.state != "running")
    assert job.state == "finished", (job.error, job.last_log_lines())
    [listed] = jobs.list_jobs()
    assert listed.id == job.id and listed.state == "finished"
    assert listed.epochs_done == 1 and listed.epoch_records[0]["val_loss"] > 0
    assert listed.card["id"] == "cnn4-binary" and listed.error is None
    assert listed.best_val_auroc == listed.epoch_records[0]["val_auroc"]
    assert jobs.running_job() is None
    rows = {r["metric"]: r for r in jobs.compare_metrics(listed)}
    assert rows["roc_auc"]["this run"] == listed.card["metrics"]["val"]["roc_auc"]["value"]
    assert rows["roc_auc"]["installed"] is not None  # the shipped cnn4-binary

    # The history is read from disk, so a fresh interpreter (a restarted app) sees the same job.
    fresh = subprocess.run(
        [sys.executable, "-c", "from cxrdemo.training import jobs; j = jobs.list_jobs()[0]; print(j.id, j.state)"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert fresh.stdout.split() == [job.id, "finished"]

    card = registry.promote(job.run_dir)
    assert card["promoted_from"] == job.id
    assert json.loads((weights_copy / "cnn4-binary.json").read_text())["promoted_from"] == job.id
    assert jobs.installed_from("cnn4-binary") == job.id
    assert registry.load_model("cnn4-binary").card["weights_sha256"] == job.card["weights_sha256"]
    assert registry.can_roll_back("cnn4-binary")
    restored = registry.rollback("cnn4-binary")
    assert restored.get("promoted_from") == shipped.get("promoted_from") != job.id
    after = {k: v for k, v in tree_hashes(weights_copy).items() if not k.startswith(registry.ROLLBACK_DIR)}
    assert after == before


def test_second_start_is_refused_while_one_runs_then_cancel(runs: Path):
    first = jobs.start_job(epochs=50, **TINY)
    with pytest.raises(jobs.JobError, match=r"^a training job is already running \(") as err:
        jobs.start_job(epochs=1, **TINY)
    assert first.id in str(err.value) and "\n" not in str(err.value)
    assert [j.id for j in jobs.list_jobs()] == [first.id]  # the refused start left nothing behind
    assert jobs.running_job().id == first.id

    cancelled = jobs.cancel_job(first.id)
    assert cancelled.state == "failed" and cancelled.error == "cancelled"
    assert json.loads((first.run_dir / "status.json").read_text())["state"] == "failed"
    with pytest.raises(ProcessLookupError):
        os.kill(first.pid, 0)
    with pytest.raises(jobs.JobError, match="not running"):
        jobs.cancel_job(first.id)
    assert jobs.running_job() is None


def test_sigkill_mid_training_is_reported_and_never_promotable(runs: Path, weights_copy: Path):
    before = tree_hashes(weights_copy)
    job = jobs.start_job(epochs=50, **TINY)
    # Kill it once training proper has begun (the trainer logged its start record).
    wait_until(job.id, lambda j: any(m.get("event") == "start" for m in j.metrics))
    os.killpg(job.pid, signal.SIGKILL)
    killed = wait_until(job.id, lambda j: j.state != "running", timeout=30)

    assert killed.state == "failed"
    assert killed.error.startswith(jobs.DIED) and "signal 9" in killed.error
    assert json.loads((job.run_dir / "status.json").read_text())["state"] == "running"  # what it left behind
    assert killed.last_log_lines(20) and len(killed.last_log_lines(3)) <= 3
    assert jobs.running_job() is None
    with pytest.raises(registry.ModelLoadError):
        registry.promote(job.run_dir)
    # Even a torn weights file beside a card naming other weights is refused.
    (job.run_dir / "model.safetensors").write_bytes(b"\x00" * 100)
    (job.run_dir / "card.json").write_text(json.dumps({"id": "cnn4-binary", "weights_sha256": "0" * 64}))
    with pytest.raises(registry.ModelLoadError, match="does not match"):
        registry.promote(job.run_dir)
    assert tree_hashes(weights_copy) == before


def test_two_simultaneous_starts_only_one_wins(runs: Path):
    barrier = threading.Barrier(2)
    results: list[object] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(jobs.start_job(epochs=50, **TINY))
        except jobs.JobError as err:
            results.append(err)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    started = [r for r in results if isinstance(r, jobs.Job)]
    refused = [r for r in results if isinstance(r, jobs.JobError)]
    assert len(started) == 1 and len(refused) == 1, results
    assert "already running" in str(refused[0])
    assert [j.id for j in jobs.list_jobs()] == [started[0].id]
    jobs.cancel_job(started[0].id)


def test_unwritable_runs_dir_gives_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights_copy: Path):
    # Tests run as root, which chmod cannot stop; a path below a regular file fails for everyone.
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CXRDEMO_RUNS", str(blocker / "runs"))
    with pytest.raises(jobs.JobError, match=r"^cannot write to the runs folder .*Not a directory"):
        jobs.start_job(epochs=1, **TINY)
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "weights"]
    assert jobs.list_jobs() == [] and jobs.running_job() is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arch": "resnet9000"}, "unknown architecture 'resnet9000'; choose one of"),
        ({"task": "triage"}, "unknown task 'triage'"),
        ({"epochs": 0}, "epochs must be"),
        ({"epochs": 201}, "epochs must be"),
        ({"epochs": 2.5}, "epochs must be"),
        ({"subset": 3}, "subset must be"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_arguments_are_refused_before_anything_starts(runs: Path, changes: dict, message: str):
    with pytest.raises(jobs.JobError, match=message):
        jobs.start_job(**{**TINY, "epochs": 1, **changes})
    assert not runs.exists() or not any(p.is_dir() for p in runs.iterdir())


@pytest.mark.parametrize("job_id", ["../weights", "/etc", "..", ".", "", "a/b", "nope", ".job.lock", "x\x00y"])
def test_job_ids_are_only_existing_run_folders(runs: Path, job_id: str):
    runs.mkdir()
    (runs / ".job.lock").write_text("")
    with pytest.raises(jobs.JobError):
        jobs.get_job(job_id)
    with pytest.raises(jobs.JobError):
        jobs.cancel_job(job_id)


def test_job_without_status_and_dead_pid_is_failed(runs: Path):
    done = subprocess.Popen(["true"])
    done.wait()  # a pid that certainly no longer runs
    run_dir = runs / "20260101-000000-cnn4-binary"
    run_dir.mkdir(parents=True)
    (run_dir / "job.json").write_text(
        json.dumps(
            {"pid": done.pid, "started": 1.0, "command": [], "args": {"arch": "cnn4", "task": "binary", "epochs": 3}}
        )
    )
    [job] = jobs.list_jobs()
    assert job.state == "failed" and job.error.startswith(jobs.DIED)
    assert jobs.running_job() is None
