"""Training and testing the classifier: plain functions, one epoch at a time.

The recipe is the modern short-schedule one: for the CIFAR ResNet-18 SGD with Nesterov momentum
and weight decay and a one-cycle learning rate, for the small vision transformer AdamW with a
warm-up and a cosine (the recipe's ``optimizer``, :func:`optimizer_and_schedule`); label
smoothing, and on hardware that has it bf16/fp16 autocast with ``channels_last`` memory. The
best checkpoint on the test split is kept, as the original did; the whole training state
(weights, optimizer, schedule, random generators, the epochs so far) is written after every
epoch beside it (:func:`model.resume_path`), so that ``resume`` continues a stopped run where it
stopped.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import distributed
import outputs
import visualize
from data import ImageSplit, InputSpec, batches, dataset_info, load_split
from errors import ParamError, TrainingStopped, UserError, reason
from model import (
    build,
    check_metadata,
    load_state,
    read_checkpoint,
    resume_path,
    save_checkpoint,
)
from recipes import TrainConfig
from runtime import autocast, eval_mode, precision_label, seed_everything

log = logging.getLogger(__name__)


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite at ``step`` of an epoch: the weights are lost."""

    def __init__(self, loss: float, step: int):
        super().__init__(f"loss {loss} at step {step}")
        self.loss, self.step = loss, step


def warmup_fraction(total_steps: int) -> float:
    """One-cycle's warm-up share of ``total_steps``: a quarter, but never exactly one step,
    where ``OneCycleLR`` divides by a warm-up of length zero (4 steps in all, say)."""
    if total_steps < 4:
        return 0.25               # under one step of warm-up: OneCycleLR starts annealing at once
    return max(0.25, 2 / total_steps)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """The learning rate's factor at ``step`` of ``total``: linear from 1% to 100% over
    ``warmup`` steps (torchvision's ``--lr-warmup-method linear --lr-warmup-decay 0.01``),
    then a cosine down to 0 at the last step."""
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# Parameters that AdamW does not decay besides biases and norms (every tensor of one
# dimension): a vision transformer's position embedding and class token, by torchvision's names.
NO_DECAY = ("pos_embedding", "class_token")


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """``model``'s parameters in two groups: those decayed by ``weight_decay``, and biases,
    norms and ``NO_DECAY`` at none."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            skip = param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY
            (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def optimizer_and_schedule(cfg: TrainConfig, model: nn.Module, steps: int
                           ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The recipe's optimizer over ``steps`` steps in all (``cfg.optimizer``): ``sgd``,
    Nesterov SGD with a one-cycle learning rate; ``adamw``, AdamW with a linear warm-up over
    ``cfg.warmup`` of the steps and a cosine to zero."""
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True,
                                    weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr,
                                                        total_steps=steps,
                                                        pct_start=warmup_fraction(steps),
                                                        div_factor=10.0,
                                                        final_div_factor=100.0)
        return optimizer, scheduler
    if cfg.optimizer == "adamw":
        optimizer = torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr,
                                      betas=(0.9, 0.999))
        warmup = round(cfg.warmup * steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, steps, warmup))
        return optimizer, scheduler
    raise ParamError("optimizer", f"{{param}} {cfg.optimizer!r}: expected sgd or adamw")


@dataclass
class EpochStats:
    loss: float
    acc: float


def train_one_epoch(model: nn.Module, split: ImageSplit, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module,
                    device: torch.device, dtype: torch.dtype | None, batch_size: int,
                    generator: torch.Generator, desc: str = "train",
                    scaler: torch.amp.GradScaler | None = None,
                    augment_generator: torch.Generator | None = None) -> EpochStats:
    """One pass over ``split`` with augmentation; returns mean loss and accuracy (%).

    Under ``torchrun`` (``model`` wrapped by :func:`distributed.wrap_model`) each rank takes
    its shard of the epoch's order (``generator`` must draw the same order on every rank,
    ``augment_generator`` differs per rank), and the returned numbers are over all ranks.
    """
    here = distributed.world()
    stream = batches(split, batch_size, device, shuffle=True, augment=True,
                     generator=generator, channels_last=dtype is not None,
                     shard=(here.rank, here.size), augment_generator=augment_generator)
    return train_steps(model, stream, len(split) // here.size, optimizer, scheduler, criterion,
                       device, dtype, desc, scaler)


def train_steps(model: nn.Module, stream: Iterable[tuple[torch.Tensor, torch.Tensor]],
                total: int, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module,
                device: torch.device, dtype: torch.dtype | None, desc: str = "train",
                scaler: torch.amp.GradScaler | None = None) -> EpochStats:
    """One optimizer step per ``(images, labels)`` batch of ``stream`` (on ``device``, about
    ``total`` images on this rank), with a progress bar; mean loss and accuracy (%) over all
    ranks. The one training loop of the built-in datasets and of image folders."""
    here = distributed.world()
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True,
               disable=not here.is_main)
    for images, labels in stream:
        with autocast(device, dtype):
            logits = model(images)
            loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        step_loss = loss.item()
        if not math.isfinite(step_loss):
            # Checked after backward, so that under torchrun every rank has joined this step's
            # gradient all-reduce; the NaN gradients then stop the other ranks a step later.
            bar.close()
            raise NonFiniteLoss(step_loss, seen // max(len(labels), 1) + 1)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        n = len(labels)
        total_loss += step_loss * n
        correct += (logits.argmax(1) == labels).sum().item()
        seen += n
        bar.update(n)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{100 * correct / seen:.2f}%")
    bar.close()
    total_loss, correct, seen = distributed.sum_across([total_loss, correct, seen], here)
    return EpochStats(total_loss / max(seen, 1), 100.0 * correct / max(seen, 1))


@torch.inference_mode()
def predict(model: nn.Module, split: ImageSplit, device: torch.device,
            dtype: torch.dtype | None = None, batch_size: int = 256,
            desc: str | None = None) -> torch.Tensor:
    """fp32 logits ``[N, C]`` on the CPU for every image of ``split`` (model in eval mode)."""
    outputs = []
    bar = tqdm(total=len(split), desc=desc, unit="img", leave=False, disable=desc is None)
    with eval_mode(model):
        for images, _ in batches(split, batch_size, device, channels_last=dtype is not None):
            with autocast(device, dtype):
                outputs.append(model(images).float().cpu())
            bar.update(len(images))
    bar.close()
    return torch.cat(outputs) if outputs else torch.empty(0, len(split.info.classes))


def predict_sharded(model: nn.Module, split: ImageSplit, device: torch.device,
                    dtype: torch.dtype | None = None, batch_size: int = 256,
                    desc: str | None = None) -> torch.Tensor:
    """:func:`predict` with the images split across ``torchrun``'s ranks: all logits (in split
    order) on every rank. One process: :func:`predict` itself."""
    here = distributed.world()
    part = distributed.shard(len(split), here)
    mine = ImageSplit(split.images[part], split.labels[part], split.info)
    logits = predict(distributed.unwrap_model(model), mine, device, dtype, batch_size,
                     desc if here.is_main else None)
    return distributed.gather_concat(logits, here)


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]
                    ) -> tuple[float, list[float], torch.Tensor]:
    """Overall accuracy (%), per-class accuracy (%), and the confusion matrix [true, pred]."""
    preds = logits.argmax(1)
    k = len(classes)
    confusion = torch.bincount(labels * k + preds, minlength=k * k).view(k, k)
    per_class = (100.0 * confusion.diag() / confusion.sum(1).clamp(min=1)).tolist()
    return 100.0 * (preds == labels).float().mean().item(), per_class, confusion


@dataclass
class History:
    """What training returns: one row per epoch (the columns of ``metrics.csv``), the best test
    accuracy and its epoch, and the files written."""

    rows: list[dict]
    best: float
    best_epoch: int
    checkpoint: Path
    metrics: Path


FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]


# What decides the run a training state belongs to: resuming with another value would continue
# neither that run nor start a new one (the schedule, the data order and the model differ).
RESUME_MUST_MATCH = ("arch", "dataset", "seed", "num_epochs", "batch_size", "lr", "weight_decay",
                     "label_smoothing", "optimizer", "warmup")
RESUME_KEYS = ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "history",
               "epoch", "best", "best_epoch", "order_rng", "augment_rngs", "torch_rng",
               "processes", "training")


def read_resume_state(state_path: Path, cfg: TrainConfig, processes: int) -> dict:
    """The training state ``cfg.resume`` continues from, checked whole before any training:
    every part present (weights, optimizer, schedule, random generators, history), fields that
    fit ``model.FIELDS``, written by a run of the same recipe (``RESUME_MUST_MATCH``) with the
    same number of processes."""
    if not state_path.is_file():
        raise ParamError("resume", f"{{param}}: no training state {state_path} to resume from "
                                   f"(a run writes it after its first epoch)")
    state = read_checkpoint(state_path)
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise ParamError("resume", f"{{param}}: {state_path} is not a complete classifier "
                                   f"training state (no {', '.join(missing)}); start anew "
                                   f"without {{param}}")
    check_metadata(state, state_path, len(state.get("classes") or []) or
                   len(dataset_info(cfg.dataset).classes))
    written = state["training"]
    if not isinstance(written, dict):
        raise ParamError("resume", f"{{param}}: {state_path} does not record its recipe "
                                   f"('training' is not a table); start anew without {{param}}")
    for key in RESUME_MUST_MATCH:
        if written.get(key) != getattr(cfg, key):
            raise ParamError(key, f"{{resume}}: {state_path} was written with {{param}} "
                                  f"{written.get(key)}, this run has {{param}} "
                                  f"{getattr(cfg, key)}; resuming would be neither that run "
                                  f"nor a new one (use {{param}} {written.get(key)}, or start "
                                  f"anew without {{resume}})", "resume")
    if state["processes"] != processes:
        raise ParamError("resume", f"{{param}}: {state_path} was written by {state['processes']} "
                                   f"process(es), this run has {processes}; resume with as "
                                   f"many as the run had")
    return state


def fit(cfg: TrainConfig) -> History:
    """Train ``cfg.arch`` from scratch on ``cfg.dataset``, keep the checkpoint with the best
    test accuracy (it records the arch), write ``metrics.csv`` and ``training_curves.png``
    after every epoch, and the whole training state beside the checkpoint
    (:func:`model.resume_path`). ``cfg.resume`` continues the run that wrote that state from
    its next epoch, ending where the uninterrupted run would have ended. Under torchrun every
    rank trains its share of each batch; rank 0 scores, logs and saves."""
    here = distributed.world()
    device, dtype = torch.device(cfg.device), cfg.dtype
    generator = seed_everything(cfg.seed)  # the epochs' order: the same on every rank
    augment_generator = (torch.Generator().manual_seed(cfg.seed + 7919 * (here.rank + 1))
                         if here.distributed else None)
    info: InputSpec = dataset_info(cfg.dataset)
    state_path = resume_path(cfg.save_path)
    state = read_resume_state(state_path, cfg, here.size) if cfg.resume else None
    train_split = load_split(info.name, cfg.data_dir, train=True).to(device)
    test_split = load_split(info.name, cfg.data_dir, train=False).to(device)

    model = build(cfg.arch, len(info.classes)).to(device)
    if state is not None:
        load_state(model, state["model_state_dict"], f"training state {state_path}", cfg.arch)
    if dtype is not None:
        model = model.to(memory_format=torch.channels_last)
    net = distributed.wrap_model(model, here)
    steps = cfg.num_epochs * -(-(len(train_split) // here.size) // cfg.batch_size)
    optimizer, scheduler = optimizer_and_schedule(cfg, model, steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    record = EpochRecorder(cfg.log_dir, cfg.save_path, cfg.save_half, cfg.num_epochs, "test")
    first = 1
    if state is not None:
        first = _continue(state, state_path, optimizer, scheduler, scaler, generator,
                          augment_generator, record, here)
    batch = (f"batch {cfg.batch_size}" if not here.distributed else
             f"batch {cfg.batch_size} per process x {here.size} processes = "
             f"{cfg.batch_size * here.size}")
    epochs = (f"{cfg.num_epochs} epochs" if state is None else
              f"epochs {first}..{cfg.num_epochs} (resumed from {state_path})")
    if here.is_main:
        log.info(f"Training {cfg.arch} on {info.name}: {len(train_split)} train / "
                 f"{len(test_split)} test images, {epochs}, {batch}, "
                 f"{cfg.optimizer} at lr {cfg.lr:g}, device {device}, precision "
                 f"{precision_label(dtype)}")
    meta = {"arch": cfg.arch, "dataset": info.name, **info.as_meta()}
    training = {key: getattr(cfg, key) for key in RESUME_MUST_MATCH}
    for epoch in range(first, cfg.num_epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        with record.stopping(epoch, cfg.lr):
            stats = train_one_epoch(net, train_split, optimizer, scheduler, criterion, device,
                                    dtype, cfg.batch_size, generator,
                                    desc=f"epoch {epoch}/{cfg.num_epochs}", scaler=scaler,
                                    augment_generator=augment_generator)
        distributed.sync_buffers(model, here)
        logits = predict_sharded(model, test_split, device, dtype,
                                 batch_size=max(cfg.batch_size, 256))
        augment_rngs = distributed.gather(
            None if augment_generator is None else augment_generator.get_state(), here)
        if not here.is_main:  # rank 0 scores, logs and saves
            continue
        row = record.epoch(epoch, stats, logits, test_split.labels.cpu(), lr, start, model, meta,
                           optimizer)
        save_checkpoint(state_path, model, {
            **meta, "epoch": epoch, "acc": row["test_acc"], "training": training,
            "history": record.rows, "best": record.best, "best_epoch": record.best_epoch,
            "scheduler_state_dict": scheduler.state_dict(),
            "scaler_state_dict": None if scaler is None else scaler.state_dict(),
            "order_rng": generator.get_state(), "augment_rngs": augment_rngs,
            "torch_rng": torch.get_rng_state(), "processes": here.size}, optimizer=optimizer)
    return record.history()


def _continue(state: dict, state_path: Path, optimizer: torch.optim.Optimizer,
              scheduler: torch.optim.lr_scheduler.LRScheduler,
              scaler: torch.amp.GradScaler | None, generator: torch.Generator,
              augment_generator: torch.Generator | None, record: EpochRecorder,
              here: distributed.World) -> int:
    """Put a run back where its training ``state`` left it (the weights are loaded already):
    optimizer, schedule, loss scaler, random generators, the epochs so far. The next epoch."""
    try:
        optimizer.load_state_dict(state["optimizer_state_dict"])
        scheduler.load_state_dict(state["scheduler_state_dict"])
        if scaler is not None and state.get("scaler_state_dict"):
            scaler.load_state_dict(state["scaler_state_dict"])
        generator.set_state(state["order_rng"])
        if augment_generator is not None:
            augment_generator.set_state(state["augment_rngs"][here.rank])
        torch.set_rng_state(state["torch_rng"])
        record.rows = [dict(row) for row in state["history"]]
        record.best, record.best_epoch = float(state["best"]), int(state["best_epoch"])
        return int(state["epoch"]) + 1
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
        raise UserError(f"training state {state_path}: its optimizer, schedule, random "
                        f"generators or history do not fit this run ({reason(exc, 120)})"
                        ) from None


class EpochRecorder:
    """What every classifier training writes after an epoch, on rank 0: a row of
    ``metrics.csv``, ``training_curves.png``, and the checkpoint when the held-out accuracy
    is the best so far (atomically, so an interrupted run keeps the previous best).
    ``held_out`` names the split scored: the test split of the built-in datasets, the
    validation images of a folder (the CSV's columns keep the ``test_`` names either way)."""

    def __init__(self, log_dir: str | Path, save_path: str | Path, save_half: bool,
                 num_epochs: int, held_out: str):
        self.log_dir = Path(log_dir)      # created with the first epoch's metrics, not before
        self.save_path, self.save_half = Path(save_path), save_half
        self.num_epochs, self.held_out = num_epochs, held_out
        self.rows: list[dict] = []
        self.best, self.best_epoch = -1.0, 0

    @contextlib.contextmanager
    def stopping(self, epoch: int, lr: float) -> Iterator[None]:
        """A non-finite loss inside the block ends training with one line saying what was
        kept."""
        try:
            yield
        except NonFiniteLoss as exc:
            kept = (f"the best checkpoint of this run (epoch {self.best_epoch}) is in "
                    f"{self.save_path}" if self.best_epoch else f"{self.save_path} was not touched")
            raise TrainingStopped(f"training stopped in epoch {epoch}, step {exc.step}: the loss "
                                  f"is not finite ({exc.loss}); {kept}. Try a learning rate "
                                  f"lower than {lr:g}") from None

    def epoch(self, epoch: int, stats: EpochStats, logits: torch.Tensor, labels: torch.Tensor,
              lr: float, start: float, model: nn.Module, meta: dict,
              optimizer: torch.optim.Optimizer) -> dict:
        """Score the held-out ``logits`` against ``labels``, write the row and the curves, save
        the checkpoint (``meta`` plus epoch and accuracy) when it is the best; the row."""
        loss = F.cross_entropy(logits, labels).item()
        acc = 100.0 * (logits.argmax(1) == labels).float().mean().item()
        row = {"epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc,
               "test_loss": loss, "test_acc": acc, "lr": lr,
               "seconds": time.perf_counter() - start}
        self.rows.append(row)
        outputs.write_csv(self.log_dir / "metrics.csv", FIELDS, self.rows)
        visualize.plot_training_curves(self.rows, self.log_dir / "training_curves.png")
        marker = ""
        if acc > self.best:
            self.best, self.best_epoch = acc, epoch
            save_checkpoint(self.save_path, model, {**meta, "epoch": epoch, "acc": acc},
                            optimizer=None if self.save_half else optimizer, half=self.save_half)
            marker = f"  -> saved {self.save_path}"
        log.info(f"epoch {epoch:3d}/{self.num_epochs}  train loss {stats.loss:.4f} "
                 f"acc {stats.acc:.2f}%  {self.held_out} loss {loss:.4f} acc {acc:.2f}%  "
                 f"({row['seconds']:.0f}s){marker}")
        return row

    def history(self) -> History:
        return History(self.rows, self.best, self.best_epoch, self.save_path,
                       self.log_dir / "metrics.csv")


@dataclass
class AccuracyReport:
    """Test accuracy (%), per-class accuracy (%) and the confusion matrix ``[true, pred]``."""

    accuracy: float
    per_class: list[float]
    confusion: torch.Tensor
    classes: tuple[str, ...]
    n: int


def test_accuracy(model: nn.Module, split: ImageSplit, device: torch.device,
                  dtype: torch.dtype | None = None, batch_size: int = 256
                  ) -> AccuracyReport:
    """Accuracy of ``model`` on ``split`` (split across torchrun's ranks; every rank returns
    the whole report)."""
    logits = predict_sharded(model, split, device, dtype, batch_size=batch_size, desc="test")
    acc, per_class, confusion = accuracy_report(logits, split.labels, split.info.classes)
    return AccuracyReport(acc, per_class, confusion, split.info.classes, len(split))
