"""Reduced precision for heatmaps: a method runs in bf16 autocast only where it was validated
against fp32 (r >= 0.999 per map, at most 0.02 apart anywhere, on the shipped model and a
random ResNet-50 at 224 px); the others ignore the dtype; fp16 gradients are scaled so that
they do not underflow."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from explain import EXPLAINERS, heatmap_precision, make_explainer
from gradcam import score_gradient
from registry import LAYER_METHODS
from runtime import cpu_has_native_bf16
from sources import dataset_split
from zoo import load_classifier

ROOT = Path(__file__).resolve().parent.parent
BF16 = pytest.mark.skipif(not cpu_has_native_bf16(),
                          reason="this CPU has no AVX512-BF16 or AMX: the tool runs fp32 here")
REDUCED = [m for m, cls in EXPLAINERS.items() if "cpu" in cls.reduced_precision_on]
FP32_ONLY = [m for m in LAYER_METHODS if m not in REDUCED]   # on the shipped CNN


def agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """The smallest Pearson r over the maps that are not constant in both, and the largest
    absolute difference anywhere."""
    live = (a.flatten(1).amax(1) > 0) | (b.flatten(1).amax(1) > 0)
    x, y = a.flatten(1)[live].double(), b.flatten(1)[live].double()
    x, y = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    r = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp(min=1e-30)
    return (r.min().item() if len(r) else 1.0), (a - b).abs().max().item()


@pytest.fixture(scope="module")
def shipped():
    loaded = load_classifier(weights=ROOT / "checkpoints" / "resnet18_fashion_mnist.pth")
    split = dataset_split(loaded, ROOT / "data")
    return loaded.module, loaded.inputs.normalize(split.images[:16].float() / 255), \
        split.labels[:16]


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    targets = torch.randint(0, 1000, (4,), generator=torch.Generator().manual_seed(2))
    return torchvision.models.resnet50().eval(), images, targets


def test_the_validated_methods_are_the_expected_ones() -> None:
    """Measured on an AVX512-BF16 / AMX CPU: Grad-CAM, XGrad-CAM, HiResCAM and CAM differ from
    fp32 by about 0.04 on a random ResNet-50 (their signed channel weights cancel), Guided
    Grad-CAM by 0.021, so they stay fp32; Ablation-CAM's weights are differences of close
    logits."""
    assert set(REDUCED) == {"gradcampp", "layercam", "scorecam", "eigencam"}


@BF16
@pytest.mark.parametrize("method", REDUCED)
def test_a_validated_method_meets_the_bar_on_the_shipped_model(method, shipped) -> None:
    model, images, targets = shipped
    fp32 = make_explainer(method, model, "layer4")(images, targets)
    bf16 = make_explainer(method, model, "layer4", dtype=torch.bfloat16)(images, targets)
    r, gap = agreement(fp32, bf16)
    assert r >= 0.999 and gap <= 0.02, (method, r, gap)


@BF16
@pytest.mark.parametrize("method", [m for m in REDUCED if m != "scorecam"])
def test_a_validated_method_meets_the_bar_on_a_random_resnet50(method, resnet50) -> None:
    """(Score-CAM's 2,048 masked passes per image at layer4 are a benchmark's work:
    ``bench/bench_heatmaps.py`` compares its bf16 and fp32 maps there.)"""
    model, images, targets = resnet50
    fp32 = make_explainer(method, model)(images, targets)
    bf16 = make_explainer(method, model, dtype=torch.bfloat16)(images, targets)
    r, gap = agreement(fp32, bf16)
    assert r >= 0.999 and gap <= 0.02, (method, r, gap)


@pytest.fixture(scope="module")
def vit():
    """A random ViT-B/16 at 224 px, its head re-initialised (torchvision starts it at zero,
    which would make every class score independent of the image and every map blank)."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16().eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    return model, images, torch.tensor([3, 7])


@BF16
@pytest.mark.parametrize("method", [m for m in REDUCED if m != "scorecam"])
def test_a_validated_method_meets_the_bar_on_a_random_vit(method, vit) -> None:
    model, images, targets = vit
    fp32 = make_explainer(method, model)(images, targets)
    bf16 = make_explainer(method, model, dtype=torch.bfloat16)(images, targets)
    assert fp32.amax() > 0
    r, gap = agreement(fp32, bf16)
    assert r >= 0.999 and gap <= 0.02, (method, r, gap)


@pytest.mark.parametrize("method", FP32_ONLY)
def test_a_method_not_validated_ignores_the_dtype(method, shipped) -> None:
    model, images, targets = shipped
    fp32 = make_explainer(method, model, "layer4")(images[:4], targets[:4])
    asked = make_explainer(method, model, "layer4", dtype=torch.bfloat16)(images[:4],
                                                                          targets[:4])
    assert torch.equal(fp32, asked)


def test_heatmap_precision_names_what_each_method_runs_in() -> None:
    chosen = heatmap_precision(["gradcam", "layercam"], torch.bfloat16, "cpu")
    assert chosen == {"gradcam": None, "layercam": torch.bfloat16}
    assert heatmap_precision(["layercam"], None, "cpu") == {"layercam": None}


def test_fp16_gradients_are_scaled_instead_of_underflowing() -> None:
    """A gradient of 1e-9 is below fp16's smallest subnormal (6e-8): unscaled it is zero."""
    activation = torch.ones(2, 3, 4, 4, dtype=torch.float16, requires_grad=True)
    score = (activation.float() * 1e-9).sum()
    (plain,) = torch.autograd.grad(score, activation, retain_graph=True)
    assert plain.abs().max() == 0
    scaled = score_gradient(score, activation)
    assert scaled.dtype == torch.float32
    torch.testing.assert_close(scaled, torch.full_like(scaled, 1e-9), rtol=1e-3, atol=0)


def test_fp16_gradients_that_would_overflow_are_scaled_less() -> None:
    activation = torch.ones(1, 2, 2, 2, dtype=torch.float16, requires_grad=True)
    score = (activation.float() * 10.0).sum()      # 10 x 2^16 overflows fp16 (max 65504)
    torch.testing.assert_close(score_gradient(score, activation),
                               torch.full((1, 2, 2, 2), 10.0))
