"""Architecture registry: every model takes a 1-channel image and is built by name.

Every classifier is a `Classifier`: a convolutional `features` trunk that ends in the layer Grad-CAM
looks at, and a `head` (global pooling, dropout, linear). Splitting them this way lets inference take
the prediction and the Grad-CAM heatmap from one forward pass (see `cxrdemo.inference.explain`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

_REGISTRY: dict[str, Callable[[int], nn.Module]] = {}


def register_model(name: str) -> Callable:
    def wrap(factory: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str, num_classes: int = 2, seeds: int = 1) -> nn.Module:
    """Build architecture `name` with freshly initialised (or ImageNet-folded) weights.

    `seeds` > 1 builds that many copies answering as one model (`SeedAverage`).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(list_models())}")
    if seeds > 1:
        return SeedAverage([_REGISTRY[name](num_classes) for _ in range(seeds)])
    return _REGISTRY[name](num_classes)


def model_skeleton(name: str, num_classes: int = 2, seeds: int = 1) -> nn.Module:
    """Architecture `name` with its parameters on the meta device: no memory, no initialisation.

    For loading trained weights with `load_state_dict(state, assign=True)`. `create_model`'s random
    initialisation and ImageNet checkpoint would be overwritten at once, and cost 0.1 s (ResNet-18) to
    1.3 s (VGG-16, whose discarded ImageNet head has 120M parameters) per load on 2 cores.
    """
    with torch.device("meta"):
        return create_model(name, num_classes, seeds)


def _building_skeleton() -> bool:
    """True inside `model_skeleton`: no weights to draw or load (on meta, `normal_` even imports torch._dynamo)."""
    return torch.get_default_device().type == "meta"


class Classifier(nn.Module):
    """`features` (image -> feature map) followed by `head` (feature map -> logits)."""

    def __init__(
        self, features: nn.Module, width: int, num_classes: int, dropout: float = 0.0, hidden: int | None = None
    ) -> None:
        super().__init__()
        self.features = features
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if hidden:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.head = nn.Sequential(*layers)
        self.embedding_dim = width
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer vector (input of the last linear layer), used by k-NN."""
        return self.head[:-1](self.features(x))


# --- ZubinRNet: a compact residual network of BasicBlocks, trained from scratch -------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a skip connection (He et al. 2016, fig. 2)."""

    # forward applies each batch norm to its conv's output alone (cxrdemo.models.folding folds them)
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.skip(x))


@register_model("zubinrnet")
def zubinrnet(num_classes: int, widths: tuple[int, ...] = (32, 64, 128, 256)) -> Classifier:
    layers: list[nn.Module] = [
        nn.Conv2d(1, widths[0], 5, 2, 2, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    c_in = widths[0]
    for i, width in enumerate(widths):
        layers += [BasicBlock(c_in, width, 1 if i == 0 else 2), BasicBlock(width, width)]
        c_in = width
    return Classifier(nn.Sequential(*layers), c_in, num_classes, dropout=0.2)


# --- ResNet-18/50 and VGG-16-BN with a one-channel stem, laid out like torchvision's ----------------
#
# Built here rather than imported from torchvision: importing torchvision costs about 2 s on 2 cores
# (its `ops` package imports torch._dynamo), which every cold start of the app paid before its first
# answer. Module names, construction order and initialisation follow torchvision 0.2x exactly, so
# ImageNet checkpoints from torchvision's cache, the shipped weights and a seeded training run are all
# unchanged (tests/test_models.py compares both, parameter for parameter, with torchvision's builders).

# file names of torchvision's ImageNet checkpoints (IMAGENET1K_V1), looked up in torch.hub's cache only
IMAGENET_CHECKPOINTS = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "vgg16": "vgg16_bn-6c64b313.pth",
}


def _imagenet_state(arch: str) -> dict[str, torch.Tensor] | None:
    """ImageNet weights from torchvision's local cache, or None (nothing is ever downloaded).

    None when building on the meta device (`model_skeleton`): there is nothing to load them into.
    """
    if _building_skeleton():
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_CHECKPOINTS[arch]
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _one_channel_conv(conv: nn.Conv2d, rgb_weight: torch.Tensor | None) -> nn.Conv2d:
    """The same conv with one input channel; RGB filters are summed into it when given."""
    gray = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    if rgb_weight is not None:
        with torch.no_grad():
            gray.weight.copy_(rgb_weight.sum(dim=1, keepdim=True))
    return gray


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out)


class ResNetBasicBlock(nn.Module):
    """torchvision's BasicBlock: two 3x3 conv + BN, skip through `downsample` when the shape changes."""

    # forward applies each batch norm to its conv's output alone (cxrdemo.models.folding folds them)
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(width, width, 3)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetBottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet v1.5: the stride on the 3x3 conv): 1x1, 3x3, 1x1 expanding x4."""

    # forward applies each batch norm to its conv's output alone (cxrdemo.models.folding folds them)
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, width * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _init_like_torchvision(modules: list[nn.Module], linear_std: float | None = None) -> None:
    """torchvision's ResNet/VGG initialisation: He normal (fan-out) convs, unit BN, N(0, 0.01) linears for VGG."""
    if _building_skeleton():
        return
    for m in modules:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.constant_(m.bias, 0)


def _resnet(
    arch: str,
    block: type[ResNetBasicBlock | ResNetBottleneck],
    depths: tuple[int, ...],
    num_classes: int,
    *,
    zero_init_residual: bool = False,
) -> Classifier:
    """`zero_init_residual`: each block's last batch norm starts at zero, so every residual block is the
    identity at initialisation (Goyal et al. 2017, torchvision's `zero_init_residual`); only without
    ImageNet weights, which it would overwrite."""
    rgb_stem, bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
    stem = [rgb_stem, bn1, nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    stages, c_in = [], 64
    for i, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512))):
        stride = 1 if i == 0 else 2
        downsample = None
        if stride != 1 or c_in != width * block.expansion:
            downsample = nn.Sequential(*_conv_bn(c_in, width * block.expansion, 1, stride))
        blocks = [block(c_in, width, stride, downsample)]
        c_in = width * block.expansion
        blocks += [block(c_in, width, 1, None) for _ in range(depth - 1)]
        stages.append(nn.Sequential(*blocks))
    nn.Linear(c_in, 1000)  # torchvision's ImageNet classifier, built only so that seeded runs draw the same numbers
    trunk = nn.Sequential(*stem, *stages)
    _init_like_torchvision(list(trunk.modules()))
    state = _imagenet_state(arch)
    if state is not None:
        trunk.load_state_dict(_trunk_state(state, ["conv1", "bn1", None, None, "layer1", "layer2", "layer3", "layer4"]))
    trunk[0] = _one_channel_conv(rgb_stem, state["conv1.weight"] if state else None)
    if zero_init_residual and state is None:
        last_norm = "bn3" if block is ResNetBottleneck else "bn2"
        for module in trunk.modules():
            if isinstance(module, block):
                nn.init.zeros_(getattr(module, last_norm).weight)
    model = Classifier(trunk, c_in, num_classes, dropout=0.2)
    model.pretrained = state is not None
    return model


def _trunk_state(state: dict[str, torch.Tensor], names: list[str | None]) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict renamed to our trunk's indices (conv1 -> 0, layer1 -> 4, ...)."""
    index = {name: str(i) for i, name in enumerate(names) if name}
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in index:
            out[f"{index[head]}.{rest}"] = value
    return out


@register_model("resnet18")
def resnet18(num_classes: int) -> Classifier:
    return _resnet("resnet18", ResNetBasicBlock, (2, 2, 2, 2), num_classes)


@register_model("resnet50")
def resnet50(num_classes: int) -> Classifier:
    # zero-initialised residuals: the 2026-12-05 run (random init) collapsed to validation AUROC 0.55-0.67
    # at its peak learning rate (docs/DECISIONS.md, 2026-12-06)
    return _resnet("resnet50", ResNetBottleneck, (3, 4, 6, 3), num_classes, zero_init_residual=True)


VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register_model("vgg16")
def vgg16(num_classes: int) -> Classifier:
    """VGG-16-BN trunk; torchvision's 120M-parameter classifier is replaced by a pooled linear head."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_LAYOUT:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            c_in = v
    features = nn.Sequential(*layers)
    # torchvision's classifier, built and initialised (then dropped) so that seeded runs draw the same numbers
    imagenet_head = [nn.Linear(512 * 7 * 7, 4096), nn.Linear(4096, 4096), nn.Linear(4096, 1000)]
    _init_like_torchvision([*features.modules(), *imagenet_head], linear_std=0.01)
    del imagenet_head
    state = _imagenet_state("vgg16")
    if state is not None:
        features.load_state_dict({k.partition(".")[2]: v for k, v in state.items() if k.startswith("features.")})
    features[0] = _one_channel_conv(features[0], state["features.0.weight"] if state else None)
    model = Classifier(features[:-1], 512, num_classes, dropout=0.3)  # drop the last max-pool
    model.pretrained = state is not None
    return model


# --- CNN4: four conv blocks, from the Keras pneumonia notebooks ------------------------------------


def _conv_block(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    block = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]
    if dropout:
        block.append(nn.Dropout2d(dropout))
    return nn.Sequential(*block)


@register_model("cnn4")
def cnn4(num_classes: int) -> Classifier:
    features = nn.Sequential(
        _conv_block(1, 32, 0.0), _conv_block(32, 64, 0.2), _conv_block(64, 128, 0.3), _conv_block(128, 256, 0.4)
    )
    return Classifier(features, 256, num_classes, dropout=0.5, hidden=128)


# --- Convolutional autoencoder: anomaly score = reconstruction error -------------------------------


class AutoEncoder(nn.Module):
    """Encoder 32/64/128/256 (conv + BN + ReLU + pool), transposed-conv decoder, sigmoid output.

    Takes and returns images in [0, 1]; trained on NORMAL training images only.
    """

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        enc: list[nn.Module] = []
        c_in = 1
        for width in widths:
            enc += [
                nn.Conv2d(c_in, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = width
        dec: list[nn.Module] = []
        for width in reversed((1, *widths[:-1])):
            dec += [nn.ConvTranspose2d(c_in, width, 2, stride=2)]
            if width != 1:
                dec += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c_in = width
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec, nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@register_model("autoencoder")
def autoencoder(num_classes: int = 0) -> AutoEncoder:
    return AutoEncoder()


# --- Seed average: copies of one architecture from different seeds, answering as one model -----------


class SideBySide(nn.Module):
    """The copies' trunks on one input, their feature maps concatenated along the channels."""

    def __init__(self, trunks: list[nn.Module]) -> None:
        super().__init__()
        self.trunks = nn.ModuleList(trunks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([trunk(x) for trunk in self.trunks], dim=1)


class MeanProbabilityHead(nn.Module):
    """Each copy's head on its own channels; out: log of the mean of their softmax probabilities.

    These are logits of the averaged probabilities (softmax gives the mean back), so temperature scaling,
    thresholds and Grad-CAM treat the average like any classifier's output (docs/DECISIONS.md, 2026-12-07).
    """

    def __init__(self, heads: list[nn.Module], widths: list[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.widths = widths

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = torch.split(features, self.widths, dim=1)
        log_probs = torch.stack([torch.log_softmax(h(p), dim=1) for h, p in zip(self.heads, parts)])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.heads))


class SeedAverage(Classifier):
    """N copies of one `Classifier` trained from different seeds, shipped as one model.

    `features` runs the trunks side by side, so Grad-CAM of the average is taken on all of their channels
    at once (the copies' maps have the same size), and serving, folding and the frame probe see a classifier.
    """

    def __init__(self, copies: list[Classifier]) -> None:
        nn.Module.__init__(self)
        self.features = SideBySide([c.features for c in copies])
        self.head = MeanProbabilityHead([c.head for c in copies], [_trunk_width(c) for c in copies])
        self.embedding_dim = sum(c.embedding_dim for c in copies)
        self.num_classes = copies[0].num_classes
        self.copies = len(copies)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(self.features(x), self.head.widths, dim=1)
        return torch.cat([h[:-1](p) for h, p in zip(self.head.heads, parts)], dim=1)


def _trunk_width(model: Classifier) -> int:
    """Channels of the trunk's feature map: the input width of the head's first linear layer."""
    return next(m for m in model.head if isinstance(m, nn.Linear)).in_features


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM explains by default: the last block of the trunk (all trunks of a seed average)."""
    if not isinstance(model, Classifier):
        raise ValueError("Grad-CAM needs a classifier")
    return model.features if isinstance(model, SeedAverage) else model.features[-1]
