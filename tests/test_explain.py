"""CAM explanations on real sample X-rays with small, randomly initialised registry models."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cxrdemo.imaging.preprocess import Preprocessing, to_input
from cxrdemo.inference.explain import CAM_METHODS, Explanation, explain, fast_gradcam, overlay_heatmap
from cxrdemo.models.architectures import Classifier, create_model

SPEC = Preprocessing()


def _load(path: Path) -> np.ndarray:
    return np.array(Image.open(path).convert("L"))  # np.array, not asarray: a writable copy


@pytest.fixture(autouse=True, scope="module")
def _one_intra_op_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core runner OpenMP's spinning barriers made these tests ~15x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(sample_dir: Path) -> list[np.ndarray]:
    """Real test-split X-rays of both classes, at their own (non-square) sizes."""
    paths = [sorted((sample_dir / "test" / label).glob("*.jpeg"))[:3] for label in ("PNEUMONIA", "NORMAL")]
    return [_load(p) for group in paths for p in group]


def _model(name: str) -> Classifier:
    torch.manual_seed(0)
    return create_model(name, num_classes=2).eval()


def _assert_clean(model: torch.nn.Module) -> None:
    """No hooks left on any module and no gradient left on any parameter."""
    for name, module in model.named_modules():
        assert not module._forward_hooks, name
        assert not module._forward_pre_hooks, name
        assert not module._backward_hooks, name
    assert all(p.grad is None for p in model.parameters())


def _check(e: Explanation, pixels: np.ndarray) -> None:
    assert e.heatmap.shape == pixels.shape
    assert e.heatmap.dtype == np.float32
    assert np.isfinite(e.heatmap).all()
    assert 0.0 <= e.heatmap.min() and e.heatmap.max() <= 1.0
    assert e.heatmap.max() > 0.5  # normalised, not all zero
    assert e.overlay.shape == (*pixels.shape, 3) and e.overlay.dtype == np.uint8
    assert e.logits.shape == (2,) and np.isfinite(e.logits).all()


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_every_method_runs(images: list[np.ndarray], method: str) -> None:
    model = _model("cnn4")
    # ScoreCAM runs one forward pass per channel (256 for cnn4): a small input keeps it quick.
    spec = Preprocessing(input_size=64) if method == "scorecam" else SPEC
    pixels = images[0]
    e = explain(model, pixels, spec, method=method)
    _check(e, pixels)
    assert e.method == method
    assert e.target_class == int(np.argmax(e.logits))
    with torch.no_grad():
        np.testing.assert_allclose(e.logits, model(to_input(pixels, spec))[0].numpy(), atol=1e-5)
    assert not model.training
    _assert_clean(model)


@pytest.mark.parametrize("name", ["cnn4", "zubinrnet", "resnet18"])
@pytest.mark.parametrize("target", [0, 1])
def test_fast_path_matches_pytorch_grad_cam(images: list[np.ndarray], name: str, target: int) -> None:
    model = _model(name)
    x = to_input(images[1], SPEC)
    logits, cam = fast_gradcam(model, x, target)
    assert cam.shape == model.features(x).shape[-2:] and cam.dtype == np.float32
    _assert_clean(model)

    with GradCAM(model=model, target_layers=[model.features[-1]]) as reference:
        expected = reference(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
    model.zero_grad(set_to_none=True)  # the library's backward() filled the parameters' .grad
    _assert_clean(model)

    # Upsample the same way pytorch-grad-cam does, then min-max both alike.
    ours = scale_cam_image(scale_cam_image(cam[None], x.shape[-2:][::-1]))[0]
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-4


@pytest.mark.parametrize("name", ["cnn4", "zubinrnet", "resnet18"])
def test_fast_path_logits_are_the_model_output(images: list[np.ndarray], name: str) -> None:
    model = _model(name)
    x = to_input(images[2], SPEC)
    logits, _ = fast_gradcam(model, x)
    with torch.no_grad():
        expected = model(x)
    assert logits.shape == expected.shape == (1, 2)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    e = explain(model, images[2], SPEC)
    np.testing.assert_allclose(e.logits, expected[0].numpy(), atol=1e-5)
    assert e.target_class == int(expected.argmax())


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_target_class_changes_the_heatmap(images: list[np.ndarray], method: str) -> None:
    model = _model("zubinrnet")
    a = explain(model, images[0], SPEC, method=method, target_class=0)
    b = explain(model, images[0], SPEC, method=method, target_class=1)
    assert (a.target_class, b.target_class) == (0, 1)
    np.testing.assert_array_equal(a.logits, b.logits)
    assert np.abs(a.heatmap - b.heatmap).max() > 0.1


def test_concurrent_calls_match_a_sequential_run(images: list[np.ndarray]) -> None:
    model = _model("cnn4")
    spec = Preprocessing(input_size=128)  # small inputs keep 40 calls quick on a 2-core runner
    jobs = [(images[i % len(images)], "gradcam" if i % 2 else "gradcam++") for i in range(20)]

    def run(job: tuple[np.ndarray, str]) -> Explanation:
        pixels, method = job
        return explain(model, pixels, spec, method=method)

    sequential = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(run, jobs))

    for s, p in zip(sequential, parallel, strict=True):
        assert (s.method, s.target_class) == (p.method, p.target_class)
        np.testing.assert_allclose(p.logits, s.logits, atol=1e-6)
        np.testing.assert_allclose(p.heatmap, s.heatmap, atol=1e-6)
    _assert_clean(model)
    assert not model.training


def test_training_flag_is_restored(images: list[np.ndarray]) -> None:
    model = _model("cnn4")
    expected = {m: explain(model, images[0], SPEC, method=m) for m in ("gradcam", "layercam")}
    model.train()
    for method, e in expected.items():
        got = explain(model, images[0], SPEC, method=method)
        assert model.training, method
        np.testing.assert_allclose(got.heatmap, e.heatmap, atol=1e-6)  # computed in eval mode all the same
    _assert_clean(model)


def test_caller_gradients_are_left_alone(images: list[np.ndarray]) -> None:
    model = _model("cnn4")
    weight = model.head[-1].weight
    weight.grad = torch.ones_like(weight)
    before = weight.grad
    for method in ("gradcam", "gradcam++"):
        explain(model, images[0], SPEC, method=method)
        assert weight.grad is before and bool((before == 1).all())
    assert all(p.grad is None for p in model.parameters() if p is not weight)


def test_works_inside_inference_mode(images: list[np.ndarray]) -> None:
    model = _model("zubinrnet")
    expected = {m: explain(model, images[0], SPEC, method=m) for m in ("gradcam", "hirescam")}
    with torch.inference_mode():
        for method, e in expected.items():
            np.testing.assert_allclose(explain(model, images[0], SPEC, method=method).heatmap, e.heatmap, atol=1e-6)


def test_another_layer_goes_through_the_library(images: list[np.ndarray]) -> None:
    model = _model("cnn4")
    layer = model.features[-2]
    e = explain(model, images[0], SPEC, layer=layer)
    _check(e, images[0])
    assert not np.allclose(e.heatmap, explain(model, images[0], SPEC).heatmap, atol=1e-3)
    _assert_clean(model)
    with pytest.raises(ValueError, match="submodule"):
        explain(model, images[0], SPEC, layer=torch.nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_an_all_negative_cam_stays_zero(images: list[np.ndarray], method: str) -> None:
    model = _model("zubinrnet")
    with torch.no_grad():  # class 0's weights all negative on non-negative (post-ReLU) features: ReLU(cam) = 0
        model.head[-1].weight[0].copy_(-model.head[-1].weight[0].abs())
    e = explain(model, images[0], SPEC, method=method, target_class=0)
    assert np.isfinite(e.heatmap).all() and not e.heatmap.any()
    if method == "gradcam":
        _, cam = fast_gradcam(model, to_input(images[0], SPEC), 0)
        assert np.isfinite(cam).all() and not cam.any()
    _assert_clean(model)


def test_bad_arguments(images: list[np.ndarray]) -> None:
    model = _model("cnn4")
    with pytest.raises(ValueError, match=r"gradcam\+\+.*scorecam"):
        explain(model, images[0], SPEC, method="gradcam--")
    for target in (2, -1):
        with pytest.raises(ValueError, match="out of range"):
            explain(model, images[0], SPEC, target_class=target)
        with pytest.raises(ValueError, match="out of range"):
            explain(model, images[0], SPEC, method="gradcam++", target_class=target)
    with pytest.raises(ValueError, match="classifier"):
        explain(create_model("autoencoder"), images[0], SPEC)
    _assert_clean(model)


def test_overlay_opacity(images: list[np.ndarray]) -> None:
    pixels = images[0]
    e = explain(_model("cnn4"), pixels, SPEC)
    gray_rgb = np.repeat(pixels[..., None], 3, axis=-1)
    np.testing.assert_array_equal(overlay_heatmap(pixels, e.heatmap, opacity=0.0), gray_rgb)
    full = overlay_heatmap(pixels, e.heatmap, opacity=1.0)
    assert full.dtype == np.uint8 and full.shape == gray_rgb.shape
    assert not np.array_equal(full, gray_rgb)
    np.testing.assert_array_equal(overlay_heatmap(pixels, e.heatmap, 0.4), e.overlay)
    # jet: the hottest pixel is red-dominant, the coldest blue-dominant
    hot, cold = np.unravel_index(e.heatmap.argmax(), pixels.shape), np.unravel_index(e.heatmap.argmin(), pixels.shape)
    assert full[hot][0] > full[hot][2] and full[cold][2] > full[cold][0]
    with pytest.raises(ValueError):
        overlay_heatmap(pixels, e.heatmap, opacity=1.5)
