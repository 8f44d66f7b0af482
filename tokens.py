"""Token layers read as maps: a vision transformer's ``[B, T, C]`` tokens and a Swin's
channels-last ``[B, h, w, C]`` output are seen by every explainer as a ``[B, C, h, w]`` map.

One :class:`Layout` per layer output says how: ``nchw`` as is; ``nhwc`` permuted; ``tokens``
with the ``extra`` leading tokens (class, distillation, register tokens) dropped and the
``h * w`` patch tokens laid out on the grid. The grid comes from the input's size: the patch
tokens of an ``H x W`` input with patch side ``p`` form an ``H/p x W/p`` grid. Where it cannot
be inferred, :func:`set_token_grid` (``--token_grid``) gives it. Gradient methods take the
gradient with respect to the raw output and read both through the same layout; Ablation-CAM
writes its ablated maps back through :meth:`Layout.from_map`.
"""
from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from errors import ParamError
from runtime import eval_mode

#: At most this many leading tokens that are no patch (class, distillation, registers).
MAX_EXTRA = 8

_GRIDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Layout:
    """How a layer's output is read as a ``[B, C, h, w]`` map. ``fits``: the grid matches the
    input's (every reading but a ``[B, K, h, w]`` output that fits no grid, read as is)."""

    kind: str                     # "nchw", "nhwc" or "tokens"
    channels: int
    grid: tuple[int, int]
    extra: int = 0
    fits: bool = True

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the map."""
        return (self.channels, *self.grid)

    def to_map(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's output ``x`` as a ``[B, C, h, w]`` map (a view where it can be)."""
        if self.kind == "nchw":
            return x
        if self.kind == "nhwc":
            return x.permute(0, 3, 1, 2)
        patches = x[:, self.extra:]
        return patches.transpose(1, 2).reshape(len(x), self.channels, *self.grid)

    def from_map(self, maps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_map`: ``maps`` ``[B, C, h, w]`` in the layer's own layout,
        the extra tokens taken from ``like`` (the layer's output for the same images)."""
        if self.kind == "nchw":
            return maps
        if self.kind == "nhwc":
            return maps.permute(0, 2, 3, 1).contiguous()
        patches = maps.flatten(2).transpose(1, 2)
        return torch.cat([like[:, :self.extra].to(patches.dtype), patches], dim=1)

    def describe(self) -> str:
        """``tokens: 1 extra + 14 x 14``, ``channels last``, or empty for a plain map."""
        if self.kind == "tokens":
            return f"tokens: {self.extra} extra + {self.grid[0]} x {self.grid[1]}"
        return "channels last" if self.kind == "nhwc" else ""


def parse_grid(text: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``14x14``, ``14`` or ``(14, 14)`` -> ``(14, 14)``; None stays None."""
    if text is None:
        return None
    if isinstance(text, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+))?\s*", text)
        grid = None if match is None else (int(match[1]), int(match[2] or match[1]))
    else:
        grid = tuple(int(v) for v in text) if len(text) == 2 else None
    if grid is None or min(grid) < 1:
        raise ParamError("token_grid", f"{{param}} {text!r}: give the patch grid as HxW "
                                       f"(14x14) or one side (14)")
    return grid


def set_token_grid(model: nn.Module, grid: str | Sequence[int] | None) -> None:
    """Declare the patch grid of ``model``'s token layers (None: infer it from the input)."""
    parsed = parse_grid(grid)
    if parsed is None:
        _GRIDS.pop(model, None)
    else:
        _GRIDS[model] = parsed


def token_grid(model: nn.Module) -> tuple[int, int] | None:
    """The grid declared with :func:`set_token_grid`, or None."""
    return _GRIDS.get(model)


def _fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """Whether an ``h x w`` map has the same stride along both sides of a ``size`` input,
    give or take a pixel of padding."""
    height, width = size
    return (1 <= h <= height and 1 <= w <= width
            and abs(h * width - w * height) <= max(height, width, 0.15 * h * width))


def _token_grid(tokens: int, size: tuple[int, int], extra: int | None
                ) -> tuple[int, tuple[int, int]] | None:
    """``(extra, (h, w))`` for ``tokens`` tokens of a ``size`` input: the fewest leading extra
    tokens (``extra`` when the model says) that leave a grid of whole patches."""
    height, width = size
    for e in ([extra] if extra is not None else range(MAX_EXTRA + 1)):
        patches = tokens - e
        if patches < 1:
            break
        for patch in range(1, min(height, width) + 1):
            if height % patch == 0 and width % patch == 0 \
                    and (height // patch) * (width // patch) == patches:
                return e, (height // patch, width // patch)
    return None


def layout_of(shape: Sequence[int], size: tuple[int, int], grid: tuple[int, int] | None = None,
              extra: int | None = None) -> Layout | None:
    """How an output of ``shape`` (batch first) is read as a map for a ``size`` input; None
    when it is no map (a vector, or tokens that are no grid). ``[B, K, h, w]`` is read as is
    unless only the channels-last reading fits the input's grid; ``grid`` (declared) and
    ``extra`` (the model's own count of leading tokens) override what is inferred."""
    if len(shape) == 4:
        _, a, b, c = (int(v) for v in shape)
        if grid is not None and (a, b) == grid and (b, c) != grid:
            return Layout("nhwc", c, (a, b))
        if _fits(b, c, size) or not _fits(a, b, size):
            return Layout("nchw", a, (b, c), fits=_fits(b, c, size) or (b, c) == grid)
        return Layout("nhwc", c, (a, b))
    if len(shape) != 3:
        return None
    _, tokens, channels = (int(v) for v in shape)
    if grid is not None:
        leading = tokens - grid[0] * grid[1]
        ok = 0 <= leading <= MAX_EXTRA and (extra is None or leading == extra)
        return Layout("tokens", channels, grid, leading) if ok else None
    found = _token_grid(tokens, size, extra)
    return None if found is None else Layout("tokens", channels, found[1], found[0])


def model_layout(model: nn.Module, shape: Sequence[int], size: Sequence[int]) -> Layout | None:
    """:func:`layout_of` with what ``model`` declares: its grid (:func:`set_token_grid`) and
    its number of leading tokens (timm's ``num_prefix_tokens``)."""
    extra = getattr(model, "num_prefix_tokens", None)
    return layout_of(shape, (int(size[0]), int(size[1])), token_grid(model),
                     extra if isinstance(extra, int) else None)


def grid_problem(model: nn.Module, shape: Sequence[int], size: Sequence[int]) -> str:
    """Why a ``[B, T, C]`` output of ``shape`` is no map for a ``size`` input, one sentence
    naming ``token_grid``."""
    tokens = int(shape[1])
    grid = token_grid(model)
    if grid is not None:
        return (f"{{token_grid}} {grid[0]}x{grid[1]} is {grid[0] * grid[1]} patch tokens, but "
                f"the layer has {tokens} tokens (patch tokens plus 0 to {MAX_EXTRA} leading "
                f"extra tokens); give the grid of this layer")
    return (f"{tokens} tokens are no grid of whole patches of a {size[0]}x{size[1]} input plus "
            f"0 to {MAX_EXTRA} leading extra tokens; give the patch grid as {{token_grid}} HxW")


def is_attention(module: nn.Module) -> bool:
    """An attention module (by its class name: torchvision's, timm's, Hugging Face's)."""
    return "Attention" in type(module).__name__


def reaching_layer(model: nn.Module, example: torch.Tensor,
                   candidates: Sequence[tuple[str, Layout]]) -> str | None:
    """The last of ``candidates`` (in running order) whose patch positions still reach the
    logits: one probing forward and backward pass (eval mode, gradients with respect to the
    layers' outputs only, hooks always removed) gives each layer the gradient of the sum of
    random projections of the logits and of the inputs of the linear layers that make them
    (a head still at zero, as torchvision initialises a ViT's, does not hide which tokens reach
    it; a plain sum would, after a LayerNorm, be constant); a layer
    whose map's gradient is zero everywhere (after the last block of a class-token ViT only
    the class token reaches the head) gives a blank map. None when no candidate's gradient is
    nonzero."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    features: list[torch.Tensor] = []

    def head_input(module: nn.Module, inputs: tuple) -> None:
        if inputs and isinstance(inputs[0], torch.Tensor) and inputs[0].ndim == 2:
            features.append(inputs[0])

    def keep(name: str, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:
            output.requires_grad_(True)
        outputs[name] = output
        return output.clone()

    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: keep(n, o))
               for n, _ in candidates]
    handles += [m.register_forward_pre_hook(head_input) for m in model.modules()
                if isinstance(m, nn.Linear)]
    try:
        # also when called from a gradient-free explainer, under inference mode
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            logits = model(example.detach().clone())
            generator = torch.Generator().manual_seed(0)   # random projections: a plain sum
            score = sum((x.float() * torch.randn(x.shape[1:], generator=generator).to(x.device)
                         ).sum() for x in [logits, *features] if x.requires_grad)
            names = [n for n, _ in candidates if n in outputs]
            if not isinstance(score, torch.Tensor) or not names:
                return None
            grads = torch.autograd.grad(score, [outputs[n] for n in names], allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    layouts = dict(candidates)
    reach = [(n, 0.0 if g is None else float(layouts[n].to_map(g).abs().amax()))
             for n, g in zip(names, grads)]
    largest = max((r for _, r in reach), default=0.0)
    return next((n for n, r in reversed(reach) if r > 1e-6 * largest), None)


def logits_of(module: nn.Module, inputs: tuple, output: object) -> object:
    """A forward hook that makes a model returning an object with ``.logits`` (a Hugging Face
    image classifier) return that tensor; any other output passes unchanged."""
    if not isinstance(output, torch.Tensor) and isinstance(getattr(output, "logits", None),
                                                           torch.Tensor):
        return output.logits
    return None


def return_logits(module: nn.Module) -> nn.Module:
    """``module``, returning its ``.logits`` where its output has them (:func:`logits_of`,
    a hook that stays: the module's layer names and state dict keys stay as they are)."""
    if logits_of not in module._forward_hooks.values():
        module.register_forward_hook(logits_of)
    return module
