"""cxrdemo: see what chest X-ray classifiers do. Start with `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="cxrdemo", page_icon="🫁", layout="wide")

navigation = st.navigation(
    [
        st.Page("pages/diagnose.py", title="Diagnose", icon="🩻", default=True),
        st.Page("pages/explorer.py", title="Dataset explorer", icon="🗂️"),
        st.Page("pages/performance.py", title="Model performance", icon="📈"),
        st.Page("pages/admin.py", title="Admin", icon="🔐"),
    ]
)
navigation.run()
