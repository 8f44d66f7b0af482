"""Training the Faster R-CNN of ``detection.py`` on Fashion-MNIST scenes (``scenes.py``).

The classifier trainer's habits: a progress bar; ``metrics.csv`` and ``training_curves.png``
with the losses and the test mAP per epoch; bf16 autocast where the hardware has it; atomic,
self-describing checkpoints; and ``--resume``, so a stopped run continues from its last
finished epoch. Each epoch is a fresh set of ``--det_scenes`` training scenes, drawn from the
train split with the key ``(seed, epoch)``, so a resumed run sees exactly the scenes an
uninterrupted one would. The recipe: SGD with momentum, a linear warm-up, then a cosine decay
over the planned epochs, and gradient clipping (a detector trained from scratch has loss spikes
early on).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import outputs
import scenes
import visualize
from detection import SCENE_ARCH, build_scene_detector
from detmetrics import average_precision
from errors import TrainingStopped, UserError, reason
from model import check_finite, check_metadata, check_weight_types, read_checkpoint, save_checkpoint
from runtime import autocast, eval_mode, seed_everything

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


def resume_path(save_path: str | Path) -> Path:
    """Where the full training state (optimizer, schedule, RNG) of ``save_path`` is kept."""
    save_path = Path(save_path)
    return save_path.with_name(save_path.stem + ".resume.pth")


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
                            f"(try a smaller --lr); the last finished epoch's checkpoint is kept")
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
    """The test scenes (test split only) that ``--mode scenes`` writes and training scores."""
    images, labels = scenes.garment_pool(data_dir, train=False)
    return list(scenes.scene_stream(images, labels, (seed,), count))


def write_test_scenes(data_dir: str, folder: str | Path, count: int = TEST_SCENES) -> Path:
    """``--make_scenes DIR``: the test scenes in the VOC layout, the first ``count`` of the ones
    that training scores (the same key), so a smaller set is a prefix of a larger one."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"--make_scenes: {folder} exists and is not empty; pick a new folder")
    return scenes.write_voc(folder, test_scenes(data_dir, count))


def _save(path: Path, model: torch.nn.Module, meta: dict, optimizer: torch.optim.Optimizer | None,
          half: bool, extra: dict | None = None) -> None:
    save_checkpoint(path, model, {**meta, **(extra or {})}, optimizer=optimizer, half=half)


@dataclass(frozen=True)
class DetectorTrainConfig:
    """What :func:`fit_detector` needs (``dtype``: autocast precision, None for fp32;
    ``det_num``: test scenes scored after each epoch, at most 300)."""

    data_dir: str = "./data"
    save_path: str = "./checkpoints/fasterrcnn_fashion_scenes.pth"
    log_dir: str = "./logs"
    num_epochs: int = 6
    batch_size: int = 8
    lr: float = 0.02
    weight_decay: float = 1e-4
    seed: int = 0
    det_scenes: int = 4000
    det_num: int = TEST_SCENES
    save_half: bool = False
    resume: bool = False
    init_weights: str | None = None     # a scene-detector checkpoint to start from
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype | None = None


RESUME_KEYS = ("model_state_dict", "optimizer_state_dict", "history", "epoch", "step",
               "torch_rng", "seed", "scenes_per_epoch")
# Flags that pick the scenes a run trains on: a resumed run with other values would be neither
# the run it continues nor a new one. (state key, flag)
RESUME_MUST_MATCH = (("seed", "seed"), ("scenes_per_epoch", "det_scenes"))


def read_resume_state(state_path: Path, args: DetectorTrainConfig) -> dict:
    """The training state ``--resume`` continues from, checked whole before any training: a
    scene-detector state with every part (weights, optimizer, history, RNG), fields that fit
    ``model.FIELDS``, and written with the ``--seed`` and ``--det_scenes`` of this run."""
    if not state_path.is_file():
        raise UserError(f"--resume: no training state {state_path} to resume from")
    state = read_checkpoint(state_path)
    if state.get("arch") != SCENE_ARCH:
        raise UserError(f"--resume: {state_path} is not a scene-detector training state")
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise UserError(f"--resume: {state_path} is not a complete training state (no "
                        f"{', '.join(missing)}); start anew without --resume")
    scores = state["model_state_dict"].get("roi_heads.box_predictor.cls_score.weight")
    check_metadata(state, state_path, len(scores) if scores is not None else
                   len(state.get("classes") or []))
    for key, flag in RESUME_MUST_MATCH:
        if state[key] != getattr(args, flag):
            raise UserError(f"--resume: {state_path} was written with --{flag} {state[key]}, "
                            f"this run has --{flag} {getattr(args, flag)}; resuming would "
                            f"train on other scenes than the run it continues (use --{flag} "
                            f"{state[key]}, or start anew without --resume)")
    return state


def load_weights(model: torch.nn.Module, state_dict: dict, source: Path,
                 what: str = "--resume") -> None:
    """A training state's (or a checkpoint's) weights into ``model``, a mismatch in one
    line."""
    check_weight_types(state_dict, model.state_dict(), f"{what}: {source}")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise UserError(f"{what}: {source} does not fit this detector ({reason(exc, 160)})"
                        ) from None


# What a checkpoint to start from must share with the detector this trainer builds.
_LAYOUT_KEYS = ("classes", "input_size", "mean", "std", "fpn_channels", "head_channels",
                "anchor_sizes", "aspect_ratios")


def read_init_weights(path: str | Path, meta: dict) -> dict:
    """The weights of a scene-detector checkpoint (the shipped one, say) to start training
    from: a new schedule and new scenes from trained weights, where ``--resume`` continues
    the very run that wrote its state. The checkpoint must describe the detector that
    ``meta`` describes."""
    ckpt = read_checkpoint(path)
    if ckpt.get("arch") != SCENE_ARCH:
        raise UserError(f"det_weights={path} is not a '{SCENE_ARCH}' checkpoint; training "
                        f"starts only from the scene detector's own")
    differ = [key for key in _LAYOUT_KEYS if key in ckpt and ckpt[key] != meta[key]]
    if differ:
        raise UserError(f"det_weights={path} describes another detector ({differ[0]} "
                        f"{ckpt[differ[0]]} where this trainer builds {meta[differ[0]]})")
    check_finite(ckpt["model_state_dict"], str(path))
    return ckpt["model_state_dict"]


def fit_detector(args: DetectorTrainConfig) -> list[dict]:
    """Train the scene detector, saving the checkpoint and the resume state after every epoch;
    returns the history, one row per epoch (the columns of ``metrics.csv``)."""
    device, dtype = args.device, args.dtype
    seed_everything(args.seed)
    save_path = Path(args.save_path)
    state_path = resume_path(save_path)
    meta = detector_meta()
    model = build_scene_detector(meta).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                                weight_decay=args.weight_decay)
    history: list[dict] = []
    start_epoch, step = 1, 0
    if args.resume:
        state = read_resume_state(state_path, args)
        load_weights(model, state["model_state_dict"], state_path)
        try:
            optimizer.load_state_dict(state["optimizer_state_dict"])
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"--resume: {state_path}: its optimizer state does not fit "
                            f"({reason(exc, 120)})") from None
        history = list(state["history"])
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        torch.set_rng_state(state["torch_rng"])
    elif args.init_weights is not None:
        load_weights(model, read_init_weights(args.init_weights, meta), Path(args.init_weights),
                     "det_weights")
    train_images, train_labels = scenes.garment_pool(args.data_dir, train=True)
    test = test_scenes(args.data_dir, min(TEST_SCENES, args.det_num))
    steps_per_epoch = -(-args.det_scenes // args.batch_size)
    total_steps = args.num_epochs * steps_per_epoch
    log_dir = Path(args.log_dir)   # created with the first epoch's metrics, not before
    metrics_path = log_dir / "metrics.csv"
    log.info(f"Training Faster R-CNN ResNet-18 FPN on Fashion-MNIST scenes: {args.det_scenes} "
          f"scenes per epoch, epochs {start_epoch}..{args.num_epochs}, batch {args.batch_size}, "
          f"{len(test)} test scenes, device {device}, precision "
          f"{'fp32' if dtype is None else str(dtype).replace('torch.', '')}")
    test_map = history[-1]["test_map"] if history else 0.0
    for epoch in range(start_epoch, args.num_epochs + 1):
        start = time.perf_counter()
        lr = learning_rate(step, total_steps, args.lr)
        stream = scenes.scene_stream(train_images, train_labels, (args.seed, epoch),
                                     args.det_scenes)
        losses, step = train_one_epoch(model, stream, args.det_scenes, optimizer, step,
                                       total_steps, args.lr, args.batch_size, device, dtype,
                                       desc=f"epoch {epoch}/{args.num_epochs}")
        test_map = scene_map(detect_scenes(model, test, device, dtype), test)
        row = {"epoch": epoch, **losses, "test_map": test_map, "lr": lr,
               "seconds": time.perf_counter() - start}
        history.append(row)
        training = {"epoch": epoch, "map": test_map, "seed": args.seed,
                    "scenes_per_epoch": args.det_scenes, "batch_size": args.batch_size}
        _save(save_path, model, meta, None, args.save_half, training)
        _save(state_path, model, meta, optimizer, False,
              {**training, "step": step, "history": history, "torch_rng": torch.get_rng_state()})
        outputs.write_csv(metrics_path, FIELDS, history)
        visualize.plot_detector_curves(history, log_dir / "training_curves.png")
        log.info(f"epoch {epoch:3d}/{args.num_epochs}  loss {losses['loss']:.4f}  test mAP@0.5 "
                 f"{test_map:.4f}  ({row['seconds']:.0f}s)  -> saved {save_path}")
    return history
