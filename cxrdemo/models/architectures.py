"""Architecture registry: every model takes a 1-channel image and is built by name.

Every classifier is a `Classifier`: a convolutional `features` trunk that ends in the layer Grad-CAM
looks at, and a `head` (global pooling, dropout, linear). Splitting them this way lets inference take
the prediction and the Grad-CAM heatmap from one forward pass (see `cxrdemo.inference.explain`).
"""

from __future__ import annotations

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


def create_model(name: str, num_classes: int = 2) -> nn.Module:
    """Build architecture `name` with freshly initialised (or ImageNet-folded) weights."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(list_models())}")
    return _REGISTRY[name](num_classes)


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer vector (input of the last linear layer), used by k-NN."""
        return self.head[:-1](self.features(x))


# --- ZubinRNet: a compact residual network of BasicBlocks, trained from scratch -------------------


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN with a skip connection (He et al. 2016, fig. 2)."""

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


# --- torchvision architectures with a one-channel stem ---------------------------------------------

# torchvision is imported inside the builders that need it: it costs about a second at start-up.


def _imagenet_state(weights) -> dict[str, torch.Tensor] | None:
    """ImageNet weights from torchvision's local cache, or None (nothing is ever downloaded)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
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


def _torchvision_resnet(builder: Callable, weights, num_classes: int) -> Classifier:
    net = builder(weights=None)
    state = _imagenet_state(weights)
    if state is not None:
        net.load_state_dict(state)
    net.conv1 = _one_channel_conv(net.conv1, state["conv1.weight"] if state else None)
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    model = Classifier(features, net.fc.in_features, num_classes, dropout=0.2)
    model.pretrained = state is not None
    return model


@register_model("resnet18")
def resnet18(num_classes: int) -> Classifier:
    from torchvision import models as tvm

    return _torchvision_resnet(tvm.resnet18, tvm.ResNet18_Weights.IMAGENET1K_V1, num_classes)


@register_model("resnet50")
def resnet50(num_classes: int) -> Classifier:
    from torchvision import models as tvm

    return _torchvision_resnet(tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, num_classes)


@register_model("vgg16")
def vgg16(num_classes: int) -> Classifier:
    """torchvision VGG-16-BN trunk; its 120M-parameter classifier is replaced by a pooled linear head."""
    from torchvision import models as tvm

    net = tvm.vgg16_bn(weights=None)
    state = _imagenet_state(tvm.VGG16_BN_Weights.IMAGENET1K_V1)
    if state is not None:
        net.load_state_dict(state)
    net.features[0] = _one_channel_conv(net.features[0], state["features.0.weight"] if state else None)
    model = Classifier(net.features[:-1], 512, num_classes, dropout=0.3)  # drop the last max-pool
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


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM explains by default: the last block of the trunk."""
    if not isinstance(model, Classifier):
        raise ValueError("Grad-CAM needs a classifier")
    return model.features[-1]
