"""cxrdemo: chest X-ray classifiers you can inspect.

The package is the engine under the Streamlit app and runs without Streamlit:
`python -m cxrdemo --help` lists the command line.
"""

__version__ = "0.1.0"
