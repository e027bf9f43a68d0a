"""The one module that imports Streamlit: cached backend objects and the shared page frame.

Pages call `page_frame(title)` first; it draws the sidebar (active model, device, data location)
and the research-only notice, and returns the shared `Predictor`.
"""

from __future__ import annotations

import streamlit as st
import torch

from cxrdemo.paths import data_dir, weights_dir
from cxrdemo.predict import Predictor

NOTICE = "Research demo, not for clinical use: predictions are not a diagnosis."
MODEL_KEY = "active_model"


@st.cache_resource(show_spinner=False)
def get_predictor(directory: str) -> Predictor:
    """One predictor (and so one copy of each model) shared by every session of this server."""
    from pathlib import Path

    return Predictor(Path(directory))


def predictor() -> Predictor:
    return get_predictor(str(weights_dir()))


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


def page_frame(title: str, icon: str = "") -> Predictor:
    """Title, notice and sidebar shared by every page."""
    pred = predictor()
    st.title(f"{icon} {title}".strip())
    st.caption(NOTICE)
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
    return pred
