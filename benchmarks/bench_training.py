"""Training throughput per architecture, and our data path against the typical one.

    python -m benchmarks.bench_training --data ../shared/data/chest_xray --steps 20 [--device cuda]

Rows: images/s of a training step (augmentation included) per architecture on uint8 tensors resident
on the device; then one epoch's images/s through the typical pipeline (torchvision ImageFolder, PIL
decoding and transforms every epoch, DataLoader workers, fp32) and through ours, with the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cxrdemo.augment import AugmentConfig, augment
from cxrdemo.data import load_dataset
from cxrdemo.models import create_model, list_models
from cxrdemo.preprocess import Preprocessing, normalize
from cxrdemo.tensor_cache import load_pixels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_throughput(arch: str, pixels: torch.Tensor, device: torch.device, steps: int, batch: int) -> float:
    model = create_model(arch, 2).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    spec = Preprocessing(input_size=pixels.shape[-1])
    y = torch.randint(0, 2, (batch,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)

    def one() -> None:
        idx = torch.randint(0, len(pixels), (batch,), device=device, generator=gen)
        x = augment(pixels[idx].unsqueeze(1).float() / 255, AugmentConfig(), gen)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(normalize(x, spec))
            loss = F.mse_loss(out, x) if arch == "autoencoder" else F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        one()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def typical_epoch_throughput(root, device: torch.device, steps: int, batch: int, size: int) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose(
        [
            transforms.Grayscale(),
            transforms.Resize((size, size)),
            transforms.RandomRotation(10),
            transforms.ToTensor(),
            transforms.Normalize([0.5], [0.25]),
        ]
    )
    loader = torch.utils.data.DataLoader(
        datasets.ImageFolder(root / "train", tf), batch_size=batch, shuffle=True, num_workers=2
    )
    model = create_model("resnet18", 2).to(device)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    seen = 0
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(x)
        if i + 1 >= steps:
            break
    sync(device)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256 if torch.cuda.is_available() else 32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--archs", nargs="*", default=list_models())
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = load_dataset(args.data)
    pixels = load_pixels(dataset, dataset.split("train"), args.size).to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    cmd = (
        f"python -m benchmarks.bench_training --data {args.data} --device {args.device} --steps {args.steps} "
        f"--batch {args.batch} --size {args.size}"
    )
    print(f"# {name}, torch {torch.__version__}, batch {args.batch}, {args.size} px")
    print("| what | images/s | command |")
    print("|---|---|---|")
    ours = None
    for arch in args.archs:
        ips = step_throughput(arch, pixels, device, args.steps, args.batch)
        ours = ips if arch == "resnet18" else ours
        print(f"| {arch} training step (ours) | {ips:,.0f} | `{cmd} --archs {arch}` |")
    typical = typical_epoch_throughput(dataset.root, device, args.steps, args.batch, args.size)
    print(f"| resnet18, typical pipeline (ImageFolder + PIL + fp32) | {typical:,.0f} | `{cmd}` |")
    if ours:
        print(f"| ratio ours / typical (resnet18) | {ours / typical:.1f}x | `{cmd}` |")


if __name__ == "__main__":
    main()
