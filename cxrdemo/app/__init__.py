"""Entry points and the app's helpers: the command line (`cli`), the only Streamlit module (`ui`), the Diagnose
page's computations (`diagnosis`) and the admin login (`auth`). May import every layer.
"""
