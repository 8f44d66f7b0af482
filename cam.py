"""Class Activation Mapping (Zhou et al., 2016) and the machinery every explainer shares.

An explainer is a callable ``(images, targets) -> heatmaps``: ``images`` a normalized batch
``[B, 3, H, W]``, ``targets`` ``[B]`` class indices, ``heatmaps`` ``[B, H, W]`` in ``[0, 1]`` on
the same device. The shared pieces here keep that contract in one place: finding a layer by
name, capturing its output with a hook that is always removed, and turning raw maps into
normalized heatmaps at input resolution (``runtime.eval_mode`` leaves the model as found).
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from errors import ParamError, UserError
from runtime import eval_mode
from tokens import Layout, grid_problem, is_attention, model_layout, reaching_layer


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` (``layer4``, ``layer3.1.conv2``, ...)."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        top = [n for n, _ in model.named_children()]
        raise UserError(f"no layer '{name}' in the model (top-level layers: {', '.join(top)})")
    return modules[name]


class ActivationCapture:
    """What a forward hook saw: the layer's output, kept out of reach of in-place operations."""

    def __init__(self, name: str = "") -> None:
        self.activation: torch.Tensor | None = None
        self.name = name

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.activation is not None:   # one forward pass per capture: the module runs twice
            raise ParamError("layer", f"{{param}} {self.name or f'(a {type(module).__name__})'} runs more "
                                      f"than once in one forward pass (a module used twice, "
                                      f"such as the ReLU of a torchvision ResNet block), so its "
                                      f"map is ambiguous; explain the block that holds it or "
                                      f"another layer (see the list of layers)")
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
def capture_activation(layer: nn.Module, name: str = "") -> Iterator[ActivationCapture]:
    """Capture ``layer``'s output during the one forward pass inside the block (a second output
    of the layer in the same block is an error: the layer runs twice per pass).

    The hook is removed when the block ends, also when an exception leaves it.
    """
    capture = ActivationCapture(name)
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


_OUTPUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _class_count(model: nn.Module, images: torch.Tensor) -> int | None:
    """The number of logits ``model`` gives (None when its output is no ``[B, C]`` tensor),
    from one image of ``images``, once per model (an error of the model's own passes
    through, as it would from the method)."""
    if model not in _OUTPUTS:
        with torch.no_grad(), eval_mode(model):
            out = model(images[:1])
        _OUTPUTS[model] = (int(out.shape[1]) if isinstance(out, torch.Tensor) and out.ndim == 2
                           else None)
    return _OUTPUTS[model]


def check_batch(images: torch.Tensor, targets: torch.Tensor | Sequence[int] | int,
                model: nn.Module | None = None, gradients: bool = False) -> torch.Tensor:
    """Check an explainer's arguments once, at its entry; return ``targets`` as a long tensor
    on the images' device. ``images`` a finite float ``[B, C, H, W]`` batch in the dtype and on
    the device of ``model``'s weights; ``targets`` one class index per image, ``0..C-1`` for a
    model with ``C`` logits. ``gradients``: the method needs autograd, which
    ``torch.inference_mode()`` turns off (``torch.no_grad()`` is fine: the methods turn
    gradients on where they need them). Each problem is a :class:`ParamError` naming
    ``images`` or ``targets``, what they are and what they must be."""
    if not isinstance(images, torch.Tensor):
        raise ParamError("images", f"{{param}} is a {type(images).__name__}; it must be a tensor "
                                   f"[B, 3, H, W]")
    if images.ndim != 4:
        raise ParamError("images", f"{{param}} has shape {tuple(images.shape)}; it must be a "
                                   f"batch [B, C, H, W] (one image: images[None])")
    if not images.is_floating_point():
        raise ParamError("images", f"{{param}} are {str(images.dtype).replace('torch.', '')}; they "
                                   f"must be float images, normalized as the model expects "
                                   f"(data.InputSpec.normalize)")
    param = next((p for p in model.parameters() if p.is_floating_point()), None) if model else None
    if param is not None and (images.dtype, images.device) != (param.dtype, param.device):
        raise ParamError("images", f"{{param}} are {str(images.dtype).replace('torch.', '')} on "
                                   f"{images.device} but the model's weights are "
                                   f"{str(param.dtype).replace('torch.', '')} on {param.device}; "
                                   f"pass images.to(dtype, device) of the model")
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None) if model else None
    if first is not None and images.shape[1] != first.in_channels:
        raise ParamError("images", f"{{param}} have {images.shape[1]} channel(s); the model's first "
                                   f"layer takes {first.in_channels} (a gray image: "
                                   f"images.expand(-1, 3, -1, -1))")
    if not torch.isfinite(images).all():
        raise ParamError("images", "{param} hold NaN or inf values; every heatmap of such an "
                                   "image would be NaN")
    if gradients and torch.is_inference_mode_enabled():
        raise UserError("this method needs gradients, which torch.inference_mode() turns off: "
                        "call it outside that block (torch.no_grad() is fine)")
    if isinstance(targets, torch.Tensor):
        given = targets
    else:
        try:
            given = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError):
            raise ParamError("targets", f"{{param}} {targets!r}: expected class indices, one per "
                                        f"image") from None
    if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
        raise ParamError("targets", f"{{param}} are {str(given.dtype).replace('torch.', '')}; they "
                                    f"must be integer class indices")
    targets = given.to(images.device).long().view(-1)
    if len(targets) != len(images):
        raise ParamError("targets", f"{{param}} has {len(targets)} entries for {len(images)} "
                                    f"images; give one class index per image", )
    count = _class_count(model, images) if model is not None and len(images) else None
    if len(targets) and (targets.min() < 0 or (count is not None and targets.max() >= count)):
        bad = int(targets.min()) if targets.min() < 0 else int(targets.max())
        limit = f"0..{count - 1}" if count is not None else "0 or more"
        raise ParamError("targets", f"{{param}} holds class {bad}; the model's classes are {limit}")
    return targets


def _example_input(model: nn.Module, input_size: int | tuple[int, int] | torch.Tensor
                   ) -> torch.Tensor:
    """One input for a probing forward pass: ``input_size`` itself when it is a tensor, else a
    seeded random image of that size on the model's device and in its dtype."""
    if isinstance(input_size, torch.Tensor):
        return input_size[:1]
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, h, w, generator=generator).to(device=device, dtype=dtype)


def spatial_layers(model: nn.Module, input_size: int | tuple[int, int] | torch.Tensor = 224
                   ) -> list[tuple[str, tuple[int, int, int]]]:
    """Every module whose output is a ``[B, K, h, w]`` map, or reads as one (token layers,
    channels-last outputs: :func:`map_layouts`), with ``(K, h, w)``, in the order they run, for
    one input of ``input_size`` (a side, ``(H, W)``, or an example batch)."""
    return [(name, layout.shape) for name, layout in map_layouts(model, input_size)]


def map_layouts(model: nn.Module, input_size: int | tuple[int, int] | torch.Tensor = 224
                ) -> list[tuple[str, Layout]]:
    """Every module whose output reads as a map (:func:`tokens.model_layout`), with its
    layout, in the order they run, for one input of ``input_size``.

    Found with forward hooks on one probing pass (no grad, eval mode, hooks always removed).
    A module that runs more than once per forward pass (a shared ReLU) is left out: a hook on
    it sees several maps, so no explainer can say which one it explains. 1x1 maps are listed
    (``auto_layer`` and the explainers refuse them).
    """
    return [(name, layout) for name, _, layout in _outputs(model, input_size) if layout]


def _outputs(model: nn.Module, input_size: int | tuple[int, int] | torch.Tensor
             ) -> list[tuple[str, tuple[int, ...], Layout | None]]:
    """Each module that runs once per forward pass, its output's shape and layout (None: no
    map), in running order."""
    calls: dict[str, int] = {}
    order: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(module: nn.Module, inputs: tuple, output: object, name: str) -> None:
        calls[name] = calls.get(name, 0) + 1
        order[name] = len(order) + sum(calls.values())  # grows with every call: running order
        shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else ()

    handles = [module.register_forward_hook(
        lambda m, i, o, name=name: record(m, i, o, name))
        for name, module in model.named_modules() if name]
    example = _example_input(model, input_size)
    try:
        with torch.no_grad(), eval_mode(model):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return [(n, shapes[n], model_layout(model, shapes[n], example.shape[-2:]))
            for n in sorted(calls, key=order.get) if calls[n] == 1]


def map_layers(model: nn.Module, images: torch.Tensor) -> list[str]:
    """The layers whose output for ``images`` is a ``[B, K, h, w]`` map larger than one pixel
    (a 1x1 map can only give a constant heatmap): the top-level ones, or all of them when the
    model's top level has none (a model wrapping its whole network in one child)."""
    found = [n for n, (_, h, w) in spatial_layers(model, images) if h * w > 1]
    top = [n for n in found if "." not in n]
    return top or found


# Pooling to a fixed size (VGG's 7x7 ``avgpool``) belongs to the head: at a small input it only
# repeats the last map's pixels, at the model's own size it is that map.
_FIXED_SIZE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def auto_layer(model: nn.Module, input_size: int | tuple[int, int] | torch.Tensor = 224) -> str:
    """The last module whose output is a ``[B, K, h, w]`` map with ``h * w > 1`` (as torchcam's
    ``locate_candidate_layer``, but never an adaptive pooling): for most CNNs the block just
    before global pooling.

    A model with token layers (``[B, T, C]`` or channels-last outputs read as maps) gets the
    last layer whose patch positions still reach the logits (:func:`tokens.reaching_layer`),
    among those that fit the input's grid and lie outside the attention modules (whose query,
    key and value projections are views of the tokens, not their state): a class-token ViT's
    last block's first norm, a Swin's last stage (read by the average pooling)."""
    modules = dict(model.named_modules())
    outputs = _outputs(model, input_size)
    layouts = [(n, lay) for n, _, lay in outputs if lay is not None
               and lay.grid[0] * lay.grid[1] > 1 and not isinstance(modules[n], _FIXED_SIZE_POOLS)]
    found = [n for n, _ in layouts]
    size = tuple(input_size.shape[-2:]) if isinstance(input_size, torch.Tensor) else input_size
    last = max((i for i, (n, _, _) in enumerate(outputs) if n in found), default=-1)
    lost = [(n, shape) for n, shape, lay in outputs[last + 1:]
            if lay is None and len(shape) == 3 and shape[1] > 1]
    if lost:   # token layers after the last map (a ViT's patch embedding) that read as none
        name, shape = lost[0]
        problem = grid_problem(model, shape, _example_input(model, input_size).shape[-2:])
        raise ParamError("layer", f"{{param}} auto: {name} gives tokens {list(shape)}, and "
                                  f"{problem}", "token_grid")
    if any(lay.kind != "nchw" for _, lay in layouts):
        inside = {n for n, m in modules.items() if n and is_attention(m)}
        candidates = [(n, lay) for n, lay in layouts if lay.fits and not any(
            n == a or n.startswith(a + ".") for a in inside)]
        chosen = reaching_layer(model, _example_input(model, input_size), candidates)
        if chosen is not None:
            return chosen
    if not found:
        raise ParamError("layer", f"{{param}} auto: no module of the model outputs a [B, K, h, w] "
                                  f"map larger than 1x1 for a {size} input, so there is no layer "
                                  f"to explain")
    return found[-1]


@dataclass(frozen=True)
class CamHead:
    """Where CAM is defined: ``layers`` (in running order; ``layer`` is the last) have maps
    whose global average is exactly the input of ``linear``, whose output is the logits."""

    layer: str
    linear: str
    layers: tuple[str, ...]


def cam_head(model: nn.Module, input_size: int | tuple[int, int] | torch.Tensor = 224
             ) -> CamHead:
    """Find "global average pooling + one linear layer" at the end of ``model``, or raise a
    one-line ``UserError`` saying why CAM is not defined for it.

    Checked numerically on one probing pass rather than by the names of modules: the last
    ``nn.Linear`` must give the logits, and the global average of some module's map must be its
    input. That also catches functional operations between them (DenseNet's ``F.relu``), which
    make ``sum_k w_k A_k`` something other than the class score's decomposition.
    """
    pooled: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}
    linears: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    last: list[str] = []

    def record(module: nn.Module, inputs: tuple, output: object, name: str) -> None:
        calls[name] = calls.get(name, 0) + 1
        if not any(True for _ in module.children()):
            last[:] = [name]
        if isinstance(module, nn.Linear) and isinstance(output, torch.Tensor) and inputs:
            linears.append((name, inputs[0].detach().flatten(1).double(),
                            output.detach().double()))
        layout = map_layout(model, output, example) if isinstance(output, torch.Tensor) \
            and output.ndim in (3, 4) else None
        if layout is not None:    # a map, or tokens (a Swin's) that the head averages
            pooled.pop(name, None)
            pooled[name] = layout.to_map(output.detach().double()).mean(dim=(2, 3))

    handles = [module.register_forward_hook(lambda m, i, o, name=name: record(m, i, o, name))
               for name, module in model.named_modules() if name]
    example = _example_input(model, input_size)
    try:
        with torch.no_grad(), eval_mode(model):
            logits = model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor):
        raise UserError(f"CAM needs a model that returns a logits tensor; it returned "
                        f"{type(logits).__name__}. Use gradcam")
    logits = logits.detach().double()
    linear = next((n for n, _, out in reversed(linears) if out.shape == logits.shape
                   and torch.allclose(out, logits, rtol=1e-6, atol=1e-9)), None)
    if linear is None:
        what = f"'{last[0]}' ({type(dict(model.named_modules())[last[0]]).__name__})" \
            if last else "no module"
        raise UserError(f"CAM is not defined for this model: its logits do not come from an "
                        f"nn.Linear layer (the last module to run is {what}); use gradcam, "
                        f"which works at any layer")
    features = next(x for n, x, _ in reversed(linears) if n == linear)
    scale = features.abs().max().clamp(min=1.0)
    layers = tuple(n for n, avg in pooled.items() if calls[n] == 1 and avg.shape == features.shape
                   and torch.allclose(avg, features, rtol=1e-5, atol=1e-6 * float(scale)))
    if not layers or calls[linear] != 1:
        raise UserError(f"CAM is not defined for this model: the input of its last linear layer "
                        f"'{linear}' is not the global average of any layer's feature map (the "
                        f"head does more than average pooling + one linear layer); use gradcam, "
                        f"which works at any layer")
    return CamHead(layer=layers[-1], linear=linear, layers=layers)


def not_a_map(model: nn.Module, layer: nn.Module, images: torch.Tensor,
              activation: torch.Tensor | None) -> ParamError:
    """The one-line error for a target layer whose output is no ``[B, K, h, w]`` map (``fc``,
    a pooling to a vector) or a 1x1 map (one location explains nothing), naming the layers
    that work."""
    names = {id(m): n for n, m in model.named_modules()}
    shape = None if activation is None else list(activation.shape)
    if activation is not None and activation.ndim == 3 and shape[1] > 1 \
            and map_layout(model, activation, images) is None:
        return ParamError("layer", f"{{param}} {names.get(id(layer), '?')} gives tokens {shape}, "
                                   f"and {grid_problem(model, shape, images.shape[-2:])}",
                          "token_grid")
    what = "a 1x1 map (a single location explains nothing)" if (
        activation is not None and activation.ndim in (3, 4)) else "not a [B, K, h, w] map"
    working = map_layers(model, images)
    shown = working if len(working) <= 8 else ["..."] + working[-8:]
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    example = f", or a convolution inside them such as {convs[-1]}" if convs else ""
    return ParamError("layer", f"{{param}} {names.get(id(layer), '?')} gives {shape}, {what}; "
                               f"layers that work: {', '.join(shown)}{example}")


def is_map(activation: torch.Tensor | None) -> bool:
    """Whether a layer's output is a ``[B, K, h, w]`` map with more than one location."""
    return (activation is not None and activation.ndim == 4
            and activation.shape[2] * activation.shape[3] > 1)


def map_layout(model: nn.Module, activation: torch.Tensor | None, images: torch.Tensor
               ) -> Layout | None:
    """How ``activation``, a layer's output for ``images``, reads as a map with more than one
    location (:func:`tokens.model_layout`: as is, channels last, or tokens on the patch
    grid); None when it does not."""
    layout = None if activation is None else model_layout(model, activation.shape,
                                                          images.shape[-2:])
    return layout if layout is not None and layout.grid[0] * layout.grid[1] > 1 else None


def read_map(model: nn.Module, layer: nn.Module, images: torch.Tensor,
             activation: torch.Tensor | None) -> Layout:
    """:func:`map_layout`, or the one-line error naming the layers that work."""
    layout = map_layout(model, activation, images)
    if layout is None:
        raise not_a_map(model, layer, images, activation)
    return layout


def layer_output(model: nn.Module, layer: nn.Module, images: torch.Tensor
                 ) -> tuple[torch.Tensor, Layout, torch.Tensor]:
    """``layer``'s own output for ``images``, how it reads as a map, and the logits, without
    autograd: one forward pass in eval mode under inference mode; the model's flags and hooks
    are left as found."""
    name = next((n for n, m in model.named_modules() if m is layer), "")
    with torch.inference_mode(), eval_mode(model), capture_activation(layer, name) as capture:
        logits = model(images)
    return capture.activation, read_map(model, layer, images, capture.activation), logits


def layer_activation(model: nn.Module, layer: nn.Module, images: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s output read as a map ``[B, K, h, w]`` (:func:`map_layout`) and the logits
    for ``images``, without autograd (:func:`layer_output`), for the gradient-free
    explainers."""
    activation, layout, logits = layer_output(model, layer, images)
    return layout.to_map(activation), logits


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, h, w]`` or ``[B, K, h, w]`` maps to ``size`` (no clamping)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    flat = at_least_fp32(maps.reshape(-1, 1, *maps.shape[-2:]))
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.view(*maps.shape[:-2], *size)


class LayerExplainer:
    """What every method shares: the model, the layer it explains and the options, so that
    every method is built the same way, ``Method(model, layer="auto", batch_size=..., dtype=...)``.

    ``layer`` is a module name (``layer4``, ``features.7``) or ``"auto"``: the model's own
    default layer (:meth:`default_layer`, the last spatial layer), found on the first batch
    from the images' size; ``self.layer`` then holds the name found. ``batch_size`` (the chunk
    of per-channel forward passes) and ``dtype`` (their autocast precision, None: fp32) are read
    by the methods that run such passes; the others accept them and ignore them.
    """

    def __init__(self, model: nn.Module, layer: str = "auto", *, batch_size: int = 256,
                 dtype: torch.dtype | None = None):
        if "," in layer:
            raise ParamError("layer", f"{{param}} '{layer}' names several layers; a heatmap is "
                                      f"made at one layer (a leaderboard or a sanity check "
                                      f"takes several)")
        if batch_size < 1:
            raise ParamError("batch_size", f"{{param}} must be at least 1, got {batch_size}")
        self.model = model
        self.layer = layer
        self.batch_size = batch_size
        self.dtype = dtype
        # an unknown name fails now, not at the first batch
        self._module = None if layer == "auto" else resolve_layer(model, layer)

    #: The device types on which this method's maps in reduced precision were validated
    #: against fp32 (``tests/test_precision.py``: r >= 0.999 per map and at most 0.02 apart
    #: anywhere, on the shipped model and a random ResNet-50 at 224 px); elsewhere ``dtype`` is
    #: ignored and the method runs in fp32.
    reduced_precision_on: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def runs_in(cls, dtype: torch.dtype | None, device_type: str) -> torch.dtype | None:
        """The autocast dtype the method runs in when ``dtype`` is asked for on a device of
        ``device_type``: ``dtype`` where the method was validated there, else None (fp32)."""
        if dtype in (None, torch.float32) or device_type not in cls.reduced_precision_on:
            return None
        return dtype

    def precision(self, images: torch.Tensor) -> torch.dtype | None:
        """The autocast dtype of this call (:meth:`runs_in` for the images' device)."""
        return self.runs_in(self.dtype, images.device.type)

    @contextlib.contextmanager
    def autocast(self, images: torch.Tensor) -> Iterator[torch.Tensor]:
        """Within the block the model runs in :meth:`precision`'s autocast, and the images to
        give it come back in ``channels_last`` (oneDNN and cuDNN's fast layout); in fp32 the
        block changes nothing and gives the images back as they are."""
        dtype = self.precision(images)
        if dtype is None:
            yield images
            return
        with torch.autocast(images.device.type, dtype=dtype):
            yield images.contiguous(memory_format=torch.channels_last)

    def default_layer(self, images: torch.Tensor) -> str:
        """The layer ``"auto"`` stands for, for inputs the size of ``images``."""
        return auto_layer(self.model, images[:1])

    def layer_module(self, images: torch.Tensor) -> nn.Module:
        """The explained layer's module; ``"auto"`` is resolved here, once, on the first batch."""
        if self._module is None:
            self.layer = self.default_layer(images)
            self._module = resolve_layer(self.model, self.layer)
        return self._module


class CAM(LayerExplainer):
    """CAM: ``M_c = sum_k w_k^c A_k`` over the feature maps that feed global average pooling.

    Defined only for a network whose head is global average pooling followed by one linear
    layer, at the layer just before that pooling (``layer4`` of a ResNet, ``features`` of a
    MobileNet v2). The head is found on the first batch (:func:`cam_head`); ``layer="auto"``
    means that layer, any other must give the same map.
    """

    head: CamHead | None = None

    def _head(self, images: torch.Tensor) -> CamHead:
        if self.head is None:
            self.head = cam_head(self.model, images[:1])
        return self.head

    def default_layer(self, images: torch.Tensor) -> str:
        return self._head(images).layer

    def _layers(self, images: torch.Tensor) -> tuple[nn.Module, nn.Linear]:
        head = self._head(images)
        layer = self.layer_module(images)
        if self.layer not in head.layers:
            raise ParamError("layer", f"CAM needs the feature maps that feed the linear layer "
                                      f"'{head.linear}' through global average pooling "
                                      f"({{param}} {head.layer}); '{self.layer}' gives another "
                                      f"map. Use gradcam for other layers")
        return layer, resolve_layer(self.model, head.linear)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(images, targets, self.model)
        layer, linear = self._layers(images)
        with eval_mode(self.model), capture_activation(layer, self.layer) as capture, \
                self.autocast(images) as inputs:
            self.model(inputs)
        layout = read_map(self.model, layer, images, capture.activation)
        features = at_least_fp32(layout.to_map(capture.activation))
        weights = linear.weight[targets].to(features.dtype)           # [B, K]
        maps = torch.einsum("bk,bkhw->bhw", weights, features)
        return normalize_heatmaps(maps, tuple(images.shape[-2:]))
