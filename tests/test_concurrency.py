"""Many threads sharing one cached model give exactly the results of a sequential run.

Simultaneous app sessions are tested in real browser pages (tests/test_browser.py): AppTest keeps one
global mock runtime, so several AppTest instances in threads interfere with each other, not the app."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from cxrdemo.imaging.decode import load_image_file
from cxrdemo.inference.predict import Predictor


@pytest.fixture(scope="module")
def images(sample_dir: Path):
    files = sorted((sample_dir / "test").glob("*/*.jpeg"))[:6]
    return [load_image_file(f) for f in files]


def _answer(predictor: Predictor, image, method: str):
    prediction, explanation, _ = predictor.predict_and_explain(image, method=method)
    return prediction.probabilities, prediction.ood_score, explanation.heatmap


def test_twenty_threads_match_sequential(images):
    predictor = Predictor()
    jobs = [(images[i % len(images)], ("gradcam", "gradcam++")[i % 2]) for i in range(20)]
    sequential = [_answer(predictor, image, method) for image, method in jobs]
    with ThreadPoolExecutor(max_workers=20) as pool:
        parallel = list(pool.map(lambda job: _answer(predictor, *job), jobs))
    for (p_seq, ood_seq, heat_seq), (p_par, ood_par, heat_par) in zip(sequential, parallel, strict=True):
        assert p_seq == p_par
        assert ood_seq == ood_par
        np.testing.assert_allclose(heat_seq, heat_par, atol=1e-6)
    model = predictor.get(predictor.explain_network(predictor.default_model_id())[0]).module
    layer = model.features[-1]
    assert not layer._forward_hooks and not layer._backward_hooks
    assert all(p.grad is None for p in model.parameters())
