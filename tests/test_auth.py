"""Admin password lookup, constant-time comparison and the on-disk lockout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cxrdemo.app import auth


@pytest.mark.parametrize(
    ("given", "expected", "ok"),
    [
        ("demo", "demo", True),
        ("demo", "Demo", False),
        ("dem", "demo", False),
        ("demo ", "demo", False),
        ("", "demo", False),
        (None, "demo", False),
        ("demo", None, False),
        ("", "", False),
        ("pässwörd", "pässwörd", True),
        ("pässwörd", "passwort", False),
    ],
)
def test_check_password(given, expected, ok):
    assert auth.check_password(given, expected) is ok


def test_admin_password_prefers_secrets_then_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(auth.PASSWORD_ENV, raising=False)
    assert auth.admin_password(None) is None
    assert auth.admin_password({}) is None
    assert auth.admin_password({"admin_password": ""}) is None  # blank is "not configured", never a password
    monkeypatch.setenv(auth.PASSWORD_ENV, "from-env")
    assert auth.admin_password(None) == "from-env"
    assert auth.admin_password({"admin_password": "from-secrets"}) == "from-secrets"
    monkeypatch.setenv(auth.PASSWORD_ENV, "")
    assert auth.admin_password({}) is None


def test_lockout_after_failures_and_expiry(tmp_path: Path):
    lock = auth.Lockout(tmp_path / "lockout.json", max_failures=3, window_s=60, lock_s=0.6)
    assert lock.is_locked() == 0.0
    assert lock.register_failure() == 0.0
    assert lock.register_failure() == 0.0
    assert lock.is_locked() == 0.0
    remaining = lock.register_failure()
    assert 0.0 < remaining <= 0.6
    assert 0.0 < lock.is_locked() <= 0.6
    assert lock.is_locked("someone-else") == 0.0
    time.sleep(0.7)
    assert lock.is_locked() == 0.0
    assert lock.register_failure() == 0.0  # the count started again after the lock


def test_failures_outside_the_window_are_forgotten(tmp_path: Path):
    lock = auth.Lockout(tmp_path / "lockout.json", max_failures=2, window_s=0.3, lock_s=60)
    lock.register_failure()
    time.sleep(0.4)
    assert lock.register_failure() == 0.0
    assert lock.register_failure() > 0.0


def test_lockout_persists_across_instances(tmp_path: Path):
    path = tmp_path / "lockout.json"
    first = auth.Lockout(path, max_failures=2, lock_s=30)
    first.register_failure()
    second = auth.Lockout(path, max_failures=2, lock_s=30)  # a restarted app, or another session
    assert second.register_failure() > 0.0
    assert 25 < first.is_locked() <= 30
    assert 25 < auth.Lockout(path).is_locked() <= 30
    assert json.loads(path.read_text())["admin"]["locked_until"] > time.time()


def test_reset_clears_failures_and_lock(tmp_path: Path):
    path = tmp_path / "lockout.json"
    lock = auth.Lockout(path, max_failures=2, lock_s=30)
    lock.register_failure()
    lock.register_failure()
    assert lock.is_locked() > 0
    lock.reset()
    assert auth.Lockout(path, max_failures=2).is_locked() == 0.0
    assert lock.register_failure() == 0.0  # the earlier failures no longer count


def test_default_file_lives_under_runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CXRDEMO_RUNS", str(tmp_path / "runs"))
    lock = auth.Lockout(max_failures=1, lock_s=30)
    assert lock.register_failure() > 0
    assert (tmp_path / "runs" / auth.LOCKOUT_FILE).is_file()


def test_damaged_file_does_not_break_the_page(tmp_path: Path):
    path = tmp_path / "lockout.json"
    path.write_text("{not json")
    lock = auth.Lockout(path, max_failures=2, lock_s=30)
    assert lock.is_locked() == 0.0
    lock.register_failure()
    assert json.loads(path.read_text())["admin"]["failures"]
