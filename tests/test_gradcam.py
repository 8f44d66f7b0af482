"""gradcam.py: Grad-CAM and Grad-CAM++ against known answers and the explainer contract."""
from __future__ import annotations

import pytest
import torch
from conftest import EvidenceNet, evidence_images, random_resnet
from torch import nn

from cam import CAM
from errors import ParamError
from gradcam import GradCAM, GradCAMPlusPlus

METHODS = [GradCAM, GradCAMPlusPlus]


def test_cam_equals_gradcam_at_the_last_block_for_every_class():
    """With GAP + one linear layer, Grad-CAM's weights are CAM's divided by h*w: same maps."""
    model = random_resnet()
    images = torch.randn(2, 3, 32, 32)
    for c in range(10):
        targets = torch.full((2,), c, dtype=torch.long)
        torch.testing.assert_close(GradCAM(model)(images, targets), CAM(model)(images, targets),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_maximum_lies_in_the_evidence_region(method):
    images, regions = evidence_images()
    heatmaps = method(EvidenceNet(), layer="relu")(images, torch.ones(3, dtype=torch.long))
    for heatmap, (rows, cols) in zip(heatmaps, regions):
        peak = divmod(int(heatmap.argmax()), heatmap.shape[1])
        assert rows.start <= peak[0] < rows.stop and cols.start <= peak[1] < cols.stop
        assert heatmap[rows, cols].min() == 1.0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("layer", ["layer4", "layer3", "layer2.1.conv2"])
def test_batched_equals_one_at_a_time(method, layer):
    model = random_resnet()
    images = torch.randn(5, 3, 32, 32)
    targets = torch.tensor([0, 3, 3, 7, 9])
    explainer = method(model, layer=layer)
    batched = explainer(images, targets)
    single = torch.cat([explainer(images[i:i + 1], targets[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_contract_shape_range_and_untouched_state(method):
    model = random_resnet().train()                       # left in train mode by its owner
    images = torch.randn(3, 3, 32, 32)
    original = images.clone()
    heatmaps = method(model, layer="layer3")(images, torch.tensor([1, 2, 3]))
    assert heatmaps.shape == (3, 32, 32) and heatmaps.dtype == torch.float32
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1 and not heatmaps.isnan().any()
    assert torch.equal(images, original) and not images.requires_grad
    assert model.training and all(m.training for m in model.modules())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("method", METHODS)
def test_hooks_are_removed_after_an_exception(method):
    model = random_resnet()
    with pytest.raises(ParamError, match="more than once"):   # raised inside the layer's hook
        method(model, "layer4.1.relu")(torch.randn(2, 3, 32, 32), torch.tensor([0, 9]))
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("method", METHODS)
def test_constant_map_gives_zeros_not_nan(method):
    model = EvidenceNet()
    heatmaps = method(model, layer="relu")(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1]))
    assert torch.equal(heatmaps, torch.zeros(2, 8, 8))


def test_frozen_model_and_inference_tensors_work():
    model = random_resnet()
    model.requires_grad_(False)
    with torch.inference_mode():
        images = torch.randn(2, 3, 32, 32)
    heatmaps = GradCAM(model)(images, torch.tensor([0, 1]))
    assert heatmaps.shape == (2, 32, 32) and heatmaps.max() == 1.0
    assert not any(p.requires_grad for p in model.parameters())


def test_gradcampp_differs_from_gradcam_but_agrees_on_single_channel_evidence():
    model = random_resnet()
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([2, 5])
    assert not torch.allclose(GradCAM(model)(images, targets),
                              GradCAMPlusPlus(model)(images, targets), atol=1e-3)
    net = EvidenceNet()
    images, _ = evidence_images()
    torch.testing.assert_close(GradCAMPlusPlus(net, "relu")(images, torch.ones(3).long()),
                               GradCAM(net, "relu")(images, torch.ones(3).long()))


def test_gradcam_weights_are_the_spatial_mean_of_the_gradient():
    activation = torch.rand(1, 2, 3, 3)
    grad = torch.arange(18, dtype=torch.float32).view(1, 2, 3, 3)
    assert GradCAM.channel_weights(activation, grad).tolist() == [[4.0, 13.0]]


@pytest.mark.parametrize("method", METHODS)
def test_in_place_relu_model_gives_the_same_maps_as_out_of_place(method):
    model = random_resnet()
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([3, 8])
    before = method(model, "layer4.1.bn2")(images, targets)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    torch.testing.assert_close(method(model, "layer4.1.bn2")(images, targets), before)
