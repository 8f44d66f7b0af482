"""Heatmaps from any explanation method: the registry's classes, and the API's ``heatmaps``.

The names and titles live in ``registry.py`` (which needs no torch); this module turns a name
into an explainer for a model and layer, and computes heatmaps in chunks.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import distributed
from cam import map_layers, normalize_heatmaps, resolve_layer
from data import ImageSplit, InputSpec, normalize
from errors import ParamError, UserError
from registry import ATTENTION_METHODS, METHODS, TITLES, names_of, parse_layers, parse_methods
from runtime import eval_mode
from tokens import grid_problem, model_layout

__all__ = [
    "EXPLAINERS",
    "TITLES",
    "Explainer",
    "explain_batched",
    "explain_split",
    "heatmaps",
    "make_explainer",
    "model_methods",
    "parse_layers",
    "parse_methods",
    "probabilities",
]

Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Registry(Mapping):
    """``{name: class}`` for every method of ``registry.METHODS``, imported on first use."""

    def __getitem__(self, name: str) -> Callable[..., Explainer]:
        module, cls, _ = METHODS[name]
        # a sibling module by name: "gradcam" here, "camexplain.gradcam" installed (setup.py)
        return getattr(importlib.import_module(f"{__package__}.{module}" if __package__
                                               else module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


EXPLAINERS: Mapping[str, Callable[..., Explainer]] = _Registry()


def make_explainer(name: str, model: nn.Module, layer: str = "auto", **options: Any
                   ) -> Explainer:
    """The explainer called ``name`` for ``model`` at ``layer`` (``"auto"``: the model's own
    default layer; rollout, which reads every attention block, ignores it). ``options`` are
    every method's keywords (:class:`cam.LayerExplainer`): ``batch_size``, the chunk of the
    per-channel forward passes (Score-CAM, Ablation-CAM), and ``dtype``, their autocast
    precision (Score-CAM; None: fp32)."""
    if name not in METHODS:
        raise ParamError("method", f"unknown heatmap method '{name}' (known: "
                                   f"{', '.join(METHODS)})")
    return EXPLAINERS[name](model, layer, **options)


def model_methods(model: nn.Module, methods: str | Sequence[str] = "all") -> list[str]:
    """The methods of ``methods`` (a name, a comma list, a list of names, or ``"all"``) for
    ``model``. ``"all"`` is every method that applies to it: the attention methods
    (``registry.ATTENTION_METHODS``, rollout) only where it has a vision transformer's
    attention blocks. A method named on purpose that does not apply is a :class:`ParamError`
    (``methods``) saying why."""
    everything = isinstance(methods, str) and methods.strip() == "all"
    names = names_of(methods, "methods", "heatmap method", list(METHODS), everything="all")
    problems = {m: why for m in names if (why := attention_reason(m, model)) is not None}
    if everything:
        return [m for m in names if m not in problems]
    for method, why in problems.items():
        raise ParamError("methods", f"{{param}} {method}: {why}")
    return names


def attention_reason(name: str, model: nn.Module) -> str | None:
    """Why the attention method ``name`` does not apply to ``model``; None where it does or
    where ``name`` is a layer method."""
    if name not in ATTENTION_METHODS:
        return None
    from rollout import attention_problem
    return attention_problem(model)


def probe_layers(model: nn.Module, layers: Sequence[str], image: torch.Tensor) -> None:
    """Every layer of ``layers`` exists and gives a ``[B, K, h, w]`` map with more than one
    location for ``image`` ``[1, 3, H, W]``: one forward pass before any work, so that
    ``layer3,fc`` is refused before ``layer3`` is evaluated. A 1x1 map (``avgpool``) explains
    nothing: it only gives constant heatmaps. The error names the layers that work."""
    modules = [resolve_layer(model, name) for name in layers]
    shapes: dict[str, tuple] = {}

    def keep(name: str, output: object) -> None:   # a hook returning None changes nothing
        shapes.setdefault(name, tuple(output.shape) if isinstance(output, torch.Tensor) else ())

    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: keep(name, out))
               for name, m in zip(layers, modules)]
    try:
        with torch.no_grad(), eval_mode(model):
            model(image)
    finally:
        for h in handles:
            h.remove()
    for name in layers:
        shape = shapes.get(name, ())
        layout = model_layout(model, shape, image.shape[-2:])
        if len(shape) == 3 and layout is None and shape[1] > 1:
            raise ParamError("layers", f"{{param}} {name} gives tokens {list(shape)}, and "
                                       f"{grid_problem(model, shape, image.shape[-2:])}",
                             "token_grid")
        if layout is None or layout.grid[0] * layout.grid[1] <= 1:
            what = "a single location" if layout else f"shape {list(shape) or 'none'}"
            raise ParamError("layers", f"{{param}} {name} gives {what}, not a [B, K, h, w] map "
                                       f"with more than one location; layers that work: "
                                       f"{', '.join(map_layers(model, image))}")


def undefined_reason(name: str, model: nn.Module, layer: str, image: torch.Tensor) -> str | None:
    """Why method ``name`` is not defined for ``model`` at ``layer`` (probed on ``image``
    ``[1, 3, H, W]``), or None where it is: CAM needs the maps that feed global average
    pooling and one linear layer; the attention methods (rollout) need a vision transformer's
    attention blocks and ignore ``layer``; every other method works at any layer with a
    spatial map."""
    if name in ATTENTION_METHODS:
        return attention_reason(name, model)
    if name != "cam":
        return None
    from cam import cam_head
    try:
        head = cam_head(model, image)
    except UserError as exc:
        return str(exc)
    if layer in head.layers:
        return None
    return (f"CAM is defined at the layer before global pooling ({head.layer}) only; use "
            f"gradcam for other layers")


def explain_batched(explainer: Explainer, images: torch.Tensor, targets: torch.Tensor,
                    batch_size: int) -> torch.Tensor:
    """Heatmaps ``[N, H, W]`` for ``images`` in chunks of ``batch_size``, on the images' device
    (``[0, H, W]`` for no images: a rank's empty share under torchrun)."""
    if len(images) == 0:
        return images.new_zeros(0, *images.shape[-2:])
    chunks = [explainer(images[i:i + batch_size], targets[i:i + batch_size])
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


def heatmaps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, method: str,
             layer: str = "auto", batch_size: int = 64, cam_batch_size: int = 256,
             dtype: torch.dtype | None = None) -> torch.Tensor:
    """``method``'s heatmaps ``[N, H, W]`` in ``[0, 1]`` of normalized ``images`` ``[N, 3, H, W]``
    for the classes ``targets`` ``[N]``, at ``layer`` (``"auto"``: the model's default layer);
    ``batch_size`` images at a time, ``cam_batch_size`` per-channel passes at a time."""
    explainer = make_explainer(method, model, layer, batch_size=cam_batch_size, dtype=dtype)
    return explain_batched(explainer, images, targets, batch_size)


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Softmax probabilities ``[N, C]`` (fp32) of normalized ``images``, in eval mode."""
    with eval_mode(model):
        return torch.cat([model(images[i:i + batch_size]).float().softmax(1)
                          for i in range(0, len(images), batch_size)])


def predict_and_explain(model: nn.Module, images: torch.Tensor,
                        explainers: Mapping[str, Explainer], batch_size: int
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Class probabilities ``[N, C]`` (fp32) and each explainer's maps of the predicted class.
    Where the first explainer is a gradient method that runs in fp32, the prediction is read
    from its own forward pass (the same fp32 forward :func:`probabilities` runs, with the
    gradient on), so the images pass through the model once fewer; otherwise
    :func:`probabilities` first, as before."""
    from gradcam import GradCAM
    first = next(iter(explainers.values()), None)
    plain = isinstance(first, GradCAM) and type(first).__call__ is GradCAM.__call__
    if not plain or first.precision(images) is not None:
        probs = probabilities(model, images, batch_size)
        targets = probs.argmax(1)
        return probs, {m: explain_batched(e, images, targets, batch_size)
                       for m, e in explainers.items()}
    probs, maps = [], []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        raw, logits = first.raw_maps(chunk, None)
        probs.append(logits.float().softmax(1))
        maps.append(normalize_heatmaps(raw, tuple(chunk.shape[-2:])))
    probs_all = torch.cat(probs)
    targets = probs_all.argmax(1)
    out = {name: explain_batched(e, images, targets, batch_size)
           for name, e in list(explainers.items())[1:]}
    return probs_all, {next(iter(explainers)): torch.cat(maps), **out}


@dataclass
class HeatmapBlock:
    """One chunk of explained test images: their indices in the split, pixels ``[n, 3, H, W]``
    in [0, 1], true labels, class probabilities ``[n, C]`` and each method's maps (all CPU)."""

    indices: range
    pixels: torch.Tensor
    labels: torch.Tensor
    probs: torch.Tensor
    maps: dict[str, torch.Tensor]

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(1)


def explain_split(model: nn.Module, split: ImageSplit, methods: Sequence[str], layer: str,
                  n: int, device: torch.device, target: str = "pred", batch_size: int = 128,
                  cam_batch_size: int = 256, dtype: torch.dtype | None = None
                  ) -> Iterator[HeatmapBlock]:
    """The first ``n`` images of ``split`` explained by every method, ``batch_size`` at a time,
    for the predicted class (``target="pred"``) or the true one (``"gt"``), in ``dtype``'s
    autocast where a method was validated for it (None: fp32).

    Blocks are yielded as they are made, so memory stays that of one block whatever ``n`` is.
    Under torchrun each rank yields its own share of the images (their global indices).
    """
    explainers = {m: make_explainer(m, model, layer, batch_size=cam_batch_size, dtype=dtype)
                  for m in methods}
    mine = distributed.shard(min(n, len(split)))
    for start in range(mine.start, mine.stop, batch_size):
        stop = min(start + batch_size, mine.stop)
        pixels = split.images[start:stop].float().div(255)
        labels = split.labels[start:stop].cpu()
        probs, maps = _explain_block(model, explainers, pixels, labels, split.info, device,
                                     target, batch_size)
        yield HeatmapBlock(range(start, stop), pixels, labels, probs, maps)


def _explain_block(model: nn.Module, explainers: dict[str, Explainer], pixels: torch.Tensor,
                   labels: torch.Tensor, info: InputSpec, device: torch.device, target: str,
                   batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Class probabilities ``[n, C]`` and each method's heatmaps ``[n, H, W]`` (on the CPU) for
    a block of test images."""
    images = normalize(pixels, info).to(device)
    if target == "pred":
        probs, maps = predict_and_explain(model, images, explainers, batch_size)
        return probs.cpu(), {m: heat.cpu() for m, heat in maps.items()}
    probs = probabilities(model, images, batch_size)
    targets = labels.to(device)
    return probs.cpu(), {m: explain_batched(e, images, targets, batch_size).cpu()
                         for m, e in explainers.items()}


def heatmap_precision(methods: Sequence[str], dtype: torch.dtype | None,
                      device: torch.device | str) -> dict[str, torch.dtype | None]:
    """The precision each method's maps are made in when ``dtype`` is asked for on ``device``:
    ``dtype`` where the method was validated for it there, None (fp32) elsewhere."""
    kind = torch.device(device).type
    return {m: EXPLAINERS[m].runs_in(dtype, kind) for m in methods}
