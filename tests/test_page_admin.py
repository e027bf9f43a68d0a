"""The admin page through Streamlit's AppTest: sign-in, lockout, a real training job, promote, roll back.

CXRDEMO_RUNS and CXRDEMO_WEIGHTS point at temporary folders before the app is built, so the page's
jobs, lockout file and promotions never touch the repository (the cached Predictor is keyed by the
weights folder, so each test gets its own).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR
from cxrdemo.training import jobs

PASSWORD = "correct horse"


@pytest.fixture()
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights_copy: Path):
    path = tmp_path / "runs"
    monkeypatch.setenv("CXRDEMO_RUNS", str(path))
    monkeypatch.setenv("CXRDEMO_ADMIN_PASSWORD", PASSWORD)
    monkeypatch.setenv("CXRDEMO_DATA", str(SAMPLE_DIR))  # jobs train on the app's data folder: keep them tiny
    yield path
    for job in jobs.list_jobs():
        if job.state == "running":
            jobs.cancel_job(job.id)


def admin_page(secrets: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60)
    for key, value in (secrets or {}).items():
        at.secrets[key] = value
    at.run()
    at.switch_page("pages/admin.py").run()
    assert not at.exception
    return at


def sign_in(at: AppTest, password: str) -> AppTest:
    at.text_input(key="admin_password").input(password)
    at.button(key="admin_sign_in").click().run()
    assert not at.exception
    return at


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def test_disabled_without_a_password(runs: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CXRDEMO_ADMIN_PASSWORD")
    at = admin_page()
    assert any("Admin is disabled" in i.value for i in at.info)
    assert not at.text_input and not at.button


def test_wrong_password_then_right_one(runs: Path):
    at = admin_page()
    assert not any(b.key == "admin_start_training" for b in at.button)
    sign_in(at, "wrong")
    assert errors(at) == ["Wrong password."]
    assert not any(b.key == "admin_start_training" for b in at.button)
    sign_in(at, PASSWORD)
    assert not errors(at) and at.session_state["admin"] is True
    assert at.button(key="admin_start_training")
    assert at.selectbox(key="admin_arch").options  # the form lists the registry's architectures
    at.button(key="admin_logout").click().run()
    assert at.text_input(key="admin_password")  # signed out: back to the form


def test_password_from_secrets(runs: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CXRDEMO_ADMIN_PASSWORD")
    at = admin_page({"admin_password": "from-secrets"})
    sign_in(at, "from-secrets")
    assert at.button(key="admin_start_training")


def test_lockout_after_repeated_failures(runs: Path):
    at = admin_page()
    for _ in range(4):
        sign_in(at, "guess")
        assert errors(at) == ["Wrong password."]
    sign_in(at, "guess")
    assert errors(at) and errors(at)[0].startswith("Too many wrong passwords. Try again in ")
    # A new session (another browser, or after a restart) is locked too, even with the right password.
    at = admin_page()
    assert errors(at)[0].startswith("Too many wrong passwords")
    assert at.button(key="admin_sign_in").disabled
    assert (runs / ".admin_lockout.json").is_file()


def test_train_promote_and_roll_back_through_the_page(runs: Path, weights_copy: Path):
    at = sign_in(admin_page(), PASSWORD)
    assert any("No training jobs yet" in i.value for i in at.info)
    at.selectbox(key="admin_arch").set_value("cnn4")
    at.selectbox(key="admin_task").set_value("binary")
    at.selectbox(key="admin_epochs").set_value(1)
    at.selectbox(key="admin_subset").set_value(24)
    at.selectbox(key="admin_device").set_value("cpu")
    at.button(key="admin_start_training").click().run()
    assert not at.exception, at.exception
    [job] = jobs.list_jobs()
    assert [s.value for s in at.success] == [f"Started job {job.id}."]
    assert (job.arch, job.epochs, job.subset, job.device) == ("cnn4", 1, 24, "cpu")
    assert at.button(key="admin_start_training").disabled  # one job at a time
    assert at.button(key="admin_cancel_job")  # the live progress fragment is drawn

    deadline = time.monotonic() + 120
    while (state := at.dataframe[0].value.loc[0, "state"]) != "finished":
        assert state == "running" and time.monotonic() < deadline, job.last_log_lines()
        time.sleep(1)
        at.run()
        assert not at.exception
    assert next(s for s in at.selectbox if s.label == "Job").value == job.id
    assert not any(b.key == "admin_cancel_job" for b in at.button)
    history = at.dataframe[0].value
    assert history.loc[0, "job"] == job.id and history.loc[0, "state"] == "finished"
    comparison = at.dataframe[1].value
    assert "roc_auc" in set(comparison["metric"]) and "installed cnn4-binary" in comparison.columns

    at.button(key="admin_promote").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == [f"Promoted cnn4-binary from job {job.id}; the app uses it now."]
    card = json.loads((weights_copy / "cnn4-binary.json").read_text())
    assert card["promoted_from"] == job.id
    assert at.button(key="admin_promote").disabled  # it is the installed model now

    at.button(key="admin_rollback").click().run()
    assert not at.exception
    assert at.success[0].value.startswith("Rolled back cnn4-binary to ")
    assert json.loads((weights_copy / "cnn4-binary.json").read_text())["promoted_from"] != job.id
    assert not at.button(key="admin_promote").disabled


def test_cancel_through_the_page_shows_the_failure_and_log(runs: Path):
    at = sign_in(admin_page(), PASSWORD)
    at.selectbox(key="admin_epochs").set_value(200)
    at.selectbox(key="admin_subset").set_value(24)
    at.selectbox(key="admin_device").set_value("cpu")
    at.button(key="admin_start_training").click().run()
    [job] = jobs.list_jobs()
    assert job.state == "running" and job.epochs == 200
    at.button(key="admin_cancel_job").click().run()
    assert not at.exception
    assert jobs.get_job(job.id).state == "failed"
    assert f"Job {job.id} failed: cancelled" in errors(at)
    assert at.code  # the last lines of train.log
    assert not at.button(key="admin_start_training").disabled
