"""Deletion and insertion curves (Petsiuk et al., 2018, "RISE"), batched, with their AUCs.

Deletion hides an image's pixels in the order a heatmap ranks them, most salient first, and
records the softmax probability of the target class after each step; a good heatmap makes it
fall fast (lower AUC is better). Insertion starts from the fully hidden image and reveals the
pixels in the same order; a good heatmap makes the probability rise fast (higher AUC is better).

Differences from the original code, on purpose:

* Pixels are hidden in pixel space ``[0, 1]`` and the result is normalized afterwards (the
  original filled the normalized tensor, so its "zero" was the dataset's mean colour).
* The ``mean`` fill is the original image's per-channel mean, fixed for the whole curve.
* Step ``s`` of ``steps`` hides exactly ``floor(s * H * W / steps)`` pixels: 0 at the first
  point, all at the last, ``steps + 1`` points at fractions ``0, 1/steps, ..., 1``.
* Ties in a heatmap are broken by pixel index (row-major), so the order is reproducible.
* All masked images of all steps and images go through the model in chunks of
  ``batch_size`` instead of one batch-1 forward pass per step (``reference_curves`` keeps
  that per-step loop as the readable specification the batched path is tested against).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
from tqdm import tqdm

from data import ImageSplit, InputSpec, normalize
from errors import ParamError
from explain import Explainer
from registry import BASELINE_TITLES, FILL_STRATEGIES, TITLES
from runtime import autocast, eval_mode, inference_copy
from train import predict

__all__ = ["FILL_STRATEGIES", "confidence_change", "deletion_insertion", "score_images"]
BETTER = {"deletion": "lower", "insertion": "higher"}
BETTER_LINE = "Deletion AUC: lower is better. Insertion AUC: higher is better."

# The default blur: an 11-tap Gaussian with sigma 1.1 px, reflected borders. It suits 32x32
# images: it removes detail of a few pixels and keeps a garment's outline.
BLUR_KERNEL = 11
BLUR_SIGMA = BLUR_KERNEL / 10
# RISE's own substrate (``gkern(klen=11, nsig=5)`` in its evaluation.py): scipy's
# ``gaussian_filter(sigma=5)`` of an 11x11 impulse, which, truncated to 11 taps with reflected
# borders, is a nearly flat 11x11 kernel (centre 0.0088, corner 0.0077) made for 224 px images.
RISE_KLEN = 11
RISE_NSIG = 5.0


def rise_kernel(klen: int = RISE_KLEN, nsig: float = RISE_NSIG) -> torch.Tensor:
    """RISE's blur kernel ``[klen, klen]`` (float64): what scipy's ``gaussian_filter(impulse,
    nsig)`` returns (truncate 4, mode 'reflect'), computed here without scipy. The filter is
    separable, so the 2-D kernel is the outer product of the 1-D response to a centred impulse.
    """
    radius = int(4.0 * nsig + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (offsets / nsig) ** 2)
    weights /= weights.sum()
    # 'reflect' mirrors about the edge (d c b a | a b c d | d c b a): period 2 * klen
    positions = torch.arange(klen)[:, None] + offsets.long()[None, :]
    folded = positions % (2 * klen)
    folded = torch.where(folded >= klen, 2 * klen - 1 - folded, folded)
    response = ((folded == klen // 2) * weights).sum(1)
    return torch.outer(response, response)


# --------------------------------------------------------------------------------------------
# The pieces of one curve


def pixel_counts(steps: int, num_pixels: int) -> torch.Tensor:
    """Pixels hidden (deletion) or revealed (insertion) at each of the ``steps + 1`` points.

    ``floor(s * num_pixels / steps)`` in integer arithmetic: exactly 0 at ``s = 0`` and all
    pixels at ``s = steps``, never off by one from floating-point rounding.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.arange(steps + 1, dtype=torch.long) * num_pixels // steps


def pixel_ranks(heatmaps: torch.Tensor) -> torch.Tensor:
    """Rank of every pixel, ``[N, H*W]`` long: 0 for the most salient pixel of each map.

    A stable descending sort breaks ties by pixel index, so a constant map ranks pixels in
    row-major order and the same heatmap always gives the same curve.
    """
    flat = heatmaps.flatten(1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def fill_pixels(pixels: torch.Tensor, strategy: str) -> torch.Tensor:
    """What hidden pixels become, in pixel space: broadcastable to ``pixels`` ``[N, 3, H, W]``.

    ``zero`` black, ``gray`` 0.5, ``mean`` each image's own per-channel mean colour (fixed for
    the whole curve), ``blur`` a Gaussian-blurred copy of the image (sigma 1.1 px),
    ``blur_rise`` the copy blurred with RISE's own kernel (:func:`rise_kernel`).
    """
    if strategy == "zero":
        return torch.zeros_like(pixels[:, :, :1, :1])
    if strategy == "gray":
        return torch.full_like(pixels[:, :, :1, :1], 0.5)
    if strategy == "mean":
        return pixels.mean(dim=(2, 3), keepdim=True)
    if strategy == "blur":
        size = min(BLUR_KERNEL, 2 * min(pixels.shape[-2:]) - 1)  # reflection needs pad < side
        size -= 1 - size % 2
        return TF.gaussian_blur(pixels, [size, size], [BLUR_SIGMA, BLUR_SIGMA])
    if strategy == "blur_rise":
        kernel = rise_kernel().to(pixels)
        pad = min(RISE_KLEN // 2, min(pixels.shape[-2:]) - 1)   # reflection needs pad < side
        if pad < RISE_KLEN // 2:
            kernel = kernel[RISE_KLEN // 2 - pad:RISE_KLEN // 2 + pad + 1,
                            RISE_KLEN // 2 - pad:RISE_KLEN // 2 + pad + 1]
        channels = pixels.shape[1]
        padded = F.pad(pixels, [pad] * 4, mode="reflect")
        return F.conv2d(padded, kernel.expand(channels, 1, *kernel.shape), groups=channels)
    raise ParamError("strategy", f"unknown {{param}} '{strategy}' (known: "
                                 f"{', '.join(FILL_STRATEGIES)})")


def masked_pixels(pixels: torch.Tensor, fills: torch.Tensor, ranks: torch.Tensor,
                  image: torch.Tensor, counts: torch.Tensor, insertion: torch.Tensor
                  ) -> torch.Tensor:
    """One chunk of masked images ``[P, 3, H, W]`` for ``P`` (image, step, curve) triples.

    ``ranks`` is ``[N, 1, H, W]``. For triple ``p`` the ``counts[p]`` top-ranked pixels of
    image ``image[p]`` are hidden (deletion) or are the only ones shown (insertion): one
    broadcast comparison and one ``torch.where`` for the whole chunk.
    """
    top = ranks[image] < counts.view(-1, 1, 1, 1)
    hidden = top != insertion.view(-1, 1, 1, 1)
    return torch.where(hidden, fills[image], pixels[image])


def auc(curves: torch.Tensor) -> torch.Tensor:
    """Area under curves sampled at equal fractions in ``[0, 1]``, by the trapezoid rule."""
    steps = curves.shape[-1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    return (curves[..., :-1] + curves[..., 1:]).sum(-1) / (2 * steps)


# --------------------------------------------------------------------------------------------
# Curves for many images


@dataclass
class Curves:
    """Deletion and insertion probabilities ``[N, steps + 1]`` of the target class (CPU)."""

    deletion: torch.Tensor
    insertion: torch.Tensor

    @property
    def fractions(self) -> torch.Tensor:
        """The x axis: ``0, 1/steps, ..., 1``."""
        steps = self.deletion.shape[1] - 1
        return torch.arange(steps + 1, dtype=torch.float64) / steps

    @property
    def deletion_auc(self) -> torch.Tensor:
        """Per-image deletion AUC ``[N]`` (float64)."""
        return auc(self.deletion.double())

    @property
    def insertion_auc(self) -> torch.Tensor:
        """Per-image insertion AUC ``[N]`` (float64)."""
        return auc(self.insertion.double())


def _check_inputs(pixels: torch.Tensor, heatmaps: torch.Tensor, targets: torch.Tensor) -> None:
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be [N, C, H, W], got {tuple(pixels.shape)}")
    n, _, h, w = pixels.shape
    if tuple(heatmaps.shape) != (n, h, w):
        raise ValueError(f"heatmaps must be {(n, h, w)} to match the images, "
                         f"got {tuple(heatmaps.shape)}")
    if targets.shape != (n,):
        raise ValueError(f"targets must be [{n}], got {tuple(targets.shape)}")


def deletion_insertion(model: nn.Module, pixels: torch.Tensor, heatmaps: torch.Tensor,
                       targets: torch.Tensor, info: InputSpec, strategy: str = "zero",
                       steps: int = 100, batch_size: int = 256,
                       dtype: torch.dtype | None = None, desc: str | None = None) -> Curves:
    """Both curves of every image, all ``2 * N * (steps + 1)`` forward passes batched.

    ``pixels`` ``[N, 3, H, W]`` in ``[0, 1]`` on the model's device (not modified),
    ``heatmaps`` ``[N, H, W]``, ``targets`` ``[N]``. The (image, curve, step) triples are cut
    into chunks of ``batch_size`` masked images, so memory stays bounded whatever ``N`` and
    ``steps``. ``dtype`` is the autocast dtype (None: fp32).
    """
    _check_inputs(pixels, heatmaps, targets)
    device = pixels.device
    n, _, h, w = pixels.shape
    points = steps + 1
    total = 2 * n * points
    counts = pixel_counts(steps, h * w).to(device)
    targets = targets.to(device).long()
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, disable=desc is None)
    net = inference_copy(model)
    with torch.inference_mode(), eval_mode(net):
        scores = torch.empty(total, dtype=torch.float32, device=device)
        ranks = pixel_ranks(heatmaps.to(device)).to(torch.int32).view(n, 1, h, w)
        fills = fill_pixels(pixels, strategy)
        with autocast(device, dtype):  # one context: weights are cast once, not per chunk
            for start in range(0, total, batch_size):
                flat = torch.arange(start, min(start + batch_size, total), device=device)
                image, curve, step = flat // (2 * points), flat // points % 2, flat % points
                batch = masked_pixels(pixels, fills, ranks, image, counts[step], curve == 1)
                batch = normalize(batch, info).contiguous(memory_format=torch.channels_last)
                probs = net(batch).float().softmax(dim=1)
                scores[start:start + len(flat)] = probs.gather(1, targets[image, None])[:, 0]
                bar.update(len(flat))
    bar.close()
    scores = scores.view(n, 2, points).cpu().clone()
    return Curves(deletion=scores[:, 0], insertion=scores[:, 1])


def reference_curves(model: nn.Module, pixels: torch.Tensor, heatmap: torch.Tensor, target: int,
                     info: InputSpec, strategy: str = "zero", steps: int = 100
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The original algorithm for one image: edit the image step by step, one batch-1 forward
    pass per point, in fp32. Slow on purpose: the specification that ``deletion_insertion`` is
    tested and benchmarked against. Returns the deletion and insertion curves ``[steps + 1]``.
    """
    _, h, w = pixels.shape
    order = torch.sort(heatmap.flatten(), descending=True, stable=True).indices
    counts = pixel_counts(steps, h * w).tolist()
    fill = fill_pixels(pixels[None], strategy)[0].expand_as(pixels)
    curves = []
    with torch.inference_mode(), eval_mode(model):
        for start, finish in ((pixels, fill), (fill, pixels)):
            current = start.clone().reshape(3, h * w)
            finish = finish.reshape(3, h * w)
            scores = []
            for s in range(steps + 1):
                logits = model(normalize(current.view(1, 3, h, w), info))
                scores.append(logits.float().softmax(dim=1)[0, target].item())
                if s < steps:
                    changed = order[counts[s]:counts[s + 1]]
                    current[:, changed] = finish[:, changed]
            curves.append(torch.tensor(scores))
    return curves[0], curves[1]


def confidence_change(model: nn.Module, pixels: torch.Tensor, heatmaps: torch.Tensor,
                      targets: torch.Tensor, info: InputSpec, batch_size: int = 256,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Average Drop and Increase in Confidence (Chattopadhay et al., 2018), per image.

    ``y`` is the target's softmax probability for the image, ``o`` for the image multiplied by
    its heatmap. As torchcam defines them (``torchcam/metrics.py``): drop ``relu(y - o) / y``,
    increase ``o > y``; pytorch-grad-cam's ``DropInConfidence`` is ``relu(y - o)`` without the
    division by ``y``, its increase the same. The multiplication happens in pixel space (black
    where the map is 0), like every hiding strategy here; both libraries multiply the
    normalized tensor instead.
    Returns ``drop`` (float64) and ``increase`` (bool), both ``[N]`` on the CPU.
    """
    _check_inputs(pixels, heatmaps, targets)
    device = pixels.device
    targets = targets.to(device).long()
    net = inference_copy(model)
    probs = []
    with torch.inference_mode(), eval_mode(net), autocast(device, dtype):
        for part in (pixels, pixels * heatmaps.to(device)[:, None]):
            for start in range(0, len(part), batch_size):
                batch = normalize(part[start:start + batch_size], info)
                batch = batch.contiguous(memory_format=torch.channels_last)
                p = net(batch).float().softmax(dim=1)
                probs.append(p.gather(1, targets[start:start + batch_size, None])[:, 0])
    y, o = torch.cat(probs).double().cpu().view(2, -1)
    drop = (y - o).clamp(min=0) / y.clamp(min=torch.finfo(torch.float64).tiny)
    return drop, o > y


# --------------------------------------------------------------------------------------------
# Baselines: heatmaps that know nothing of the model, so every AUC has a floor


class RandomHeatmap:
    """Uniform noise: the AUC of a ranking that carries no information at all."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        return torch.rand(b, h, w, generator=self.generator).to(images.device)


class CentrePrior:
    """Closeness to the image centre: objects in photos (and CIFAR/Fashion-MNIST) sit in the
    middle, so a method must beat this to show it found more than the photographer's habit."""

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        ys = (torch.arange(h, device=images.device) + 0.5 - h / 2) / (h / 2)
        xs = (torch.arange(w, device=images.device) + 0.5 - w / 2) / (w / 2)
        distance = (ys[:, None] ** 2 + xs[None, :] ** 2).sqrt()
        heat = 1 - distance / distance.max()
        return heat.expand(b, h, w).clone()


BASELINES: dict[str, Callable[[int], Explainer]] = {
    "random": RandomHeatmap,
    "centre": lambda seed: CentrePrior(),
}


def title(name: str) -> str:
    """Display name of a method or baseline."""
    return TITLES.get(name) or BASELINE_TITLES.get(name) or name


# --------------------------------------------------------------------------------------------
# Which images


@dataclass
class Selection:
    """The test images evaluated: their indices in the split and their true classes."""

    indices: torch.Tensor
    labels: torch.Tensor
    scanned: int


def select_correct(model: nn.Module, split: ImageSplit, device: torch.device, n: int,
                   batch_size: int = 256) -> Selection:
    """The first ``n`` test images (in split order) that the model classifies correctly, in
    fp32 so that every precision evaluates the same images. Stops scanning once it has them."""
    found: list[torch.Tensor] = []
    have, start = 0, 0
    chunk = max(batch_size, n)
    while have < n and start < len(split):
        part = ImageSplit(split.images[start:start + chunk], split.labels[start:start + chunk],
                          split.info)
        logits = predict(model, part, device, None, batch_size=batch_size)
        hits = (logits.argmax(1) == part.labels).nonzero().squeeze(1) + start
        found.append(hits[:n - have])
        have += len(found[-1])
        start += len(part)
    indices = torch.cat(found) if found else torch.empty(0, dtype=torch.long)
    return Selection(indices, split.labels[indices], start)


# --------------------------------------------------------------------------------------------
# Per-image scores


@dataclass
class ImageScores:
    """Every per-image number of one method on the evaluated images (all on the CPU): the two
    curves, and the Grad-CAM++ paper's drop and increase in confidence. Aggregation comes
    after, so that the images can be scored in parts (or on several processes) and joined."""

    curves: Curves
    drop: torch.Tensor
    increase: torch.Tensor

    @staticmethod
    def join(parts: list[ImageScores]) -> ImageScores:
        """The scores of several parts of the images, in order, as one."""
        return ImageScores(Curves(torch.cat([p.curves.deletion for p in parts]),
                                  torch.cat([p.curves.insertion for p in parts])),
                           torch.cat([p.drop for p in parts]),
                           torch.cat([p.increase for p in parts]))


def score_images(model: nn.Module, pixels: torch.Tensor, heatmaps: torch.Tensor,
                 targets: torch.Tensor, info: InputSpec, strategy: str, steps: int,
                 batch_size: int, dtype: torch.dtype | None, desc: str | None = None
                 ) -> ImageScores:
    """Deletion/insertion curves and confidence change of every image for one method."""
    curves = deletion_insertion(model, pixels, heatmaps, targets, info, strategy, steps,
                                batch_size, dtype, desc)
    drop, increase = confidence_change(model, pixels, heatmaps, targets, info, batch_size, dtype)
    return ImageScores(curves, drop, increase)


