"""Fine-tuning a classifier from anywhere (a torchvision arch, a weights file, the user's own
factory) on an image folder, with torchvision's reference recipe.

* Data: ``data_dir/train`` and ``data_dir/val`` (the ImageNet layout), or one ImageFolder tree
  split per class by a seed (:func:`folders.training_data`). Images are decoded by worker
  processes as the batches are made, so memory does not grow with the folder.
* Augmentation: RandomResizedCrop to the model's input size and a horizontal flip; the
  validation images go through the model's own preprocessing (resize, centre crop), as
  torchvision's ``references/classification`` does.
* Recipe: SGD with momentum 0.9, label smoothing, a linear warm-up then a cosine decay of the
  learning rate per step, bf16 autocast with ``channels_last`` where the hardware has it.
* The classifier's last layer is replaced by a fresh one for the folder's classes (unless the
  model already has exactly those classes, as a checkpoint of an earlier run does).
* The checkpoint with the best validation accuracy is kept, atomically, and records arch,
  classes and preprocessing, so ``--mode test --weights`` rebuilds it; ``metrics.csv`` and
  ``training_curves.png`` after every epoch; under ``torchrun`` every rank trains on its share
  of each epoch and scores its share of the validation images.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

import distributed
from errors import ParamError
from folders import (
    PhotoDataset,
    TrainingData,
    collate_photos,
    limit_worker_heap,
    loader_workers,
    photo_batches,
    photo_loader,
    training_data,
    training_pixels,
)
from model import BUILDERS
from recipes import FineTuneConfig
from runtime import autocast, eval_mode, precision_label, seed_everything
from train import EpochRecorder, History, train_steps, warmup_cosine
from zoo import LoadedModel, load_classifier, read_classes, replace_head

log = logging.getLogger(__name__)

def starting_model(cfg: FineTuneConfig, classes: tuple[str, ...]) -> tuple[LoadedModel, str]:
    """The network to fine-tune, its last layer made for ``classes``; and a line saying where
    it started and what was done to its head."""
    loaded = load_classifier(cfg.arch, cfg.weights, cfg.model_spec, cfg.input_size, cfg.mean,
                             cfg.std, None, cfg.device)
    if loaded.arch in BUILDERS:
        raise ParamError("arch", f"{{param}} {loaded.arch} is trained on the built-in datasets "
                                 f"(train.fit), not fine-tuned on a folder; name a torchvision "
                                 f"arch or {{model_spec}} FILE.py:FUNCTION", "model_spec")
    start = (f"{loaded.arch} from {cfg.weights}" if cfg.weights else
             f"{loaded.arch} with the weights its factory gives" if cfg.model_spec else
             f"{loaded.arch} from random weights (no weights given: trained from scratch)")
    if tuple(loaded.classes) != tuple(classes):
        name = replace_head(loaded.module, len(classes), loaded.input_size)
        start += f", last layer {name} replaced for {len(classes)} classes"
    else:
        start += f", its {len(classes)} classes kept"
    described = f"{start}, {loaded.input_size} px"
    return replace(loaded, inputs=replace(loaded.inputs, classes=tuple(classes)),
                   description=described), described


def _workers(cfg: FineTuneConfig) -> int:
    return loader_workers(cfg.device) if cfg.workers is None else cfg.workers


def _check_batches(model: nn.Module, cfg: FineTuneConfig, images: int,
                   here: distributed.World) -> None:
    """Batch normalization in training needs two images or more per batch: a batch of one
    (``batch_size`` 1, or one training image per process) is refused before any step, in
    one line, instead of failing inside PyTorch mid-epoch. A last batch of one is dropped
    (:func:`_train_loader`)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    if cfg.batch_size < 2:
        raise ParamError("batch_size", f"{{param}} {cfg.batch_size}: the model has "
                                       f"{len(norms)} batch-norm layers, which need two images "
                                       f"or more per training batch; use 2 or more")
    if -(-images // here.size) < 2:
        raise ParamError("data_dir", f"{{param}} has {images} training image(s) for "
                                     f"{here.size} process(es): the model's batch-norm layers "
                                     f"need two or more per batch")


def _train_loader(dataset: PhotoDataset, cfg: FineTuneConfig, here: distributed.World
                  ) -> tuple[DataLoader, DistributedSampler]:
    """Shuffled batches of this rank's share of each epoch (``sampler.set_epoch`` draws the
    epoch's order from the seed, the same on every rank), decoded and augmented by workers."""
    sampler = DistributedSampler(dataset, num_replicas=here.size, rank=here.rank, shuffle=True,
                                 seed=cfg.seed)
    share = len(sampler)
    workers = max(0, min(_workers(cfg), share))
    generator = torch.Generator().manual_seed(cfg.seed + 7919 * (here.rank + 1))
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                        num_workers=workers, collate_fn=collate_photos,
                        drop_last=share > cfg.batch_size,   # no batch of 1 for BatchNorm
                        generator=generator, persistent_workers=workers > 0,
                        worker_init_fn=limit_worker_heap if workers else None,
                        prefetch_factor=2 if workers else None,
                        pin_memory=cfg.device.type == "cuda")
    return loader, sampler


def _stream(loader: DataLoader, loaded: LoadedModel, device: torch.device,
            channels_last: bool):
    """``(images, labels)`` on ``device``, normalized as the model expects."""
    for batch in photo_batches(loader):
        images = loaded.inputs.normalize(batch.pixels).to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, batch.labels.to(device, non_blocking=True)


@torch.inference_mode()
def _validation_logits(model: nn.Module, loaded: LoadedModel, data: TrainingData,
                       cfg: FineTuneConfig, here: distributed.World) -> torch.Tensor:
    """fp32 logits of every validation image, on every rank (each rank scores its block)."""
    part = distributed.shard(len(data.val_paths), here)
    mine = PhotoDataset(data.val_paths[part], loaded.inputs, data.val_labels[part])
    logits = []
    with eval_mode(model):
        for images, _ in _stream(photo_loader(mine, max(cfg.batch_size, 64), _workers(cfg)),
                                 loaded, cfg.device, cfg.dtype is not None):
            with autocast(cfg.device, cfg.dtype):
                logits.append(model(images).float().cpu())
    out = torch.cat(logits) if logits else torch.empty(0, len(data.classes))
    return distributed.gather_concat(out, here)


def fine_tune(cfg: FineTuneConfig) -> History:
    """Fine-tune on ``cfg.data_dir``; keep the checkpoint with the best validation accuracy;
    write ``metrics.csv`` and ``training_curves.png`` after every epoch."""
    cfg = dataclasses.replace(cfg, device=torch.device(cfg.device))
    here = distributed.world()
    seed_everything(cfg.seed)
    classes = read_classes(cfg.classes_file) if cfg.classes_file is not None else None
    data = training_data(cfg.data_dir, classes, cfg.val_fraction, cfg.seed)
    loaded, head = starting_model(cfg, data.classes)
    model = loaded.module             # on cfg.device: load_classifier put it there
    _check_batches(model, cfg, len(data.train_paths), here)
    if cfg.dtype is not None:
        model = model.to(memory_format=torch.channels_last)
    net = distributed.wrap_model(model, here)
    dataset = PhotoDataset(data.train_paths, loaded.inputs, data.train_labels,
                           transform=training_pixels(loaded.inputs))
    loader, sampler = _train_loader(dataset, cfg, here)
    steps_per_epoch = len(loader)
    total = cfg.num_epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                                weight_decay=cfg.weight_decay)
    warmup = min(steps_per_epoch, total // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, warmup))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler("cuda") if cfg.dtype == torch.float16 else None
    meta = {**loaded.as_meta(), "data_dir": str(cfg.data_dir),
            "recipe": {"lr": cfg.lr, "batch_size": cfg.batch_size, "epochs": cfg.num_epochs,
                       "weight_decay": cfg.weight_decay,
                       "label_smoothing": cfg.label_smoothing, "seed": cfg.seed,
                       "started_from": loaded.description}}
    record = EpochRecorder(cfg.log_dir, cfg.save_path, cfg.save_half, cfg.num_epochs, "val")
    if here.is_main:
        log.info(f"Fine-tuning {head} on {data.origin}: "
                 f"{len(data.train_paths)} train / {len(data.val_paths)} val images, "
                 f"{cfg.num_epochs} epochs, batch {cfg.batch_size}"
                 f"{f' per process x {here.size}' if here.distributed else ''}, lr {cfg.lr:g}, "
                 f"device {cfg.device}, precision {precision_label(cfg.dtype)}")
    for epoch in range(1, cfg.num_epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        sampler.set_epoch(epoch)
        with record.stopping(epoch, cfg.lr):
            stats = train_steps(net, _stream(loader, loaded, cfg.device, cfg.dtype is not None),
                                len(sampler), optimizer, scheduler, criterion, cfg.device,
                                cfg.dtype, f"epoch {epoch}/{cfg.num_epochs}", scaler)
        distributed.sync_buffers(model, here)
        logits = _validation_logits(model, loaded, data, cfg, here)
        if not here.is_main:     # rank 0 scores, logs and saves
            continue
        record.epoch(epoch, stats, logits, torch.tensor(data.val_labels), lr, start, model,
                     meta, optimizer)
    return record.history()

