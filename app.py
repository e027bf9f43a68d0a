"""cxrdemo: see what chest X-ray classifiers do. Start with `streamlit run app.py`.

This file plays two parts. Streamlit runs it as every session's script (`__name__ == "__main__"`):
it builds the navigation. Before that, `streamlit run` finds the `st.App` below and imports this file
as the server, whose lifespan imports the backend, loads the models and answers a blank image the
moment the server starts, so that the first upload does not wait for any of it (`cxrdemo.app.ui`).
"""

import streamlit as st

if __name__ == "__main__":
    from cxrdemo.app.ui import navigation

    st.set_page_config(page_title="cxrdemo", page_icon=":material/pulmonology:", layout="wide")
    navigation()
else:
    from cxrdemo.app.ui import server_lifespan

    app = st.App(__file__, lifespan=server_lifespan)
