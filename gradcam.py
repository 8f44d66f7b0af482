"""Gradient-based CAMs, batched: Grad-CAM (Selvaraju et al., 2017), Grad-CAM++ (Chattopadhay et
al., 2018), XGrad-CAM (Fu et al., 2020), HiResCAM (Draelos & Carin, 2020) and LayerCAM (Jiang et
al., 2021).

One forward and one backward pass explain a whole batch: in eval mode the samples are
independent, so the gradient of the *sum* of the target scores with respect to the layer's
activation holds each sample's own gradient in its own slice. The gradient is taken with
``torch.autograd.grad`` with respect to the activation only, so no weight gradients are
computed and the parameters' ``.grad`` stay untouched.

Each method supplies only what differs: channel weights (Grad-CAM, Grad-CAM++, XGrad-CAM) or an
element-wise combination of gradient and activation (HiResCAM, LayerCAM). Guided Grad-CAM
(the Grad-CAM paper's own high-resolution map) multiplies Grad-CAM by Guided Backpropagation.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cam import (
    LayerExplainer,
    at_least_fp32,
    capture_activation,
    check_batch,
    map_layout,
    normalize_heatmaps,
    not_a_map,
    upsample,
)
from errors import note
from runtime import eval_mode


def score_gradient(score: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
    """``d score / d activation``. In fp16 the score is scaled first, as a ``GradScaler`` does,
    so that small gradients do not underflow to zero: by 2^16, lowered while the gradient
    overflows; the gradient comes back unscaled, in fp32."""
    if activation.dtype != torch.float16:
        return torch.autograd.grad(score, activation)[0]
    for scale in (2.0 ** 16, 2.0 ** 8, 1.0):
        (grad,) = torch.autograd.grad(score * scale, activation, retain_graph=scale > 1)
        if torch.isfinite(grad).all():
            break
    return grad.float() / scale


class GradCAM(LayerExplainer):
    """Grad-CAM at any layer: channel weights are the spatial mean of the score's gradient."""

    @staticmethod
    def channel_weights(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` activation and gradient -> ``[B, K]`` weights."""
        return grad.mean(dim=(2, 3))

    def raw_maps(self, images: torch.Tensor, targets: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Unnormalized maps ``[B, h, w]`` at the layer's resolution, and the logits.
        ``targets=None``: each image's predicted class, read from this pass's own logits (a
        caller that needs the prediction anyway saves a forward pass)."""
        predicted = targets is None
        if predicted:   # class 0 for the checks; the prediction replaces it after the forward
            targets = (torch.zeros(len(images), dtype=torch.long)
                       if isinstance(images, torch.Tensor) and images.ndim else 0)
        targets = check_batch(images, targets, self.model, gradients=True)
        layer = self.layer_module(images)
        if images.is_inference():
            images = images.clone()  # tensors made under inference_mode cannot enter autograd
        with eval_mode(self.model), capture_activation(layer, self.layer) as capture, \
                torch.enable_grad(), self.autocast(images) as inputs:
            logits = self.model(inputs)
            if predicted:
                targets = logits.detach().argmax(1)
            activation = capture.activation
            layout = map_layout(self.model, activation, images)
            if layout is not None:
                score = logits.gather(1, targets[:, None]).sum()
                grad = score_gradient(score, activation)
        if layout is None:   # outside the capture: the error's list of layers runs the model
            raise not_a_map(self.model, layer, images, activation)
        # a token layer's output and its gradient, read through the same layout as maps
        activation = at_least_fp32(layout.to_map(activation.detach()))
        grad = at_least_fp32(layout.to_map(grad))
        return self.combine(activation, grad), at_least_fp32(logits.detach())

    @classmethod
    def combine(cls, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``[B, K, h, w]`` activation and gradient -> ``[B, h, w]`` map: ``sum_k w_k A_k``.
        A class method: detections combine their own gradients without an explainer."""
        return torch.einsum("bk,bkhw->bhw", cls.channel_weights(activation, grad), activation)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        maps, _ = self.raw_maps(images, targets)
        return normalize_heatmaps(maps, tuple(images.shape[-2:]))


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++: pixel-weighted positive gradients, with the closed-form alphas that assume an
    exponential of the class score (the form used by the paper's code and by its peers).

    Eq. 19's ``alpha = g^2 / (2 g^2 + S g^3)`` (``S`` the channel's activation sum) is
    ``1 / (2 + S g)`` wherever ``g != 0``. After a ReLU (``S >= 0``) and where it counts
    (``g > 0``; the weight multiplies ``relu(g)``) that lies in ``(0, 1/2]``. On a signed layer
    (a block output without ReLU) ``S g`` can reach ``-2``, where alpha is singular, and go
    below it, where alpha is negative, and a few such positions then dominate the map. So
    ``S g`` is clamped at 0: alpha ``= 1 / (2 + max(S g, 0))``, equal to the paper's wherever
    ``S g >= 0`` (every post-ReLU layer), bounded in ``(0, 1/2]`` and continuous elsewhere.
    (pytorch-grad-cam adds ``1e-6`` to the denominator instead, which keeps it singular.)
    """

    reduced_precision_on = frozenset({"cpu"})

    @staticmethod
    def channel_weights(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        sum_activation = activation.sum(dim=(2, 3), keepdim=True)
        alpha = 1.0 / (2.0 + (sum_activation * grad).clamp(min=0))
        positive = grad.clamp(min=0)
        return (alpha * positive).sum(dim=(2, 3))


class XGradCAM(GradCAM):
    """XGrad-CAM: each gradient weighted by its activation's share of the channel's sum,
    ``w_k = sum_ij (A_k,ij / sum_ij A_k,ij) dY/dA_k,ij`` (a channel summing to 0 gets weight 0)."""

    @staticmethod
    def channel_weights(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        total = activation.sum(dim=(2, 3))
        weighted = (grad * activation).sum(dim=(2, 3))
        safe = torch.where(total != 0, total, torch.ones_like(total))
        return torch.where(total != 0, weighted / safe, torch.zeros_like(weighted))


class HiResCAM(GradCAM):
    """HiResCAM: the element-wise product of gradient and activation, summed over channels, so
    every location keeps its own gradient instead of the channel's average."""

    @classmethod
    def combine(cls, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (grad * activation).sum(dim=1)


class LayerCAM(GradCAM):
    """LayerCAM: like HiResCAM with the gradient's negative part dropped, ``sum_k relu(g_k) A_k``,
    which keeps fine detail at early layers."""

    reduced_precision_on = frozenset({"cpu"})

    @classmethod
    def combine(cls, activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (grad.clamp(min=0) * activation).sum(dim=1)


# --------------------------------------------------------------------------------------------
# Guided Grad-CAM

GUIDED_ACTIVATIONS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6)


class _GuidedGradient(torch.autograd.Function):
    """Identity on a ReLU's output whose backward keeps only the positive part of the incoming
    gradient; composed with the ReLU's own backward (which zeroes it where the input was not
    positive) that is Guided Backpropagation's rule."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, output: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(output)
        return output.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad.clamp(min=0) * (output > 0)


def _guide(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor) and output.requires_grad:
        return _GuidedGradient.apply(output)
    return None


@contextlib.contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    """Within the block, backward passes through ``model``'s ``nn.ReLU`` / ``nn.ReLU6`` modules
    follow Guided Backpropagation; yields how many modules were guided.

    A forward hook wraps each one's output (in place or not) in :class:`_GuidedGradient`, so
    no full backward hooks are needed; the hooks are removed when the block ends, also on an
    exception. Functional ``F.relu`` calls, and activations that are not ReLUs (SiLU, GELU,
    Hardswish), keep their ordinary gradient: there Guided Backpropagation has no definition.
    """
    handles = [m.register_forward_hook(_guide) for m in model.modules()
               if isinstance(m, GUIDED_ACTIVATIONS)]
    try:
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


def guided_backprop(model: nn.Module, images: torch.Tensor, targets: torch.Tensor
                    ) -> torch.Tensor:
    """Guided Backpropagation (Springenberg et al., 2015): the gradient of each target score
    with respect to its input image, ``[B, 3, H, W]``, with guided ReLUs. The input is not
    changed; no weight gradients are computed."""
    targets = check_batch(images, targets, model, gradients=True)
    inputs = images.detach().clone().requires_grad_(True)
    with eval_mode(model), guided_relus(model), torch.enable_grad():
        logits = model(inputs)
        score = logits.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(score, inputs)
    return grad


class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM (Selvaraju et al., 2017): Guided Backpropagation multiplied by the
    Grad-CAM map, ReLU'd and upsampled bilinearly to the input.

    The paper shows the product as a colour image ``[3, H, W]``; the explainer contract wants
    ``[B, H, W]`` in ``[0, 1]``. The product's largest magnitude over the colour channels is
    taken, then min-max scaled: the magnitude, not the positive part, because a negative input
    gradient (darkening this pixel raises the score) is evidence too, and Simonyan et al.'s
    saliency maps reduce colour the same way. Guided only where the model uses ``nn.ReLU`` /
    ``nn.ReLU6`` modules (:func:`guided_relus`); on SiLU / GELU / Hardswish families the input
    gradient there is the plain one. Guided Backpropagation's rule is defined for ReLUs only
    (it passes a gradient where the ReLU's input and the incoming gradient are positive); a
    GELU is not zero for negative inputs, so there is no rule to carry over. In a network
    without a single ReLU module (a vision transformer, a ConvNeXt) nothing is guided: the map
    is the plain input gradient times Grad-CAM, and the first call says so in a note.
    """

    noted: bool = False

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not self.noted and not any(isinstance(m, GUIDED_ACTIVATIONS)
                                      for m in self.model.modules()):
            note("guidedgradcam: the model has no ReLU module to guide (GELU, SiLU), so its map "
                 "is the plain input gradient times Grad-CAM")
            self.noted = True
        size = tuple(images.shape[-2:])
        maps, _ = self.raw_maps(images, targets)
        cam = upsample(maps.clamp(min=0), size)                     # [B, H, W]
        guided = guided_backprop(self.model, images, targets)
        product = at_least_fp32(guided).abs().amax(dim=1) * cam
        return normalize_heatmaps(product)
