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

import json
import math
import sys
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn
from tqdm import tqdm

import distributed
import outputs
import visualize
from cam import resolve_layer
from data import DatasetInfo, ImageSplit, normalize
from errors import UserError
from explain import TITLES, Explainer, explain_batched, make_explainer, parse_layers, parse_methods
from model import ARCH
from runtime import autocast, eval_mode, inference_copy, precision_dtype
from train import predict

FILL_STRATEGIES = ("zero", "gray", "mean", "blur", "blur_rise")
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
    raise UserError(f"unknown hidden strategy '{strategy}' (known: {', '.join(FILL_STRATEGIES)})")


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
                       targets: torch.Tensor, info: DatasetInfo, strategy: str = "zero",
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
                     info: DatasetInfo, strategy: str = "zero", steps: int = 100
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
                      targets: torch.Tensor, info: DatasetInfo, batch_size: int = 256,
                      dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Average Drop and Increase in Confidence (Chattopadhay et al., 2018), per image.

    ``y`` is the target's softmax probability for the image, ``o`` for the image multiplied by
    its heatmap. As torchcam and pytorch-grad-cam define them: drop ``relu(y - o) / y``,
    increase ``o > y``. The multiplication happens in pixel space (black where the map is 0),
    like every hiding strategy here; both libraries multiply the normalized tensor instead.
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
# Spread of the AUCs

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile: a table up to 30 degrees of freedom, then the
    Cornish-Fisher expansion around the normal quantile (error below 1e-4 there)."""
    if df < 1:
        raise ValueError("degrees of freedom must be at least 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation and 95% confidence interval of the mean (Student's t)."""

    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "std": self.std, "ci95": [self.ci_low, self.ci_high],
                "n": self.n}


def spread(values: torch.Tensor) -> Spread:
    """The spread of per-image AUCs; one image gives std 0 and an interval of zero width."""
    v = values.double().flatten()
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    mean = v.mean().item()
    if n == 1:
        return Spread(mean, 0.0, mean, mean, 1)
    std = v.std(unbiased=True).item()
    half = t_quantile_975(n - 1) * std / math.sqrt(n)
    return Spread(mean, std, mean - half, mean + half, n)


def proportion_spread(hits: torch.Tensor, scale: float = 1.0) -> Spread:
    """The spread of a yes/no outcome per image, with Wilson's 95% score interval (which, unlike
    the t interval, stays inside [0, 1] and is sensible at 0% or 100%); all times ``scale``."""
    v = hits.double().flatten()
    n = len(v)
    if n == 0:
        raise ValueError("no values")
    p = v.mean().item()
    z = 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    std = v.std(unbiased=True).item() if n > 1 else 0.0
    return Spread(p * scale, std * scale, (centre - half) * scale, (centre + half) * scale, n)


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
BASELINE_TITLES = {"random": "Random (baseline)", "centre": "Centre prior (baseline)"}


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
# The CLI's evaluation


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
                 targets: torch.Tensor, info: DatasetInfo, strategy: str, steps: int,
                 batch_size: int, dtype: torch.dtype | None, desc: str | None = None
                 ) -> ImageScores:
    """Deletion/insertion curves and confidence change of every image for one method."""
    curves = deletion_insertion(model, pixels, heatmaps, targets, info, strategy, steps,
                                batch_size, dtype, desc)
    drop, increase = confidence_change(model, pixels, heatmaps, targets, info, batch_size, dtype)
    return ImageScores(curves, drop, increase)


@dataclass
class MethodResult:
    """One method at one layer (``layer`` None for a baseline): its per-image scores and their
    spreads."""

    name: str
    layer: str | None
    scores: ImageScores
    deletion: Spread
    insertion: Spread
    difference: Spread
    drop: Spread
    increase: Spread

    @property
    def curves(self) -> Curves:
        return self.scores.curves

    @property
    def baseline(self) -> bool:
        return self.name in BASELINES

    @property
    def label(self) -> str:
        """Display name: the method's title and its layer, or the baseline's title."""
        return title(self.name) if self.layer is None else f"{title(self.name)} ({self.layer})"


def aggregate(name: str, layer: str | None, scores: ImageScores) -> MethodResult:
    """Mean, standard deviation and 95% interval of every metric over the images (Student's t;
    Wilson's for the Increase in Confidence, a proportion). The insertion-minus-deletion
    difference is taken per image (a paired interval)."""
    d, i = scores.curves.deletion_auc, scores.curves.insertion_auc
    return MethodResult(name, layer, scores, spread(d), spread(i), spread(i - d),
                        spread(scores.drop * 100), proportion_spread(scores.increase, 100))


def _precision_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def report_lines(result: MethodResult) -> list[str]:
    """The original's two ``Average ... AUC`` lines, each followed by its spread, then the
    Average Drop and Increase in Confidence."""
    lines = [f"{result.label}:"]
    for curve, s in (("Deletion", result.deletion), ("Insertion", result.insertion)):
        lines.append(f"Average {curve} AUC: {s.mean:.4f}")
        lines.append(f"  std {s.std:.4f}, 95% CI [{s.ci_low:.4f}, {s.ci_high:.4f}], n {s.n}")
    for metric, s in (("Average Drop", result.drop), ("Increase in Confidence", result.increase)):
        lines.append(f"{metric}: {s.mean:.2f}% (95% CI [{s.ci_low:.2f}, {s.ci_high:.2f}])")
    return lines


def _stem(result: MethodResult, strategy: str, several_layers: bool) -> str:
    if result.layer is not None and several_layers:
        return f"{result.name}_{visualize.slug(result.layer)}_{strategy}"
    return f"{result.name}_{strategy}"


def save_method_outputs(result: MethodResult, selection: Selection, strategy: str,
                        out_dir: Path, context: dict, several_layers: bool = False) -> list[Path]:
    """Figure, per-image curves and metrics (NPZ) and summary (JSON) of one method."""
    stem = _stem(result, strategy, several_layers)
    curves = result.curves
    figure = out_dir / f"results_{stem}.png"
    visualize.plot_deletion_insertion(
        curves.fractions.numpy(), {result.label: (curves.deletion.numpy(),
                                                  curves.insertion.numpy())},
        {result.label: (result.deletion.mean, result.insertion.mean)}, figure,
        title=f"{result.label}, hidden: {strategy}, {result.deletion.n} images", band=True)
    npz = out_dir / f"curves_{stem}.npz"
    with outputs.atomic(npz) as tmp:
        np.savez_compressed(tmp, fractions=curves.fractions.numpy(),
                            deletion=curves.deletion.numpy(), insertion=curves.insertion.numpy(),
                            deletion_auc=curves.deletion_auc.numpy(),
                            insertion_auc=curves.insertion_auc.numpy(),
                            drop=result.scores.drop.numpy(),
                            increase=result.scores.increase.numpy(),
                            indices=selection.indices.numpy(), targets=selection.labels.numpy())
    summary = {"method": result.name, "title": title(result.name), "layer": result.layer,
               "baseline": result.baseline, "strategy": strategy, "n": result.deletion.n,
               **context, **_metrics_dict(result), "better": BETTER,
               "curves": npz.name, "figure": figure.name}
    path = out_dir / f"summary_{stem}.json"
    outputs.write_text(path, json.dumps(summary, indent=2) + "\n")
    return [figure, npz, path]


def _metrics_dict(r: MethodResult) -> dict:
    return {"deletion_auc": r.deletion.as_dict(), "insertion_auc": r.insertion.as_dict(),
            "insertion_minus_deletion": r.difference.as_dict(),
            "average_drop_pct": r.drop.as_dict(), "increase_in_confidence_pct": r.increase.as_dict()}


METRICS = (("deletion", "deletion_auc"), ("insertion", "insertion_auc"),
           ("difference", "insertion_minus_deletion"), ("drop", "average_drop_pct"),
           ("increase", "increase_in_confidence_pct"))
TABLE_FIELDS = ("rank", "method", "title", "layer", "baseline", "n",
                *(f"{key}_{part}" for _, key in METRICS for part in ("mean", "std", "ci95_low",
                                                                      "ci95_high")))


def ranked(results: list[MethodResult]) -> list[MethodResult]:
    """Best first by insertion AUC minus deletion AUC (higher is better)."""
    return sorted(results, key=lambda r: -r.difference.mean)


def table_rows(results: list[MethodResult]) -> list[dict]:
    """One row per method and layer, best first (CSV columns ``TABLE_FIELDS``)."""
    rows = []
    for rank, r in enumerate(ranked(results), 1):
        row = {"rank": rank, "method": r.name, "title": title(r.name), "layer": r.layer or "",
               "baseline": r.baseline, "n": r.deletion.n}
        for attr, key in METRICS:
            s = getattr(r, attr)
            row.update({f"{key}_mean": s.mean, f"{key}_std": s.std, f"{key}_ci95_low": s.ci_low,
                        f"{key}_ci95_high": s.ci_high})
        rows.append(row)
    return rows


def markdown_table(results: list[MethodResult], caption: str) -> str:
    """The leaderboard as a Markdown table, best first, each number with its 95% interval."""
    def cell(s: Spread, digits: int) -> str:
        return f"{s.mean:.{digits}f} [{s.ci_low:.{digits}f}, {s.ci_high:.{digits}f}]"

    lines = [caption, "",
             ("| rank | method | layer | insertion − deletion ↑ | deletion AUC ↓ | insertion AUC ↑ "
             "| Average Drop % ↓ | Increase in Confidence % ↑ |"),
             "|---:|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(ranked(results), 1):
        name = f"*{title(r.name)}*" if r.baseline else title(r.name)
        lines.append(f"| {rank} | {name} | {r.layer or '–'} | {cell(r.difference, 4)} | "
                     f"{cell(r.deletion, 4)} | {cell(r.insertion, 4)} | {cell(r.drop, 1)} | "
                     f"{cell(r.increase, 1)} |")
    lines += ["", f"Mean [95% confidence interval] over the same {results[0].deletion.n} "
              f"images; baselines in italics. " + BETTER_LINE + " Average Drop: lower is "
              "better. Increase in Confidence: higher is better. Ranked by insertion minus "
              "deletion."]
    return "\n".join(lines) + "\n"


def save_comparison(results: list[MethodResult], strategy: str, out_dir: Path,
                    caption: str, context: dict, notes: list[str]) -> list[Path]:
    """The leaderboard: curves of everything in one figure, the ranking figure, and the table
    as Markdown, CSV and JSON."""
    figure = out_dir / f"comparison_{strategy}.png"
    fractions = results[0].curves.fractions.numpy()
    visualize.plot_deletion_insertion(
        fractions,
        {r.label: (r.curves.deletion.numpy(), r.curves.insertion.numpy()) for r in results},
        {r.label: (r.deletion.mean, r.insertion.mean) for r in results}, figure,
        title=caption, band=False, dashed=[r.label for r in results if r.baseline])
    order = ranked(results)
    ranking = out_dir / f"ranking_{strategy}.png"
    visualize.plot_ranking(
        [r.label for r in order],
        {name: [(getattr(r, attr).mean, getattr(r, attr).ci_low, getattr(r, attr).ci_high)
                for r in order] for name, attr in RANKING_PANELS},
        [r.baseline for r in order], ranking, title=caption)
    md = out_dir / f"comparison_{strategy}.md"
    outputs.write_text(md, markdown_table(results, caption)
                       + "".join(f"\n{n}\n" for n in notes))
    table = out_dir / f"comparison_{strategy}.csv"
    rows = table_rows(results)
    outputs.write_csv(table, TABLE_FIELDS, rows)
    js = out_dir / f"comparison_{strategy}.json"
    outputs.write_text(js, json.dumps({"caption": caption, **context, "better": {
        **BETTER, "insertion_minus_deletion": "higher", "average_drop_pct": "lower",
        "increase_in_confidence_pct": "higher"}, "ranked_by": "insertion_minus_deletion",
        "skipped": notes, "rows": rows}, indent=2) + "\n")
    return [figure, ranking, md, table, js]


RANKING_PANELS = (("insertion − deletion (higher is better)", "difference"),
                  ("deletion AUC (lower is better)", "deletion"),
                  ("insertion AUC (higher is better)", "insertion"),
                  ("Average Drop % (lower is better)", "drop"),
                  ("Increase in Confidence % (higher is better)", "increase"))


def _pick_images(model: nn.Module, split: ImageSplit, device: torch.device,
                 args: Namespace) -> Selection:
    selection = select_correct(model, split, device, args.num_eval, args.eval_batch_size)
    n = len(selection.indices)
    if n == 0:
        raise UserError(f"the model classifies none of the {len(split)} test images correctly, "
                        f"so there is nothing to evaluate (is {args.save_path} trained on "
                        f"{split.info.name}?)")
    if n < args.num_eval and distributed.world().is_main:
        print(f"warning: only {n} of the {len(split)} test images are classified correctly; "
              f"evaluating those {n} instead of --num_eval {args.num_eval}", file=sys.stderr)
    return selection


def _block_heatmaps(explainer: Explainer, baseline: bool, images: torch.Tensor,
                    targets: torch.Tensor, block: slice, batch_size: int) -> torch.Tensor:
    """Heatmaps of the images in ``block`` (all of them for one process). A baseline's maps
    are drawn for every image and then cut, so that the random baseline gives each image the
    noise it gets in a one-process run, whichever rank evaluates it."""
    if baseline:
        return explain_batched(explainer, images, targets, batch_size)[block]
    return explain_batched(explainer, images[block], targets[block], batch_size)


def explainers_by_layer(model: nn.Module, methods: list[str], layers: list[str],
                        batch_size: int, dtype: torch.dtype | None = None
                        ) -> tuple[list[tuple[str, str, Explainer]], list[str]]:
    """``(method, layer, explainer)`` for every method defined at every layer, and a note for
    each pair left out (CAM anywhere but the layer before global pooling). An unknown layer is
    an error, not a note."""
    for layer in layers:
        resolve_layer(model, layer)
    entries, notes = [], []
    for layer in layers:
        for method in methods:
            try:
                entries.append((method, layer,
                                make_explainer(method, model, layer, batch_size, dtype)))
            except UserError as exc:
                notes.append(f"note: {title(method)} left out at {layer}: {exc}")
    return entries, notes


def parse_strategies(spec: str) -> list[str]:
    """``zero`` / ``zero,blur`` -> hiding strategies, duplicates dropped (the names were checked
    when the flag was parsed)."""
    return list(dict.fromkeys(x.strip() for x in spec.split(",")))


def run(model: nn.Module, split: ImageSplit, device: torch.device, args: Namespace) -> int:
    """``--vis METHODS --target_layer LAYERS --hidden_strategy S``: the leaderboard. Every
    method at every layer and the two baselines, scored on the same correctly classified test
    images: curves, AUCs, Average Drop and Increase in Confidence, each with a 95% interval.
    Each heatmap is computed once and scored under every strategy of a comma list."""
    strategies = parse_strategies(args.hidden_strategy)
    layers = parse_layers(args.target_layer)
    dtype = precision_dtype(args.precision, device)
    entries, notes = explainers_by_layer(model, parse_methods(args.vis), layers,
                                         args.cam_batch_size, dtype)
    for note in notes if distributed.world().is_main else []:
        print(note, file=sys.stderr)
    entries += [(name, None, make(args.seed)) for name, make in BASELINES.items()]
    info = split.info
    selection = _pick_images(model, split, device, args)
    pixels = split.images[selection.indices].float().div(255).to(device)
    images = normalize(pixels, info)
    targets = selection.labels.to(device)
    out_dir = Path(args.out_dir)   # created by the first file written into it
    here = distributed.world()
    n = len(targets)
    mine = distributed.shard(n, here)  # under torchrun: this rank's block of the images
    captions = {s: (f"{info.name}, hidden: {s}, {n} correctly classified test images, "
                    f"{args.steps} steps, {_precision_name(dtype)}") for s in strategies}
    if here.is_main:
        print(f"Deletion / insertion: {', '.join(captions.values())}")
    context = {"steps": args.steps, "num_eval_requested": args.num_eval,
               "model": str(args.save_path), "arch": ARCH, "dataset": info.name,
               "target_layers": layers, "precision": _precision_name(dtype),
               "seed": args.seed, "test_images_scanned": selection.scanned}
    several = len(layers) > 1
    results: dict[str, list[MethodResult]] = {s: [] for s in strategies}
    written: list[Path] = []
    for name, layer, explainer in entries:
        label = name if layer is None else f"{name} {layer}"
        heatmaps = _block_heatmaps(explainer, name in BASELINES, images, targets, mine,
                                   args.batch_size)
        for strategy in strategies:
            block = None if len(heatmaps) == 0 else score_images(  # more ranks than images
                model, pixels[mine], heatmaps, targets[mine], info, strategy, args.steps,
                args.eval_batch_size, dtype,
                desc=f"{label} ({strategy})" if here.is_main else None)
            blocks = distributed.gather(block, here)
            if blocks is None:  # another rank than 0: rank 0 aggregates and writes
                continue
            result = aggregate(name, layer, ImageScores.join([b for b in blocks
                                                              if b is not None]))
            results[strategy].append(result)
            print(f"[{strategy}] " + "\n".join(report_lines(result)), flush=True)
            written += save_method_outputs(result, selection, strategy, out_dir, context,
                                           several)
    if not here.is_main:
        return 0
    print(BETTER_LINE)
    for strategy in strategies:
        written += save_comparison(results[strategy], strategy, out_dir, captions[strategy],
                                   context, notes)
        print(markdown_table(results[strategy], captions[strategy]), end="")
    kinds = ",".join(strategies)
    print(f"Wrote {len(written)} files to {out_dir} for {kinds}: figures results_*_S.png, "
          f"comparison_S.png and ranking_S.png, curves curves_*_S.npz, summaries "
          f"summary_*_S.json, leaderboard comparison_S.md/.csv/.json")
    return 0
