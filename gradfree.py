"""Gradient-free CAMs, batched: Score-CAM (Wang et al., 2020), Ablation-CAM (Desai & Ramaswamy,
2020) and Eigen-CAM (Muhammad & Yeasin, 2020).

They share ``cam.py``'s layer lookup, activation hook and normalization. Score-CAM and
Ablation-CAM need one forward pass per (image, channel): those passes run under inference mode
on the BatchNorm-folded copy of the network, all images' channels cut into chunks of
``batch_size``, instead of one image at a time. Score-CAM runs them in fp32 unless an autocast
``dtype`` is given (the evaluation passes its precision); Ablation-CAM always in fp32, and
only through the layers after the target layer when torch.fx can cut the network there.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import torch
import torch.fx
from torch import nn

from cam import (
    LayerExplainer,
    at_least_fp32,
    check_batch,
    layer_activation,
    layer_output,
    normalize_heatmaps,
    upsample,
)
from runtime import autocast, eval_mode, inference_copy


def _chunks(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


class _LayerTracer(torch.fx.Tracer):
    """An fx tracer that keeps one named layer as a single call, so the graph can be cut there."""

    def __init__(self, layer_name: str):
        super().__init__()
        self.layer_name = layer_name

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.layer_name or super().is_leaf_module(module, qualified_name)


def network_after(model: nn.Module, layer_name: str) -> nn.Module | None:
    """The part of ``model`` that runs after ``layer_name``: a module mapping that layer's output
    to the logits, or None when the rest of the network also needs earlier values (a layer
    inside a residual block) or torch.fx cannot trace the model. Shares ``model``'s parameters.
    """
    try:
        graph = _LayerTracer(layer_name).trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model simply runs whole
        return None
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer_name]
    if len(calls) != 1:
        return None
    module = torch.fx.GraphModule(model, graph)
    graph = module.graph
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    call = next(n for n in graph.nodes if n.op == "call_module" and n.target == layer_name)
    with graph.inserting_before(next(iter(graph.nodes))):
        activation = graph.placeholder("activation")
    call.replace_all_uses_with(activation)
    graph.erase_node(call)
    graph.eliminate_dead_code()
    if any(node.users for node in inputs):
        return None
    for node in inputs:
        graph.erase_node(node)
    module.delete_all_unused_submodules()
    module.recompile()
    return module


def _weights_key(model: nn.Module) -> Hashable:
    """Changes whenever a parameter or buffer of ``model`` is replaced or modified in place
    (every in-place op bumps a tensor's version counter): when a derived copy is stale."""
    return tuple((t.data_ptr(), t._version, t.dtype, t.device)
                 for t in itertools.chain(model.parameters(), model.buffers()))


class _GradientFree(LayerExplainer):
    """What the three share: inference mode, the argument checks, and the derived networks
    (BatchNorm-folded copy, torch.fx tail), built once per explainer and rebuilt only when the
    model's weights change: tracing a DenseNet or an EfficientNet takes longer than explaining
    a small batch. ``batch_size`` chunks the per-channel passes; ``dtype`` is their autocast
    precision (None: fp32), read by Score-CAM only."""

    def __init__(self, model: nn.Module, layer: str = "auto", **options: Any):
        super().__init__(model, layer, **options)
        self._derived: dict[str, tuple[Hashable, object]] = {}

    def derived(self, what: str, build: Callable[[], object]) -> object:
        """``build()``'s result, kept while the model's weights stay as they are."""
        key = _weights_key(self.model)
        hit = self._derived.get(what)
        if hit is None or hit[0] != key:
            with eval_mode(self.model):   # traced in eval mode, whatever the model's own mode
                hit = (key, build())
            self._derived[what] = hit
        return hit[1]

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = check_batch(images, targets, self.model)
        with torch.inference_mode():
            return self.heatmaps(images, targets)

    def heatmaps(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ScoreCAM(_GradientFree):
    """Score-CAM: channel ``k``'s weight is the target's softmax probability for the input
    multiplied by ``k``'s upsampled activation, min-max scaled to [0, 1].

    As in the authors' code: the mask multiplies the normalized input, a constant channel is
    skipped (weight 0), and the weighted sum of the upsampled activations is passed through ReLU
    and min-max scaled (upsampling before the ReLU).
    """

    reduced_precision_on = frozenset({"cpu", "cuda"})

    def heatmaps(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        size = tuple(images.shape[-2:])
        activation, _ = layer_activation(self.model, self.layer_module(images), images)
        activation = at_least_fp32(activation)
        flat = activation.flatten(2)
        varying = flat.amax(2) > flat.amin(2)                     # [B, K]
        image_of, channel_of = varying.nonzero(as_tuple=True)
        weights = torch.zeros(activation.shape[:2], dtype=activation.dtype, device=images.device)
        net = self.derived("folded", lambda: inference_copy(self.model))
        with eval_mode(net), autocast(images.device, self.precision(images)):
            for part in _chunks(len(image_of), self.batch_size):
                b, k = image_of[part], channel_of[part]
                masks = upsample(activation[b, k], size)           # [P, H, W]
                lo = masks.flatten(1).amin(1).view(-1, 1, 1)
                hi = masks.flatten(1).amax(1).view(-1, 1, 1)
                masks = (masks - lo) / (hi - lo)
                probs = at_least_fp32(net(images[b] * masks[:, None])).softmax(dim=1)
                weights[b, k] = probs.gather(1, targets[b, None])[:, 0].to(weights.dtype)
        maps = upsample(torch.einsum("bk,bkhw->bhw", weights, activation), size)
        return normalize_heatmaps(maps)


class AblationCAM(_GradientFree):
    """Ablation-CAM: channel ``k``'s weight is the relative drop of the target's logit when
    ``k`` is set to zero, ``w_k = (y_c - y_c^k) / y_c``; map ``ReLU(sum_k w_k A_k)``.

    A channel that is zero everywhere changes nothing when ablated, so its weight is 0 without
    a forward pass. The ablated activations go through the rest of the network only. Always
    in fp32 (``dtype`` is ignored): the weight is a difference of two close logits, which bf16
    rounding (3 significant digits) turns into noise; the passes are cheap.
    """

    def heatmaps(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        output, layout, _ = layer_output(self.model, self.layer_module(images), images)
        activation = layout.to_map(output)    # ablated as a map, run in the layer's own layout
        score = self._scorer(images, targets)
        original = score(torch.arange(len(images), device=images.device), output)
        alive = activation.flatten(2).ne(0).any(2)                 # [B, K]
        image_of, channel_of = alive.nonzero(as_tuple=True)
        ablated = original[:, None].expand(activation.shape[:2]).clone()
        for part in _chunks(len(image_of), self.batch_size):
            b, k = image_of[part], channel_of[part]
            acts = activation[b].clone()
            acts[torch.arange(len(b), device=acts.device), k] = 0
            ablated[b, k] = score(b, layout.from_map(acts, output[b]))
        safe = torch.where(original != 0, original, torch.ones_like(original))
        weights = (original[:, None] - ablated) / safe[:, None]
        maps = torch.einsum("bk,bkhw->bhw", weights, at_least_fp32(activation))
        return normalize_heatmaps(maps, tuple(images.shape[-2:]))

    def _scorer(self, images: torch.Tensor, targets: torch.Tensor
                ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``score(image_index, activations)``: the target logits after the layer's output is
        replaced by ``activations``, through the network's tail when it can be cut there."""
        layer = self.layer_module(images)

        def folded_tail() -> nn.Module | None:
            tail = network_after(self.model, self.layer)
            return None if tail is None else inference_copy(tail)

        net = self.derived("tail", folded_tail)
        if net is not None:

            def run_tail(b: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
                with eval_mode(net):
                    return at_least_fp32(net(acts)).gather(1, targets[b, None])[:, 0]
            return run_tail

        def run_whole(b: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
            with eval_mode(self.model), _replace_output(layer, acts):
                return at_least_fp32(self.model(images[b])).gather(1, targets[b, None])[:, 0]
        return run_whole


@contextlib.contextmanager
def _replace_output(layer: nn.Module, output: torch.Tensor) -> Iterator[None]:
    """Within the block, ``layer`` returns ``output`` whatever its input; the hook is always
    removed."""
    handle = layer.register_forward_hook(lambda module, inputs, result: output.clone())
    try:
        yield
    finally:
        handle.remove()


class EigenCAM(_GradientFree):
    """Eigen-CAM: the activation ``O`` (``hw x K`` per image) projected on its first right
    singular vector, ``O v_1``, as the paper writes it (no centring); the map ignores the target.

    A singular vector's sign is arbitrary. It is chosen so that the projection itself, the map,
    has a non-negative sum (equivalently: at least as much positive mass as negative, so the
    ReLU keeps the larger part). The older rule, entries of ``v_1`` summing to >= 0, gives a
    positive map only for non-negative activations; on a signed layer (a block output without
    ReLU) it can flip the map to all-negative, which the ReLU turns into zeros.
    """

    reduced_precision_on = frozenset({"cpu"})

    def heatmaps(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with self.autocast(images) as inputs:
            activation, _ = layer_activation(self.model, self.layer_module(images), inputs)
        b, _k, h, w = activation.shape
        matrix = at_least_fp32(activation).flatten(2).transpose(1, 2)      # [B, hw, K]
        vh = torch.linalg.svd(matrix, full_matrices=False).Vh       # [B, min(hw, K), K]
        projection = (matrix @ vh[:, 0, :, None])[..., 0]            # [B, hw]
        projection = projection * torch.where(projection.sum(1, keepdim=True) < 0, -1.0, 1.0)
        return normalize_heatmaps(projection.view(b, h, w), tuple(images.shape[-2:]))
