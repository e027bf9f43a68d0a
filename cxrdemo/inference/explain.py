"""Class activation maps: where in the X-ray a classifier looked.

`explain(model, pixels, spec)` returns the logits, a heatmap at the image's own resolution and a
coloured overlay. The default (Grad-CAM on the last block of the trunk) takes a fast path that gets the
prediction and the heatmap from one forward pass: the trunk runs once without autograd, and gradients
flow only through the small head (see `fast_gradcam`). Every other method, or Grad-CAM on another
layer, goes through pytorch-grad-cam.

Thread safety: one model object may be shared by many threads (a Streamlit server). pytorch-grad-cam
registers forward hooks on the model, and those hooks would also record the activations of any other
forward pass through the same layer, fast path included. So each model gets a readers-writer lock:
fast-path calls hold it shared and run in parallel; pytorch-grad-cam calls (and any call that must
switch a model out of training mode) hold it alone.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from cxrdemo.imaging import lungs
from cxrdemo.imaging.preprocess import Preprocessing, paste_back, to_input
from cxrdemo.models.architectures import Classifier, cam_target_layer
from cxrdemo.precision import autocast

# method name -> pytorch-grad-cam class name; the library (and matplotlib with it) is imported on first
# use, which keeps about a second off the app's cold start
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}


def cam_class(method: str) -> type:
    """The pytorch-grad-cam class behind a method name."""
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CAM_METHODS[method])


# ScoreCAM runs one forward pass per channel of the target layer (256-2048 here); pytorch-grad-cam
# batches them 16 at a time by default. 32 keeps the peak memory of a ResNet-50 at 224 px modest.
SCORECAM_BATCH_SIZE = 32


@dataclass
class Explanation:
    logits: np.ndarray  # (C,) raw logits of the forward pass that produced the heatmap
    heatmap: np.ndarray  # HxW float32 in [0, 1], at the resolution of the pixels passed in
    overlay: np.ndarray  # HxWx3 uint8: the grayscale image with the jet-coloured heatmap blended in
    method: str  # a key of CAM_METHODS
    target_class: int  # the class explained (the predicted one unless asked otherwise)
    lung_fields: lungs.LungFields | None = None  # the lungs found (None: no lung model installed)
    lung_share: float | None = None  # share of heatmap mass inside the lungs (None: no plausible lungs)


# --- per-model readers-writer lock -------------------------------------------------------------------


class _ModelLock:
    """Many shared holders or one exclusive holder; a waiting exclusive holder blocks new shared ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            # Writer preference: without it a steady stream of fast-path calls starves pytorch-grad-cam.
            self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                self._cond.wait_for(lambda: not self._writer and not self._readers)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


_LOCKS: weakref.WeakKeyDictionary[torch.nn.Module, _ModelLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(model: torch.nn.Module) -> _ModelLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = _ModelLock()
        return lock


@contextmanager
def _in_eval_mode(model: torch.nn.Module, *, hooks: bool) -> Iterator[None]:
    """Hold the model's lock (shared unless `hooks`) with the model in eval mode, restored afterwards.

    The training flag is read only under the lock: an exclusive holder may have flipped it for a while.
    """
    lock = _lock_for(model)
    if not hooks:
        with lock.shared():
            if not model.training:
                yield
                return
    # Hooks to register, or a model left in training mode: switching modes must not be seen by others.
    with lock.exclusive():
        was_training = model.training
        model.eval()
        try:
            yield
        finally:
            model.train(was_training)


# --- Grad-CAM in one forward pass ----------------------------------------------------------------------


def _num_classes(model: Classifier) -> int:
    return model.num_classes


def _check_target(model: Classifier, target_class: int | None) -> None:
    n = _num_classes(model)
    if target_class is not None and not 0 <= target_class < n:
        raise ValueError(f"target_class {target_class} is out of range for a {n}-class model")


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] like pytorch-grad-cam's `scale_cam_image`; a flat map becomes all zeros."""
    cam = cam - cam.min()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def _fast_gradcam(
    model: Classifier, x: torch.Tensor, target_class: int | None, precision: str = "fp32"
) -> tuple[torch.Tensor, torch.Tensor, int]:
    # inference_mode(False): a caller inside torch.inference_mode() would otherwise get inference tensors,
    # which cannot require grad.
    with torch.inference_mode(False):
        with torch.no_grad(), autocast(x.device, precision):
            # the whole trunk, once, without building a graph (as `forward.classify` runs it)
            feats = model.features(x).float()
        activations = feats.detach().requires_grad_()
        with torch.enable_grad():
            logits = model.head(activations)
            c = int(logits[0].argmax()) if target_class is None else target_class
            # autograd.grad, not backward(): only dL/dA is computed and no parameter's .grad is touched,
            # so concurrent calls on one model do not race on shared gradient buffers.
            (grad,) = torch.autograd.grad(logits[0, c], activations)
        # Selvaraju et al. 2017, eq. 1-2: alpha_k = mean_ij dy_c/dA_k^ij, L = ReLU(sum_k alpha_k A_k).
        weights = grad[0].mean(dim=(1, 2), keepdim=True)
        cam = torch.relu((weights * feats[0]).sum(dim=0))
    return logits.detach(), _normalise(cam), c


def fast_gradcam(
    model: Classifier, x: torch.Tensor, target_class: int | None = None, precision: str = "fp32"
) -> tuple[torch.Tensor, np.ndarray]:
    """Logits (1, C) and the Grad-CAM of `model.features[-1]` for a (1, 1, S, S) input, from one forward.

    The CAM is at feature-map resolution, float32 in [0, 1]; `target_class` None explains the predicted
    class. Registers no hooks and leaves every parameter's `.grad` alone.
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image as a (1, C, H, W) tensor, got shape {tuple(x.shape)}")
    cam_target_layer(model)  # raises for anything but a Classifier
    _check_target(model, target_class)
    with _in_eval_mode(model, hooks=False):
        logits, cam, _ = _fast_gradcam(model, x, target_class, precision)
    return logits, cam.float().cpu().numpy()


# --- pytorch-grad-cam ----------------------------------------------------------------------------------


@contextmanager
def _grads_kept(model: torch.nn.Module) -> Iterator[None]:
    """Put back every parameter's .grad: BaseCAM zeroes them and its backward() fills them."""
    saved = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, grad in saved:
            p.grad = grad


def _library_cam(
    model: Classifier, x: torch.Tensor, method: str, layer: torch.nn.Module, target_class: int | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(logits (1, C), CAM at the input tensor's size, target class) from pytorch-grad-cam."""
    result = None
    # The grads are saved and restored inside the exclusive lock, so concurrent calls cannot interleave.
    with _in_eval_mode(model, hooks=True), _grads_kept(model), torch.inference_mode(False), torch.enable_grad():
        # `with` releases the hooks even on error (BaseCAM.__exit__ -> ActivationsAndGradients.release).
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with cam_class(method)(model=model, target_layers=[layer]) as cam:
            if method == "scorecam":
                cam.batch_size = SCORECAM_BATCH_SIZE
            targets = None if target_class is None else [ClassifierOutputTarget(target_class)]
            grayscale = cam(input_tensor=x, targets=targets)
            # BaseCAM.forward keeps the logits of its own forward pass; targets=None means argmax.
            logits = cam.outputs.detach()
            c = int(logits[0].argmax()) if target_class is None else target_class
            result = logits, torch.from_numpy(grayscale[0]), c
    if result is None:  # BaseCAM.__exit__ prints and swallows IndexError (pytorch-grad-cam base_cam.py)
        raise RuntimeError(f"{method} failed on layer {type(layer).__name__}; see the message printed above")
    return result


# --- public API ----------------------------------------------------------------------------------------


def overlay_heatmap(pixels: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """HxWx3 uint8: the grayscale image in RGB with the jet-coloured heatmap blended in at `opacity`.

    Cheap enough to call on every move of an opacity slider without recomputing the CAM.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    if pixels.ndim != 2 or heatmap.shape != pixels.shape:
        raise ValueError(f"need an HxW image and a heatmap of the same shape, got {pixels.shape} and {heatmap.shape}")
    # uint8 OpenCV kernels throughout: a 1600x1200 overlay costs a few milliseconds, not tens
    gray = cv2.cvtColor(np.ascontiguousarray(pixels, dtype=np.uint8), cv2.COLOR_GRAY2RGB)
    heat_u8 = cv2.convertScaleAbs(np.clip(heatmap, 0.0, 1.0), alpha=255.0)
    colour = cv2.cvtColor(cv2.applyColorMap(heat_u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(gray, 1.0 - opacity, colour, opacity, 0.0)


def explain(
    model: Classifier,
    pixels: np.ndarray,
    spec: Preprocessing,
    *,
    method: str = "gradcam",
    target_class: int | None = None,
    opacity: float = 0.4,
    layer: torch.nn.Module | None = None,
    precision: str = "fp32",
    fields: lungs.LungFields | None = None,
) -> Explanation:
    """Explain one grayscale uint8 image (HxW): logits, heatmap and overlay at the image's resolution.

    `fields` are the image's lungs when already found; else they are found here when a lung model is
    installed (a lung-crop model needs them; for any model they give the heatmap's lung share).

    `target_class` None explains the predicted class; `layer` None is `cam_target_layer(model)`;
    `precision` is the trunk's on the fast path (the model's serving precision, `LoadedModel.precision`).
    Safe to call from several threads with one shared model.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)}")
    if pixels.ndim != 2:
        raise ValueError(f"expected a grayscale HxW image, got shape {pixels.shape}")
    default_layer = cam_target_layer(model)  # raises for anything but a Classifier
    _check_target(model, target_class)
    layer = default_layer if layer is None else layer
    if not any(m is layer for m in model.modules()):
        raise ValueError("layer must be a submodule of model")

    with torch.inference_mode(False):  # a normal tensor even for callers in inference mode (autograd saves it)
        if fields is None and (spec.resize == "lung_crop" or lungs.installed()):
            fields = lungs.find_lungs(pixels)
        x = to_input(pixels, spec, fields).to(next(model.parameters()).device)
    if method == "gradcam" and layer is default_layer:
        with _in_eval_mode(model, hooks=False):
            logits, cam, c = _fast_gradcam(model, x, target_class, precision)
    else:
        logits, cam, c = _library_cam(model, x, method, layer, target_class)

    # The map goes back where the square came from: stretched over the whole image (squash) or over
    # the lung window (lung crop, zero outside it), so it lies where the model looked.
    heatmap = np.clip(paste_back(cam.float().cpu().numpy(), pixels.shape, spec, fields), 0.0, 1.0)
    share = None
    if fields is not None and fields.plausible:
        share = lungs.share_inside(heatmap, fields.mask(*pixels.shape))
    return Explanation(
        logits=logits[0].float().cpu().numpy(),
        heatmap=heatmap,
        overlay=overlay_heatmap(pixels, heatmap, opacity),
        method=method,
        target_class=c,
        lung_fields=fields,
        lung_share=share,
    )
