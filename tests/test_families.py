"""Every method on every torchvision CNN family, with random weights at 64 px.

The smallest variant of each family, batch 2. Score-CAM runs a full forward pass per
(image, channel), so it is checked at 32 px at the family's narrowest spatial layer (<= 96
channels) instead of the 512-1280 channels of the last block; the other methods run at ``auto``
at 64 px.
VGG's 25088 x 4096 classifier is narrowed to 64 hidden units (same layers, so the same torch.fx
tail for Ablation-CAM), which keeps its per-channel passes cheap.
"""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from cam import CAM, auto_layer, cam_head, spatial_layers
from errors import UserError
from explain import make_explainer
from gradcam import GradCAM
from gradfree import network_after
from registry import LAYER_METHODS
from zoo import load_classifier

SIZE = 64
SCORE_SIZE = 32

# family -> (smallest variant, the layer ``auto`` picks, whether CAM is defined there)
FAMILIES = {
    "resnet": ("resnet18", "layer4", True),
    "vgg": ("vgg11", "features", False),                    # three linear layers
    "densenet": ("densenet121", "features", False),         # F.relu between features and pool
    "mobilenet_v2": ("mobilenet_v2", "features", True),
    "mobilenet_v3": ("mobilenet_v3_small", "features", False),  # two linear layers
    "efficientnet": ("efficientnet_b0", "features", True),
    "regnet": ("regnet_x_400mf", "trunk_output", True),
    "convnext": ("convnext_tiny", "features", False),       # LayerNorm after the pooling
    "squeezenet": ("squeezenet1_1", "classifier.2", False),  # a 1x1 conv, ReLU, then pooling
    "googlenet": ("googlenet", "inception5b", True),
}
METHODS = [m for m in LAYER_METHODS if m != "cam"]   # CNNs: no rollout


@functools.cache
def family_model(family: str) -> nn.Module:
    """The family's smallest model, random weights, eval mode, shared between the tests (each
    test leaves it as found, which is part of what they check)."""
    torch.manual_seed(0)
    model = load_classifier(FAMILIES[family][0], input_size=SIZE).module
    if family == "vgg":
        model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
                                         nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(),
                                         nn.Linear(64, 1000))
    return model.eval()


def images(size: int = SIZE) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


TARGETS = torch.tensor([3, 998])


def narrowest_layer(model: nn.Module, size: int) -> str:
    """The spatial layer (more than one location) with the fewest channels, the last of them."""
    found = [(k, -i, n) for i, (n, (k, h, w)) in enumerate(spatial_layers(model, size))
             if h * w > 1]
    return min(found)[2]


def state(model: nn.Module):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def assert_left_as_found(model: nn.Module, before) -> None:
    assert state(model) == before
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_layer_and_cam_head(family):
    model = family_model(family)
    _, layer, has_cam = FAMILIES[family]
    assert auto_layer(model, SIZE) == layer
    names = [n for n, _ in spatial_layers(model, SIZE)]
    assert layer in names and len(names) == len(set(names))
    if has_cam:
        assert cam_head(model, SIZE).layer == layer
    else:
        with pytest.raises(UserError, match="CAM is not defined.*gradcam"):
            cam_head(model, SIZE)
        with pytest.raises(UserError, match="gradcam"):
            CAM(model)(images(), TARGETS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_method_on_family(family, method):
    """Maps [B, H, W] in [0, 1] and finite; batched equals one at a time (the second image's
    map is the same alone as in the batch of two, so no sample leaks into another through
    BatchNorm or a chunk); the model's modes,
    requires_grad flags and hooks are as they were (the model is put in train mode with one
    frozen parameter first, as a user's might be)."""
    model = family_model(family)
    size = SCORE_SIZE if method == "scorecam" else SIZE
    layer = narrowest_layer(model, size) if method == "scorecam" else FAMILIES[family][1]
    first = next(model.parameters())
    model.train()
    first.requires_grad_(False)
    try:
        before = state(model)
        x = images(size)
        original = x.clone()
        explainer = make_explainer(method, model, layer, batch_size=512)
        maps = explainer(x, TARGETS)
        assert maps.shape == (2, size, size) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        assert torch.equal(x, original)
        assert_left_as_found(model, before)
        alone = explainer(x[1:], TARGETS[1:])        # the second image on its own
        torch.testing.assert_close(maps[1:], alone, rtol=0, atol=2e-4)
    finally:
        first.requires_grad_(True)
        model.eval()


@pytest.mark.parametrize("family", [f for f, (_, _, cam) in FAMILIES.items() if cam])
def test_cam_equals_gradcam_where_cam_is_defined(family):
    model = family_model(family)
    layer = FAMILIES[family][1]
    for targets in (TARGETS, torch.tensor([0, 0])):
        torch.testing.assert_close(CAM(model)(images(), targets),
                                   GradCAM(model, layer)(images(), targets), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_ablation_tail_gives_the_logits_for_every_family(family):
    """torch.fx cuts every family at its ``auto`` layer (none falls back to the whole network
    there); the tail maps that layer's output to the model's logits."""
    model = family_model(family)
    layer = FAMILIES[family][1]
    tail = network_after(model, layer)
    assert tail is not None
    seen = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: seen.setdefault("a", o.clone()))
    try:
        with torch.no_grad():
            logits = model(images())
    finally:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(tail(seen["a"]), logits, rtol=1e-4, atol=1e-4)


def test_a_layer_inside_a_residual_block_falls_back_to_the_whole_network():
    model = family_model("resnet")
    assert network_after(model, "layer1.0.conv2") is None
    maps = make_explainer("ablationcam", model, "layer1.0.conv2", batch_size=512)(images()[:1],
                                                                                   TARGETS[:1])
    assert maps.shape == (1, SIZE, SIZE) and maps.max() == 1.0


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "eigencam"])
def test_a_1x1_layer_is_refused_naming_layers_that_work(method):
    model = family_model("resnet")
    with pytest.raises(UserError, match=r"avgpool.*1x1.*layers that work: .*layer4"):
        make_explainer(method, model, "avgpool")(images(), TARGETS)
