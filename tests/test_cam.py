"""cam.py: CAM, and the machinery every explainer shares (hooks, state, normalization)."""
from __future__ import annotations

import pytest
import torch
from conftest import EvidenceNet, evidence_images, random_resnet
from torch import nn

from cam import CAM, auto_layer, capture_activation, normalize_heatmaps, resolve_layer
from errors import ParamError, UserError
from model import build_resnet18
from runtime import eval_mode


def test_cam_maximum_lies_in_the_evidence_region():
    images, regions = evidence_images()
    heatmaps = CAM(EvidenceNet(), layer="relu")(images, torch.ones(3, dtype=torch.long))
    for heatmap, (rows, cols) in zip(heatmaps, regions):
        assert heatmap[rows, cols].min() == 1.0
        assert heatmap.sum() == heatmap[rows, cols].sum()


def test_cam_matches_the_formula_on_resnet():
    model = random_resnet()
    images = torch.randn(3, 3, 32, 32)
    targets = torch.tensor([1, 4, 9])
    with capture_activation(model.layer4) as capture, torch.no_grad():
        model(images)
    manual = torch.einsum("bk,bkhw->bhw", model.fc.weight[targets], capture.activation)
    expected = normalize_heatmaps(manual, (32, 32))
    torch.testing.assert_close(CAM(model)(images, targets), expected)


def test_cam_refuses_a_layer_that_does_not_feed_the_classifier():
    with pytest.raises(UserError, match="feed the linear layer"):
        CAM(random_resnet(), layer="layer3")(torch.randn(1, 3, 32, 32), torch.tensor([0]))


def test_resolve_layer_names_the_choices():
    model = build_resnet18()
    assert resolve_layer(model, "layer4.1.conv2") is model.layer4[1].conv2
    with pytest.raises(UserError, match="layer1, layer2"):
        resolve_layer(model, "layer9")


def test_normalize_heatmaps_range_size_and_constant_maps():
    maps = torch.stack([torch.rand(4, 4) * 5 - 1, torch.full((4, 4), 3.0), torch.zeros(4, 4),
                        -torch.rand(4, 4)])
    out = normalize_heatmaps(maps, (32, 32))
    assert out.shape == (4, 32, 32) and not out.isnan().any()
    assert out[0].min() == 0.0 and out[0].max() == 1.0
    assert torch.equal(out[1:], torch.zeros(3, 32, 32))      # constant / all-negative -> zeros


def test_capture_removes_its_hook_after_an_exception():
    layer = nn.Conv2d(3, 3, 1)
    with pytest.raises(RuntimeError), capture_activation(layer):
        layer(torch.randn(1, 5, 4, 4))                    # wrong channel count
    assert not layer._forward_hooks


def test_capture_keeps_the_activation_safe_from_in_place_ops():
    model = random_resnet()
    block = model.layer4[1]          # bn2's output is followed by ``out += identity`` in place
    seen = {}
    handle = block.bn2.register_forward_hook(lambda m, i, o: seen.setdefault("bn2", o.clone()))
    with capture_activation(block.bn2) as capture, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    handle.remove()
    torch.testing.assert_close(capture.activation, seen["bn2"])


def test_eval_mode_restores_every_flag():
    model = random_resnet().train()
    model.layer2.eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.layer2.training and model.layer3.training


def test_auto_is_layer4_for_the_cifar_resnet18_whatever_the_input_size():
    model = build_resnet18()
    assert [auto_layer(model, size) for size in (32, 28, 64)] == ["layer4"] * 3
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    explainer = CAM(model)
    torch.testing.assert_close(explainer(images, targets), CAM(model, "layer4")(images, targets),
                               rtol=0, atol=0)
    assert explainer.layer == "layer4"


def test_a_layer_is_one_name_and_batch_size_is_positive():
    model = build_resnet18()
    with pytest.raises(ParamError, match="^layer 'layer3,layer4' names several layers"):
        CAM(model, "layer3,layer4")
    with pytest.raises(ParamError, match="^batch_size must be at least 1"):
        CAM(model, batch_size=0)
