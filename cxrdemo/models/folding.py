"""The serving form of a network: batch norms folded into the convolutions before them, channels_last.

In eval mode a BatchNorm after a convolution is a fixed per-channel scale and shift, so it can be folded
into the convolution's weights and bias. The answer is the same to float rounding (about 1e-6 of the
logits) and a batch-1 CPU forward skips one pass over every feature map (`python -m
benchmarks.bench_inference`).

A pair is folded only where the batch norm is known to take the convolution's output and nothing else
does: neighbours in an `nn.Sequential`, and the pairs a block names in its `conv_bn_pairs` (next to the
forward that uses them). Not torch.fx: tracing patches `nn.Module.__call__` for every thread, and the
app loads models while other sessions answer. The module keeps its layout (`features`, `head`, the
Grad-CAM target layer); each folded batch norm becomes an `nn.Identity`. Never train a folded copy.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVOLUTIONS = (nn.Conv2d, nn.ConvTranspose2d)


def conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(convolution, batch norm) submodule names of every pair `fold_batchnorm` folds."""
    pairs = []
    for name, sub in module.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(sub, nn.Sequential):
            children = list(sub.named_children())
            for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
                if isinstance(conv, _CONVOLUTIONS) and isinstance(bn, nn.BatchNorm2d):
                    pairs.append((prefix + conv_name, prefix + bn_name))
        pairs += [(prefix + conv_name, prefix + bn_name) for conv_name, bn_name in getattr(sub, "conv_bn_pairs", ())]
    return pairs


def fold_batchnorm(module: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution into it, in place; returns how many.

    `module` must be in eval mode: the running statistics are what gets folded.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a module in eval mode")
    folded = 0
    with torch.no_grad():
        for conv_name, bn_name in conv_bn_pairs(module):
            conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
            if isinstance(bn, nn.Identity):  # folded before
                continue
            if not isinstance(conv, _CONVOLUTIONS) or not isinstance(bn, nn.BatchNorm2d):
                raise TypeError(
                    f"{type(module).__name__}: {conv_name} -> {bn_name} is not a convolution and a batch norm"
                )
            fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
            module.set_submodule(conv_name, fused)
            module.set_submodule(bn_name, nn.Identity())
            folded += 1
    return folded


def serving_form(module: nn.Module) -> nn.Module:
    """An eval-mode network made fast for answering, in place: batch norms folded, weights channels_last.

    channels_last weights matter as much as the folding: with the input alone in channels_last, oneDNN
    reorders every weight on every call (the cnn4 forward + Grad-CAM took 1.4x as long).
    """
    fold_batchnorm(module)
    return module.to(memory_format=torch.channels_last)
