"""Only `cxrdemo.app.ui` may import Streamlit; the training path needs neither Grad-CAM, pydicom nor Streamlit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from cxrdemo.paths import REPO_ROOT

BACKEND_MODULES = sorted(
    ".".join(p.relative_to(REPO_ROOT).with_suffix("").parts).removesuffix(".__init__")
    for p in (REPO_ROOT / "cxrdemo").rglob("*.py")
    if p.stem not in ("ui", "__main__")
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_backend_modules_do_not_import_streamlit():
    assert "cxrdemo.training.loop" in BACKEND_MODULES and "cxrdemo.inference.predict" in BACKEND_MODULES
    code = textwrap.dedent(f"""
        import importlib, json, sys
        modules = {BACKEND_MODULES!r}
        for name in modules:
            importlib.import_module(name)
        print(json.dumps({{"streamlit": sorted(m for m in sys.modules if m.split(".")[0] == "streamlit"),
                          "imported": [m for m in modules if m in sys.modules]}}))
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == BACKEND_MODULES
    assert report["streamlit"] == []


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = {"pytorch_grad_cam", "pydicom", "streamlit"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
""")


def test_blocker_really_blocks():
    result = run_python(BLOCKER + "import pydicom")
    assert result.returncode != 0
    assert "pydicom is blocked in this test" in result.stderr


def test_training_path_needs_no_gradcam_dicom_or_streamlit():
    code = BLOCKER + textwrap.dedent("""
        import cxrdemo.training.run, cxrdemo.zoo, cxrdemo.training.finalize, cxrdemo.training.anomaly
        import cxrdemo.inference.knn, cxrdemo.app.cli
        from cxrdemo.app.cli import build_parser
        build_parser().parse_args(["train", "--arch", "cnn4", "--out", "x"])
        print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_a_default_answer_needs_neither_torchvision_nor_gradcam():
    """The app's first answer after a start: the default model's prediction and heatmap load neither
    torchvision (2 s of import on 2 cores) nor pytorch-grad-cam with matplotlib (3.6 s)."""
    code = textwrap.dedent("""
        import sys
        from cxrdemo.imaging.decode import load_image_file
        from cxrdemo.inference.predict import Predictor
        from cxrdemo.paths import SAMPLE_DIR

        predictor = Predictor()
        predictor.warm_up()
        image = load_image_file(sorted((SAMPLE_DIR / "test" / "PNEUMONIA").glob("*.jpeg"))[0])
        prediction, explanation, _ = predictor.predict_and_explain(image)
        assert prediction.prediction == "PNEUMONIA" and explanation.heatmap.shape == image.pixels.shape
        print(sorted({m.split(".")[0] for m in sys.modules} & {"torchvision", "pytorch_grad_cam", "matplotlib"}))
    """)
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
