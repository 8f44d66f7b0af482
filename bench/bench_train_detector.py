"""Scene-detector training throughput against the model's raw forward and backward, one run.

    python bench/bench_train_detector.py [--scenes 96] [--batch_size 8] [--device auto]

Three measurements of the Faster R-CNN ResNet-18 FPN that ``--mode train --det_vis`` trains,
in images per second, on the same 128 px Fashion-MNIST scenes:

* ``training``: ``train_detector.train_one_epoch`` as the trainer runs it: scenes generated on
  the fly, autocast where the hardware has it, gradient clipping, SGD step;
* ``forward + backward``: the model's training forward (losses) and ``backward()`` alone on
  one pre-made batch: the ceiling the trainer can reach;
* ``forward``: the model's inference forward on the same batch (eval mode, no grad).

Prints images per second for each and the ratios. Random weights: time does not depend on
the weights' values, only (a little) on the number of proposals, which random weights keep high.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import scenes
import train_detector
from detectors import build_scene_detector
from runtime import autocast, fast_dtype, resolve_device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=96, help="scenes per measurement")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--data_dir", default="./data")
    args = p.parse_args()
    device = resolve_device(args.device)
    dtype = fast_dtype(device)
    torch.manual_seed(0)
    model = build_scene_detector(train_detector.detector_meta()).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images, labels = scenes.garment_pool(args.data_dir, train=False)
    batch = list(scenes.scene_stream(images, labels, (0,), args.batch_size))
    inputs, targets = scenes.scene_batch(batch, device)
    steps = max(1, args.scenes // args.batch_size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def fwd_bwd() -> None:
        model.train()
        with autocast(device, dtype):
            loss = sum(model(inputs, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    @torch.inference_mode()
    def forward() -> None:
        model.eval()
        with autocast(device, dtype):
            model(inputs)

    def rate(fn, n_images: int) -> float:
        sync()
        start = time.perf_counter()
        fn()
        sync()
        return n_images / (time.perf_counter() - start)

    fwd_bwd()  # warm-up: allocator, oneDNN kernels
    forward()
    t_raw = rate(lambda: [fwd_bwd() for _ in range(steps)], steps * args.batch_size)
    t_fwd = rate(lambda: [forward() for _ in range(steps)], steps * args.batch_size)
    stream = scenes.scene_stream(images, labels, (1,), steps * args.batch_size)
    t_train = rate(lambda: train_detector.train_one_epoch(
        model, stream, steps * args.batch_size, optimizer, 10**6, 10**6, 0.001,
        args.batch_size, device, dtype, desc="bench"), steps * args.batch_size)
    precision = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    print(f"device {device} ({torch.get_num_threads()} threads), {precision}, batch "
          f"{args.batch_size}, {steps * args.batch_size} scenes of {scenes.CANVAS} px, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    print(f"training (train_one_epoch)        {t_train:7.2f} img/s")
    print(f"forward + backward alone          {t_raw:7.2f} img/s   (training runs at "
          f"{t_train / t_raw:.2f}x this)")
    print(f"inference forward                 {t_fwd:7.2f} img/s   (a training image costs "
          f"{t_fwd / t_train:.1f} inference forwards)")
    print(f"60k scenes would take {60000 / t_train / 3600:.2f} h at this rate")


if __name__ == "__main__":
    main()
