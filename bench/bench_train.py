"""Training throughput: the project's pipeline against a straightforward fp32 loop, one run.

    python bench/bench_train.py [--images 2048] [--batch_size 128] [--device auto]

Three ways to run the same ResNet-18 training steps on the same random 32x32 images:

* ``plain``: what one would write first: a ``torchvision`` per-image transform pipeline
  (RandomCrop, RandomHorizontalFlip, ToTensor, Normalize) in a ``DataLoader``, fp32,
  default memory format;
* ``project``: ``train.train_one_epoch``: whole-batch augmentation on in-memory uint8
  tensors, ``channels_last`` and bf16/fp16 autocast where the hardware has it;
* ``steps only``: the project's model step on one pre-made batch, no data pipeline: the
  ceiling the pipeline can reach.

Prints images per second for each and the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would garble the printed table

from data import DATASETS, ImageSplit
from model import build_resnet18
from runtime import autocast, fast_dtype, resolve_device
from train import train_one_epoch


class PILDataset(torch.utils.data.Dataset):
    """Images as PIL pictures through torchvision transforms, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def throughput(run: Callable[[], object], n_images: int, device: torch.device) -> float:
    """Images per second of ``run()``, waiting for the GPU to finish when there is one."""
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n_images / (time.perf_counter() - start)


def make_optimizer(model: nn.Module, steps: int):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, 0.05, total_steps=steps + 10)
    return optimizer, scheduler


def plain_loop(split: ImageSplit, batch_size: int, device: torch.device, workers: int) -> float:
    info = split.info
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(info.mean, info.std)])
    dataset = PILDataset(split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                         num_workers=workers)
    model = build_resnet18(10).to(device).train()
    optimizer, scheduler = make_optimizer(model, len(loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def epoch() -> None:
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    return throughput(epoch, len(split), device)


def project_loop(split: ImageSplit, batch_size: int, device: torch.device,
                 dtype: torch.dtype | None) -> float:
    model = build_resnet18(10).to(device)
    if dtype is not None:
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, -(-len(split) // batch_size))
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return throughput(lambda: train_one_epoch(
        model, split, optimizer, scheduler, nn.CrossEntropyLoss(label_smoothing=0.1), device,
        dtype, batch_size, torch.Generator().manual_seed(0), scaler=scaler), len(split), device)


def steps_only(n_images: int, batch_size: int, device: torch.device,
               dtype: torch.dtype | None) -> float:
    model = build_resnet18(10).to(device).train()
    fmt = torch.channels_last if dtype is not None else torch.contiguous_format
    model = model.to(memory_format=fmt)
    images = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    steps = -(-n_images // batch_size)
    optimizer, scheduler = make_optimizer(model, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def epoch() -> None:
        for _ in range(steps):
            with autocast(device, dtype):
                loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()

    return throughput(epoch, steps * batch_size, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2048, help="images per measured epoch")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, plain loop")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = fast_dtype(device)
    torch.manual_seed(0)
    split = ImageSplit(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8),
                       torch.randint(0, 10, (args.images,)), DATASETS["cifar10"])
    warm = split.subset(2 * args.batch_size)
    project_loop(warm, args.batch_size, device, dtype)          # warm-up: kernels, allocator
    plain_loop(warm, args.batch_size, device, args.workers)

    precision = "fp32" if dtype is None else str(dtype).replace("torch.", "")
    print(f"ResNet-18 training, {args.images} images of 32x32, batch {args.batch_size}, "
          f"device {device}, {torch.get_num_threads()} threads")
    plain = plain_loop(split, args.batch_size, device, args.workers)
    print(f"plain      (PIL transforms, DataLoader {args.workers} workers, fp32): "
          f"{plain:8.1f} img/s")
    project = project_loop(split, args.batch_size, device, dtype)
    print(f"project    (batched tensor augmentation, {precision}, channels_last): "
          f"{project:8.1f} img/s")
    ceiling = steps_only(args.images, args.batch_size, device, dtype)
    print(f"steps only (same model step, no data pipeline):          {ceiling:8.1f} img/s")
    print(f"project / plain = {project / plain:.2f}x;  project / steps only = "
          f"{project / ceiling:.2f}")


if __name__ == "__main__":
    main()
