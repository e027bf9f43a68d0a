"""Batch augmentation on the training device (GPU or CPU), no PIL.

Covers what separates the blurry 224 px training copies from sharp full-resolution test images:
random affine (rotation, translation, scale), resized crop, brightness/contrast/gamma, blur or
sharpening, resolution loss, and noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 10.0
    translate: float = 0.06  # fraction of the image side
    scale: tuple[float, float] = (0.9, 1.15)  # >1 zooms in (a resized crop)
    brightness: float = 0.15
    contrast: float = 0.2
    gamma: tuple[float, float] = (0.8, 1.25)
    blur_prob: float = 0.3  # Gaussian blur or unsharp masking, half each
    downsample_prob: float = 0.25  # down to 40-90 % and back up: resolution loss
    noise_std: float = 0.02


def augment(batch: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """float (N, 1, S, S) in [0, 1] -> augmented batch, same shape and range."""
    n, _, size, _ = batch.shape
    dev = batch.device

    def uniform(lo: float, hi: float, shape: tuple[int, ...] = (n,)) -> torch.Tensor:
        return torch.rand(shape, device=dev, generator=generator) * (hi - lo) + lo

    angle = uniform(-cfg.rotation_deg, cfg.rotation_deg) * math.pi / 180
    zoom = uniform(*cfg.scale)
    shift = uniform(-cfg.translate, cfg.translate, (n, 2)) * 2
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    x = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)

    x = _resolution_and_sharpness(x, cfg, uniform, size)

    gamma = uniform(*cfg.gamma).view(n, 1, 1, 1)
    x = x.clamp(1e-6, 1).pow(gamma)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * uniform(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1) + mean
    x = x + uniform(-cfg.brightness, cfg.brightness).view(n, 1, 1, 1)
    if cfg.noise_std:
        noise = torch.randn(x.shape, device=dev, generator=generator)
        x = x + noise * uniform(0, cfg.noise_std).view(n, 1, 1, 1)
    return x.clamp(0, 1)


def _resolution_and_sharpness(x: torch.Tensor, cfg: AugmentConfig, uniform, size: int) -> torch.Tensor:
    n = x.shape[0]
    pick = uniform(0, 1)
    down = pick < cfg.downsample_prob
    if down.any():
        factor = float(uniform(0.4, 0.9, (1,)))
        small = F.interpolate(x[down], scale_factor=factor, mode="area")
        x = x.clone()
        x[down] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    blur_pick = uniform(0, 1)
    kernel = _gaussian_kernel(1.0, x.device)
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel)
    amount = uniform(0.5, 1.5).view(n, 1, 1, 1)
    blur = (blur_pick < cfg.blur_prob / 2).view(n, 1, 1, 1)
    sharpen = ((blur_pick >= cfg.blur_prob / 2) & (blur_pick < cfg.blur_prob)).view(n, 1, 1, 1)
    x = torch.where(blur, blurred, x)
    return torch.where(sharpen, x + amount * (x - blurred), x)


def _gaussian_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(5, device=device, dtype=torch.float32) - 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, 5, 5)
