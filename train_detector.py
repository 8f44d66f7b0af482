"""Training the scene detector of ``detectors.py`` on Fashion-MNIST scenes (``scenes.py``).

The classifier trainer's habits: a progress bar; ``metrics.csv`` and ``training_curves.png``
with the losses and the test mAP per epoch; bf16 autocast where the hardware has it; atomic,
self-describing checkpoints; and ``resume``, so a stopped run continues from its last
finished epoch. Each epoch is a fresh set of ``scenes_per_epoch`` training scenes, drawn from
the train split with the key ``(seed, epoch)``, so a resumed run sees exactly the scenes an
uninterrupted one would. The recipe: SGD with momentum, a linear warm-up, then a cosine decay
over the planned epochs, and gradient clipping (a detector trained from scratch has loss spikes
early on).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import outputs
import scenes
import visualize
from detectors import SCENE_ARCH, build_scene_detector
from detmetrics import average_precision
from errors import ParamError, TrainingStopped, UserError, reason
from model import (
    check_finite,
    check_metadata,
    load_state,
    read_checkpoint,
    resume_path,
    save_checkpoint,
)
from recipes import DetectorTrainConfig
from runtime import autocast, eval_mode, precision_label, seed_everything
from train import History

log = logging.getLogger(__name__)

LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
FIELDS = ("epoch", "loss", *LOSSES, "test_map", "lr", "seconds")
TEST_SEED = 2026       # the key of the shipped test scenes
TEST_SCENES = 300
WARMUP_STEPS = 200
CLIP_NORM = 10.0


def detector_meta(canvas: int = scenes.CANVAS) -> dict:
    """What a scene-detector checkpoint records so that loading it needs no flag."""
    return {"arch": SCENE_ARCH, "dataset": "fashion_mnist_scenes",
            "classes": ["__background__", *scenes.CLASSES], "input_size": canvas,
            "mean": [scenes.PIXEL_MEAN] * 3, "std": [scenes.PIXEL_STD] * 3,
            "fpn_channels": 64, "head_channels": 256,
            "anchor_sizes": [[16, 24], [32, 48], [64, 96], [128, 160]],
            "aspect_ratios": [0.5, 1.0, 2.0], "score_thresh": 0.5}


def learning_rate(step: int, total: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``WARMUP_STEPS``, then cosine decay to 1% of it."""
    if step < WARMUP_STEPS:
        return peak * (0.001 + 0.999 * step / WARMUP_STEPS)
    progress = min(1.0, (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS))
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_one_epoch(model: torch.nn.Module, stream: list[scenes.Scene] | object, count: int,
                    optimizer: torch.optim.Optimizer, step: int, total_steps: int, peak_lr: float,
                    batch_size: int, device: torch.device, dtype: torch.dtype | None,
                    desc: str) -> tuple[dict[str, float], int]:
    """One pass over ``count`` scenes from ``stream``; mean losses and the next step."""
    model.train()
    sums = dict.fromkeys(("loss", *LOSSES), 0.0)
    seen = 0
    bar = tqdm(total=count, desc=desc, unit="scene", leave=False, dynamic_ncols=True)
    iterator = iter(stream)
    while seen < count:
        chunk = [next(iterator) for _ in range(min(batch_size, count - seen))]
        images, targets = scenes.scene_batch(chunk, device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total_steps, peak_lr)
        with autocast(device, dtype):
            parts = model(images, targets)
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            bar.close()
            raise TrainingStopped(f"training stopped: the loss became {float(loss)} at step {step} "
                                  f"(try a smaller learning rate); the last finished epoch's "
                                  f"checkpoint is kept")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        optimizer.step()
        step += 1
        n = len(chunk)
        seen += n
        sums["loss"] += loss.item() * n
        for key in LOSSES:
            sums[key] += parts[key].item() * n
        bar.update(n)
        bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}")
    bar.close()
    return {k: v / max(seen, 1) for k, v in sums.items()}, step


@torch.inference_mode()
def detect_scenes(model: torch.nn.Module, test: list[scenes.Scene], device: torch.device,
                  dtype: torch.dtype | None, batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
    """The model's detections (eval mode, CPU tensors) on every scene of ``test``."""
    detections = []
    with eval_mode(model):
        for start in range(0, len(test), batch_size):
            images, _ = scenes.scene_batch(test[start:start + batch_size], device)
            with autocast(device, dtype):
                found = model(images)
            detections += [{k: v.float().cpu() if v.is_floating_point() else v.cpu()
                            for k, v in d.items()} for d in found]
    return detections


def scene_map(detections: list[dict[str, torch.Tensor]], test: list[scenes.Scene]) -> float:
    """mAP@0.5 (VOC2007 11-point) over the Fashion-MNIST classes."""
    aps = []
    for c in range(len(scenes.CLASSES)):
        truth = {}
        for i, scene in enumerate(test):
            mine = scene.labels == c
            if mine.any():
                truth[str(i)] = (torch.from_numpy(scene.boxes[mine]),
                                 torch.zeros(int(mine.sum()), dtype=torch.bool))
        found = [(str(i), float(s), b) for i, d in enumerate(detections)
                 for b, s, lab in zip(d["boxes"], d["scores"], d["labels"].tolist())
                 if lab == c + 1]
        ap = average_precision(found, truth)
        if ap is not None:
            aps.append(ap)
    return float(np.mean(aps)) if aps else 0.0


def test_scenes(data_dir: str, count: int = TEST_SCENES, seed: int = TEST_SEED
                ) -> list[scenes.Scene]:
    """The test scenes (test split only) that :func:`write_test_scenes` writes and training
    scores."""
    images, labels = scenes.garment_pool(data_dir, train=False)
    return list(scenes.scene_stream(images, labels, (seed,), count))


def write_test_scenes(data_dir: str, folder: str | Path, count: int = TEST_SCENES) -> Path:
    """The test scenes in the VOC layout in ``folder`` (new or empty), the first ``count`` of
    the ones that training scores (the same key), so a smaller set is a prefix of a larger
    one."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise ParamError("folder", f"{{param}}: {folder} exists and is not empty; pick a new "
                                   f"folder")
    return scenes.write_voc(folder, test_scenes(data_dir, count))


def _save(path: Path, model: torch.nn.Module, meta: dict, optimizer: torch.optim.Optimizer | None,
          half: bool, extra: dict | None = None) -> None:
    save_checkpoint(path, model, {**meta, **(extra or {})}, optimizer=optimizer, half=half)


RESUME_KEYS = ("model_state_dict", "optimizer_state_dict", "history", "epoch", "step",
               "torch_rng", "seed", "scenes_per_epoch")
# Settings that pick the scenes a run trains on: a resumed run with other values would be
# neither the run it continues nor a new one. (state key, config field)
RESUME_MUST_MATCH = (("seed", "seed"), ("scenes_per_epoch", "scenes_per_epoch"))


def read_resume_state(state_path: Path, cfg: DetectorTrainConfig) -> dict:
    """The training state ``resume`` continues from, checked whole before any training: a
    scene-detector state with every part (weights, optimizer, history, RNG), fields that fit
    ``model.FIELDS``, and written with the ``seed`` and ``scenes_per_epoch`` of ``cfg``."""
    if not state_path.is_file():
        raise ParamError("resume", f"{{param}}: no training state {state_path} to resume from")
    state = read_checkpoint(state_path)
    if state.get("arch") != SCENE_ARCH:
        raise ParamError("resume", f"{{param}}: {state_path} is not a scene-detector training "
                                   f"state")
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise ParamError("resume", f"{{param}}: {state_path} is not a complete training state "
                                   f"(no {', '.join(missing)}); start anew without {{param}}")
    scores = state["model_state_dict"].get("roi_heads.box_predictor.cls_score.weight")
    check_metadata(state, state_path, len(scores) if scores is not None else
                   len(state.get("classes") or []))
    for key, param in RESUME_MUST_MATCH:
        if state[key] != getattr(cfg, param):
            written, now = state[key], getattr(cfg, param)
            raise ParamError(param, f"{{resume}}: {state_path} was written with {{param}} "
                                    f"{written}, this run has {{param}} {now}; resuming would train on "
                                    f"other scenes than the run it continues (use {{param}} "
                                    f"{written}, or start anew without {{resume}})", "resume")
    return state


# What a checkpoint to start from must share with the detector this trainer builds.
_LAYOUT_KEYS = ("classes", "input_size", "mean", "std", "fpn_channels", "head_channels",
                "anchor_sizes", "aspect_ratios")


def read_init_weights(path: str | Path, meta: dict) -> dict:
    """The weights of a scene-detector checkpoint (the shipped one, say) to start training
    from: a new schedule and new scenes from trained weights, where ``resume`` continues the
    very run that wrote its state. The checkpoint must describe the detector that ``meta``
    describes."""
    ckpt = read_checkpoint(path)
    if ckpt.get("arch") != SCENE_ARCH:
        raise ParamError("init_weights", f"{{param}} {path} is not a '{SCENE_ARCH}' "
                                         f"checkpoint; training starts only from the scene "
                                         f"detector's own")
    differ = [key for key in _LAYOUT_KEYS if key in ckpt and ckpt[key] != meta[key]]
    if differ:
        raise ParamError("init_weights", f"{{param}} {path} describes another detector "
                                         f"({differ[0]} {ckpt[differ[0]]} where this trainer "
                                         f"builds {meta[differ[0]]})")
    check_finite(ckpt["model_state_dict"], str(path))
    return ckpt["model_state_dict"]


def fit_detector(cfg: DetectorTrainConfig) -> History:
    """Train the scene detector, saving the checkpoint and the resume state after every epoch;
    returns the :class:`train.History`: one row per epoch (the columns of ``metrics.csv``), the
    best test mAP@0.5 and its epoch (the checkpoint holds the last epoch's weights)."""
    cfg = dataclasses.replace(cfg, device=torch.device(cfg.device))
    device, dtype = cfg.device, cfg.dtype
    seed_everything(cfg.seed)
    save_path = Path(cfg.save_path)
    state_path = resume_path(save_path)
    meta = detector_meta()
    model = build_scene_detector(meta).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9,
                                weight_decay=cfg.weight_decay)
    history: list[dict] = []
    start_epoch, step = 1, 0
    if cfg.resume:
        state = read_resume_state(state_path, cfg)
        load_state(model, state["model_state_dict"], f"training state {state_path}", SCENE_ARCH)
        try:
            optimizer.load_state_dict(state["optimizer_state_dict"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"training state {state_path}: its optimizer state does not fit "
                            f"({reason(exc, 120)})") from None
        history = list(state["history"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        torch.set_rng_state(state["torch_rng"])
    elif cfg.init_weights is not None:
        load_state(model, read_init_weights(cfg.init_weights, meta),
                   f"checkpoint {cfg.init_weights}", SCENE_ARCH)
    train_images, train_labels = scenes.garment_pool(cfg.data_dir, train=True)
    test = test_scenes(cfg.data_dir, min(TEST_SCENES, cfg.test_scenes))
    steps_per_epoch = -(-cfg.scenes_per_epoch // cfg.batch_size)
    total_steps = cfg.num_epochs * steps_per_epoch
    log_dir = Path(cfg.log_dir)   # created with the first epoch's metrics, not before
    metrics_path = log_dir / "metrics.csv"
    log.info(f"Training Faster R-CNN ResNet-18 FPN on Fashion-MNIST scenes: "
             f"{cfg.scenes_per_epoch} scenes per epoch, epochs {start_epoch}..{cfg.num_epochs}, "
             f"batch {cfg.batch_size}, {len(test)} test scenes, device {device}, precision "
             f"{precision_label(dtype)}")
    for epoch in range(start_epoch, cfg.num_epochs + 1):
        start = time.perf_counter()
        lr = learning_rate(step, total_steps, cfg.lr)
        stream = scenes.scene_stream(train_images, train_labels, (cfg.seed, epoch),
                                     cfg.scenes_per_epoch)
        losses, step = train_one_epoch(model, stream, cfg.scenes_per_epoch, optimizer, step,
                                       total_steps, cfg.lr, cfg.batch_size, device, dtype,
                                       desc=f"epoch {epoch}/{cfg.num_epochs}")
        test_map = scene_map(detect_scenes(model, test, device, dtype), test)
        row = {"epoch": epoch, **losses, "test_map": test_map, "lr": lr,
               "seconds": time.perf_counter() - start}
        history.append(row)
        training = {"epoch": epoch, "map": test_map, "seed": cfg.seed,
                    "scenes_per_epoch": cfg.scenes_per_epoch, "batch_size": cfg.batch_size}
        _save(save_path, model, meta, None, cfg.save_half, training)
        _save(state_path, model, meta, optimizer, False,
              {**training, "step": step, "history": history, "torch_rng": torch.get_rng_state()})
        outputs.write_csv(metrics_path, FIELDS, history)
        visualize.plot_detector_curves(history, log_dir / "training_curves.png")
        log.info(f"epoch {epoch:3d}/{cfg.num_epochs}  loss {losses['loss']:.4f}  test mAP@0.5 "
                 f"{test_map:.4f}  ({row['seconds']:.0f}s)  -> saved {save_path}")
    best = max(history, key=lambda r: r["test_map"], default={"test_map": 0.0, "epoch": 0})
    return History(history, float(best["test_map"]), int(best["epoch"]), save_path, metrics_path)
