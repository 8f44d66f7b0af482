"""The jobs of the command line, each declared once: its name, what it does, when the flags ask
for it, the flags it reads, and the function that runs it.

Dispatch (:func:`run`), the refusal of flags a job does not read (:func:`check_unused`) and the
list of jobs in ``--help`` (:func:`help_text`) all derive from ``JOBS``; nothing else decides
which job runs. A new job is a module with a ``run(args) -> int`` function and one
:class:`Job` line here. This module imports no torch, so ``--help`` and flag errors answer at
once.
"""
from __future__ import annotations

import importlib
import textwrap
from argparse import Namespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from errors import FlagError
from recipes import (
    TRAIN_RECIPES,
    DetectorTrainConfig,
    ExplainConfig,
    FineTuneConfig,
    default,
    train_recipe,
)

# How the user starts the tool, for --help's examples and the run's recorded command: the
# repository's script, or the command that installing the package puts on the PATH.
PROG = "camexplain" if __package__ else "python main.py"

# Settings every job takes the same way: where to read and write, which device and precision.
SHARED = frozenset({"mode", "device", "precision", "data_dir", "out_dir", "log_dir",
                    "save_path"})

# The flags of one classifier, whatever job it is loaded for (see zoo.load_classifier).
MODEL = frozenset({"dataset", "arch", "weights", "model", "input_size", "mean", "std",
                   "classes"})
# Where a classifier job's images come from: the model's test split (a built-in dataset) or an
# image folder in --data_dir, or your photos.
IMAGES = frozenset({"image", "image_dir"})
HEATMAPS = MODEL | IMAGES | {"batch_size", "vis", "target", "target_layer", "cam_batch_size",
                            "token_grid"}
DETECTION = frozenset({"det_vis", "det_weights", "det_arch", "det_layer", "det_method",
                       "det_masks", "det_score_thresh", "det_max", "det_per_box",
                       "det_min_size", "seed"})
# Which flag sets each library parameter that an error names (``errors.ParamError``), for the
# jobs on classifiers and on detectors.
MODEL_PARAMS = {"arch": "--arch", "weights": "--weights", "model_spec": "--model",
                "input_size": "--input_size", "mean": "--mean", "std": "--std",
                "classes_file": "--classes", "dataset": "--dataset", "device": "--device",
                "data_dir": "--data_dir", "image_dir": "--image_dir", "target": "--target",
                "val_fraction": "--val_fraction", "model": "the model",
                "token_grid": "--token_grid"}
CLASSIFIER_PARAMS = {**MODEL_PARAMS, "layer": "--target_layer", "layers": "--target_layer",
                     "methods": "--vis", "method": "--vis", "strategies": "--hidden_strategy",
                     "strategy": "--hidden_strategy", "batch_size": "--cam_batch_size"}
TRAINING_PARAMS = {**MODEL_PARAMS, "batch_size": "--batch_size", "lr": "--lr",
                   "num_epochs": "--num_epochs", "weight_decay": "--weight_decay",
                   "label_smoothing": "--label_smoothing", "save_path": "--save_path",
                   "resume": "--resume", "seed": "--seed"}
DETECTOR_PARAMS = {"layers": "--det_layer", "method": "--det_method", "device": "--device",
                   "arch": "--det_arch", "min_size": "--det_min_size", "weights": "--det_weights",
                   "masks": "--det_masks", "model": "the detector", "data_dir": "--data_dir",
                   "path": "--voc_path", "seed": "--seed", "scenes_per_epoch": "--det_scenes",
                   "resume": "--resume", "init_weights": "--det_weights",
                   "test_scenes": "--det_num", "folder": "--make_scenes"}
TRAINING = frozenset({"batch_size", "lr", "num_epochs", "weight_decay", "save_half", "seed"})


def fine_tuning(args: Namespace) -> bool:
    """Whether ``--mode train`` fine-tunes a model from anywhere on an image folder, rather
    than training one of this tool's built-in archs (the CIFAR ResNet-18, the small ViT) from
    scratch on a built-in dataset."""
    return bool(args.weights or args.model or args.arch not in (None, *TRAIN_RECIPES))


@dataclass(frozen=True)
class Job:
    """One job: ``when`` the flags ask for it (jobs are tried in order), the flags it
    ``reads`` besides ``SHARED``, and ``runs``, ``module:function`` taking the flags and
    returning the exit status. ``rank0`` jobs are not split across torchrun's processes:
    rank 0 alone runs them. ``config`` is the recipe (``recipes.py``) whose defaults apply to
    the flags left out (see :func:`setting`), or a function of the flags giving it (the
    training recipe of ``--arch``); ``params`` says which flag sets each library parameter,
    for the wording of errors."""

    name: str
    title: str
    when: Callable[[Namespace], bool]
    reads: frozenset[str]
    runs: str
    rank0: bool = False
    config: type | Callable[[Namespace], type] | None = None
    params: Mapping[str, str] = field(default_factory=lambda: CLASSIFIER_PARAMS)

    def recipe(self, args: Namespace) -> type | None:
        """The recipe whose defaults apply to these flags."""
        if self.config is None or isinstance(self.config, type):
            return self.config
        return self.config(args)


JOBS: tuple[Job, ...] = (
    Job("serve", "explore images in a browser: classifier and detector (--serve)",
        lambda a: a.serve, MODEL | {"serve", "port", "host", "cam_batch_size", "seed"}
        | DETECTION - {"det_vis", "det_layer", "det_method", "det_per_box"}, "cli_serve:serve",
        rank0=True),
    Job("train_detector", "train the scene detector (--mode train --det_vis)",
        lambda a: a.mode == "train" and a.det_vis,
        TRAINING | {"det_vis", "resume", "det_scenes", "det_num", "det_weights"},
        "cli_detect:train_detector", config=DetectorTrainConfig, params=DETECTOR_PARAMS),
    Job("finetune", "fine-tune a model on an image folder (--mode train --arch / --weights / "
                    "--model)",
        lambda a: a.mode == "train" and fine_tuning(a),
        TRAINING | MODEL - {"dataset"} | {"label_smoothing", "val_fraction"},
        "cli_train:fine_tune", config=FineTuneConfig, params=TRAINING_PARAMS),
    Job("train", "train the CIFAR ResNet-18, or the small ViT (--arch vit_small_cifar), from "
                 "scratch on a built-in dataset (--mode train)",
        lambda a: a.mode == "train",
        TRAINING | {"dataset", "arch", "label_smoothing", "resume"},
        "cli_train:train_classifier",
        config=lambda a: train_recipe(a.arch), params=TRAINING_PARAMS),
    Job("make_scenes", "write the Fashion-MNIST test scenes (--make_scenes DIR)",
        lambda a: bool(a.make_scenes), frozenset({"make_scenes", "det_num"}),
        "cli_detect:make_scenes", rank0=True, params=DETECTOR_PARAMS),
    Job("detect_image", "explain one image's detections (--det_img)",
        lambda a: bool(a.det_img), DETECTION | {"det_img"}, "cli_detect:explain_image",
        rank0=True, params=DETECTOR_PARAMS),
    Job("detect_set", "explain and score detections on a VOC-style set (--det_vis)",
        lambda a: a.det_vis, DETECTION | {"det_num", "voc_path", "det_explain_missed"},
        "cli_detect:score_set", rank0=True, params=DETECTOR_PARAMS),
    Job("list_layers", "list a classifier's layers with a spatial map (--list_layers)",
        lambda a: a.list_layers, MODEL | {"list_layers", "token_grid"},
        "cli_classify:list_layers"),
    Job("sanity", "the model-randomisation sanity check (--sanity)",
        lambda a: a.sanity, HEATMAPS | {"sanity", "vis_num", "seed"}, "cli_classify:sanity",
        rank0=True, config=ExplainConfig),
    Job("leaderboard", "deletion / insertion leaderboard of methods and layers "
                       "(--hidden_strategy)",
        lambda a: a.hidden_strategy != "none",
        HEATMAPS | {"hidden_strategy", "steps", "num_eval", "eval_batch_size", "seed"},
        "cli_classify:leaderboard", config=ExplainConfig),
    Job("heatmaps", "heatmaps of test images or of your images (--vis, --image, --image_dir)",
        lambda a: a.vis != "none" or bool(a.image or a.image_dir),
        HEATMAPS | {"vis_num", "panel_format"}, "cli_classify:heatmaps", config=ExplainConfig),
    Job("test", "test accuracy of a classifier (--mode test)", lambda a: True,
        MODEL | {"batch_size"}, "cli_classify:test_accuracy", config=ExplainConfig),
)


def job_of(args: Namespace) -> Job:
    """The first job of ``JOBS`` the flags ask for (the last one always applies)."""
    return next(job for job in JOBS if job.when(args))


def setting(args: Namespace, name: str) -> object:
    """Flag ``name``'s value, or where it was left out (None), the default of the job's
    recipe: ``--num_epochs`` is 30 training the CIFAR ResNet-18, 15 the small ViT, 10
    fine-tuning."""
    value = getattr(args, name)
    config = job_of(args).recipe(args)
    if value is None and config is not None and name in config.__dataclass_fields__:
        return default(config, name)
    return value


def check_unused(args: Namespace, defaults: dict[str, object]) -> None:
    """Every flag given (not at its default) is one that the chosen job reads: a flag that
    changes nothing is an error, never silently dropped."""
    job = job_of(args)
    unused = [name for name, default in defaults.items()
              if name not in SHARED and name not in job.reads and hasattr(args, name)
              and getattr(args, name) != default]
    if unused:
        flags = ", ".join(f"--{name}" for name in unused)
        raise FlagError(f"argument{'s' * (len(unused) > 1)} {flags}: not used by the job "
                        f"'{job.name}' ({job.title}); leave {'them' if len(unused) > 1 else 'it'}"
                        f" out")


def run(args: Namespace) -> int:
    """Run the job the flags ask for. Under torchrun a ``rank0`` job runs on rank 0 alone."""
    job = job_of(args)
    if job.rank0:
        import distributed
        if not distributed.world().is_main:
            return 0
    module, _, function = job.runs.partition(":")
    # a sibling module by name: "cli_classify" here, "camexplain.cli_classify" installed (setup.py)
    module = f"{__package__}.{module}" if __package__ else module
    return getattr(importlib.import_module(module), function)(args)


def help_text() -> str:
    """The jobs for ``--help``: what each does and the flags it reads."""
    shared = ", ".join(f"--{f}" for f in sorted(SHARED))
    lines = [textwrap.fill(f"jobs (the first that the flags ask for runs; each reads {shared} "
                           f"and its own flags):", width=92)]
    for job in JOBS:
        flags = " ".join(f"--{f}" for f in sorted(job.reads))
        lines.append(f"  {job.name:<15}{job.title}")
        lines.append(textwrap.fill(f"reads: {flags}", width=92, initial_indent=" " * 17,
                                   subsequent_indent=" " * 24))
    return "\n".join(lines)
