"""Heatmap speed of every method, and batched Score-CAM / Ablation-CAM against the per-image loop
of the reference implementations, in one run, on the same model and images.

    python bench/bench_heatmaps.py [--images 16] [--batch_size 64] [--layer layer4]
                                   [--cam_batch_size 256] [--score_chunk 16] [--ablation_chunk 32]

* every registered method that applies to a CNN (all but rollout), batched: milliseconds per
  image, and **forward passes per map** (its time over the model's raw batched inference time
  per image);
* Grad-CAM: also the original project's loop (a forward pass and a full ``backward()`` per image);
* Score-CAM and Ablation-CAM: the straightforward per-image loop of the reference code, one
  forward pass per chunk of channels per image on the plain network (pytorch-grad-cam's chunks:
  16 masked inputs for Score-CAM, 32 ablated copies of the image for Ablation-CAM, whose ablation
  layer runs the whole network; constant channels skipped by Score-CAM as in the authors'
  code), against the project's explainers batched over images and channels on the BatchNorm-
  folded copy (Ablation-CAM through the layers after the target layer only). Both in fp32, and
  the maps are compared. Where the hardware computes bf16, also Score-CAM batched in bf16
  autocast, as the evaluation runs it with ``--precision auto``.

Every timing is the best of ``--repeat`` runs. A random-weight ResNet-18 (weights do not change
the cost), 32x32 inputs.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cam import normalize_heatmaps, resolve_layer
from explain import TITLES, explain_batched, make_explainer, model_methods
from model import build_resnet18
from runtime import fast_dtype, resolve_device


def original_gradcam_loop(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                          targets: torch.Tensor) -> torch.Tensor:
    """One forward and one full backward per image, hooks registered around each."""
    maps = []
    store: dict[str, torch.Tensor] = {}

    def keep(module, inputs, output):
        store["activation"] = output
        output.register_hook(lambda grad: store.__setitem__("grad", grad))

    for image, target in zip(images, targets):
        handle = layer.register_forward_hook(keep)
        model.zero_grad()
        score = model(image[None])[0, target]
        score.backward()
        handle.remove()
        weights = store["grad"].mean(dim=(2, 3))
        raw = (weights[:, :, None, None] * store["activation"].detach()).sum(1)
        maps.append(normalize_heatmaps(raw, tuple(images.shape[-2:])))
    model.zero_grad(set_to_none=True)
    return torch.cat(maps)


def _activation(model: nn.Module, layer: nn.Module, image: torch.Tensor) -> torch.Tensor:
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.__setitem__("a", o.clone()))
    try:
        logits = model(image[None])
    finally:
        handle.remove()
    return store["a"][0], logits[0]


@torch.no_grad()
def scorecam_loop(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                  targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per image: all masked inputs in chunks of ``chunk`` through the plain network."""
    size = tuple(images.shape[-2:])
    maps = []
    for image, target in zip(images, targets):
        activation, _ = _activation(model, layer, image)
        up = F.interpolate(activation[None], size=size, mode="bilinear", align_corners=False)[0]
        flat = up.flatten(1)
        lo, hi = flat.min(1).values, flat.max(1).values
        keep = (hi > lo).nonzero().squeeze(1)
        masks = (up[keep] - lo[keep, None, None]) / (hi - lo)[keep, None, None]
        weights = torch.zeros(len(activation))
        for start in range(0, len(keep), chunk):
            probs = model(image[None] * masks[start:start + chunk, None]).softmax(1)
            weights[keep[start:start + chunk]] = probs[:, target]
        raw = (weights[:, None, None] * up).sum(0)
        maps.append(normalize_heatmaps(raw[None]))
    return torch.cat(maps)


@torch.no_grad()
def ablationcam_loop(model: nn.Module, layer: nn.Module, images: torch.Tensor,
                     targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per image: the image repeated ``chunk`` times through the whole network, a hook zeroing
    one channel of each copy at the target layer, for all channels."""
    maps = []
    for image, target in zip(images, targets):
        activation, logits = _activation(model, layer, image)
        k = len(activation)
        ablated = torch.empty(k)
        for start in range(0, k, chunk):
            channels = torch.arange(start, min(start + chunk, k))

            def ablate(module, inputs, output, channels=channels):
                output = output.clone()
                output[torch.arange(len(channels)), channels] = 0
                return output
            handle = layer.register_forward_hook(ablate)
            try:
                ablated[channels] = model(image[None].expand(len(channels), -1, -1, -1))[:, target]
            finally:
                handle.remove()
        weights = (logits[target] - ablated) / logits[target]
        raw = (weights[:, None, None] * activation).sum(0)
        maps.append(normalize_heatmaps(raw[None], tuple(images.shape[-2:])))
    return torch.cat(maps)


def best_time(run: Callable[[], object], repeat: int, device: torch.device) -> float:
    """Fastest wall time of ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=64, help="images per explainer call")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--cam_batch_size", type=int, default=256)
    parser.add_argument("--score_chunk", type=int, default=16,
                        help="the per-image loop's chunk (pytorch-grad-cam's Score-CAM: 16)")
    parser.add_argument("--ablation_chunk", type=int, default=32,
                        help="the per-image loop's chunk (pytorch-grad-cam's Ablation-CAM: 32)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_resnet18(10).to(device).eval()
    for module in model.modules():          # non-trivial BatchNorm, so that folding matters
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.normal_(module.running_mean, 0.0, 0.1)
            nn.init.uniform_(module.running_var, 0.5, 1.5)
    images = torch.randn(args.images, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (args.images,), device=device)
    layer = resolve_layer(model, args.layer)
    n = args.images

    def forward_only() -> None:
        with torch.inference_mode():
            for i in range(0, n, args.batch_size):
                model(images[i:i + args.batch_size])

    forward_only()                                   # warm-up: first calls allocate
    forward = best_time(forward_only, args.repeat, device) / n
    print(f"Heatmaps at {args.layer} of a ResNet-18 (random weights), {n} images of 32x32, "
          f"device {device}, {torch.get_num_threads()} threads, fp32, best of {args.repeat}")
    print(f"  forward only (batch {args.batch_size}, inference_mode): "
          f"{1000 * forward:.2f} ms/image")
    print(f"  {'method':<14} {'ms/image':>10} {'forward passes per map':>24}")
    batched_maps = {}
    for name in model_methods(model, "all"):      # those that apply to a CNN
        if name == "cam" and args.layer != "layer4":
            continue
        explainer = make_explainer(name, model, args.layer, batch_size=args.cam_batch_size)
        batched_maps[name] = explain_batched(explainer, images, targets, args.batch_size)  # warm
        seconds = best_time(partial(explain_batched, explainer, images, targets, args.batch_size),
                            args.repeat, device) / n
        print(f"  {TITLES[name]:<14} {1000 * seconds:10.2f} {seconds / forward:24.2f}")

    print("Against the straightforward loops:")
    loops = {
        "Grad-CAM": ("gradcam", lambda: original_gradcam_loop(model, layer, images, targets),
                     "original loop: forward + full backward per image"),
        "Score-CAM": ("scorecam", lambda: scorecam_loop(model, layer, images, targets,
                                                        args.score_chunk),
                      f"per image, chunks of {args.score_chunk} masked inputs, plain network"),
        "Ablation-CAM": ("ablationcam", lambda: ablationcam_loop(model, layer, images, targets,
                                                                 args.ablation_chunk),
                         (f"per image, chunks of {args.ablation_chunk} ablated copies, whole "
                         f"network")),
    }
    for label, (name, loop, how) in loops.items():
        explainer = make_explainer(name, model, args.layer, batch_size=args.cam_batch_size)
        looped = loop()
        diff = (looped - batched_maps[name]).abs().max().item()
        slow = best_time(loop, args.repeat, device) / n
        fast = best_time(partial(explain_batched, explainer, images, targets, args.batch_size),
                         args.repeat, device) / n
        print(f"  {label}: batched {1000 * fast:.2f} ms/image vs {1000 * slow:.2f} ms/image "
              f"({how}): {slow / fast:.2f}x faster; max |batched - loop| {diff:.1e}")
        if name == "scorecam" and fast_dtype(device) is not None:
            dtype = fast_dtype(device)
            reduced = make_explainer(name, model, args.layer, batch_size=args.cam_batch_size, dtype=dtype)
            diff = (explain_batched(reduced, images, targets, args.batch_size)
                    - looped).abs().max().item()
            quick = best_time(partial(explain_batched, reduced, images, targets, args.batch_size),
                              args.repeat, device) / n
            print(f"  {label} in {str(dtype).replace('torch.', '')} autocast (what the "
                  f"evaluation runs here): {1000 * quick:.2f} ms/image, {slow / quick:.2f}x the "
                  f"fp32 loop; max |{str(dtype).replace('torch.', '')} - fp32 loop| {diff:.1e}")


if __name__ == "__main__":
    main()
