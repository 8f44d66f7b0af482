"""tokens.py: token layers read as maps, ``auto`` on transformers, and every method on them.

Small transformers with random weights: torchvision's ViT (32 px, patch 8, 2 blocks, width 32)
with its zero-initialised head given random weights (a zero head makes every gradient zero),
a small Swin and a small MaxViT, timm's DeiT and Swin (when timm is installed), and a stand-in
for a Hugging Face image classifier (its forward returns an object with ``.logits``).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import pytest
import torch
import torchvision
from torch import nn

import registry
import tokens
import zoo
from cam import CAM, auto_layer, cam_head, map_layouts, spatial_layers
from errors import ParamError, UserError
from explain import EXPLAINERS, heatmaps, make_explainer, model_methods, probe_layers
from gradcam import GradCAM
from tokens import Layout, layout_of, parse_grid, set_token_grid

SIZE = 32
TARGETS = torch.tensor([1, 3])


def images(size: int = SIZE, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# ---- models


@dataclass
class Output:
    logits: torch.Tensor


class HFLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layernorm_before = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.layernorm_after = nn.LayerNorm(dim)
        self.intermediate = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                          nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layernorm_before(x)
        x = x + self.attention(h, h, h, need_weights=False)[0]
        return x + self.intermediate(self.layernorm_after(x))


class HFStandIn(nn.Module):
    """Shaped as transformers' ``ViTForImageClassification``: ``forward(pixel_values)`` returns
    an object with ``.logits``; class token first; layers named as there."""

    def __init__(self, dim: int = 32, patch: int = 8, size: int = SIZE) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + (size // patch) ** 2, dim) * 0.1)
        self.layer = nn.ModuleList(HFLayer(dim) for _ in range(2))
        self.layernorm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, 10)

    def forward(self, pixel_values: torch.Tensor) -> Output:
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        for layer in self.layer:
            x = layer(x)
        return Output(logits=self.classifier(self.layernorm(x)[:, 0]))


def small_vit() -> nn.Module:
    model = torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2,
                                                 num_heads=2, hidden_dim=32, mlp_dim=64,
                                                 num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.5)   # torchvision starts it at zero
    return model


@functools.cache
def model_of(family: str) -> nn.Module:
    """The family's small model, random weights, eval mode, shared between tests (each test
    leaves it as found, which is part of what they check)."""
    torch.manual_seed(0)
    if family == "vit":
        model = small_vit()
    elif family == "swin":
        model = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16,
                                                   depths=[1, 1], num_heads=[2, 2],
                                                   window_size=[2, 2], num_classes=10)
    elif family == "maxvit":
        model = torchvision.models.MaxVit(input_size=(SIZE, SIZE), stem_channels=8,
                                          partition_size=2, block_channels=[8, 16],
                                          block_layers=[1, 1], head_dim=4,
                                          stochastic_depth_prob=0.0, num_classes=10)
    elif family == "hf":
        model = tokens.return_logits(HFStandIn())
    else:
        timm = pytest.importorskip("timm")
        name = {"timm_deit": "deit_tiny_distilled_patch16_224",
                "timm_swin": "swin_tiny_patch4_window7_224"}[family]
        extra = {"depth": 2, "patch_size": 8} if family == "timm_deit" else {"window_size": 2,
                                                           "depths": (1, 1), "embed_dim": 16,
                                                           "num_heads": (2, 2)}
        model = timm.create_model(name, pretrained=False, img_size=SIZE, num_classes=10,
                                  **extra)
    return model.eval()


# family -> the layer ``auto`` picks, whether CAM is defined
FAMILIES = {
    "vit": ("encoder.layers.encoder_layer_1.ln_1", False),   # the last block's first norm
    "swin": ("permute", True),                               # the last stage, as pooled
    "maxvit": ("blocks.1", False),                # [B, C, h, w]; pooling, norm, 2 linears
    "hf": ("layer.1.layernorm_before", False),
    "timm_deit": ("blocks.1.norm1", False),
    "timm_swin": ("norm", False),                            # channels last; a norm after pooling
}
METHODS = [m for m in EXPLAINERS if m != "cam"]
# The families with a vision transformer's attention blocks, which rollout reads
ATTENTION_FAMILIES = ("vit", "timm_deit")


def state(model: nn.Module):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def hooks(model: nn.Module) -> list:
    return [h for m in model.modules() for h in (*m._forward_hooks.values(),
                                                 *m._forward_pre_hooks.values(),
                                                 *m._backward_hooks.values())
            if h is not tokens.logits_of]


# ---- reading a layer's output as a map


@pytest.mark.parametrize("shape, size, expected", [
    ((2, 512, 7, 7), (224, 224), Layout("nchw", 512, (7, 7))),            # a CNN: as is
    ((2, 64, 56, 56), (224, 224), Layout("nchw", 64, (56, 56))),
    ((2, 512, 1, 1), (224, 224), Layout("nchw", 512, (1, 1))),            # listed, refused later
    ((2, 7, 7, 768), (224, 224), Layout("nhwc", 768, (7, 7))),            # Swin, channels last
    ((2, 56, 56, 96), (224, 224), Layout("nhwc", 96, (56, 56))),
    ((2, 197, 768), (224, 224), Layout("tokens", 768, (14, 14), 1)),      # ViT: class token
    ((2, 198, 192), (224, 224), Layout("tokens", 192, (14, 14), 2)),      # DeiT: + distillation
    ((2, 261, 384), (224, 224), Layout("tokens", 384, (16, 16), 5)),      # 1 + 4 registers
    ((2, 49, 768), (224, 224), Layout("tokens", 768, (7, 7), 0)),         # no extra token
    ((2, 17, 32), (32, 32), Layout("tokens", 32, (4, 4), 1)),
    ((2, 33, 16), (32, 32), None),                                       # 1 + 4x8: no grid
    ((2, 10), (224, 224), None),                                         # logits
])
def test_layout_of_reads_cnn_swin_and_token_outputs(shape, size, expected):
    assert layout_of(shape, size) == expected


def test_a_declared_grid_reads_what_cannot_be_inferred_and_rejects_what_does_not_fit():
    assert layout_of((2, 33, 16), (32, 32), grid=(4, 8)) == Layout("tokens", 16, (4, 8), 1)
    assert layout_of((2, 33, 16), (32, 32), grid=(6, 6)) is None      # 36 patches > 33 tokens
    assert layout_of((2, 197, 8), (224, 224), extra=2) is None       # the model says 2 extras
    assert parse_grid("14x14") == (14, 14) and parse_grid("7") == (7, 7)
    assert parse_grid([4, 8]) == (4, 8) and parse_grid(None) is None
    for bad in ("abc", "0x4", "4x"):
        with pytest.raises(ParamError, match="token_grid"):
            parse_grid(bad)


@pytest.mark.parametrize("layout, shape", [
    (Layout("nchw", 8, (4, 4)), (3, 8, 4, 4)),
    (Layout("nhwc", 8, (4, 2)), (3, 4, 2, 8)),
    (Layout("tokens", 8, (2, 4), 2), (3, 10, 8)),
])
def test_from_map_inverts_to_map(layout, shape):
    x = torch.randn(shape)
    maps = layout.to_map(x)
    assert maps.shape == (3, *layout.shape)
    torch.testing.assert_close(layout.from_map(maps, x), x, rtol=0, atol=0)
    if layout.kind == "tokens":      # the patch tokens in row-major order on the grid
        torch.testing.assert_close(maps[:, :, 1, 2], x[:, 2 + 1 * 4 + 2], rtol=0, atol=0)


# ---- the right layer


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_layer_and_its_map_is_not_blank(family):
    model = model_of(family)
    layer, has_cam = FAMILIES[family]
    assert auto_layer(model, SIZE) == layer
    names = [n for n, _ in spatial_layers(model, SIZE)]
    assert layer in names and len(names) == len(set(names))
    raw, _ = GradCAM(model).raw_maps(images(), TARGETS)   # before the ReLU: not blank
    assert (raw.flatten(1).abs().amax(1) > 0).all()
    if has_cam:
        assert cam_head(model, SIZE).layer == layer


def test_after_the_last_block_of_a_class_token_vit_the_map_is_blank():
    """Why ``auto`` is not the last block: only the class token reaches the head from there."""
    model = model_of("vit")
    for layer in ("encoder.layers.encoder_layer_1", "encoder.ln"):
        assert GradCAM(model, layer).raw_maps(images(), TARGETS)[0].abs().max() == 0
    raw, _ = GradCAM(model, "encoder.layers.encoder_layer_1.ln_1").raw_maps(images(), TARGETS)
    assert (raw.flatten(1).abs().amax(1) > 0).all()


def test_auto_never_picks_the_patch_embedding_and_lists_token_layers():
    model = model_of("vit")
    layouts = dict(map_layouts(model, SIZE))
    assert layouts["conv_proj"].kind == "nchw"
    assert layouts["encoder.layers.encoder_layer_0.ln_1"] == Layout("tokens", 32, (4, 4), 1)
    assert auto_layer(model, SIZE) != "conv_proj"
    swin = dict(map_layouts(model_of("swin"), SIZE))
    assert swin["features.1"] == Layout("nhwc", 16, (8, 8))


def test_auto_on_vit_b_16_is_the_last_blocks_first_norm():
    """torchvision's own vit_b_16 at its own size (its head at zero, as torchvision builds it:
    the probe still finds which tokens reach it)."""
    loaded = zoo.load_classifier("vit_b_16")
    assert loaded.default_layer == "encoder.layers.encoder_layer_11.ln_1"
    assert not hooks(loaded.module)


# ---- every method


@pytest.mark.parametrize("family, method", [
    (family, method) for method in METHODS
    for family in ["vit", "swin", "maxvit", "hf", "timm_deit"]
    if method not in registry.ATTENTION_METHODS or family in ATTENTION_FAMILIES])
def test_method_on_transformer(family, method):
    """Maps [B, H, W] in [0, 1] and finite; batched equals one at a time; the model's modes,
    requires_grad flags and hooks are as they were (train mode and one frozen parameter
    first, as a user's model might be); the input is not changed."""
    model = model_of(family)
    first = next(model.parameters())
    model.train()
    first.requires_grad_(False)
    try:
        before = state(model)
        x = images()
        original = x.clone()
        explainer = make_explainer(method, model, "auto", batch_size=512)
        maps = explainer(x, TARGETS)
        assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        assert torch.equal(x, original)
        assert state(model) == before and not hooks(model)
        assert all(p.grad is None for p in model.parameters())
        alone = explainer(x[1:], TARGETS[1:])
        torch.testing.assert_close(maps[1:], alone, rtol=0, atol=2e-4)
    finally:
        first.requires_grad_(True)
        model.eval()


@pytest.mark.parametrize("family", ["vit", "swin", "maxvit", "hf", "timm_deit"])
def test_all_takes_rollout_where_the_model_has_attention_blocks(family):
    """``all`` on a model: rollout only where it has torchvision's or timm's ViT attention
    blocks (not the stand-in's own MultiheadAttention, not windowed or grid attention)."""
    methods = model_methods(model_of(family), "all")
    assert ("rollout" in methods) == (family in ATTENTION_FAMILIES)
    assert [m for m in methods if m != "rollout"] == list(registry.LAYER_METHODS)


@pytest.mark.parametrize("family, layer", [("vit", "encoder.layers.encoder_layer_0.ln_2"),
                                           ("swin", "features.1"), ("hf", "layer.0")])
def test_gradcam_equals_a_literal_reshape_plus_gradcam(family, layer):
    model = model_of(family)
    x = images()
    kept = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: kept.setdefault("out", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    out = kept["out"]
    (grad,) = torch.autograd.grad(logits.gather(1, TARGETS[:, None]).sum(), out)

    def as_map(t: torch.Tensor) -> torch.Tensor:     # written out, not through tokens.py
        if t.ndim == 4:                               # Swin: [B, h, w, C]
            return t.permute(0, 3, 1, 2)
        patches = t[:, 1:]                            # the class token first
        side = int(patches.shape[1] ** 0.5)
        return patches.permute(0, 2, 1).reshape(t.shape[0], t.shape[2], side, side)

    a, g = as_map(out.detach()), as_map(grad)
    literal = torch.relu((g.mean(dim=(2, 3))[:, :, None, None] * a).sum(1))
    literal = nn.functional.interpolate(literal[:, None], size=(SIZE, SIZE), mode="bilinear",
                                        align_corners=False)[:, 0]
    lo = literal.flatten(1).amin(1)[:, None, None]
    hi = literal.flatten(1).amax(1)[:, None, None]
    torch.testing.assert_close(GradCAM(model, layer)(x, TARGETS), (literal - lo) / (hi - lo),
                               rtol=0, atol=1e-5)


def test_cam_equals_gradcam_where_cam_is_defined():
    """Swin: average pooling + one linear layer, where CAM and Grad-CAM coincide."""
    model = model_of("swin")
    head = cam_head(model, SIZE)
    torch.testing.assert_close(CAM(model)(images(), TARGETS),
                               GradCAM(model, head.layer)(images(), TARGETS), rtol=0, atol=1e-5)


def test_cam_is_refused_where_the_head_is_more_than_one_linear_layer():
    """MaxViT's head is pooling, LayerNorm, Linear, Tanh, Linear: CAM is not defined there,
    and the refusal says why in one line."""
    with pytest.raises(UserError) as refused:
        cam_head(model_of("maxvit"), SIZE)
    assert "\n" not in str(refused.value) and "CAM" in str(refused.value)


def test_ablation_cam_on_tokens_equals_a_literal_ablation():
    """Each channel of the patch-token map zeroed (class token kept), through the whole
    network, weights ``(y - y_k) / y``."""
    model, layer = model_of("vit"), "encoder.layers.encoder_layer_1.ln_1"
    module = dict(model.named_modules())[layer]
    x = images(n=1)
    target = TARGETS[:1]
    kept = {}
    handle = module.register_forward_hook(lambda m, i, o: kept.setdefault("out", o))
    with torch.no_grad():
        y = model(x)[0, target[0]]
    handle.remove()
    out = kept["out"]
    weights = []
    for k in range(out.shape[2]):
        ablated = out.clone()
        ablated[:, 1:, k] = 0
        handle = module.register_forward_hook(lambda m, i, o, a=ablated: a)
        with torch.no_grad():
            weights.append((y - model(x)[0, target[0]]) / y)
        handle.remove()
    a = out[:, 1:].permute(0, 2, 1).reshape(1, 32, 4, 4)
    literal = torch.relu(torch.einsum("k,bkhw->bhw", torch.stack(weights), a))
    literal = nn.functional.interpolate(literal[:, None], size=(SIZE, SIZE), mode="bilinear",
                                        align_corners=False)[:, 0]
    literal = (literal - literal.min()) / (literal.max() - literal.min())
    maps = make_explainer("ablationcam", model, layer)(x, target)
    torch.testing.assert_close(maps, literal, rtol=0, atol=1e-4)


def test_guided_gradcam_on_a_network_without_relu_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="notes"):
        make_explainer("guidedgradcam", model_of("vit"))(images(), TARGETS)
    assert any("no ReLU module" in r.getMessage() for r in caplog.records)


# ---- models from elsewhere, grids that cannot be inferred


def test_a_hugging_face_style_model_loads_through_model_spec(tmp_path):
    spec = tmp_path / "hf.py"
    spec.write_text(f"import sys\nsys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})\n"
                    "from test_tokens import HFStandIn\n\ndef build():\n    return HFStandIn()\n")
    loaded = zoo.load_classifier(model_spec=f"{spec}:build", input_size=SIZE)
    assert loaded.default_layer == "layer.1.layernorm_before" and len(loaded.classes) == 10
    maps = heatmaps(loaded.module, images(), TARGETS, "gradcam")
    assert maps.shape == (2, SIZE, SIZE) and (maps.flatten(1).amax(1) == 1).all()


class OddGrid(nn.Module):
    """A class token and 4 x 8 patches of a 32 px input: 33 tokens, no square grid."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, (8, 4), (8, 4))
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.norm1 = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        h = self.norm1(t)
        return self.head((t + self.attn(h, h, h, need_weights=False)[0])[:, 0])


def test_a_grid_that_cannot_be_inferred_is_named_and_can_be_given():
    model = OddGrid().eval()
    with pytest.raises(ParamError, match="give the patch grid as token_grid") as info:
        auto_layer(model, SIZE)
    assert info.value.param == "layer" and "token_grid" in info.value.others
    with pytest.raises(ParamError, match="norm1 gives tokens .1, 33, 16.*token_grid"):
        probe_layers(model, ["norm1"], torch.zeros(1, 3, SIZE, SIZE))
    with pytest.raises(ParamError, match="token_grid"):
        GradCAM(model, "norm1")(images(), TARGETS)
    try:
        set_token_grid(model, "4x8")
        assert auto_layer(model, SIZE) == "norm1"
        maps = GradCAM(model)(images(), TARGETS)
        assert maps.shape == (2, SIZE, SIZE) and (maps.flatten(1).amax(1) == 1).all()
        set_token_grid(model, "6x6")
        with pytest.raises(ParamError, match="token_grid.* 6x6 is 36 patch tokens"):
            GradCAM(model, "norm1")(images(), TARGETS)
    finally:
        set_token_grid(model, None)
