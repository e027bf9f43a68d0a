"""CPU latency from the bytes of a full-resolution chest X-ray JPEG to probabilities and a Grad-CAM heatmap.

    python -m benchmarks.bench_inference [--repeats 30] [--threads 2]

Rows per installed single-network model: model load, one prediction (p50/p95), prediction plus
Grad-CAM from one forward pass (p50/p95), the typical path (PIL decode + resize, a forward for the
prediction, then pytorch-grad-cam with its own forward and a full backward), and a batch of 32.
Prints one table; each row names the command that reproduces it.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image

from cxrdemo.imaging import load_image
from cxrdemo.paths import SAMPLE_DIR
from cxrdemo.predict import Predictor
from cxrdemo.registry import load_model


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


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def typical_path(data: bytes, model, spec) -> None:
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
    with GradCAM(model=model, target_layers=[model.features[-1]]) as cam:
        cam(input_tensor=x, targets=[ClassifierOutputTarget(pred)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = full_resolution_jpeg()
    predictor = Predictor()
    command = f"python -m benchmarks.bench_inference --repeats {args.repeats} --threads {args.threads}"
    print(
        f"# CPU: {platform.processor() or platform.machine()}, torch threads {args.threads}, "
        f"torch {torch.__version__}; input {len(data) // 1024} KB JPEG 1600x1200"
    )
    print(
        "| model | input | load ms | predict p50/p95 ms | predict+Grad-CAM p50/p95 ms | typical path p50/p95 ms "
        "| batch of 32 ms | command |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for model_id, card in predictor.cards().items():
        if card.get("kind") != "classifier":
            continue
        load = timed(lambda: load_model(model_id), 3)
        model = predictor.get(model_id)
        predict = timed(
            lambda: predictor.predict(load_image(data, "x.jpeg"), model_id, with_subtype=False), args.repeats
        )
        both = timed(
            lambda: predictor.predict_and_explain(load_image(data, "x.jpeg"), model_id, with_subtype=False),
            args.repeats,
        )
        typical = timed(lambda: typical_path(data, model.module, model.preprocessing), max(5, args.repeats // 3))
        size = model.preprocessing.input_size
        batch = torch.rand(32, 1, size, size)
        with torch.inference_mode():
            batch32 = timed(lambda: model.module(batch), 3)
        p, e, t = percentiles(predict), percentiles(both), percentiles(typical)
        print(
            f"| {model_id} | {size} px | {statistics.median(load) * 1000:.0f} | {p[0]:.1f} / {p[1]:.1f} "
            f"| {e[0]:.1f} / {e[1]:.1f} | {t[0]:.1f} / {t[1]:.1f} | {statistics.median(batch32) * 1000:.0f} "
            f"| `{command}` |"
        )


if __name__ == "__main__":
    np.random.seed(0)
    main()
