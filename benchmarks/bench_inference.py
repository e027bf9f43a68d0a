"""CPU latency from the bytes of a full-resolution chest X-ray JPEG to probabilities and a Grad-CAM heatmap.

    python -m benchmarks.bench_inference [--repeats 30] [--threads 2] [--models ID ...]

Two tables per run. The first, per installed single-network model: model load (file to serving form:
batch norms folded, channels_last), one prediction (p50/p95), prediction plus Grad-CAM from one forward
pass (p50/p95), the typical path (PIL decode + torchvision resize, a forward for the prediction, then
pytorch-grad-cam with its own forward and a full backward, on the network as its file loads it), their
ratio against the target (predict + Grad-CAM at most 1/3 of the typical path) and a batch of 32.
The second splits predict + Grad-CAM into its stages (p50 of each, timed separately with the same
functions the app calls): decode (bytes -> grayscale pixels), out-of-distribution check (autoencoder +
image statistics), preprocess (square resize + normalise), forward (the trunk at the model's serving
precision and the head), CAM (the extra backward to the last block; the fast path's forward is the one
above), overlay (heatmap stretched to 1600x1200 and blended). The stages sum to about the whole.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch
from PIL import Image

from cxrdemo.imaging.decode import load_image
from cxrdemo.imaging.preprocess import to_input
from cxrdemo.inference.explain import fast_gradcam, overlay_heatmap
from cxrdemo.inference.forward import classify
from cxrdemo.inference.predict import Predictor
from cxrdemo.models.architectures import cam_target_layer
from cxrdemo.models.folding import serving_form
from cxrdemo.models.registry import load_model
from cxrdemo.paths import SAMPLE_DIR
from cxrdemo.precision import processor_name

TARGET_RATIO = 1 / 3  # issue 11: predict + Grad-CAM p50 at most a third of the typical path's


def full_resolution_jpeg() -> bytes:
    """A 1600x1200 JPEG made from a bundled test image (the bundle keeps only small copies)."""
    source = sorted((SAMPLE_DIR / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    img = Image.open(source).convert("L").resize((1600, 1200), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def p50_ms(fn: Callable[[], object], repeats: int) -> float:
    return percentiles(timed(fn, repeats))[0]


def typical_path(data: bytes, model: torch.nn.Module, spec) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchvision import transforms

    img = Image.open(io.BytesIO(data)).convert("L")
    x = transforms.Compose(
        [
            transforms.Resize((spec.input_size, spec.input_size)),
            transforms.ToTensor(),
            transforms.Normalize([spec.mean], [spec.std]),
        ]
    )(img)[None]
    with torch.no_grad():
        pred = int(model(x).argmax())
    with GradCAM(model=model, target_layers=[cam_target_layer(model)]) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(pred)])


def stage_times(predictor: Predictor, model_id: str, data: bytes, repeats: int) -> dict[str, float]:
    """p50 ms of each stage of predict + Grad-CAM, each timed on its own."""
    model = predictor.get(model_id)
    pixels = load_image(data, "x.jpeg").pixels
    x = to_input(pixels, model.preprocessing)
    forward = p50_ms(lambda: classify(model.module, x, model.precision), repeats)
    _, cam = fast_gradcam(model.module, x, precision=model.precision)

    def overlay() -> None:
        heatmap = cv2.resize(cam, (pixels.shape[1], pixels.shape[0]), interpolation=cv2.INTER_LINEAR)
        overlay_heatmap(pixels, np.clip(heatmap, 0.0, 1.0))

    with torch.inference_mode():
        return {
            "decode": p50_ms(lambda: load_image(data, "x.jpeg"), repeats),
            "OOD": p50_ms(lambda: predictor.out_of_distribution(pixels), repeats),
            "preprocess": p50_ms(lambda: to_input(pixels, model.preprocessing), repeats),
            "forward": forward,
            # fast_gradcam is the forward plus the backward to the last block: the backward alone is the rest
            "CAM": max(p50_ms(lambda: fast_gradcam(model.module, x, precision=model.precision), repeats) - forward, 0),
            "overlay": p50_ms(overlay, repeats),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", help="model ids (default: every installed single network)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = full_resolution_jpeg()
    predictor = Predictor()
    command = "python -m benchmarks.bench_inference " + " ".join(argv if argv is not None else sys.argv[1:])
    models = args.models or [i for i, card in predictor.cards().items() if card.get("kind") == "classifier"]
    print(
        f"# CPU: {processor_name()}, torch threads {args.threads}, torch {torch.__version__}; "
        f"input {len(data) // 1024} KB JPEG 1600x1200; `{command.strip()}`"
    )
    print(
        "\n| model | input | precision | load ms | predict p50/p95 ms | predict+Grad-CAM p50/p95 ms "
        "| typical path p50/p95 ms | ratio (target <= 0.33) | batch of 32 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    stages = {}
    for model_id in models:
        load = timed(lambda: serving_form(load_model(model_id).module), 3)  # what the app's first use pays
        model = predictor.get(model_id)
        predict = timed(
            lambda: predictor.predict(load_image(data, "x.jpeg"), model_id, with_subtype=False), args.repeats
        )
        both = timed(
            lambda: predictor.predict_and_explain(load_image(data, "x.jpeg"), model_id, with_subtype=False),
            args.repeats,
        )
        # the typical path gets the network as its file loads it (no folded batch norms, default memory format)
        plain = load_model(model_id).module
        typical = timed(lambda: typical_path(data, plain, model.preprocessing), max(5, args.repeats // 3))
        size = model.preprocessing.input_size
        batch = torch.rand(32, 1, size, size)
        with torch.inference_mode():
            batch32 = timed(lambda: classify(model.module, batch, model.precision), 3)
        p, e, t = percentiles(predict), percentiles(both), percentiles(typical)
        ratio = e[0] / t[0]
        verdict = "met" if ratio <= TARGET_RATIO else "missed"
        print(
            f"| {model_id} | {size} px | {model.precision} | {statistics.median(load) * 1000:.0f} "
            f"| {p[0]:.1f} / {p[1]:.1f} | {e[0]:.1f} / {e[1]:.1f} | {t[0]:.1f} / {t[1]:.1f} "
            f"| {ratio:.2f} ({verdict}) | {statistics.median(batch32) * 1000:.0f} |"
        )
        stages[model_id] = stage_times(predictor, model_id, data, args.repeats)
    names = list(next(iter(stages.values()))) if stages else []
    print("\nStages of predict + Grad-CAM, p50 ms each:\n")
    print("| model | " + " | ".join(names) + " | sum |")
    print("|---|" + "---|" * (len(names) + 1))
    for model_id, row in stages.items():
        print(f"| {model_id} | " + " | ".join(f"{row[n]:.1f}" for n in names) + f" | {sum(row.values()):.1f} |")


if __name__ == "__main__":
    np.random.seed(0)
    main()
