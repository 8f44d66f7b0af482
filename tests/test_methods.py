"""Every CAM method against a literal one-image, one-channel-at-a-time implementation of its
paper's formula (written here, independently of the batched code), plus the identities that
hold between methods and the explainer contract (state and hooks left as found, also on error).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import (
    IMAGES,
    TARGETS,
    TinyNet,
    activation_and_gradient,
    literal_normalize,
    random_resnet,
)
from torch import nn

import gradfree
from explain import EXPLAINERS, make_explainer
from gradcam import GradCAM, HiResCAM, LayerCAM, XGradCAM
from gradfree import AblationCAM, EigenCAM, ScoreCAM, network_after
from registry import LAYER_METHODS

LAYERS = ["block2", "block1", "block1.conv2"]
# The methods that explain a layer's map; rollout, which needs a vision transformer, is in
# test_rollout.py.
# --------------------------------------------------------------------------------------------
# Literal implementations: one image, one channel at a time, plain loops


def activation_of(model, layer_name, image):
    layer = dict(model.named_modules())[layer_name]
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.clone()))
    with torch.no_grad():
        logits = model(image[None])
    handle.remove()
    return store["a"][0], logits[0]


def literal_xgradcam(model, layer, image, target):
    a, g = activation_and_gradient(model, layer, image, target)
    raw = torch.zeros(a.shape[1:], dtype=a.dtype)
    for k in range(a.shape[0]):
        total = a[k].sum()
        w = 0.0 if total == 0 else sum(a[k, i, j] / total * g[k, i, j]
                                       for i in range(a.shape[1]) for j in range(a.shape[2]))
        raw += w * a[k]
    return literal_normalize(raw, image.shape[-2:])


def literal_hirescam(model, layer, image, target):
    a, g = activation_and_gradient(model, layer, image, target)
    raw = torch.zeros(a.shape[1:], dtype=a.dtype)
    for k in range(a.shape[0]):
        raw += g[k] * a[k]
    return literal_normalize(raw, image.shape[-2:])


def literal_layercam(model, layer, image, target):
    a, g = activation_and_gradient(model, layer, image, target)
    raw = torch.zeros(a.shape[1:], dtype=a.dtype)
    for k in range(a.shape[0]):
        raw += torch.relu(g[k]) * a[k]
    return literal_normalize(raw, image.shape[-2:])


def literal_scorecam(model, layer, image, target):
    """The Score-CAM authors' loop: skip constant channels, mask the input with the min-max
    scaled upsampled channel, weight the upsampled channel by the softmax probability."""
    a, _ = activation_of(model, layer, image)
    size = image.shape[-2:]
    total = torch.zeros(size, dtype=a.dtype)
    for k in range(a.shape[0]):
        sal = F.interpolate(a[k][None, None], size=size, mode="bilinear",
                            align_corners=False)[0, 0]
        if sal.max() == sal.min():
            continue
        norm = (sal - sal.min()) / (sal.max() - sal.min())
        with torch.no_grad():
            score = F.softmax(model((image * norm)[None]), dim=1)[0, target]
        total += score * sal
    return literal_normalize(total, size, relu_first=False)


def literal_ablationcam(model, layer, image, target):
    """Set channel k to zero in the full network's forward pass (a replacing hook), read the
    target logit, weight ``(y - y_k) / y``."""
    a, logits = activation_of(model, layer, image)
    y = logits[target]
    module = dict(model.named_modules())[layer]
    raw = torch.zeros(a.shape[1:], dtype=a.dtype)
    for k in range(a.shape[0]):
        def ablate(m, i, o, k=k):
            o = o.clone()
            o[:, k] = 0
            return o
        handle = module.register_forward_hook(ablate)
        with torch.no_grad():
            y_k = model(image[None])[0, target]
        handle.remove()
        raw += (y - y_k) / y * a[k]
    return literal_normalize(raw, image.shape[-2:])


def literal_eigencam(model, layer, image, target):
    a, _ = activation_of(model, layer, image)
    o = a.reshape(a.shape[0], -1).T.double().numpy()           # hw x K
    _, _, vt = np.linalg.svd(o, full_matrices=False)
    projection = o @ vt[0]
    if projection.sum() < 0:          # the sign that gives the map a non-negative sum
        projection = -projection
    raw = torch.from_numpy(projection).view(a.shape[1:])
    return literal_normalize(raw, image.shape[-2:])


LITERAL = {"xgradcam": literal_xgradcam, "hirescam": literal_hirescam,
           "layercam": literal_layercam, "scorecam": literal_scorecam,
           "ablationcam": literal_ablationcam, "eigencam": literal_eigencam}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("name", sorted(LITERAL))
def test_batched_method_equals_its_literal_formula(name, layer):
    """In float64, so that the only differences left are the float32 rounding of the final
    maps (Ablation-CAM's weight is a difference of two close logits, which float32 would blur
    to ~1e-5 between the BatchNorm-folded and the plain network)."""
    model, images = TinyNet().double(), IMAGES.double()
    heatmaps = make_explainer(name, model, layer, batch_size=5)(images, TARGETS)
    for image, target, heatmap in zip(images, TARGETS, heatmaps):
        expected = LITERAL[name](model, layer, image, int(target))
        assert expected.max() == 1.0, "the literal map should not be degenerate here"
        torch.testing.assert_close(heatmap, expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Identities between methods


def test_hirescam_and_xgradcam_equal_gradcam_at_the_last_block_of_gap_linear():
    """The gradient there is fc.weight[c] / (h*w), the same at every location: HiResCAM's
    element-wise product sums to Grad-CAM's map, and XGrad-CAM's activation-weighted average
    of a constant gradient is that constant."""
    model = random_resnet()
    images = torch.randn(2, 3, 32, 32)
    for c in (0, 4, 9):
        targets = torch.full((2,), c, dtype=torch.long)
        grad_cam = GradCAM(model)(images, targets)
        torch.testing.assert_close(HiResCAM(model)(images, targets), grad_cam, rtol=0, atol=1e-5)
        torch.testing.assert_close(XGradCAM(model)(images, targets), grad_cam, rtol=0, atol=1e-5)


def test_hirescam_differs_from_gradcam_where_the_gradient_varies():
    model = random_resnet()
    images, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    assert not torch.allclose(HiResCAM(model, "layer3")(images, targets),
                              GradCAM(model, "layer3")(images, targets), atol=1e-3)


def test_layercam_equals_hirescam_where_the_gradient_is_positive():
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.abs_()      # positive weights after the last ReLU: positive gradient
    torch.testing.assert_close(LayerCAM(model, "block2")(IMAGES, TARGETS),
                               HiResCAM(model, "block2")(IMAGES, TARGETS), rtol=0, atol=1e-6)


def test_eigencam_does_not_depend_on_the_target():
    model = TinyNet()
    explainer = EigenCAM(model, "block1")
    assert torch.equal(explainer(IMAGES, TARGETS), explainer(IMAGES, (TARGETS + 1) % 5))


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_batched_equals_one_at_a_time(name):
    model, images, layer = TinyNet().double(), IMAGES.double(), "block2"
    explainer = make_explainer(name, model, layer, batch_size=2)
    batched = explainer(images, TARGETS)
    single = torch.cat([explainer(images[i:i + 1], TARGETS[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_chunk_size_does_not_change_the_maps(method):
    """In float64: in float32 a convolution's result moves by an ulp with the batch size, and
    Ablation-CAM's difference of two close logits magnifies that to ~1e-6."""
    model, images = TinyNet().double(), IMAGES.double()
    maps = [method(model, "block1", batch_size=size)(images, TARGETS) for size in (1, 7, 1000)]
    torch.testing.assert_close(maps[0], maps[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(maps[0], maps[2], rtol=0, atol=1e-6)


def test_network_after_a_stage_gives_the_logits_and_inside_a_block_is_refused():
    model = TinyNet()
    tail = network_after(model, "block1")
    features = model.block1(model.stem(IMAGES))
    torch.testing.assert_close(tail(features), model(IMAGES))
    assert network_after(model, "block1.conv2") is None   # the residual needs block1's input
    assert network_after(random_resnet(), "layer3") is not None


def test_ablation_through_the_tail_equals_ablation_through_the_whole_network(monkeypatch):
    model, images = TinyNet().double(), IMAGES.double()
    via_tail = AblationCAM(model, "block1")(images, TARGETS)
    monkeypatch.setattr(gradfree, "network_after", lambda model, name: None)
    via_whole = AblationCAM(model, "block1")(images, TARGETS)
    torch.testing.assert_close(via_tail, via_whole, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The contract: shape, range, nothing changed, nothing left behind, also on error


def _state(model: nn.Module):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _assert_as_found(model: nn.Module, before) -> None:
    flags, grads, state = _state(model)
    assert flags == before[0] and grads == before[1]
    assert all(torch.equal(state[k], before[2][k]) for k in state)
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in model.modules())


@pytest.mark.parametrize("name", [n for n in LAYER_METHODS if n != "cam"])
@pytest.mark.parametrize("layer", ["block1", "block1.conv2"])
def test_contract_and_state_left_as_found(name, layer):
    model = TinyNet().train()
    model.stem[0].weight.requires_grad_(False)
    before = _state(model)
    images = IMAGES.clone()
    heatmaps = make_explainer(name, model, layer, batch_size=4)(images, TARGETS)
    assert heatmaps.shape == (3, 16, 16) and heatmaps.dtype == torch.float32
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1 and not heatmaps.isnan().any()
    assert torch.equal(images, IMAGES)
    _assert_as_found(model, before)


@pytest.mark.parametrize("name", [n for n in LAYER_METHODS if n not in ("cam", "eigencam")])
@pytest.mark.parametrize("layer", ["block1", "block1.conv2"])
def test_state_left_as_found_when_a_method_raises_mid_batch(name, layer):
    model = TinyNet().train()
    before = _state(model)
    explainer = make_explainer(name, model, layer, batch_size=2)
    explainer(IMAGES[:1], torch.tensor([0]))   # the model's class count is known from now on

    def fails(x):   # the entry checks pass (the class count is known); the pass itself fails
        raise RuntimeError("boom")
    model.forward = fails
    with pytest.raises(RuntimeError, match="boom"):
        explainer(IMAGES, torch.tensor([0, 1, 0]))
    del model.forward
    _assert_as_found(model, before)


def test_eigencam_state_left_as_found_when_the_model_raises():
    class Failing(TinyNet):
        def forward(self, x):
            super().forward(x)
            raise RuntimeError("boom")

    model = Failing().train()
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"):
        EigenCAM(model, "block1")(IMAGES, TARGETS)
    _assert_as_found(model, before)


@pytest.mark.parametrize("name", ["scorecam", "ablationcam", "eigencam", "hirescam",
                                  "layercam", "xgradcam"])
def test_dead_layer_gives_zeros_not_nan(name):
    model = TinyNet()
    with torch.no_grad():
        model.block2[1].bias.fill_(-100.0)     # every unit of block2 is zero after its ReLU
    heatmaps = make_explainer(name, model, "block2")(IMAGES, TARGETS)
    assert torch.equal(heatmaps, torch.zeros(3, 16, 16))


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_derived_networks_are_rebuilt_when_the_weights_change(method):
    """The folded copy / fx tail is kept between calls, but never outlives the weights it was
    made from (the sanity check re-initialises layers in place)."""
    model = TinyNet()
    explainer = method(model, "block1", batch_size=64)
    before = explainer(IMAGES, TARGETS)
    assert torch.equal(explainer(IMAGES, TARGETS), before)
    with torch.no_grad():
        model.block2[0].weight.mul_(-1.0)
        model.block2[1].running_mean.add_(0.5)
    torch.testing.assert_close(explainer(IMAGES, TARGETS),
                               method(model, "block1", batch_size=64)(IMAGES, TARGETS),
                               rtol=0, atol=1e-6)
    assert not torch.allclose(explainer(IMAGES, TARGETS), before, atol=1e-3)


@pytest.mark.parametrize("name", LAYER_METHODS)
def test_every_method_is_built_the_same_way_and_auto_is_the_models_default_layer(name):
    """``Method(model, layer, batch_size=..., dtype=...)`` for every method; ``"auto"`` is
    resolved on the first batch (TinyNet's last spatial layer, ``block2``, which also feeds its
    global average pooling) and gives the same maps as naming that layer."""
    model = TinyNet().double()
    explainer = EXPLAINERS[name](model, batch_size=4, dtype=None)
    assert explainer.layer == "auto"
    maps = explainer(IMAGES.double(), TARGETS)
    assert explainer.layer == "block2"
    assert torch.equal(maps, EXPLAINERS[name](model, "block2", batch_size=4)(IMAGES.double(),
                                                                              TARGETS))
