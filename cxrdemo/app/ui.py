"""The one module that imports Streamlit: cached backend objects and the shared page frame.

Pages call `page_frame(title)` first; it draws the sidebar (active model, device, data location)
and the research-only notice, and returns the shared `Predictor`. The Diagnose page calls its two
halves, `page_header` and `page_sidebar`, itself, so that its uploader is on screen before torch is
imported: this module imports neither torch nor the backend until a predictor is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import streamlit as st

from cxrdemo.paths import data_dir, weights_dir

if TYPE_CHECKING:
    from cxrdemo.inference.predict import Predictor

NOTICE = "Research demo, not for clinical use: predictions are not a diagnosis."
MODEL_KEY = "active_model"
# (file, title, icon) of every page; app.py builds the navigation from this list. Material icons, not
# emoji: emoji render as empty boxes on a machine without an emoji font.
PAGES = [
    ("pages/diagnose.py", "Diagnose", ":material/radiology:"),
    ("pages/explorer.py", "Dataset explorer", ":material/photo_library:"),
    ("pages/performance.py", "Model performance", ":material/monitoring:"),
    ("pages/admin.py", "Admin", ":material/admin_panel_settings:"),
]
_NAVIGATION_RAN = "_cxrdemo_navigation_ran"
_DEEP_LINK = "_cxrdemo_deep_link"


def navigation() -> None:
    """Build and run the app's navigation (called by app.py only).

    A deep link (say /admin) as the very first request of a fresh server makes Streamlit run the page
    file on its own, in its old `pages/` folder mode, without app.py: `page_frame` notices and sends the
    session through app.py once, and this function then forwards it to the page it asked for.
    """
    st.session_state[_NAVIGATION_RAN] = True
    pages = [st.Page(path, title=title, icon=icon, default=i == 0) for i, (path, title, icon) in enumerate(PAGES)]
    current = st.navigation(pages)
    target = st.session_state.pop(_DEEP_LINK, None)
    if target:
        st.switch_page(target)
    current.run()


_PREDICTORS: dict[str, Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def shared_predictor(directory: str) -> Predictor:
    """One predictor (and so one copy of each model) per weights folder for the whole server process.

    The first call imports the backend and starts the predictor's warm-up (models loaded, one blank image
    answered) in the background. `streamlit run app.py` makes that first call when the server starts
    (`server_lifespan`), before any browser connects; a session that asks meanwhile waits for the import,
    not for the models.
    """
    with _PREDICTORS_LOCK:
        if directory not in _PREDICTORS:
            from cxrdemo.inference.predict import Predictor

            pred = _PREDICTORS[directory] = Predictor(Path(directory))
            threading.Thread(target=pred.warm_up, name="cxrdemo-warm-up", daemon=True).start()
        return _PREDICTORS[directory]


# what the Diagnose page imports once its uploader is drawn, besides the predictor (0.5 s on 2 cores)
DIAGNOSE_PAGE_MODULES = ("cxrdemo.app.diagnosis", "cxrdemo.evaluation.report")


WARMED_UP = "cxrdemo: server warmed up"  # the log line's start (tests/test_page_diagnose.py waits for it)


def _warm_server() -> None:
    """Import the backend and the Diagnose page's modules, warm the models up, and log how long it took."""
    from streamlit.logger import get_logger

    start = time.perf_counter()
    pred = shared_predictor(str(weights_dir()))
    for module in DIAGNOSE_PAGE_MODULES:
        importlib.import_module(module)
    pred.wait_until_warm()
    errors = "; ".join(f"{k}: {v}" for k, v in pred.errors.items()) or "no errors"
    get_logger(__name__).info("%s in %.2f s (%s)", WARMED_UP, time.perf_counter() - start, errors)


@contextlib.asynccontextmanager
async def server_lifespan(_app: object) -> AsyncIterator[None]:
    """`st.App` lifespan (see app.py): import the backend and warm the models up when the server starts.

    Without it the first browser session paid for torch's import and the model load (4-7 s on 2 cores)
    on its first upload.
    """
    threading.Thread(target=_warm_server, name="cxrdemo-import", daemon=True).start()
    yield


def predictor() -> Predictor:
    return shared_predictor(str(weights_dir()))


def active_model(pred: Predictor) -> str | None:
    """The model chosen in the sidebar (kept in this session's state)."""
    ids = pred.model_ids("binary")
    if not ids:
        return None
    current = st.session_state.get(MODEL_KEY)
    if current not in ids:
        current = pred.default_model_id()
        st.session_state[MODEL_KEY] = current
    return current


def page_frame(title: str) -> Predictor:
    """Title (with the page's icon from PAGES), notice and sidebar shared by every page."""
    page_header(title)
    pred = predictor()
    page_sidebar(pred)
    return pred


def page_header(title: str) -> None:
    """The page's title (with its icon from PAGES) and the notice; needs no backend."""
    if not st.session_state.get(_NAVIGATION_RAN):
        st.session_state[_DEEP_LINK] = next((path for path, name, _ in PAGES if name == title), PAGES[0][0])
        st.switch_page("app.py")
    icon = next((icon for _, name, icon in PAGES if name == title), "")
    st.title(f"{icon} {title}".strip())
    st.caption(NOTICE)


def page_sidebar(pred: Predictor) -> None:
    """The sidebar every page shares: active model, device, data location, model load errors."""
    import torch  # loaded by the predictor already; here only to name the device

    with st.sidebar:
        ids = pred.model_ids("binary")
        if ids:
            active_model(pred)
            st.selectbox("Active model", ids, key=MODEL_KEY, help="Used by Diagnose; 'ensemble' averages models.")
        else:
            st.error(f"No models installed in {weights_dir()}.")
        st.markdown(f"**Device:** {'CUDA GPU' if torch.cuda.is_available() else 'CPU'}")
        st.markdown(f"**Data:** `{data_dir()}`")
        for model_id, message in pred.errors.items():
            st.warning(f"{model_id}: {message}")
        st.caption(NOTICE)
