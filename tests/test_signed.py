"""Eigen-CAM and Grad-CAM++ on signed layers (outputs without a ReLU after them, such as
EfficientNet's and MobileNet's block outputs), where their textbook forms break."""
from __future__ import annotations

import numpy as np
import torch
from conftest import IMAGES, TARGETS, TinyNet, activation_and_gradient, literal_normalize
from torch import nn

from gradcam import GradCAM, GradCAMPlusPlus
from gradfree import EigenCAM


class SignedNet(nn.Module):
    """``layer`` is a 1x1 convolution without ReLU, so its map is whatever sign the input
    gives it; then global average pooling and one linear layer."""

    def __init__(self, conv: list[list[float]], fc: list[list[float]]):
        super().__init__()
        self.layer = nn.Conv2d(3, len(conv), 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(len(conv), len(fc), bias=False)
        with torch.no_grad():
            self.layer.weight.copy_(torch.tensor(conv).view(len(conv), 3, 1, 1))
            self.fc.weight.copy_(torch.tensor(fc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layer(x)).flatten(1))


def red(values: list[float]) -> torch.Tensor:
    """A 2x2 image whose red channel holds ``values`` (row by row), the others zero."""
    image = torch.zeros(1, 3, 2, 2)
    image[0, 0] = torch.tensor(values).view(2, 2)
    return image


# --------------------------------------------------------------------------------------------
# Eigen-CAM


def test_eigencam_signs_the_projection_not_the_vector():
    """A rank-one map ``O = u v^T`` with ``v = (0.8, -0.6)`` (entries sum to +0.2) and ``u``
    all negative: the vector rule keeps ``O v = u``, all negative, and the ReLU leaves zeros;
    signing the projection gives ``-u``, largest where ``u`` is most negative."""
    model = SignedNet([[0.8, 0, 0], [-0.6, 0, 0]], [[1.0, 0.0], [0.0, 1.0]])
    image = red([-1.0, -2.0, -3.0, -4.0])
    heatmap = EigenCAM(model, "layer")(image, torch.tensor([0]))[0]

    o = model.layer(image).detach()[0].flatten(1).T.double().numpy()     # hw x K
    v1 = np.linalg.svd(o, full_matrices=False)[2][0]
    vector_rule = o @ (v1 if v1.sum() >= 0 else -v1)
    assert (vector_rule < 0).all(), "the old rule's map must be all negative here"
    expected = literal_normalize(torch.from_numpy(-vector_rule).view(2, 2), (2, 2))
    torch.testing.assert_close(heatmap, expected, rtol=0, atol=1e-6)
    assert heatmap[1, 1] == 1.0 and heatmap[0, 0] == 0.0


def test_eigencam_map_has_non_negative_mass_on_a_random_signed_layer():
    model = TinyNet()
    maps = EigenCAM(model, "block1.conv2")(IMAGES, TARGETS)
    assert (maps.flatten(1).amax(1) == 1.0).all()     # never the all-zero map


# --------------------------------------------------------------------------------------------
# Grad-CAM++


def paper_alpha(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Eq. 19 as written: ``g^2 / (2 g^2 + S g^3)``."""
    s = a.sum(dim=(-2, -1), keepdim=True)
    return g ** 2 / (2 * g ** 2 + s * g ** 3)


def literal_gradcampp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """One channel at a time: ``w_k = sum_ij alpha_ij relu(g_ij)`` with
    ``alpha = 1 / (2 + max(S_k g_ij, 0))``, the guarded alpha."""
    weights = torch.zeros(a.shape[0], dtype=a.dtype)
    for k in range(a.shape[0]):
        s = float(a[k].sum())
        for i in range(a.shape[1]):
            for j in range(a.shape[2]):
                gij = float(g[k, i, j])
                if gij > 0:
                    weights[k] += gij / (2.0 + max(s * gij, 0.0))
    return weights


def test_gradcampp_alpha_is_the_papers_where_the_layer_is_non_negative():
    a = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    g = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    expected = (torch.nan_to_num(paper_alpha(a, g)) * g.clamp(min=0)).sum(dim=(2, 3))
    torch.testing.assert_close(GradCAMPlusPlus.channel_weights(a, g), expected)


def test_gradcampp_alpha_stays_bounded_where_the_papers_is_singular_or_negative():
    """Channel sums of -8 and -20 with gradients of 0.25 and 0.1: ``S g`` is -2 (alpha
    infinite) and -2 and -5 (alpha negative) in the paper's form; the guarded weights are
    finite, non-negative and at most half the positive gradient's sum."""
    a = torch.tensor([[[-2.0, -2.0], [-2.0, -2.0]], [[-2.0, -4.0], [-6.0, -8.0]]])[None]
    g = torch.tensor([[[0.25, 0.25], [0.25, 0.25]], [[0.1, 0.1], [0.25, -0.3]]])[None]
    raw = paper_alpha(a, g)
    assert torch.isinf(raw[0, 0]).all() and (raw[0, 1, 1, 0] < 0)
    weights = GradCAMPlusPlus.channel_weights(a, g)
    assert torch.isfinite(weights).all() and (weights >= 0).all()
    assert (weights <= 0.5 * g.clamp(min=0).sum(dim=(2, 3)) + 1e-7).all()
    torch.testing.assert_close(weights[0], literal_gradcampp_weights(a[0], g[0]))


def test_gradcampp_on_a_single_signed_channel_agrees_with_gradcam():
    """One channel, negative everywhere, constant positive gradient: the paper's alpha is
    negative (``S g = -5``), which flips the channel's weight and makes the map the inverse of
    Grad-CAM's. Guarded, any positive weight gives Grad-CAM's map (here all zero after ReLU)."""
    model = SignedNet([[1.0, 0, 0]], [[1.0], [-1.0]])
    image = red([-2.0, -4.0, -6.0, -8.0])
    target = torch.tensor([0])
    torch.testing.assert_close(GradCAMPlusPlus(model, "layer")(image, target),
                               GradCAM(model, "layer")(image, target), rtol=0, atol=0)
    a, g = activation_and_gradient(model, "layer", image[0], 0)
    assert float(paper_alpha(a, g)[0, 0, 0]) < 0


def test_gradcampp_on_a_conv_output_without_relu_equals_the_literal_formula():
    model = TinyNet().double()
    images = IMAGES.double()
    heatmaps = GradCAMPlusPlus(model, "block1.conv2")(images, TARGETS)
    for image, target, heatmap in zip(images, TARGETS, heatmaps):
        a, g = activation_and_gradient(model, "block1.conv2", image, int(target))
        assert (a < 0).any() and (a > 0).any()
        w = literal_gradcampp_weights(a, g)
        raw = (w[:, None, None] * a).sum(0)
        torch.testing.assert_close(heatmap, literal_normalize(raw, image.shape[-2:]),
                                   rtol=0, atol=1e-6)
