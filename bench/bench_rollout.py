"""Attention rollout against one plain forward pass of the same vision transformer, in one run.

    python bench/bench_rollout.py [--arch vit_b_16] [--image_size 224] [--batch 16]
                                  [--repeats 5] [--device auto]

A torchvision ``vit_*`` with random weights (weights do not change the cost), one batch of
random images. Each repeat times, in turn, a plain forward pass under ``torch.no_grad()`` and
the rollout explainer on the same batch (its one forward pass with the attention recomputed in
hooks from each block's query and key projections, the rollout through the blocks, upsampling
and scaling), after a warm-up of both; interleaved, so that a change in the machine's load
touches both alike. Prints the median and fastest of each and the ratio of the medians, rollout
over forward; the target is at most 1.5.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torchvision

from explain import make_explainer
from runtime import cpu_name, resolve_device

TARGET = 1.5


def timed(run, device: torch.device) -> float:
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="vit_b_16", help="a torchvision vit_* builder")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(image_size=args.image_size).to(device).eval()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    targets = torch.zeros(args.batch, dtype=torch.long, device=device)
    explainer = make_explainer("rollout", model)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def rollout() -> None:
        explainer(images, targets)

    forward()                                # warm-up: first calls allocate
    rollout()
    times: dict[str, list[float]] = {"forward": [], "rollout": []}
    for _ in range(args.repeats):
        times["forward"].append(timed(forward, device))
        times["rollout"].append(timed(rollout, device))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    print(f"Attention rollout on {args.arch} (random weights), batch {args.batch} at "
          f"{args.image_size} px, fp32, device {device} ({where}), {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}, {args.repeats} interleaved repeats")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"  {name:<8} median {1000 * medians[name]:9.1f} ms, fastest "
              f"{1000 * min(values):9.1f} ms")
    ratio = medians["rollout"] / medians["forward"]
    print(f"rollout / forward: {ratio:.2f}x (medians; fastest "
          f"{min(times['rollout']) / min(times['forward']):.2f}x; target <= {TARGET})")


if __name__ == "__main__":
    main()
