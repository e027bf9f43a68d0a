"""cxrdemo: see what chest X-ray classifiers do. Start with `streamlit run app.py`."""

import streamlit as st

from cxrdemo.app.ui import navigation

st.set_page_config(page_title="cxrdemo", page_icon=":material/pulmonology:", layout="wide")
navigation()
