"""Grad-CAM speed: batched against one image at a time, in one run, on the same model and images.

    python bench/bench_heatmaps.py [--images 128] [--batch_size 64] [--layer layer4]

* ``original loop``: what the original project did per image: a forward pass, ``backward()``
  on the class score (which also computes every weight gradient), the gradient caught by a
  tensor hook;
* ``per-image GradCAM``: this project's explainer called with one image at a time
  (``autograd.grad`` with respect to the activation only);
* ``batched GradCAM``: the same explainer on batches of ``--batch_size``;
* ``forward only``: the model's raw batched inference throughput, the floor for any method
  that needs a forward pass.

Every timing is the best of ``--repeat`` runs. Prints milliseconds per image and the ratios.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cam import normalize_heatmaps, resolve_layer
from explain import explain_batched
from gradcam import GradCAM
from model import build_resnet18
from runtime import resolve_device


def original_loop(model: nn.Module, layer: nn.Module, images: torch.Tensor,
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
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_resnet18(10).to(device).eval()
    images = torch.randn(args.images, 3, 32, 32, device=device)
    targets = torch.randint(0, 10, (args.images,), device=device)
    explainer = GradCAM(model, args.layer)
    layer = resolve_layer(model, args.layer)

    batched = explain_batched(explainer, images, targets, args.batch_size)   # also a warm-up
    looped = original_loop(model, layer, images[:8], targets[:8])
    max_diff = (batched[:8] - looped).abs().max().item()

    def forward_only() -> None:
        with torch.inference_mode():
            for i in range(0, args.images, args.batch_size):
                model(images[i:i + args.batch_size])

    timings = {
        "original loop (forward + full backward per image)":
            best_time(lambda: original_loop(model, layer, images, targets), args.repeat, device),
        "per-image GradCAM (autograd.grad, batch 1)":
            best_time(lambda: explain_batched(explainer, images, targets, 1), args.repeat, device),
        f"batched GradCAM (batch {args.batch_size})":
            best_time(lambda: explain_batched(explainer, images, targets, args.batch_size),
                      args.repeat, device),
        f"forward only (batch {args.batch_size}, inference_mode)":
            best_time(forward_only, args.repeat, device),
    }
    model.zero_grad(set_to_none=True)
    print(f"Grad-CAM at {args.layer} of a ResNet-18, {args.images} images of 32x32, device "
          f"{device}, {torch.get_num_threads()} threads, fp32, best of {args.repeat}")
    per_image = {name: 1000 * t / args.images for name, t in timings.items()}
    for name, ms in per_image.items():
        print(f"  {name:<55} {ms:8.2f} ms/image")
    original, single, batch, forward = per_image.values()
    print(f"batched vs original loop: {original / batch:.2f}x faster;  vs per-image GradCAM: "
          f"{single / batch:.2f}x;  batched Grad-CAM costs {batch / forward:.2f} forward passes")
    print(f"max |batched - original loop| over 8 maps: {max_diff:.2e}")


if __name__ == "__main__":
    main()
