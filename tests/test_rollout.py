"""rollout.py: attention rollout against a literal implementation written out here (the
attention of torchvision's blocks from ``MultiheadAttention(need_weights=True)``, timm's from
``attn.qkv`` by hand), the explainer contract, and ``--vis rollout`` through the command line,
the leaderboard and the sanity check.

Small transformers with random weights: torchvision's ViT (32 px, patch 8, 2 blocks, width 16),
timm's ViT with and without query/key norms, a distilled DeiT (two leading tokens), a ViT with
four register tokens and a global-average ViT without class token.
"""
from __future__ import annotations

import csv
import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

import registry
import sanity
from cli import assert_one_line_error, run_here
from errors import ParamError
from explain import heatmaps, make_explainer, model_methods, undefined_reason

SIZE = 32
TARGETS = torch.tensor([1, 3, 0])


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def tiny_torchvision_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=SIZE, patch_size=8, num_layers=2,
                                                 num_heads=2, hidden_dim=16, mlp_dim=32,
                                                 num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.5)   # torchvision starts it at zero
    return model.eval()


def tiny_timm_vit(name: str = "vit_tiny_patch16_224", **options) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=SIZE, patch_size=8, depth=2,
                             num_classes=5, **options).eval()


TIMM = {
    "timm_vit": ("vit_tiny_patch16_224", {}),
    "timm_qk_norm": ("vit_tiny_patch16_224", {"qk_norm": True}),
    "timm_deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "timm_registers": ("vit_tiny_patch16_224", {"reg_tokens": 4}),
    "timm_avg_no_class_token": ("vit_tiny_patch16_224", {"class_token": False,
                                                          "global_pool": "avg"}),
}
# family -> leading tokens, whether the map is the class token's row
READ = {"timm_vit": (1, True), "timm_qk_norm": (1, True), "timm_deit_distilled": (2, True),
        "timm_registers": (5, True), "timm_avg_no_class_token": (0, False)}
FAMILIES = ["torchvision", *TIMM]


@functools.cache
def model_of(family: str) -> nn.Module:
    if family == "torchvision":
        return tiny_torchvision_vit()
    name, options = TIMM[family]
    model = tiny_timm_vit(name, **options)
    if family == "timm_qk_norm":     # LayerNorms at 1 and 0 would hide a missing q/k norm
        for norm in (m for n, m in model.named_modules() if n.endswith(("q_norm", "k_norm"))):
            nn.init.normal_(norm.weight, 1.0, 0.5)
            nn.init.normal_(norm.bias, 0.0, 0.5)
    return model


# ---- the literal implementation


def rollout_literal(attentions: list[torch.Tensor]) -> torch.Tensor:
    """``R = Â_L ... Â_1``, ``Â = 0.5 A + 0.5 I`` rows renormalised, as matrices."""
    t = attentions[0].shape[-1]
    eye = torch.eye(t, dtype=torch.float64)
    rollout = eye.expand_as(attentions[0]).clone()
    for a in attentions:
        a_hat = 0.5 * a.double() + 0.5 * eye
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)
        rollout = a_hat @ rollout
    return rollout


def torchvision_attentions(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The encoder run by hand block by block; each block's attention weights from its own
    ``self_attention(..., need_weights=True)`` on ``ln_1``'s output."""
    with torch.no_grad():
        h = model._process_input(x)
        h = torch.cat([model.class_token.expand(len(x), -1, -1), h], dim=1)
        h = h + model.encoder.pos_embedding
        attentions = []
        for block in model.encoder.layers:
            y = block.ln_1(h)
            out, weights = block.self_attention(y, y, y, need_weights=True,
                                                average_attn_weights=True)
            attentions.append(weights)
            h = h + out
            h = h + block.mlp(block.ln_2(h))
        torch.testing.assert_close(model.heads(model.encoder.ln(h)[:, 0]), model(x))
    return attentions


def timm_attentions(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's queries and keys computed by hand from its ``attn.qkv`` weights on
    ``norm1``'s output, its q/k norms applied, ``softmax(q k^T / sqrt(d))`` averaged over
    the heads."""
    with torch.no_grad():
        h = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        attentions = []
        for block in model.blocks:
            attn = block.attn
            y = block.norm1(h)
            qkv = y @ attn.qkv.weight.T + attn.qkv.bias
            b, t, _ = qkv.shape
            heads = attn.num_heads
            d = qkv.shape[-1] // (3 * heads)
            q = attn.q_norm(qkv[..., :heads * d].reshape(b, t, heads, d).transpose(1, 2))
            k = attn.k_norm(qkv[..., heads * d:2 * heads * d].reshape(b, t, heads, d)
                            .transpose(1, 2))
            attentions.append(torch.softmax(q @ k.transpose(-2, -1) / d ** 0.5, dim=-1).mean(1))
            h = block(h)
        torch.testing.assert_close(model.forward_head(model.norm(h)), model(x))
    return attentions


def literal_maps(family: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The literal rollout maps ``[B, 4, 4]`` (the patch grid of a 32 px input, patch 8)."""
    if family == "torchvision":
        rollout = rollout_literal(torchvision_attentions(model, x))
        row, extra = rollout[:, 0], 1
    else:
        rollout = rollout_literal(timm_attentions(model, x))
        extra, class_row = READ[family]
        row = rollout[:, 0] if class_row else rollout[:, extra:].mean(dim=1)
    return row[:, extra:].reshape(len(x), 4, 4).float()


def upsampled_and_scaled(maps: torch.Tensor) -> torch.Tensor:
    """Bilinear to the input size, then min-max to [0, 1] per map, written out."""
    up = F.interpolate(maps[:, None], size=(SIZE, SIZE), mode="bilinear",
                       align_corners=False)[:, 0]
    lo = up.flatten(1).amin(1)[:, None, None]
    hi = up.flatten(1).amax(1)[:, None, None]
    return (up - lo) / (hi - lo)


@pytest.mark.parametrize("family", FAMILIES)
def test_rollout_equals_the_literal_implementation(family):
    """On the patch grid to 1e-6 (the maps are about 1 / 16); scaled to [0, 1] the maps'
    small spans (0.002 for the global-average ViT) magnify that, hence 1e-4 there, and the
    method's own scaling of its own raw maps to 1e-6."""
    model = model_of(family)
    x = images()
    literal = literal_maps(family, model, x)
    explainer = make_explainer("rollout", model)
    raw = explainer.raw_maps(x)
    torch.testing.assert_close(raw, literal, rtol=0, atol=1e-6)
    maps = explainer(x, TARGETS)
    torch.testing.assert_close(maps, upsampled_and_scaled(literal), rtol=0, atol=1e-4)
    torch.testing.assert_close(maps, upsampled_and_scaled(raw), rtol=0, atol=1e-6)


def test_the_literal_reads_differ_between_the_families():
    """The test above can tell the readings apart: the class row and the patch mean differ,
    and the query/key norms change the map."""
    x = images()
    rollout = rollout_literal(timm_attentions(model_of("timm_vit"), x))
    assert not torch.allclose(rollout[:, 0, 1:], rollout[:, 1:].mean(1)[:, 1:], atol=1e-4)
    plain = make_explainer("rollout", model_of("timm_qk_norm"))
    without_norms = model_of("timm_qk_norm")
    saved = [(b.attn, b.attn.q_norm, b.attn.k_norm) for b in without_norms.blocks]
    try:
        for attn, _, _ in saved:
            attn.q_norm, attn.k_norm = nn.Identity(), nn.Identity()
        changed = make_explainer("rollout", without_norms).raw_maps(x)
    finally:
        for attn, q, k in saved:
            attn.q_norm, attn.k_norm = q, k
    assert not torch.allclose(plain.raw_maps(x), changed, atol=1e-4)


# ---- the explainer contract


def _flags(model: nn.Module):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])


def _hooks(model: nn.Module) -> list:
    return [h for m in model.modules() for h in (*m._forward_hooks.values(),
                                                 *m._forward_pre_hooks.values(),
                                                 *m._backward_hooks.values())]


@pytest.mark.parametrize("family", FAMILIES)
def test_contract_batched_equals_one_at_a_time_and_the_model_is_left_as_found(family):
    """Maps [B, H, W] in [0, 1]; batched equals one at a time; the target is ignored; the
    model's modes and flags are as they were (train mode and a frozen parameter first), no
    hook is left, the input is unchanged."""
    model = model_of(family)
    first = next(model.parameters())
    model.train()
    first.requires_grad_(False)
    try:
        before = _flags(model)
        x = images()
        original = x.clone()
        explainer = make_explainer("rollout", model, batch_size=2)
        maps = explainer(x, TARGETS)
        assert maps.shape == (3, SIZE, SIZE) and maps.dtype == torch.float32
        assert maps.min() >= 0 and maps.max() <= 1 and (maps.flatten(1).amax(1) == 1).all()
        assert torch.equal(x, original)
        assert _flags(model) == before and not _hooks(model)
        assert all(p.grad is None for p in model.parameters())
        single = torch.cat([explainer(x[i:i + 1], TARGETS[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(maps, single, rtol=0, atol=1e-5)
        assert torch.equal(explainer(x, (TARGETS + 1) % 5), maps)    # class-agnostic
    finally:
        first.requires_grad_(True)
        model.eval()


@pytest.mark.parametrize("family", ["torchvision", "timm_vit"])
def test_hooks_are_removed_and_flags_restored_when_the_forward_raises(family):
    model = model_of(family)
    head = model.heads if family == "torchvision" else model.head
    explainer = make_explainer("rollout", model)
    explainer(images(1), TARGETS[:1])     # the model's class count is known from now on

    def fails(x):      # after every block has run and been hooked
        raise RuntimeError("boom")
    model.train()
    before = _flags(model)
    head.forward = fails
    try:
        with pytest.raises(RuntimeError, match="boom"):
            explainer(images(), TARGETS)
        assert _flags(model) == before and not _hooks(model)
    finally:
        del head.forward
        model.eval()


def test_bad_images_and_targets_are_named_as_for_every_method():
    explainer = make_explainer("rollout", model_of("torchvision"))
    x = images(2)
    nan = x.clone()
    nan[1, 0, 3, 3] = float("nan")
    for images_, targets, param, fragment in [
            (x, torch.tensor([0, 5]), "targets", "0..4"),
            (x, torch.tensor([0.0, 1.0]), "targets", "float32"),
            (x, torch.tensor([0, 1, 2]), "targets", "3 entries"),
            (nan, TARGETS[:2], "images", "NaN"),
            (x.double(), TARGETS[:2], "images", "float64"),
            (x[0], TARGETS[:1], "images", "(3, 32, 32)")]:
        with pytest.raises(ParamError, match=re.escape(fragment)) as info:
            explainer(images_, targets)
        assert info.value.param == param


def test_the_layer_is_ignored_and_every_option_is_accepted():
    model = model_of("torchvision")
    auto = make_explainer("rollout", model)
    named = make_explainer("rollout", model, "encoder.layers.encoder_layer_0.ln_1",
                           batch_size=1, dtype=torch.bfloat16)
    assert auto.layer == named.layer == registry.ALL_BLOCKS
    assert torch.equal(auto(images(), TARGETS), named(images(), TARGETS))
    assert torch.equal(heatmaps(model, images(), TARGETS, "rollout"), auto(images(), TARGETS))


def test_a_model_without_attention_blocks_is_refused_naming_the_parameter():
    cnn = torchvision.models.resnet18(num_classes=5).eval()
    with pytest.raises(ParamError, match="rollout: .*ResNet has none") as info:
        make_explainer("rollout", cnn)
    assert info.value.param == "method"
    with pytest.raises(ParamError) as info:
        heatmaps(cnn, images(), TARGETS, "rollout")
    assert info.value.param == "method"
    with pytest.raises(ParamError, match="rollout") as info:
        model_methods(cnn, "gradcam,rollout")
    assert info.value.param == "methods"
    assert "ResNet has none" in undefined_reason("rollout", cnn, "layer4", images(1))
    assert undefined_reason("rollout", model_of("torchvision"), "x", images(1)) is None


def test_all_is_every_method_that_applies_to_the_model():
    """On a CNN ``all`` is the layer methods, as before rollout existed; on a ViT it adds
    rollout."""
    cnn = torchvision.models.resnet18(num_classes=5)
    assert model_methods(cnn, "all") == list(registry.LAYER_METHODS)
    assert model_methods(cnn, ["gradcam", "cam"]) == ["gradcam", "cam"]
    assert model_methods(model_of("torchvision"), "all") == list(registry.METHODS)
    assert "rollout" in registry.METHODS and "rollout" not in registry.LAYER_METHODS


def test_the_sanity_check_reinitialises_the_attention_and_rollout_takes_part():
    model = model_of("torchvision")
    attention = model.encoder.layers[0].self_attention
    copy = tiny_torchvision_vit()
    sanity.reinitialise(copy.encoder)
    assert not torch.equal(copy.encoder.layers[0].self_attention.in_proj_weight,
                           attention.in_proj_weight)
    stages, maps, notes = sanity.run_cascade(model, images(2), TARGETS[:2],
                                             ["gradcam", "rollout"],
                                             ["encoder.layers.encoder_layer_0.ln_1",
                                              "encoder.layers.encoder_layer_1.ln_1"], 8, 64, None)
    assert stages == ["heads", "encoder", "conv_proj"] and not notes
    assert [key for key in maps if key[0] == "rollout"] == [("rollout", registry.ALL_BLOCKS)]
    series = maps[("rollout", registry.ALL_BLOCKS)]
    assert torch.equal(series[0], series[1])       # the head does not change the attention
    assert not torch.allclose(series[0], series[2], atol=1e-3)
    assert not _hooks(model)


# ---- the command line


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Two photos and a file of ``--model`` factories building the small transformers."""
    w = tmp_path_factory.mktemp("rollout")
    rng = np.random.RandomState(0)
    for name in ("a", "b"):
        Image.fromarray((rng.rand(40, 48, 3) * 255).astype(np.uint8)).save(w / f"{name}.png")
    (w / "vits.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_rollout\n\n"
        "def torchvision_vit():\n    return test_rollout.tiny_torchvision_vit()\n\n"
        "def timm_deit():\n"
        "    return test_rollout.tiny_timm_vit('deit_tiny_distilled_patch16_224')\n")
    return w


def _run(capfd, world: Path, out: Path, factory: str, *flags: str):
    return run_here(capfd, "--model", f"{world}/vits.py:{factory}", "--input_size", str(SIZE),
                    "--image", world / "a.png", "--image", world / "b.png",
                    "--out_dir", out, *flags)


@pytest.mark.parametrize("factory", ["torchvision_vit", "timm_deit"])
def test_vis_rollout_writes_its_panels(world, tmp_path, capfd, factory):
    if factory.startswith("timm"):
        pytest.importorskip("timm")
    result = _run(capfd, world, tmp_path / "out", factory, "--vis", "rollout")
    assert result.returncode == 0, result.stderr
    assert "Attention rollout at all blocks" in result.stdout
    panels = sorted(p.name for p in (tmp_path / "out" / "rollout").glob("*.png"))
    assert len(panels) == 2 and all(p.startswith("rollout_") for p in panels)


def test_vis_all_on_a_vit_writes_every_method_that_applies(world, tmp_path, capfd):
    """CAM is not defined for a ViT that reads its class token: ``all`` leaves it out with a
    note, as the leaderboard does, and every other method, rollout included, writes panels."""
    result = _run(capfd, world, tmp_path / "out", "torchvision_vit", "--vis", "all")
    assert result.returncode == 0, result.stderr
    assert "note: CAM left out" in result.stderr
    written = {p.name for p in (tmp_path / "out").iterdir() if p.is_dir()}
    assert written - {"runs"} == set(registry.METHODS) - {"cam"}


def test_vis_rollout_on_vit_b_16(world, tmp_path, capfd):
    result = run_here(capfd, "--arch", "vit_b_16", "--image", world / "a.png", "--vis",
                      "rollout", "--out_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "rollout").glob("rollout_a_pred_*.png"))) == 1


def test_a_target_layer_with_rollout_alone_is_refused(world, tmp_path, capfd):
    result = _run(capfd, world, tmp_path / "out", "torchvision_vit", "--vis", "rollout",
                  "--target_layer", "encoder.layers.encoder_layer_0.ln_1")
    assert_one_line_error(result, "--target_layer encoder.layers.encoder_layer_0.ln_1",
                          "every attention block")
    assert not (tmp_path / "out" / "rollout").exists()
    # with a layer method beside it the layer is that method's
    result = _run(capfd, world, tmp_path / "out", "torchvision_vit", "--vis",
                  "gradcam,rollout", "--target_layer", "encoder.layers.encoder_layer_0.ln_1")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "out" / "rollout").glob("*.png"))) == 2


def test_the_leaderboard_lists_rollout_once(world, tmp_path, capfd):
    layers = "encoder.layers.encoder_layer_0.ln_1,encoder.layers.encoder_layer_1.ln_1"
    result = _run(capfd, world, tmp_path / "out", "torchvision_vit", "--vis", "gradcam,rollout",
                  "--target_layer", layers, "--hidden_strategy", "zero", "--steps", "4",
                  "--num_eval", "2", "--cam_batch_size", "64")
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "comparison_zero.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ours = [r for r in rows if r["method"] == "rollout"]
    assert [r["layer"] for r in ours] == [registry.ALL_BLOCKS]
    assert {r["layer"] for r in rows if r["method"] == "gradcam"} == set(layers.split(","))
    summary = json.loads((tmp_path / "out" / "summary_rollout_all_blocks_zero.json").read_text())
    assert summary["layer"] == registry.ALL_BLOCKS
    assert summary["target_layers"] == [*layers.split(","), registry.ALL_BLOCKS]
    assert "Attention rollout (all blocks)" in result.stdout


def test_the_sanity_check_lists_rollout(world, tmp_path, capfd):
    result = _run(capfd, world, tmp_path / "out", "torchvision_vit", "--sanity", "--vis",
                  "rollout,gradcam")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "sanity" / "sanity.json").read_text())
    ours = [r for r in report["rows"] if r["method"] == "rollout"]
    assert [r["stage"] for r in ours] == report["stages"] == ["heads", "encoder", "conv_proj"]
    assert {r["layer"] for r in ours} == {registry.ALL_BLOCKS}
    assert "Attention rollout (all blocks):" in result.stdout


def test_rollout_on_a_cnn_is_one_line(world, tmp_path, capfd):
    result = run_here(capfd, "--arch", "resnet18", "--image", world / "a.png", "--vis",
                      "rollout", "--out_dir", tmp_path / "out")
    assert_one_line_error(result, "--vis rollout", "ResNet has none")
    assert not (tmp_path / "out").exists()
