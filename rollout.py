"""Attention rollout (Abnar & Zuidema, 2020, "Quantifying Attention Flow in Transformers") for
torchvision's ``vit_*`` and timm's ViT and DeiT.

A module of its own because it shares only the contract with the other methods: it reads no
layer's map and takes no gradient, but follows the attention through every block. Block
``l``'s attention ``A_l`` (``softmax(q k^T * scale)``, averaged over the heads) gets the
residual connection as ``0.5 A_l + 0.5 I`` with its rows renormalised to sum to 1, and the
blocks are multiplied, ``R = Â_L ... Â_1``. The map is ``R``'s row at the class token read at
the patch tokens (where the head averages the patch tokens instead, the mean of their rows).
It does not depend on the class explained.

The fused attention kernels (``scaled_dot_product_attention``, ``nn.MultiheadAttention``'s fast
path) do not return their weights, so forward hooks recompute them from each block's own query
and key projections (torchvision: ``ln_1``'s output through ``self_attention.in_proj_weight``;
timm: ``attn.qkv``'s output, with ``q_norm``, ``k_norm`` and ``scale``), in fp32. The model's
forward and flags are left as they are; the hooks are removed on every path.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cam import LayerExplainer, check_batch, normalize_heatmaps
from errors import ParamError
from registry import ALL_BLOCKS
from runtime import eval_mode
from tokens import grid_problem, layout_of, token_grid

Attention = Callable[[torch.Tensor], torch.Tensor]

SUPPORTED = "torchvision's vit_* or timm's ViT / DeiT"


@dataclass(frozen=True)
class AttentionBlocks:
    """A vision transformer's attention as rollout reads it: the output of ``hooked[l]`` gives
    block ``l``'s head-averaged attention ``[B, T, T]`` through ``attention[l]``; the first
    ``extra`` tokens are no patch (class, distillation, register tokens); ``class_row``: the
    head reads the class token (else it averages the patch tokens)."""

    hooked: tuple[nn.Module, ...]
    attention: tuple[Attention, ...]
    extra: int
    class_row: bool


def _head_average(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax(q k^T * scale)`` of ``[B, heads, T, d]`` queries and keys, averaged over the
    heads: ``[B, T, T]`` in fp32."""
    scores = torch.matmul(q.float(), k.float().transpose(-2, -1)).mul_(scale)
    return scores.softmax(dim=-1).mean(dim=1)


def _torchvision_attention(mha: nn.MultiheadAttention) -> Attention:
    """Block attention from the input of ``mha`` (the block's ``ln_1`` output): the query and
    key projections of ``in_proj_weight`` and ``in_proj_bias``, split into the heads."""
    dim, heads = mha.embed_dim, mha.num_heads

    def attention(x: torch.Tensor) -> torch.Tensor:
        if not mha.batch_first:
            x = x.transpose(0, 1)
        b, t, _ = x.shape
        if mha.in_proj_weight is not None:
            weight = mha.in_proj_weight[:2 * dim]
        else:
            weight = torch.cat([mha.q_proj_weight, mha.k_proj_weight])
        bias = None if mha.in_proj_bias is None else mha.in_proj_bias[:2 * dim].float()
        qk = F.linear(x.float(), weight.float(), bias)
        q, k = qk.view(b, t, 2, heads, dim // heads).permute(2, 0, 3, 1, 4)
        return _head_average(q, k, (dim // heads) ** -0.5)
    return attention


def _timm_attention(attn: nn.Module) -> Attention:
    """Block attention from the output of timm's ``attn.qkv``: split as timm's ``Attention``
    does, ``q_norm`` and ``k_norm`` applied, scaled by ``attn.scale``."""
    heads = attn.num_heads
    identity = nn.Identity()

    def attention(qkv: torch.Tensor) -> torch.Tensor:
        b, t, _ = qkv.shape
        q, k, _ = qkv.reshape(b, t, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q = getattr(attn, "q_norm", identity)(q)
        k = getattr(attn, "k_norm", identity)(k)
        return _head_average(q, k, float(getattr(attn, "scale", q.shape[-1] ** -0.5)))
    return attention


def _torchvision_blocks(vit: nn.Module) -> AttentionBlocks | str:
    blocks = list(vit.encoder.layers)
    for block in blocks:
        mha = getattr(block, "self_attention", None)
        if not isinstance(mha, nn.MultiheadAttention) or not isinstance(
                getattr(block, "ln_1", None), nn.Module):
            return f"its block {type(block).__name__} has no ln_1 and self_attention"
        if mha.bias_k is not None or mha.add_zero_attn or mha.kdim != mha.embed_dim:
            return "its attention adds key biases or zero attention, or keys of another size"
    return AttentionBlocks(tuple(b.ln_1 for b in blocks),
                           tuple(_torchvision_attention(b.self_attention) for b in blocks),
                           extra=1, class_row=True)


def _timm_blocks(vit: nn.Module) -> AttentionBlocks | str:
    attns = [getattr(block, "attn", None) for block in vit.blocks]
    if not all(isinstance(getattr(a, "qkv", None), nn.Linear)
               and isinstance(getattr(a, "num_heads", None), int) for a in attns):
        return "its blocks have no attention with one qkv projection (attn.qkv)"
    class_row = getattr(vit, "global_pool", "token") == "token" \
        and getattr(vit, "cls_token", None) is not None
    return AttentionBlocks(tuple(a.qkv for a in attns), tuple(_timm_attention(a) for a in attns),
                           extra=int(getattr(vit, "num_prefix_tokens", 1)), class_row=class_row)


def find_blocks(model: nn.Module) -> AttentionBlocks | str:
    """The attention blocks of the vision transformer in ``model`` (the model itself or a
    module inside it), or why rollout cannot read them (a sentence)."""
    from torchvision.models import VisionTransformer
    timm_vit = sys.modules.get("timm.models.vision_transformer")   # imported if a timm model
    for module in model.modules():
        if isinstance(module, VisionTransformer):
            return _torchvision_blocks(module)
        if timm_vit is not None and isinstance(module, timm_vit.VisionTransformer):
            return _timm_blocks(module)
    return (f"it reads the attention blocks of {SUPPORTED}; {type(model).__name__} has none "
            f"(the layer methods, such as gradcam, explain any model)")


def attention_problem(model: nn.Module) -> str | None:
    """Why rollout does not apply to ``model`` (a sentence), or None where it does."""
    found = find_blocks(model)
    return found if isinstance(found, str) else None


@contextlib.contextmanager
def recorded_attention(blocks: AttentionBlocks) -> Iterator[list[list[torch.Tensor]]]:
    """Within the block, each forward pass records every block's head-averaged attention:
    ``seen[l]`` lists block ``l``'s. The hooks change no output and are removed when the
    block ends, also when an exception leaves it."""
    seen: list[list[torch.Tensor]] = [[] for _ in blocks.hooked]

    def record(index: int, output: torch.Tensor) -> None:
        with torch.autocast(output.device.type, enabled=False):
            seen[index].append(blocks.attention[index](output))

    handles = [module.register_forward_hook(lambda m, i, o, index=index: record(index, o))
               for index, module in enumerate(blocks.hooked)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def rollout_rows(attentions: list[torch.Tensor], start: torch.Tensor) -> torch.Tensor:
    """``start^T R`` with ``R = Â_L ... Â_1``, ``Â_l = 0.5 A_l + 0.5 I`` rows renormalised:
    ``attentions`` the blocks' ``[B, T, T]`` in running order, ``start`` ``[B, T]`` (a one-hot
    class token, or the mean over the patch tokens). Vector times matrix from the last block
    down: ``T^2`` per block instead of the ``T^3`` of the matrix product."""
    row = start.float()
    for a in reversed(attentions):
        scaled = row / (0.5 * a.sum(dim=-1) + 0.5)          # the renormalisation of Â's rows
        row = 0.5 * torch.bmm(scaled[:, None], a)[:, 0] + 0.5 * scaled
    return row


class Rollout(LayerExplainer):
    """Attention rollout: the class token's row of ``R = Â_L ... Â_1`` at the patch tokens,
    ``Â_l = 0.5 A_l + 0.5 I`` with rows renormalised, ``A_l`` block ``l``'s attention averaged
    over the heads (the mean of the patch tokens' rows where the head averages them, as timm's
    ``global_pool='avg'``); a distilled DeiT's map is its class token's.

    Class-agnostic: ``targets`` are checked like every method's and then ignored, so every
    class of an image gets the same map. It uses every block, so ``layer`` is ignored too
    (``self.layer`` reads ``ALL_BLOCKS``); ``batch_size`` and ``dtype`` are accepted and
    ignored (one forward pass in fp32 per batch, attention recomputed in fp32). A model
    without a vision transformer's attention blocks is a :class:`ParamError` (``method``) at
    construction.
    """

    def __init__(self, model: nn.Module, layer: str = "auto", **options: Any):
        super().__init__(model, "auto", **options)
        self.layer = ALL_BLOCKS
        found = find_blocks(model)
        if isinstance(found, str):
            raise ParamError("method", f"{{param}} rollout: {found}")
        self.blocks = found

    def raw_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The rollout maps ``[B, h, w]`` on the patch grid, before upsampling and scaling."""
        with torch.no_grad(), eval_mode(self.model), recorded_attention(self.blocks) as seen:
            self.model(images)
        if any(len(s) != 1 for s in seen):
            runs = sorted({len(s) for s in seen})
            raise ParamError("model", f"{{param}}'s attention blocks ran {runs} times in one "
                                      f"forward pass, not once each; rollout needs each "
                                      f"block once")
        attentions = [s[0] for s in seen]
        b, t = attentions[0].shape[:2]
        size = tuple(images.shape[-2:])
        extra = self.blocks.extra
        layout = layout_of((b, t, 1), size, token_grid(self.model), extra)
        if layout is None:
            problem = grid_problem(self.model, (b, t, 1), size)
            raise ParamError("token_grid", "rollout: the attention's "
                             + problem.replace("{token_grid}", "{param}"))
        start = torch.zeros(b, t, device=images.device)
        if self.blocks.class_row:
            start[:, 0] = 1.0
        else:
            start[:, extra:] = 1.0 / (t - extra)
        row = rollout_rows(attentions, start)
        return row[:, extra:].reshape(b, *layout.grid)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_batch(images, targets, self.model)      # checked as for every method, then unused
        return normalize_heatmaps(self.raw_maps(images), tuple(images.shape[-2:]))
