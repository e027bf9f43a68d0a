"""The serving form: batch norms folded into their convolutions give the same answers, the same heatmaps."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from cxrdemo.inference.explain import fast_gradcam
from cxrdemo.inference.predict import Predictor
from cxrdemo.models.architectures import cam_target_layer, create_model, list_models, model_skeleton
from cxrdemo.models.folding import conv_bn_pairs, fold_batchnorm, serving_form
from tests.weights_snapshot import snapshot_weights

CLASSIFIERS = [name for name in list_models() if name != "autoencoder"]


def _trained_looking(name: str, num_classes: int = 2) -> nn.Module:
    """A fresh network whose batch norms hold non-trivial statistics (a fresh one's would fold to nothing)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("name", [*CLASSIFIERS, "autoencoder"])
def test_folding_removes_every_batch_norm_and_keeps_the_answer(name: str) -> None:
    model = _trained_looking(name)
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded = serving_form(copy.deepcopy(model))
    assert len(conv_bn_pairs(model)) == batch_norms  # every batch norm follows a convolution
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert fold_batchnorm(folded) == 0  # a second fold finds nothing left
    x = torch.rand(2, 1, 96, 96)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_folded_networks_explain_the_same_layer_with_the_same_heatmap(name: str) -> None:
    model = _trained_looking(name)
    folded = serving_form(copy.deepcopy(model))
    assert type(cam_target_layer(folded)) is type(cam_target_layer(model))
    x = torch.rand(1, 1, 96, 96)
    logits, cam = fast_gradcam(model, x)
    folded_logits, folded_cam = fast_gradcam(folded, x)
    torch.testing.assert_close(folded_logits, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(folded_cam), torch.from_numpy(cam), rtol=1e-3, atol=1e-4)


def test_folding_refuses_a_network_in_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(create_model("cnn4", 2).train())


def test_a_skeleton_has_no_storage_and_no_imagenet_weights() -> None:
    skeleton = model_skeleton("resnet18", 2)
    assert all(p.is_meta for p in skeleton.parameters())
    assert not skeleton.pretrained


def test_the_app_answers_with_folded_channels_last_networks(tmp_path: Path) -> None:
    predictor = Predictor(snapshot_weights(tmp_path / "weights"))
    for model_id in [*predictor.model_ids("binary"), "autoencoder"]:
        module = predictor.get(model_id).module
        if module is None:  # the ensemble combines other models
            continue
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()), model_id
        conv = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last), model_id
