"""Class Activation Mapping (Zhou et al., 2016) and the machinery every explainer shares.

An explainer is a callable ``(images, targets) -> heatmaps``: ``images`` a normalized batch
``[B, 3, H, W]``, ``targets`` ``[B]`` class indices, ``heatmaps`` ``[B, H, W]`` in ``[0, 1]`` on
the same device. The shared pieces here keep that contract in one place: finding a layer by
name, capturing its output with a hook that is always removed, and turning raw maps into
normalized heatmaps at input resolution (``runtime.eval_mode`` leaves the model as found).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from errors import UserError
from runtime import eval_mode


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``layer4``, ``layer3.1.conv2``, ...)."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        top = [n for n, _ in model.named_children()]
        raise UserError(f"no layer '{name}' in the model (top-level layers: {', '.join(top)})")
    return modules[name]


class ActivationCapture:
    """What a forward hook saw: the layer's output, kept out of reach of in-place operations."""

    def __init__(self) -> None:
        self.activation: torch.Tensor | None = None

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"{type(module).__name__} returned {type(output).__name__}; "
                            f"explainers need a layer whose output is a tensor")
        if torch.is_grad_enabled() and not output.requires_grad:
            output.requires_grad_(True)  # a frozen model still gives gradients w.r.t. this layer
        self.activation = output
        # The rest of the network gets a copy: an in-place op after the hook (ReLU(inplace=True),
        # ``out += identity``) would otherwise overwrite the activation we keep.
        return output.clone()


@contextlib.contextmanager
def capture_activation(layer: nn.Module) -> Iterator[ActivationCapture]:
    """Capture ``layer``'s output during the forward passes inside the block.

    The hook is removed when the block ends, also when an exception leaves it.
    """
    capture = ActivationCapture()
    handle = layer.register_forward_hook(capture._hook)
    try:
        yield capture
    finally:
        handle.remove()


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or in float64 when it already is (reduced precision is promoted)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def normalize_heatmaps(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """ReLU, bilinear upsampling to ``size``, then per-map min-max scaling to ``[0, 1]``.

    Scaling after upsampling makes every non-constant map span exactly ``[0, 1]``. A constant
    map (all zeros after ReLU, say) comes back as zeros, never NaN.
    """
    maps = at_least_fp32(maps).clamp(min=0)
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps.unsqueeze(1), size=size, mode="bilinear",
                             align_corners=False).squeeze(1)
    flat = maps.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    constant = span <= 1e-7 * hi.abs().clamp(min=torch.finfo(torch.float32).tiny)
    flat = torch.where(constant, torch.zeros_like(flat), (flat - lo) / span.clamp(min=1e-30))
    return flat.view_as(maps).float()


def check_batch(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Validate an explainer's arguments; return ``targets`` as a long tensor on the device."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    targets = torch.as_tensor(targets, device=images.device).long().view(-1)
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images but {len(targets)} targets")
    return targets


def map_layers(model: nn.Module, images: torch.Tensor) -> list[str]:
    """The top-level layers whose output for ``images`` is a ``[B, K, h, w]`` map larger than
    one pixel (a 1x1 map can only give a constant heatmap)."""
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [child.register_forward_hook(
        lambda module, inputs, output, name=name: shapes.__setitem__(
            name, tuple(output.shape) if isinstance(output, torch.Tensor) else ()))
        for name, child in model.named_children()]
    try:
        with torch.no_grad(), eval_mode(model):
            model(images[:1])
    finally:
        for handle in handles:
            handle.remove()
    return [name for name, shape in shapes.items() if len(shape) == 4 and shape[2] * shape[3] > 1]


def not_a_map(model: nn.Module, layer: nn.Module, images: torch.Tensor,
              activation: torch.Tensor | None) -> UserError:
    """The one-line error for a target layer whose output is no ``[B, K, h, w]`` map (``fc``,
    a pooling to a vector), naming the layers that work."""
    names = {id(m): n for n, m in model.named_modules()}
    shape = None if activation is None else list(activation.shape)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    example = f", or a convolution inside them such as {convs[-1]}" if convs else ""
    return UserError(f"--target_layer {names.get(id(layer), '?')} gives {shape}, not a "
                     f"[B, K, h, w] map; layers that work: "
                     f"{', '.join(map_layers(model, images))}{example}")


def layer_activation(model: nn.Module, layer: nn.Module, images: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s output ``[B, K, h, w]`` and the logits for ``images``, without autograd.

    For the gradient-free explainers: one forward pass in eval mode under inference mode; the
    model's flags and hooks are left as found.
    """
    with torch.inference_mode(), eval_mode(model), capture_activation(layer) as capture:
        logits = model(images)
    activation = capture.activation
    if activation is None or activation.ndim != 4:
        raise not_a_map(model, layer, images, activation)
    return activation, logits


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, h, w]`` or ``[B, K, h, w]`` maps to ``size`` (no clamping)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    flat = at_least_fp32(maps.reshape(-1, 1, *maps.shape[-2:]))
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.view(*maps.shape[:-2], *size)


class CAM:
    """CAM: ``M_c = sum_k w_k^c A_k`` over the feature maps that feed global average pooling.

    Defined only for a network whose head is global average pooling followed by one linear
    layer, at the layer just before that pooling (``layer4`` of a ResNet).
    """

    def __init__(self, model: nn.Module, target_layer: str = "layer4", fc_layer: str = "fc"):
        self.model = model
        self.layer = resolve_layer(model, target_layer)
        fc = resolve_layer(model, fc_layer)
        if not isinstance(fc, nn.Linear):
            raise UserError(f"CAM needs a linear classifier layer; '{fc_layer}' is "
                            f"{type(fc).__name__}")
        self.fc = fc
        self.target_layer = target_layer

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(images, targets)
        with eval_mode(self.model), capture_activation(self.layer) as capture:
            self.model(images)
        features = capture.activation
        if features is None or features.ndim != 4 or features.shape[1] != self.fc.in_features:
            shape = None if features is None else tuple(features.shape)
            raise UserError(f"CAM needs the feature maps that feed the linear layer "
                            f"({self.fc.in_features} channels); '{self.target_layer}' gave "
                            f"{shape}. Use gradcam for other layers")
        weights = self.fc.weight[targets].to(features.dtype)          # [B, K]
        maps = torch.einsum("bk,bkhw->bhw", weights, features)
        return normalize_heatmaps(maps, tuple(images.shape[-2:]))
