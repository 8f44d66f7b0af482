"""How fast is the batched deletion/insertion evaluator? Ratios measured in one run.

Three timings on the same model (CIFAR ResNet-18, random weights, 32x32), images, heatmaps and
steps, each needing ``2 * N * (steps + 1)`` forward passes:

* the original algorithm: per image and step, edit the image and run one batch-1 forward pass,
  in fp32 (``evaluate.reference_curves``);
* the batched evaluator (``evaluate.deletion_insertion``) in fp32 and at the default precision
  (bf16 autocast on CPUs with native bf16, else fp32);
* the floor: raw batched forward passes of the network the evaluator runs (the model with
  BatchNorm folded into the convolutions, ``runtime.inference_copy``) over as many ready-made
  normalized ``channels_last`` images, in the same chunk sizes and precision; and, for
  context, the same with the model as trained.

Targets: batched >= 4x faster than the per-step loop, and within 1.25x of the raw forward floor.

    python bench/bench_evaluate.py [--images 4] [--steps 100] [--batch 256] [--repeats 2] \
        [--device auto]

Timings are wall-clock minima over ``--repeats`` interleaved runs; other processes on the CPU
(a training job, say) make them noisy, and the load average is printed with them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import DATASETS, normalize
from evaluate import deletion_insertion, reference_curves
from model import build_resnet18
from runtime import autocast, fast_dtype, inference_copy, resolve_device


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, waiting for the GPU to finish when there is one."""
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def raw_forward(model: torch.nn.Module, batches: list[torch.Tensor],
                dtype: torch.dtype | None) -> None:
    """The floor: only the model's forward passes, on inputs that are already built."""
    with torch.inference_mode(), autocast(batches[0].device, dtype):
        for batch in batches:
            model(batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=256, help="--eval_batch_size")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    args = p.parse_args()
    device = resolve_device(args.device)

    torch.manual_seed(0)
    info = DATASETS["cifar10"]
    model = build_resnet18(10).eval().to(device)
    net = inference_copy(model)  # what deletion_insertion runs: BatchNorm folded into the convs
    n, steps = args.images, args.steps
    pixels = torch.rand(n, 3, 32, 32, device=device)
    heatmaps = torch.rand(n, 32, 32, device=device)
    targets = torch.randint(0, 10, (n,), device=device)
    forwards = 2 * n * (steps + 1)
    sizes = [min(args.batch, forwards - s) for s in range(0, forwards, args.batch)]
    inputs = [normalize(torch.rand(k, 3, 32, 32, device=device), info) for k in sizes]
    inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
    default = fast_dtype(device)
    name = "fp32" if default is None else str(default).replace("torch.", "")

    def batched(dtype: torch.dtype | None) -> None:
        deletion_insertion(model, pixels, heatmaps, targets, info, "zero", steps, args.batch,
                           dtype)

    def loop() -> None:
        for i in range(n):
            reference_curves(model, pixels[i], heatmaps[i], int(targets[i]), info, "zero", steps)

    print(f"ResNet-18 (random weights) at 32x32: {n} images x 2 curves x {steps + 1} points = "
          f"{forwards} forward passes per run, chunks of {args.batch}; torch {torch.__version__}, "
          f"device {device}, {torch.get_num_threads()} threads; default precision {name}")
    warm_up = list({len(x): x for x in inputs + [inputs[0][:1]]}.values())  # one per shape
    for dtype in (None, default):
        raw_forward(model, warm_up, dtype)
        raw_forward(net, warm_up, dtype)

    times: dict[str, float] = {"loop": seconds(loop, device)}
    runs = {"batched fp32": lambda: batched(None), f"batched {name}": lambda: batched(default),
            "raw fp32": lambda: raw_forward(net, inputs, None),
            f"raw {name}": lambda: raw_forward(net, inputs, default),
            f"raw {name}, BN unfolded": lambda: raw_forward(model, inputs, default)}
    for _ in range(args.repeats):
        for label, fn in runs.items():
            times[label] = min(times.get(label, float("inf")), seconds(fn, device))

    def row(label: str, note: str = "") -> None:
        ms = 1e3 * times[label] / forwards
        print(f"  {label:<28} {times[label]:7.2f} s  {ms:6.2f} ms/forward  {note}")

    print("Timings (best of", args.repeats, "for the batched and raw runs, one loop run):")
    row("loop", "per-step batch-1 loop, fp32 (the original)")
    for label in runs:
        row(label, "the evaluator's own network (BatchNorm folded)" if label == "raw fp32"
            else "the model as trained" if "unfolded" in label else "")
    print("Ratios:")
    print(f"  batched fp32 vs per-step loop fp32:      "
          f"{times['loop'] / times['batched fp32']:5.2f}x faster")
    print(f"  batched {name} vs per-step loop fp32:  "
          f"{times['loop'] / times[f'batched {name}']:5.2f}x faster (target >= 4x)")
    print(f"  batched {name} / raw forward {name}:    "
          f"{times[f'batched {name}'] / times[f'raw {name}']:5.3f} (target <= 1.25)")
    print(f"  batched fp32 / raw forward fp32:        "
          f"{times['batched fp32'] / times['raw fp32']:5.3f}")
    load = os.getloadavg()[0]
    print(f"Load average {load:.1f} on {os.cpu_count()} CPUs"
          + (": other processes share the CPU, so these timings are noisy." if load > 1.5 else "."))


if __name__ == "__main__":
    main()
