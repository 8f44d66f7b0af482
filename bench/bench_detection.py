"""What explaining N detections costs: one detector forward plus N backward passes, against the
detector's forward alone and against running the detector again for each box.

The detector has random weights in the COCO layout (nothing to download); time does not depend
on the weights' values, and score threshold 0 guarantees N detections to explain. All numbers
come from one run on one machine, so their ratios are comparable; each is the fastest of
``--repeats`` tries, the best estimate on a machine that other work shares.

    python bench/bench_detection.py                      # 800-pixel input, 8 detections, layer4
    python bench/bench_detection.py --min_size 512 --detections 4 --layer layer2
    python bench/bench_detection.py --weights checkpoints/fasterrcnn_fashion_scenes.pth \
        --image data/fashion_scenes/JPEGImages/000001.png --detections 4   # the trained one

With ``--weights`` the detector is that checkpoint (the trained scene detector, or a COCO-layout
state dict) instead of random COCO-layout weights.
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import detection as det
import detectors
from runtime import resolve_device


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """The fewest seconds ``fn`` took in ``repeats`` calls (synchronized on CUDA), and what the
    last call returned."""
    best, out = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def batched_maps(state: det.DetectorPass) -> torch.Tensor:
    """Raw maps ``[N, h, w]`` of the first layer from all N gradients in one call with
    ``is_grads_batched=True`` (vmap over the backward pass)."""
    eye = torch.eye(len(state.targets), device=state.targets.device)
    (grad,) = torch.autograd.grad(state.targets, state.activations[:1], grad_outputs=eye,
                                  is_grads_batched=True)
    weights = grad[:, 0].mean(dim=(2, 3))
    return torch.einsum("nk,khw->nhw", weights, state.activations[0].detach()[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--min_size", type=int, default=800, help="detector input, shorter side")
    p.add_argument("--detections", type=int, default=8, help="N detections to explain")
    p.add_argument("--layer", default="layer4", choices=det.LAYERS)
    p.add_argument("--image", default=str(ROOT / "data" / "samples" / "grace_hopper.jpg"))
    p.add_argument("--repeats", type=int, default=2, help="tries per measurement (fastest)")
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", default=None, help="a detector checkpoint (default: random)")
    args = p.parse_args()
    device = resolve_device(args.device)
    n, layers = args.detections, [args.layer]

    torch.manual_seed(0)
    if args.weights:
        detector = detectors.load_detector(args.weights, device, args.min_size, score_floor=0.0)
        model, fit = detector.model, detector.input_fit
    else:
        model = detectors.build_detector(min_size=args.min_size, score_thresh=0.0).to(device)
        fit = (args.min_size, model.transform.max_size)
    image = det.to_tensor(det.read_image(args.image, fit=fit), device)

    def forward() -> det.DetectorPass:
        return det.detector_pass(model, image, layers, 0.0, n, None)

    def backward_time(backward: Callable[[det.DetectorPass], object]) -> tuple[float, object]:
        """Fastest backward over fresh forward passes (a backward pass frees its graph)."""
        tries = [timed(functools.partial(backward, forward()), device, 1)
                 for _ in range(args.repeats)]
        return min(t for t, _ in tries), tries[-1][1]

    def again_per_box() -> None:
        for i in range(n):
            fresh = forward()
            torch.autograd.grad(fresh.targets[i], fresh.activations)

    with torch.no_grad():
        model([image])  # warm-up: allocator, oneDNN kernels
    t_plain, _ = timed(lambda: torch.no_grad()(model)([image]), device, args.repeats)
    t_fwd, state = timed(forward, device, args.repeats)
    if len(state.targets) < n:
        sys.exit(f"only {len(state.targets)} detections; ask for fewer")
    t_loop, loop_maps = backward_time(det.gradcam_maps)
    try:
        t_batched, maps = backward_time(batched_maps)
        gap = float((maps - loop_maps[0]).abs().max() / loop_maps[0].abs().max())
        batched_note = f"{t_batched:8.3f} s   (maps differ from the loop's by {gap:.1e}, relative)"
    except RuntimeError as exc:
        batched_note = f"failed ({str(exc).splitlines()[0][:60]})"
    t_total, _ = timed(lambda: det.explain_detections(model, image, layers, 0.0, n), device,
                       args.repeats)
    t_again, _ = timed(again_per_box, device, args.repeats)

    print(f"device {device} ({torch.get_num_threads()} threads), image {tuple(image.shape[-2:])} "
          f"-> detector input {state.resized} padded to {state.padded}, Grad-CAM at "
          f"{args.layer}, N = {n} detections")
    print(f"detector forward (torchvision, no grad)       {t_plain:8.3f} s")
    print(f"explanation forward (graph after {args.layer})      {t_fwd:8.3f} s")
    print(f"N backward passes, one autograd.grad each     {t_loop:8.3f} s   "
          f"({t_loop / n:.3f} s per detection = {t_loop / n / t_plain:.2f} detector forwards)")
    print(f"N backward passes, is_grads_batched           {batched_note}")
    print(f"explain_detections: 1 forward + N backward    {t_total:8.3f} s")
    print(f"detector again for each box: N x (fwd + bwd)  {t_again:8.3f} s   "
          f"({t_again / t_total:.1f}x the one-pass cost)")


if __name__ == "__main__":
    main()
