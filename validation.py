"""Every check on the command line, in one place: flags at parse time, paths before the work.

``NUMBERS`` is the one table of numeric flags and their ranges (a test makes sure every ``int``
or ``float`` flag of the parser has a row); ``COMBINATIONS`` lists flags that cannot go
together; ``check_paths`` makes sure every output can be created and every input exists before
a model is loaded or an image is read. Loaders still check what they load (a file's content
is only known when it is read); nothing here is checked again downstream.
"""
from __future__ import annotations

import argparse
import math
import os
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from errors import FlagError, ParamError, UserError


class Parser(argparse.ArgumentParser):
    """``argparse`` whose errors are one ``FlagError`` line instead of a usage block + exit."""

    def error(self, message: str):
        raise FlagError(message)


@dataclass(frozen=True)
class Range:
    """The finite values a numeric flag accepts: ``low <= x <= high``, with ``low_open`` /
    ``high_open`` excluding an end. ``None`` leaves that side unbounded (still finite)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def accepts(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return math.isfinite(value) and above and below

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return "a finite number" + (" " + " and ".join(parts) if parts else "")


# One row per numeric flag. A new int/float flag needs a row here (tests/test_bad_inputs.py
# fails otherwise).
NUMBERS: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1),                 # NumPy's seed range
    "batch_size": Range(1, 65536),
    "lr": Range(0, 10, low_open=True),           # beyond 10 SGD only diverges
    "num_epochs": Range(1, 100000),
    "weight_decay": Range(0, 1, high_open=True),
    "label_smoothing": Range(0, 1, high_open=True),  # 1 would make every target uniform
    "vis_num": Range(1),                         # capped at the test set's size
    "steps": Range(1, 100000),
    "num_eval": Range(1),                        # capped at the test set's size
    "eval_batch_size": Range(1, 65536),
    "cam_batch_size": Range(1, 65536),
    "det_score_thresh": Range(0, 1),
    "det_max": Range(1, 1000),
    "det_num": Range(1),                         # capped at the VOC test set's size
    "det_min_size": Range(32, 1600),             # beyond that only memory grows (torchvision: 800)
    "det_scenes": Range(1, 10**7),
    "det_masks": Range(1, 10**6),
}


def check_numbers(args: Namespace) -> None:
    """Every flag of ``NUMBERS`` is finite and in its range."""
    for name, rule in NUMBERS.items():
        value = getattr(args, name, None)
        if value is not None and not rule.accepts(value):
            raise FlagError(f"argument --{name}: must be {rule.describe()}, got {value!r}")


# Flags that cannot go together: (condition on the flags, why). Checked in order.
COMBINATIONS: list[tuple[Callable[[Namespace], bool], str]] = [
    (lambda a: a.mode == "test" and a.hidden_strategy != "none" and a.vis == "none",
     "--hidden_strategy evaluates heatmaps: name them with --vis (a method, a comma list, all)"),
    (lambda a: bool(a.image) and a.target == "gt",
     "--target gt needs the true class, which a user image does not have"),
    (lambda a: a.resume and not (a.mode == "train" and a.det_vis),
     "--resume continues detector training: use it with --mode train --det_vis"),
    (lambda a: a.sanity and a.hidden_strategy != "none",
     "--sanity and --hidden_strategy are two runs: use one or the other"),
    (lambda a: a.sanity and a.mode != "test", "--sanity needs --mode test"),
    (lambda a: bool(a.image) and a.hidden_strategy != "none",
     "--hidden_strategy evaluates test images, --image explains your own: use one or the other"),
    (lambda a: a.det_method == "drise" and a.det_layer != "layer4",
     "--det_layer has no meaning for --det_method drise, which explains from the input pixels"),
    (lambda a: a.det_method != "drise" and a.det_masks != 1000,
     "--det_masks sets D-RISE's masks: use it with --det_method drise"),
]


def check_combinations(args: Namespace) -> None:
    for applies, why in COMBINATIONS:
        if applies(args):
            raise FlagError(why)


# --------------------------------------------------------------------------------------------
# Paths


def _exists(path: Path, flag: str) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # a name too long, a loop of links
        raise UserError(f"{flag} {path}: {exc.strerror or exc}") from None


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """``path`` is a folder we can write in, or can be created as one; nothing is created."""
    path = Path(path)
    if _exists(path, flag):
        if not path.is_dir():
            raise UserError(f"{flag} {path} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: no permission to write there")
        return
    parent = path.parent
    while not _exists(parent, flag):
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be created: no permission to write in {parent}")


def check_output_file(path: str, flag: str) -> None:
    """``path`` names a file (not a folder) whose folder exists or can be created."""
    if not path.strip():
        raise UserError(f"{flag} is empty: name the file to write")
    if path.endswith(os.sep) or (_exists(Path(path), flag) and Path(path).is_dir()):
        raise UserError(f"{flag} {path} is a folder; name a file in it, e.g. "
                        f"{Path(path) / 'model.pth'}")
    check_output_dir(Path(path).parent, f"{flag}'s folder")


def check_input_file(path: str, what: str) -> None:
    """``path`` is an existing regular file."""
    p = Path(path)
    if not _exists(p, what):
        raise UserError(f"{what} not found: {path}")
    if not p.is_file():
        raise UserError(f"{what} {path} is not a file")


def check_paths(args: Namespace) -> None:
    """Outputs creatable and inputs present, for what this run will write and read."""
    data_dir = Path(args.data_dir)
    if _exists(data_dir, "--data_dir") and not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir} is a file, not a folder")
    if args.mode == "train":
        check_output_dir(args.log_dir, "--log_dir")
        check_output_file(args.save_path, "--save_path")
        return
    if args.make_scenes:
        check_output_dir(args.make_scenes, "--make_scenes")
        return
    check_output_dir(args.out_dir, "--out_dir")
    for path in args.image:
        check_input_file(path, "image")
    if args.det_img:
        check_input_file(args.det_img, "image")
    if args.det_weights:
        check_input_file(args.det_weights, "detector weights")


def check_args(args: Namespace) -> None:
    """All checks that need no model, no data and no torch: numbers, combinations, paths.
    (The device is checked by the job, the first thing it does, once torch is imported.)"""
    check_numbers(args)
    check_combinations(args)
    check_names(args)
    check_paths(args)


def check_names(args: Namespace) -> None:
    """The names in ``--vis``, ``--target_layer`` and ``--det_layer`` (the registry's lists,
    no torch needed); a layer of the classifier is checked against the model once it is loaded,
    before any work."""
    from registry import DET_LAYERS, parse_layers, parse_methods
    flags = {"methods": "--vis", "layers": "--target_layer"}
    try:
        if args.vis != "none":
            parse_methods(args.vis)
        parse_layers(args.target_layer)
        flags["layers"] = "--det_layer"
        if (args.det_vis or args.det_img) and args.det_method != "drise":
            parse_layers(args.det_layer, DET_LAYERS)
    except ParamError as exc:
        raise FlagError(exc.worded(flags)) from None
