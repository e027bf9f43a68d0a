"""The admin password and a lockout after repeated wrong guesses.

The password comes from Streamlit secrets (`admin_password` in `.streamlit/secrets.toml`), then from
the `CXRDEMO_ADMIN_PASSWORD` environment variable; with neither, the admin page is disabled.

Failed attempts are counted in a small JSON file under `runs_dir()`, so a lockout survives a restart
of the app and applies to every browser session at once. The demo keys the lockout on one global
name ("admin") rather than per client: Streamlit gives a page no trustworthy client identity (no
address, and headers can be forged behind a proxy), and with a single shared password a global
lockout is what actually bounds the guessing rate. The price is that a guesser can lock the real
admin out for `lock_s` seconds, which is acceptable for a demo.
"""

from __future__ import annotations

import fcntl
import hmac
import json
import os
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cxrdemo.fileio import atomic_write_json
from cxrdemo.paths import runs_dir

PASSWORD_ENV = "CXRDEMO_ADMIN_PASSWORD"
SECRET_KEY = "admin_password"
ADMIN_KEY = "admin"  # the one global lockout key (see the module docstring for why not per client)
LOCKOUT_FILE = ".admin_lockout.json"


def admin_password(secrets: Mapping[str, Any] | None = None) -> str | None:
    """The configured admin password: `secrets["admin_password"]`, then the environment; None = disabled.

    `secrets` is a plain mapping (the page reads `st.secrets`, which raises when no secrets file exists).
    An empty string counts as not configured, so a blank setting can never be "the password".
    """
    value = secrets.get(SECRET_KEY) if secrets is not None else None
    if not value:
        value = os.environ.get(PASSWORD_ENV)
    return str(value) if value else None


def check_password(given: str | None, expected: str | None) -> bool:
    """True when `given` equals `expected`, compared in constant time (`hmac.compare_digest`)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class Lockout:
    """Counts failures per key in a JSON file; `max_failures` within `window_s` lock the key for `lock_s`."""

    def __init__(
        self, path: Path | None = None, *, max_failures: int = 5, window_s: float = 300.0, lock_s: float = 300.0
    ) -> None:
        self.path = path or runs_dir() / LOCKOUT_FILE
        self.max_failures = max_failures
        self.window_s = window_s
        self.lock_s = lock_s

    def is_locked(self, key: str = ADMIN_KEY) -> float:
        """Seconds until `key` may try again; 0.0 when it is not locked."""
        entry = self._read().get(key, {})
        return max(0.0, float(entry.get("locked_until", 0.0)) - time.time())

    def register_failure(self, key: str = ADMIN_KEY) -> float:
        """Record a wrong password; returns the seconds `key` is now locked for (0.0 if not yet)."""
        with self._exclusive():
            state = self._read()
            now = time.time()
            entry = state.get(key, {})
            failures = [t for t in entry.get("failures", []) if now - t < self.window_s] + [now]
            locked_until = float(entry.get("locked_until", 0.0))
            if len(failures) >= self.max_failures:
                locked_until, failures = now + self.lock_s, []
            state[key] = {"failures": failures, "locked_until": locked_until}
            atomic_write_json(self.path, state)
        return max(0.0, locked_until - now)

    def reset(self, key: str = ADMIN_KEY) -> None:
        """Forget `key`'s failures and lock (after a successful login)."""
        with self._exclusive():
            state = self._read()
            if state.pop(key, None) is not None:
                atomic_write_json(self.path, state)

    def _read(self) -> dict:
        try:
            state = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # A damaged file must not unlock anything silently forever, but it also must not break the
            # page: start counting afresh (the next failure rewrites it atomically).
            return {}
        return state if isinstance(state, dict) else {}

    @contextmanager
    def _exclusive(self):
        """Serialise read-modify-write across sessions and processes, so no failure is lost."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
