"""Shared test models and fixtures: small networks with random weights, made once."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from model import build_resnet18


@pytest.fixture(scope="session", autouse=True)
def console() -> None:
    """The library's notes on stderr as the command line prints them, in every test, not only
    in those that run after a command-line test has set the console up."""
    import commands
    commands.configure_console()


@pytest.fixture(scope="module", autouse=True)
def module_folders_removed(request, tmp_path_factory):
    """The folders a module's fixtures made with ``tmp_path_factory`` go when the module ends
    with no failure: the suite writes gigabytes of checkpoints in all, more than a CI disk may
    hold, and a failed module's folders stay to be looked at."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failures = request.session.testsfailed
    yield
    if request.session.testsfailed != failures:
        return
    for path in set(base.iterdir()) - before:
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0,
                                        min_size=96, max_size=160, rpn_pre_nms_top_n_test=100,
                                        rpn_post_nms_top_n_test=100)
    return model.eval()


def random_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


# ---- classifiers with random weights (test_cam, test_methods and the tests that use them)


class EvidenceNet(nn.Module):
    """A hand-built GAP + linear classifier: class 1 is "red light", class 0 its absence.

    ``features`` is a 1x1 convolution that copies the red channel, so the feature map (and
    with it CAM and Grad-CAM for class 1) is large exactly where the image is red.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0       # channel 0: red
            self.features.weight[1, 1] = 1.0       # channel 1: green
            self.fc.weight.copy_(torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.features(x))).flatten(1))


def evidence_images(n: int = 3) -> tuple[torch.Tensor, list[tuple[slice, slice]]]:
    """Black images, each with a red square at a different known place."""
    images = torch.zeros(n, 3, 16, 16)
    regions = []
    for i in range(n):
        rows, cols = slice(2 + 3 * i, 6 + 3 * i), slice(9 - 3 * i, 13 - 3 * i)
        images[i, 0, rows, cols] = 1.0
        regions.append((rows, cols))
    return images, regions


def random_resnet(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """A random-weight ResNet-18 with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_resnet18(num_classes)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.bias, 0.0, 0.1)
            nn.init.normal_(module.running_mean, 0.0, 0.1)
            nn.init.uniform_(module.running_var, 0.5, 1.5)
    return model.eval()


class Block(nn.Module):
    """A residual block, so that a layer inside it cannot be cut out of the network."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x
        return self.relu(out)


class TinyNet(nn.Module):
    """Stem, a residual block, a strided stage, GAP and one linear layer: small enough that the
    literal per-channel loops run in milliseconds."""

    def __init__(self, seed: int = 0, classes: int = 5):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6),
                                  nn.ReLU(inplace=True))
        self.block1 = Block(6)
        self.block2 = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                    nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.uniform_(m.weight, 0.5, 1.5)
                nn.init.normal_(m.bias, 0.0, 0.2)
                nn.init.normal_(m.running_mean, 0.0, 0.1)
                nn.init.uniform_(m.running_var, 0.5, 1.5)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block2(self.block1(self.stem(x)))).flatten(1))


IMAGES = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
TARGETS = torch.tensor([0, 3, 4])


def literal_normalize(raw: torch.Tensor, size: tuple[int, int], relu_first: bool = True
                      ) -> torch.Tensor:
    """ReLU, bilinear upsampling, min-max to [0, 1]; a constant map gives zeros."""
    if relu_first:
        raw = raw.clamp(min=0)
    up = F.interpolate(raw[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    if not relu_first:
        up = up.clamp(min=0)
    if up.max() - up.min() <= 1e-7 * up.max().abs():
        return torch.zeros_like(up).float()
    return ((up - up.min()) / (up.max() - up.min())).float()


def activation_and_gradient(model, layer_name, image, target):
    """The layer's activation and the gradient of the target logit, with a tensor hook and a
    full ``backward()``: another mechanism than the explainers' ``autograd.grad``."""
    layer = dict(model.named_modules())[layer_name]
    store = {}

    def keep(module, inputs, output):
        store["a"] = output.detach().clone()
        output.register_hook(lambda g: store.__setitem__("g", g.detach().clone()))

    handle = layer.register_forward_hook(keep)
    try:
        model(image[None].clone().requires_grad_(True))[0, target].backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    return store["a"][0], store["g"][0]
