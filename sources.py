"""Where a classifier job's images come from: the model's built-in test split, an image folder
with a subfolder per class, or photos. Every job (test accuracy, heatmaps, leaderboard, sanity
check) takes any of them for any classifier that :func:`zoo.load_classifier` loads.

The test split is already in memory at the model's resolution; a folder or photos are decoded
as the work goes (``folders.photo_loader``), and held in memory only where a job scores the
same images many times (the leaderboard, the sanity check), and then only as many as it scores.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from data import ImageSplit, load_split
from errors import ParamError
from evaluate import select_correct
from explain import probabilities
from folders import (
    PhotoBatch,
    PhotoDataset,
    image_folder,
    list_images,
    loader_workers,
    photo_batches,
    photo_loader,
    train_val_folders,
)
from runtime import autocast
from zoo import LoadedModel


def dataset_split(loaded: LoadedModel, data_dir: str | os.PathLike) -> ImageSplit:
    """The test split of the built-in dataset ``loaded`` was trained on, described as the
    model describes its inputs (its class names and normalization). Its images have the
    dataset's size: a model asked to run at another ``input_size`` is refused."""
    split = load_split(loaded.dataset, data_dir, train=False)
    if len(loaded.classes) != len(split.info.classes):
        raise ParamError("model", f"{{param}} has {len(loaded.classes)} outputs but the "
                                  f"{loaded.dataset} test split has {len(split.info.classes)} "
                                  f"classes")
    side = split.images.shape[-1]
    if loaded.input_size != side:
        raise ParamError("input_size", f"{{param}} {loaded.input_size}: the {loaded.dataset} "
                                       f"test images are {side} px; explain photos or an image "
                                       f"folder at another size")
    return ImageSplit(split.images, split.labels, loaded.inputs)


def folder_images(root: str | os.PathLike, classes: Sequence[str]
                  ) -> tuple[list[Path], list[int], Path]:
    """An image folder's photos and labels (a subfolder per class, named as the model's
    classes); a fine-tuning layout (``train/`` and ``val/``) is tested on ``val/``. The root
    tested is returned too."""
    pair = train_val_folders(root)
    tested = Path(pair[1] or pair[0]) if pair else Path(root)
    paths, labels = image_folder(tested, classes)
    return [Path(p) for p in paths], list(labels), tested


def photo_files(images: Sequence[str | os.PathLike] = (), image_dir: str | None = None
                ) -> list[Path]:
    """The photos named one by one, or every image in a folder tree."""
    return [Path(p) for p in images] if images else list_images(image_dir)


def loaded_batches(loaded: LoadedModel, paths: Sequence[Path], device: torch.device,
                   batch_size: int = 128, labels: Sequence[int] | None = None,
                   panel_side: int | None = None) -> Iterator[PhotoBatch]:
    """``paths`` as batches of the model's inputs (pixels in ``[0, 1]``, before
    normalization), decoded by worker processes where the cores allow while the model works;
    with ``panel_side``, each photo also for its panel (``batch.panels``), from the same
    decode."""
    dataset = PhotoDataset(paths, loaded.inputs, labels, panel_side=panel_side)
    return photo_batches(photo_loader(dataset, batch_size, workers=loader_workers(device)))


def _as_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.mul(255).round().to(torch.uint8)


@torch.no_grad()
def folder_logits(loaded: LoadedModel, paths: Sequence[Path], labels: Sequence[int],
                  device: torch.device, dtype: torch.dtype | None = None,
                  batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities ``[N, C]`` and labels ``[N]`` of a folder's photos, decoded by worker
    processes while the model works, in the precision ``dtype`` (None: fp32)."""
    prep = loaded.inputs
    logits, truth = [], []
    for batch in loaded_batches(loaded, paths, device, batch_size, labels):
        with autocast(device, dtype):
            probs = probabilities(loaded.module, prep.normalize(batch.pixels).to(device),
                                  batch_size)
        logits.append(probs.log().cpu())
        truth.append(batch.labels)
    return torch.cat(logits), torch.cat(truth)


def _as_split(pixels: list[torch.Tensor], labels: list[torch.Tensor], loaded: LoadedModel,
              n: int) -> ImageSplit:
    return ImageSplit(torch.cat(pixels)[:n], torch.cat(labels)[:n], loaded.inputs)


def photos_in_memory(loaded: LoadedModel, paths: Sequence[Path], device: torch.device, n: int,
                     batch_size: int = 128, target_class: int | None = None) -> ImageSplit:
    """The first ``n`` photos at the model's resolution, as a split whose labels are the
    classes to explain: ``target_class``, else the model's prediction."""
    pixels, labels = [], []
    for batch in loaded_batches(loaded, paths[:n], device, batch_size):
        if target_class is None:
            probs = probabilities(loaded.module,
                                  loaded.inputs.normalize(batch.pixels).to(device),
                                  batch_size)
            truth = probs.argmax(1).cpu()
        else:
            truth = torch.full((len(batch.pixels),), target_class, dtype=torch.long)
        pixels.append(_as_uint8(batch.pixels))
        labels.append(truth)
    return _as_split(pixels, labels, loaded, n)


def folder_in_memory(loaded: LoadedModel, paths: Sequence[Path], labels: Sequence[int],
                     device: torch.device, n: int, correct_only: bool, batch_size: int = 128
                     ) -> ImageSplit:
    """The first ``n`` images of a folder with their true labels, at the model's resolution;
    with ``correct_only`` the first ``n`` the model classifies correctly
    (:func:`evaluate.select_correct`, batch by batch, reading no more of the folder than
    that needs)."""
    pixels, kept, have = [], [], 0
    read = len(paths) if correct_only else n
    for batch in loaded_batches(loaded, paths[:read], device, batch_size, labels[:read]):
        chunk = ImageSplit(_as_uint8(batch.pixels), batch.labels, loaded.inputs)
        keep = (select_correct(loaded.module, chunk, device, n - have, batch_size).indices
                if correct_only else torch.arange(len(chunk)))
        pixels.append(chunk.images[keep])
        kept.append(chunk.labels[keep])
        have += len(keep)
        if have >= n:
            break
    if have == 0:
        raise ParamError("model", "{param} classifies none of the images correctly: "
                                  "nothing to evaluate")
    return _as_split(pixels, kept, loaded, n)
