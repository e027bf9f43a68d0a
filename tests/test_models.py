"""The architecture registry: every model builds by name, takes one channel, and folds ImageNet stems."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from cxrdemo.models.architectures import (
    IMAGENET_CHECKPOINTS,
    AutoEncoder,
    Classifier,
    cam_target_layer,
    create_model,
    list_models,
)

CLASSIFIERS = [name for name in list_models() if name != "autoencoder"]


@pytest.fixture(autouse=True)
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No torchvision cache: models build from scratch here, whatever this machine has downloaded."""
    home = tmp_path / "torch-home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def test_registry_holds_the_documented_architectures():
    assert set(list_models()) >= {"zubinrnet", "resnet18", "resnet50", "vgg16", "cnn4", "autoencoder"}
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("num_classes", [2, 3])
def test_classifier_shapes(name: str, num_classes: int):
    torch.manual_seed(0)
    model = create_model(name, num_classes).eval()
    assert isinstance(model, Classifier)
    n = 2 if num_classes == 2 else 1  # a batch of one must work too (BatchNorm1d in eval mode)
    x = torch.randn(n, 1, 224, 224)
    with torch.inference_mode():
        logits = model(x)
        embedding = model.embed(x)
        from_embedding = model.head[-1](embedding)
    assert logits.shape == (n, num_classes)
    assert torch.isfinite(logits).all()
    assert embedding.shape == (n, model.embedding_dim)
    assert torch.isfinite(embedding).all()
    # embed() is exactly what the last linear layer sees
    torch.testing.assert_close(from_embedding, logits)
    layer = cam_target_layer(model)
    assert any(m is layer for m in model.features.modules())
    assert layer is not model.features


def test_classifier_refuses_three_channel_input():
    model = create_model("cnn4", 2).eval()
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 64, 64))


def test_autoencoder_reconstructs_in_unit_range():
    model = create_model("autoencoder").eval()
    assert isinstance(model, AutoEncoder)
    x = torch.rand(2, 1, 224, 224)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(ValueError, match="Grad-CAM needs a classifier"):
        cam_target_layer(model)


def test_unknown_architecture_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown architecture 'densenet121'") as err:
        create_model("densenet121")
    for name in list_models():
        assert name in str(err.value)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_torchvision_stems_take_one_channel_and_are_not_pretrained_without_cache(name: str):
    model = create_model(name, 2)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1
    assert model.pretrained is False


def test_resnet18_folds_cached_imagenet_weights_into_one_channel(empty_torch_home: Path):
    torch.manual_seed(1)
    reference = tvm.resnet18(weights=None)  # random weights are as good as ImageNet's for checking the folding
    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    name = Path(tvm.ResNet18_Weights.IMAGENET1K_V1.url).name
    assert name == IMAGENET_CHECKPOINTS["resnet18"]
    torch.save(reference.state_dict(), checkpoints / name)

    model = create_model("resnet18", 2)
    assert model.pretrained is True
    stem = model.features[0]
    assert stem.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(stem.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    # the rest of the trunk is ImageNet's (here: the saved reference) as is
    torch.testing.assert_close(model.features[4][0].conv1.weight, reference.layer1[0].conv1.weight)
    torch.testing.assert_close(model.features[7][1].bn2.running_var, reference.layer4[1].bn2.running_var)
    # a gray image gives the same first feature map as the RGB network fed three copies of it
    gray = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(stem(gray), reference.conv1(gray.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def _torchvision_built(name: str, num_classes: int) -> Classifier:
    """The construction these builders replaced: torchvision's network, one-channel stem, our head."""
    if name == "vgg16":
        net = tvm.vgg16_bn(weights=None)
        net.features[0] = nn.Conv2d(1, 64, 3, padding=1)
        return Classifier(net.features[:-1], 512, num_classes, dropout=0.3)
    # resnet50 starts each residual block as the identity (its recipe's fix for the unstable early epochs)
    net = getattr(tvm, name)(weights=None, zero_init_residual=name == "resnet50")
    net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return Classifier(trunk, net.fc.in_features, num_classes, dropout=0.2)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_builders_match_torchvision_seed_for_seed(name: str):
    """Same module names, same initial weights from the same seed, same outputs: the shipped weights load
    unchanged and a seeded training run starts where it did when these networks came from torchvision."""
    torch.manual_seed(7)
    ours = create_model(name, 2).eval()
    torch.manual_seed(7)
    theirs = _torchvision_built(name, 2).eval()
    ours_state, their_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(their_state)
    for key in ours_state:
        torch.testing.assert_close(ours_state[key], their_state[key], rtol=0, atol=0, msg=key)
    x = torch.randn(2, 1, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), theirs(x))

    # and the random stream continues where torchvision's construction left it (the data order, dropout)
    torch.manual_seed(7)
    create_model(name, 2)
    after_ours = torch.rand(8)
    torch.manual_seed(7)
    _torchvision_built(name, 2)
    torch.testing.assert_close(after_ours, torch.rand(8), rtol=0, atol=0)
    # ImageNet weights are looked up in torch.hub's cache under torchvision's own file names
    weights = {"resnet18": tvm.ResNet18_Weights, "resnet50": tvm.ResNet50_Weights, "vgg16": tvm.VGG16_BN_Weights}
    assert IMAGENET_CHECKPOINTS[name] == Path(weights[name].IMAGENET1K_V1.url).name
