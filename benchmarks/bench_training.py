"""Training and inference throughput per architecture and resolution: fp32 against the fast path.

    python -m benchmarks.bench_training --data ../shared/data/chest_xray --steps 4
    python -m benchmarks.bench_training --archs resnet18 --sizes 224 --steps 6 --threads 2

Training rows time the project's own loop (`cxrdemo.training.loop.train_one_epoch`: augmentation,
forward, backward, AdamW, EMA) on uint8 tensors resident in memory, once in fp32 and once with
bf16 autocast, both channels_last. Inference rows time one image's forward pass (serving: batch 1).
The processor is named above each table; "native bf16" says whether it has AVX512-BF16 or AMX
(without them `--precision auto` stays in fp32, since emulated bf16 is slower).
"""

from __future__ import annotations

import argparse
import time

import torch

from cxrdemo.data.dataset import load_dataset
from cxrdemo.data.tensor_cache import load_pixels
from cxrdemo.imaging.preprocess import Preprocessing, normalize
from cxrdemo.models.architectures import create_model
from cxrdemo.precision import autocast, cpu_has_native_bf16, processor_name, to_channels_last
from cxrdemo.tasks import get_task
from cxrdemo.training import TrainConfig
from cxrdemo.training.checkpoint import TrainState
from cxrdemo.training.data import PreparedData, SplitData
from cxrdemo.training.loop import Callback, train_one_epoch
from cxrdemo.training.run import build_context

DEFAULT = {"resnet18": (96, 128, 192, 224), "resnet50": (96, 128, 160, 192), "vgg16": (96, 128)}
DEFAULT |= {"zubinrnet": (128, 224), "cnn4": (128, 224), "autoencoder": (96,)}


class StepClock(Callback):
    """Time from the end of the first (warm-up) step to the end of the last."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_step_end(self, ctx, state: TrainState, loss: float) -> None:
        self.marks.append(time.perf_counter())


def training_throughput(arch: str, pixels: torch.Tensor, precision: str, batch: int, steps: int) -> float:
    """Images/s of `steps` training steps (after one warm-up step) through the project's loop."""
    n = batch * (steps + 1)
    idx = torch.randint(0, len(pixels), (n,), generator=torch.Generator().manual_seed(0))
    task = get_task("binary")
    train = SplitData(None, pixels[idx], torch.arange(n) % task.num_classes)
    empty = SplitData(None, pixels[:0], torch.zeros(0, dtype=torch.long))
    cfg = TrainConfig(arch=arch, input_size=pixels.shape[-1], batch_size=batch, precision=precision, epochs=1)
    ctx = build_context(cfg, PreparedData(None, train, empty), torch.device("cpu"), 0, 1)
    clock = StepClock()
    train_one_epoch(ctx, TrainState(), [clock])
    return batch * (len(clock.marks) - 1) / (clock.marks[-1] - clock.marks[0])


@torch.inference_mode()
def inference_ms(arch: str, pixels: torch.Tensor, precision: str, repeats: int) -> float:
    """Median milliseconds of one image's forward pass."""
    model = to_channels_last(create_model(arch, 2)).eval()
    spec = Preprocessing(input_size=pixels.shape[-1])
    x = normalize(pixels[:1].unsqueeze(1), spec).contiguous(memory_format=torch.channels_last)
    times = []
    for _ in range(repeats + 2):
        start = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            model(x)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times[2:])[len(times[2:]) // 2]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--archs", nargs="*", default=list(DEFAULT))
    parser.add_argument("--sizes", nargs="*", type=int, help="resolutions (default: per architecture)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = load_dataset(args.data)
    frame = dataset.split("train").sample(frac=1, random_state=0).head(256)
    cmd = f"python -m benchmarks.bench_training --steps {args.steps} --batch {args.batch}"
    print(
        f"# {processor_name()}; native bf16: {'yes' if cpu_has_native_bf16() else 'no'}; "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}; batch {args.batch}"
    )
    print("| model | px | train fp32 img/s | train bf16 img/s | speed-up | infer fp32 ms | infer bf16 ms | faster |")
    print("|---|---|---|---|---|---|---|---|")
    for arch in args.archs:
        for size in args.sizes or DEFAULT.get(arch, (128,)):
            pixels = load_pixels(dataset, frame, size)
            train = {p: training_throughput(arch, pixels, p, args.batch, args.steps) for p in ("fp32", "bf16")}
            infer = {p: inference_ms(arch, pixels, p, args.repeats) for p in ("fp32", "bf16")}
            faster = min(infer, key=infer.get)
            print(
                f"| {arch} | {size} | {train['fp32']:.1f} | {train['bf16']:.1f} | {train['bf16'] / train['fp32']:.2f}x "
                f"| {infer['fp32']:.1f} | {infer['bf16']:.1f} | {faster} |",
                flush=True,
            )
    print(f"\nCommand: `{cmd}`")


if __name__ == "__main__":
    main()
