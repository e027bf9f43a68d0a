"""Shared fixtures: the bundled sample, the full dataset when present, a private weights folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR

FULL_DATA = Path(os.environ.get("CXRDEMO_DATA") or REPO_ROOT.parent / "shared" / "data" / "chest_xray")


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    """The full Kermany dataset; CI has it, so a missing copy fails there instead of skipping."""
    if not (FULL_DATA / "manifest.csv").exists():
        if os.environ.get("CI"):
            pytest.fail(f"full dataset missing at {FULL_DATA}")
        pytest.skip(f"full dataset not at {FULL_DATA}")
    return FULL_DATA


@pytest.fixture(scope="session")
def sample_jpeg_bytes(sample_dir: Path) -> bytes:
    """A real chest X-ray from the bundled sample (test split, pneumonia)."""
    path = sorted((sample_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    return path.read_bytes()


@pytest.fixture()
def weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of `weights/` that the test may change; CXRDEMO_WEIGHTS points at it."""
    target = tmp_path / "weights"
    shutil.copytree(REPO_ROOT / "weights", target, ignore=shutil.ignore_patterns(".rollback"))  # as in a clean clone
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(target))
    return target


# --- real browser: pytest-playwright with the system Chromium and a Streamlit server ---------------
# (recipe: ../shared/guides/browser-tests.md, verified with Streamlit 1.67 and Debian's Chromium)
import shutil as _shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

CHROMIUM = os.environ.get("E2E_CHROMIUM") or _shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():
        message = f"no system chromium at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must not go green by skipping the browser test
        pytest.skip(message)
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def streamlit_server(tmp_path_factory):
    """`streamlit run app.py` on a free loopback port, with admin enabled and private runs/weights."""
    port = int(os.environ.get("E2E_PORT") or _free_port())
    work = tmp_path_factory.mktemp("server")
    log = work / "server.log"
    weights = work / "weights"
    _shutil.copytree(REPO_ROOT / "weights", weights, ignore=_shutil.ignore_patterns(".rollback"))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "CXRDEMO_ADMIN_PASSWORD": "e2e-secret",
        "CXRDEMO_RUNS": str(work / "runs"),
        "CXRDEMO_WEIGHTS": str(weights),
    }
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        "app.py",
        "--server.headless",
        "true",
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--browser.gatherUsageStats",
        "false",
    ]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    try:
        deadline = time.monotonic() + 60
        url = f"http://127.0.0.1:{port}"
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited rc={proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(log.read_text()[-4000:])
            time.sleep(0.2)
        yield {"url": url, "log": log, "password": "e2e-secret"}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
