"""Train the lung segmentation U-Net on the V7 Labs lung masks of the Kermany training images.

    python -m cxrdemo.training.lung_seg --data ../shared/data/chest_xray --masks ../shared/data/lung_masks \
        --out $HOME/cxrdemo-campaign/lung-unet            # then --promote to install it in weights/lungs/

Only training-split masks are used, split by patient exactly like the classifiers (`validation_split`,
seed 0, 15 %), so no classifier's validation image was seen by the segmenter either. The test masks are
for evaluation only and are never read here. Augmentation moves image and mask together with random
anisotropic scale, shift, small rotation and flips, so the mask follows any frame (the frame probe
narrows a film by 10 % on each side and the box must still find the same lungs).
Checkpoint every epoch; `--resume` continues a killed run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.nn import functional as F

from cxrdemo.card import now
from cxrdemo.data.dataset import Dataset, load_dataset, validation_split
from cxrdemo.data.tensor_cache import load_pixels
from cxrdemo.fileio import atomic_write_json
from cxrdemo.imaging import lungs
from cxrdemo.paths import cache_dir, weights_dir
from cxrdemo.precision import autocast

MASK_SOURCE = (
    "V7 Labs COVID-19 X-ray dataset (github:v7labs/covid-19-xray-dataset, "
    "commit 51fca0d0d089b2fa7b0b95f0aed32ebaebd561f2, "
    "annotations/all-images-semantic-masks), manual lung masks of the Kermany pediatric images"
)
MASK_LICENCE = "CC BY 4.0 (V7 Labs, annotation by CloudFactory; images Kermany et al. 2018, CC BY 4.0)"


@dataclass(frozen=True)
class SegConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-3  # one-cycle peak
    weight_decay: float = 1e-4
    width: int = 16  # channels of the first U-Net level
    seed: int = 0
    val_fraction: float = 0.15
    threads: int | None = None


def masked_frames(dataset: Dataset, masks_root: Path, cfg: SegConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The classifiers' patient-grouped (train, validation) sides, restricted to images with a mask."""
    manifest = pd.read_csv(masks_root / "manifest.csv")
    manifest = manifest[manifest["split"] == "train"][["image", "mask", "original_width", "original_height"]]
    train, val = validation_split(dataset, val_fraction=cfg.val_fraction, seed=cfg.seed)
    join = lambda side: side.merge(manifest, left_on="path", right_on="image").reset_index(drop=True)  # noqa: E731
    return join(train), join(val)


def load_masks(masks_root: Path, frame: pd.DataFrame, size: int) -> torch.Tensor:
    """(N, size, size) float16 lung share of each pixel (box-averaged), cached beside the pixel cache."""
    key = f"{masks_root.resolve()}|{size}|" + "|".join(frame["mask"])
    path = cache_dir() / f"lungmasks-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))
    out = np.stack([_mask_square(masks_root / m, size) for m in frame["mask"]]).astype(np.float16)
    np.save(path, out)
    return torch.from_numpy(out)


def _mask_square(path: Path, size: int) -> np.ndarray:
    mask = Image.open(path).convert("L")
    return np.asarray(mask.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0


def augment(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Same random geometry for images and masks; brightness, contrast and gamma for the images only."""
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)  # noqa: E731
    angle = u(-0.17, 0.17)
    sx, sy = u(0.8, 1.25), u(0.8, 1.25)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = sx * torch.cos(angle) * flip, -sy * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = sx * torch.sin(angle) * flip, sy * torch.cos(angle)
    theta[:, 0, 2], theta[:, 1, 2] = u(-0.12, 0.12), u(-0.12, 0.12)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    gamma = u(0.7, 1.4).view(n, 1, 1, 1)
    x = x.clamp(0, 1) ** gamma
    x = (x - 0.5) * u(0.75, 1.3).view(n, 1, 1, 1) + 0.5 + u(-0.1, 0.1).view(n, 1, 1, 1)
    return x.clamp(0, 1), y


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    return (1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)).mean()


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)


def predict_probabilities(model: torch.nn.Module, pixels: torch.Tensor, batch: int = 64) -> np.ndarray:
    model.eval()
    parts = [lungs.lung_probability(pixels[i : i + batch], model) for i in range(0, len(pixels), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, *pixels.shape[1:]), np.float32)


def full_size_dice(probs: np.ndarray, frame: pd.DataFrame, masks_root: Path) -> list[float]:
    """Dice at each mask's own size (the image's pixel size): the probability map upsampled, then cut at 0.5."""
    scores = []
    for prob, mask_file in zip(probs, frame["mask"]):
        truth = np.asarray(Image.open(masks_root / mask_file).convert("L")) > 127
        scores.append(dice(lungs.LungFields(prob, None, 0.0, 0.0).mask(*truth.shape), truth))
    return scores


def cpu_ms_per_image(model: torch.nn.Module, pixels: np.ndarray, repeats: int = 30) -> float:
    """Median ms for `find_lungs` on one full-size image (squash + network + box), batch of one."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lungs.find_lungs(pixels, model)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times[3:]))


def train(cfg: SegConfig, data: str | None, masks_root: Path, out: Path, *, resume: bool = False) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(data)
    train_frame, val_frame = masked_frames(dataset, masks_root, cfg)
    size = lungs.INPUT_SIZE
    xs = {k: load_pixels(dataset, f, size) for k, f in (("train", train_frame), ("val", val_frame))}
    ys = {k: load_masks(masks_root, f, size) for k, f in (("train", train_frame), ("val", val_frame))}
    print(f"train {len(train_frame)} / val {len(val_frame)} masked images at {size} px", flush=True)

    torch.manual_seed(cfg.seed)
    model = lungs.LungUNet(cfg.width).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_frame) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch, history = 0, []
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["gen"])
        start_epoch, history = state["epoch"], state["history"]

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        began, losses = time.time(), []
        order = torch.randperm(len(train_frame), generator=gen)
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x = xs["train"][idx][:, None].float() / 255.0
            y = ys["train"][idx][:, None].float()
            x, y = augment(x, y, gen)
            x = ((x - lungs.MEAN) / lungs.STD).contiguous(memory_format=torch.channels_last)
            with autocast(torch.device("cpu"), "bf16"):
                logits = model(x)
            logits = logits.float()
            loss = F.binary_cross_entropy_with_logits(logits, y) + soft_dice_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        probs = predict_probabilities(model, xs["val"])
        val_dice = float(np.mean([dice(p >= 0.5, t >= 0.5) for p, t in zip(probs, ys["val"].float().numpy())]))
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "val_dice_128": val_dice,
                "seconds": round(time.time() - began, 1),
            }
        )
        print(json.dumps(history[-1]), flush=True)
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "sched": sched.state_dict(),
                "gen": gen.get_state(),
                "epoch": epoch + 1,
                "history": history,
            },
            ckpt.with_suffix(".tmp"),
        )
        ckpt.with_suffix(".tmp").replace(ckpt)

    card = finalize(model, cfg, dataset, val_frame, xs["val"], masks_root, history)
    save_weights(model, out / f"{lungs.MODEL_ID}.safetensors")
    atomic_write_json(out / f"{lungs.MODEL_ID}.json", card)
    return card


def finalize(
    model,
    cfg: SegConfig,
    dataset: Dataset,
    val_frame: pd.DataFrame,
    val_pixels: torch.Tensor,
    masks_root: Path,
    history: list[dict],
) -> dict:
    """The card: data source and licence, Dice on validation masks (224 copies and full-res apart), CPU ms."""
    model.eval()
    probs = predict_probabilities(model, val_pixels)
    scores = np.array(full_size_dice(probs, val_frame, masks_root))
    low = val_frame["low_resolution_source"].to_numpy() == 1
    fields = [lungs.judge(p) for p in probs]
    sample = next(dataset.absolute(p) for p, lo in zip(val_frame["path"], low) if not lo)
    from cxrdemo.imaging.decode import load_image_file

    pixels = load_image_file(sample).pixels
    torch.set_num_threads(2)
    ms = cpu_ms_per_image(model, pixels)

    def summary(s: np.ndarray) -> dict:
        return {
            "n": int(len(s)),
            "mean": round(float(s.mean()), 4),
            "median": round(float(np.median(s)), 4),
            "p05": round(float(np.quantile(s, 0.05)), 4),
            "min": round(float(s.min()), 4),
        }

    n_parameters = sum(p.numel() for p in model.parameters())
    return {
        "id": lungs.MODEL_ID,
        "kind": "segmenter",
        "task": "lung fields",
        "arch": f"U-Net, {len(model.down) - 1} poolings, width {cfg.width}, {n_parameters:,} parameters",
        "input": {"size": lungs.INPUT_SIZE, "mean": lungs.MEAN, "std": lungs.STD, "resize": "squash"},
        "data_source": MASK_SOURCE,
        "licence": MASK_LICENCE,
        "split": "training-split masks only, patient-grouped like the classifiers (validation_split seed 0, 15 %); "
        "test masks never read",
        "metrics": {
            "val_dice_full_resolution": summary(scores[~low]),
            "val_dice_224_copies": summary(scores[low]),
            "val_dice_all": summary(scores),
            "val_plausible_share": round(float(np.mean([f.plausible for f in fields])), 4),
        },
        "cpu_ms_per_image": round(ms, 1),
        "cpu_ms_note": f"find_lungs on one {pixels.shape[1]}x{pixels.shape[0]} image (squash + network + box), "
        f"fp32, batch of one, {torch.get_num_threads()} threads, median of 27",
        "training": {**asdict(cfg), "history": history},
        "evaluation_command": "python -m cxrdemo.training.lung_seg --evaluate",
        "created": now(),
    }


def save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {
        k: v.detach().to(torch.float16).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def promote(run: Path) -> Path:
    target = weights_dir() / "lungs"
    target.mkdir(parents=True, exist_ok=True)
    for suffix in (".safetensors", ".json"):
        (target / f"{lungs.MODEL_ID}{suffix}").write_bytes((run / f"{lungs.MODEL_ID}{suffix}").read_bytes())
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--masks", default="../shared/data/lung_masks")
    parser.add_argument("--out", default="runs/lung-unet")
    parser.add_argument("--epochs", type=int, default=SegConfig.epochs)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--promote", action="store_true", help="install the finished run in weights/lungs/")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.promote:
        print(f"installed in {promote(out)}")
        return
    card = train(
        SegConfig(epochs=args.epochs, threads=args.threads), args.data, Path(args.masks), out, resume=args.resume
    )
    print(json.dumps(card["metrics"], indent=2), f"\n{card['cpu_ms_per_image']} ms per image")


if __name__ == "__main__":
    main()
