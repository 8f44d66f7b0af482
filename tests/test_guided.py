"""Guided Grad-CAM against a literal implementation, and its hooks' clean-up."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import activation_and_gradient
from torch import nn

from gradcam import GuidedGradCAM, guided_backprop, guided_relus


class ReluNet(nn.Module):
    """conv, in-place ReLU, conv, ReLU6, conv, ReLU, GAP, linear: every ReLU kind the guided
    hooks handle, in place and not."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(5, 6, 3, stride=2, padding=1)
        self.relu2 = nn.ReLU6()
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)
        self.relu3 = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(self.relu3(self.conv3(x)).mean(dim=(2, 3)))


class GuidedReLU(torch.autograd.Function):
    """Springenberg et al.'s rule written out: forward ``max(x, 0)`` (capped for ReLU6),
    backward ``relu(grad) * [0 < x (< cap)]``."""

    @staticmethod
    def forward(ctx, x, cap):
        ctx.save_for_backward(x)
        ctx.cap = cap
        return x.clamp(0, cap)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * ((x > 0) & (x < ctx.cap)), None


def literal_guided_gradient(net: ReluNet, image: torch.Tensor, target: int) -> torch.Tensor:
    x = image[None].clone().requires_grad_(True)
    inf = float("inf")
    h = GuidedReLU.apply(F.conv2d(x, net.conv1.weight, net.conv1.bias, padding=1), inf)
    h = GuidedReLU.apply(F.conv2d(h, net.conv2.weight, net.conv2.bias, stride=2, padding=1), 6.0)
    h = GuidedReLU.apply(F.conv2d(h, net.conv3.weight, net.conv3.bias, padding=1), inf)
    score = F.linear(h.mean(dim=(2, 3)), net.fc.weight, net.fc.bias)[0, target]
    (grad,) = torch.autograd.grad(score, x)
    return grad[0]


def literal_guided_gradcam(net, layer, image, target):
    """Grad-CAM (ReLU, bilinear upsampling), times the guided gradient, largest magnitude over
    colour, min-max to [0, 1]."""
    a, g = activation_and_gradient(net, layer, image, target)
    raw = (g.mean(dim=(1, 2))[:, None, None] * a).sum(0).clamp(min=0)
    cam = F.interpolate(raw[None, None], size=image.shape[-2:], mode="bilinear",
                        align_corners=False)[0, 0]
    product = literal_guided_gradient(net, image, target).abs().amax(0) * cam
    return (product - product.min()) / (product.max() - product.min())


IMAGES = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(5))
TARGETS = torch.tensor([0, 2, 1])


@pytest.mark.parametrize("layer", ["relu2", "conv3"])
def test_guided_gradcam_equals_the_literal_formula(layer):
    net = ReluNet().double()
    heatmaps = GuidedGradCAM(net, layer)(IMAGES.double(), TARGETS)
    assert heatmaps.shape == (3, 12, 12) and heatmaps.dtype == torch.float32
    for image, target, heatmap in zip(IMAGES.double(), TARGETS, heatmaps):
        expected = literal_guided_gradcam(net, layer, image, int(target)).float()
        torch.testing.assert_close(heatmap, expected, rtol=0, atol=1e-6)


def test_guided_backprop_is_not_the_plain_gradient_and_follows_the_rule():
    net = ReluNet().double()
    images = IMAGES.double()
    guided = guided_backprop(net, images, TARGETS)
    plain_input = images.clone().requires_grad_(True)
    plain = torch.autograd.grad(net(plain_input).gather(1, TARGETS[:, None]).sum(),
                                plain_input)[0]
    assert not torch.allclose(guided, plain)
    for i, target in enumerate(TARGETS):
        torch.testing.assert_close(guided[i], literal_guided_gradient(net, images[i], int(target)))


def test_guided_hooks_live_only_for_the_call_and_the_model_is_left_as_found():
    net = ReluNet().train()
    flags = [m.training for m in net.modules()]
    images = IMAGES.clone()
    with guided_relus(net) as count:
        assert count == 3
        assert all(m._forward_hooks for m in (net.relu1, net.relu2, net.relu3))
    assert not any(m._forward_hooks for m in net.modules())
    GuidedGradCAM(net, "conv3")(images, TARGETS)
    assert torch.equal(images, IMAGES) and not images.requires_grad
    assert [m.training for m in net.modules()] == flags and net.relu1.inplace
    assert all(p.grad is None for p in net.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())
    def fail(module, inputs, output):
        raise RuntimeError("a failure inside the guided pass")
    failing = net.conv3.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="inside the guided pass"):
        guided_backprop(net, images, TARGETS)
    failing.remove()
    assert not any(m._forward_hooks for m in net.modules())
    assert [m.training for m in net.modules()] == flags


def test_guided_gradcam_is_finer_than_gradcam():
    """A map with more distinct values than the layer's 6x6 Grad-CAM has locations: detail
    below the layer's resolution, which is what the method is for."""
    net = ReluNet()
    heatmap = GuidedGradCAM(net, "conv3")(IMAGES[:1], TARGETS[:1])[0]
    assert heatmap.max() == 1.0 and heatmap.unique().numel() > 36
