"""Shared fixtures: the bundled sample, the full dataset when present, a private weights folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from benchmarks.streamlit_server import CHROMIUM, CHROMIUM_ARGS, serve
from cxrdemo.paths import REPO_ROOT, SAMPLE_DIR
from tests.weights_snapshot import snapshot_weights

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


def pytest_configure(config: pytest.Config) -> None:
    """The whole session reads one consistent snapshot of the weights, never the live folder.

    A training campaign may promote a model into `weights/` while the suite runs; every test, AppTest
    and server started here sees the snapshot instead (CXRDEMO_WEIGHTS, inherited by subprocesses).
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    session = Path(tempfile.mkdtemp(prefix="cxrdemo-tests-"))
    config._cxrdemo_session_dir = session  # type: ignore[attr-defined]
    os.environ["CXRDEMO_WEIGHTS"] = str(snapshot_weights(session / "weights"))


def pytest_unconfigure(config: pytest.Config) -> None:
    session = getattr(config, "_cxrdemo_session_dir", None)
    if session is not None:
        shutil.rmtree(session, ignore_errors=True)


@pytest.fixture()
def weights_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the session's weights that the test may change; CXRDEMO_WEIGHTS points at it."""
    target = snapshot_weights(tmp_path / "weights")
    monkeypatch.setenv("CXRDEMO_WEIGHTS", str(target))
    return target


# --- real browser: pytest-playwright with the system Chromium and a Streamlit server ---------------
# (recipe: ../shared/guides/browser-tests.md, verified with Streamlit 1.67 and Debian's Chromium)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not Path(CHROMIUM).exists():
        message = f"no system chromium at {CHROMIUM} (apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must not go green by skipping the browser test
        pytest.skip(message)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}}


@pytest.fixture(scope="session")
def streamlit_server(tmp_path_factory):
    """`streamlit run app.py` on a free loopback port, with admin enabled and private runs/weights."""
    work = tmp_path_factory.mktemp("server")
    log = work / "server.log"
    env = {
        "CXRDEMO_ADMIN_PASSWORD": "e2e-secret",
        "CXRDEMO_RUNS": str(work / "runs"),
        "CXRDEMO_WEIGHTS": str(snapshot_weights(work / "weights")),
    }
    port = int(os.environ["E2E_PORT"]) if os.environ.get("E2E_PORT") else None
    with serve(env, log, port) as url:
        yield {"url": url, "log": log, "password": "e2e-secret"}
