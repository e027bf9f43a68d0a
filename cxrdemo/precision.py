"""Numeric fast path: bf16 autocast where the hardware runs bf16 natively, channels_last for conv nets.

bf16 on a CPU without native bf16 instructions is emulated and slower than fp32, so "auto" asks the
processor (the `avx512_bf16` or `amx_bf16` flags, read from /proc/cpuinfo) before turning it on.
`python -m benchmarks.bench_training` measures both paths on the machine it runs on.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "bf16", "fp32")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags (empty where /proc/cpuinfo is not readable, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


@functools.cache
def processor_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def resolve_precision(precision: str, device: torch.device) -> str:
    """'bf16' or 'fp32' for `precision` ('auto' | 'bf16' | 'fp32') on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for a resolved `precision`; a no-op context for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_channels_last(module: nn.Module) -> nn.Module:
    """channels_last memory format (faster convolutions with oneDNN and cuDNN)."""
    return module.to(memory_format=torch.channels_last)


def channels_last_input(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@torch.inference_mode()
def fastest_inference_precision(model: nn.Module, input_size: int, device: torch.device, repeats: int = 7) -> str:
    """'bf16' when it answers one image at least 10 % faster than fp32 on this machine, else 'fp32'.

    Measured per model because it differs by architecture: bf16 halves a ResNet's CPU forward but can
    slow a VGG's (python -m benchmarks.bench_training prints both).
    """
    if resolve_precision("auto", device) == "fp32":
        return "fp32"
    model = model.eval()
    x = torch.zeros(1, 1, input_size, input_size, device=device).contiguous(memory_format=torch.channels_last)
    median = {}
    for precision in ("fp32", "bf16"):
        times = []
        for _ in range(repeats + 2):
            start = time.perf_counter()
            with autocast(device, precision):
                model(x)
            times.append(time.perf_counter() - start)
        median[precision] = sorted(times[2:])[repeats // 2]
    return "bf16" if median["bf16"] < 0.9 * median["fp32"] else "fp32"


def serving_precision(card_precision: str | None, device: torch.device) -> str:
    """The card's inference precision, or fp32 where this machine would only emulate bf16."""
    if card_precision == "bf16" and resolve_precision("auto", device) == "bf16":
        return "bf16"
    return "fp32"
