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
import time
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jobs
import outputs
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
    "val_fraction": Range(0, 1, low_open=True, high_open=True),
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
    "input_size": Range(8, 4096),
    "port": Range(0, 65535),                     # 0: any free port
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
    (lambda a: a.resume and a.mode == "train" and bool(a.det_weights),
     ("--resume continues from its own training state; --det_weights starts a new run from "
      "a checkpoint: use one or the other")),
    (lambda a: a.sanity and a.hidden_strategy != "none",
     "--sanity and --hidden_strategy are two runs: use one or the other"),
    (lambda a: a.sanity and a.mode != "test", "--sanity needs --mode test"),
    (lambda a: bool(a.model) and a.arch is not None,
     "--model builds your own network and --arch a torchvision one: use one or the other"),
    (lambda a: bool(a.image) and bool(a.image_dir),
     "--image and --image_dir both name the images: use one or the other"),
    (lambda a: a.target not in ("pred", "gt") and not (a.image or a.image_dir),
     "--target CLASS explains one class of your images: use it with --image or --image_dir"),
    (lambda a: a.target == "gt" and bool(a.image_dir),
     "--target gt needs the true class, which the images of --image_dir do not have"),
    (lambda a: a.det_method == "drise" and a.det_layer is not None,
     "--det_layer has no meaning for --det_method drise, which explains from the input pixels"),
    (lambda a: a.det_explain_missed and a.det_img is not None,
     "--det_explain_missed needs ground truth: use it on a VOC-style set, not --det_img"),
    (lambda a: a.serve and a.mode == "train", "--serve explores models: leave out --mode train"),
    (lambda a: a.det_method != "drise" and a.det_masks != 1000,
     "--det_masks sets D-RISE's masks: use it with --det_method drise"),
]


def check_combinations(args: Namespace) -> None:
    for applies, why in COMBINATIONS:
        if applies(args):
            raise FlagError(why)


# --------------------------------------------------------------------------------------------
# Paths
#
# One rule for outputs: the tool writes only into folders (existing, or created where a folder
# can be created) and only to regular files or to paths where nothing is yet
# (``outputs.writable_target``, applied again at every write). Everything else (a device node,
# a FIFO, a dangling link, a loop of links, a pseudo file system such as /proc, an empty name)
# is refused here, with the flag named, before a model is loaded.


def _exists(path: Path, flag: str) -> bool:
    try:
        return path.exists()
    except OSError as exc:  # a name too long, a loop of links
        raise UserError(f"{flag} {path}: {exc.strerror or exc}") from None


def _probe(folder: Path, flag: str, target: Path) -> None:
    """Create and remove an empty folder in ``folder``: the one sure test that something can
    be created there (a pseudo file system like /proc, a read-only mount and a full inode
    table say no, while ``os.access`` says yes to root)."""
    probe = folder / f".probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        probe.mkdir()
    except OSError as exc:
        where = "" if folder == target else f" cannot be created in {folder}"
        raise UserError(f"{flag} {target}{where}: {exc.strerror or exc}") from None
    probe.rmdir()


def check_output_dir(path: str | os.PathLike, flag: str) -> None:
    """``path`` is a folder we can write in, or can be created as one; nothing is left behind
    (a probe folder is made and removed)."""
    if not str(path).strip():
        raise UserError(f"{flag} is empty: name a folder (use . for the current one)")
    path = Path(path)
    kind = outputs.path_kind(path)
    if kind == "a folder":
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {path}: no permission to write there")
        _probe(path, flag, path)
        return
    if kind == outputs.REGULAR:
        raise UserError(f"{flag} {path} is a file, not a folder")
    if kind != outputs.MISSING:
        raise UserError(f"{flag} {path} is {kind}, not a folder")
    parent = path.parent
    while (parent_kind := outputs.path_kind(parent)) == outputs.MISSING and parent != parent.parent:
        parent = parent.parent
    if parent_kind == outputs.REGULAR:
        raise UserError(f"{flag} {path} cannot be created: {parent} is a file, not a folder")
    if parent_kind != "a folder":
        raise UserError(f"{flag} {path} cannot be created: {parent} is {parent_kind}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be created: no permission to write in {parent}")
    _probe(parent, flag, path)


def check_output_file(path: str, flag: str) -> None:
    """``path`` names a regular file or nothing yet (not a folder, a device, a FIFO, a
    dangling link), in a folder that exists or can be created."""
    if not path.strip():
        raise UserError(f"{flag} is empty: name the file to write")
    kind = outputs.path_kind(path)
    if path.endswith(os.sep) or kind == "a folder":
        raise UserError(f"{flag} {path} is a folder; name a file in it, e.g. "
                        f"{Path(path) / 'model.pth'}")
    refused = outputs.writable_target(path)
    if refused:
        raise UserError(f"{flag} {path}: {refused}")
    check_output_dir(Path(path).parent, f"{flag}'s folder")


def check_input_file(path: str, what: str) -> None:
    """``path`` is an existing regular file (a folder, a FIFO, a device or a loop of links is
    named as what it is)."""
    if not path.strip():
        raise UserError(f"{what}: the path is empty")
    kind = outputs.path_kind(path)
    if kind == outputs.MISSING:
        raise UserError(f"{what} not found: {path}")
    if kind != outputs.REGULAR:
        raise UserError(f"{what} {path} is {kind}, not a file")


def _check_model_inputs(args: Namespace) -> None:
    """``--classes`` and ``--model``'s file exist, when given."""
    if args.classes is not None:
        check_input_file(args.classes, "--classes file")
    if args.model is not None:
        file, _, function = args.model.rpartition(":")
        if not file or not function:
            raise FlagError(f"--model {args.model}: give FILE.py:FUNCTION")
        check_input_file(file, "--model file")


def check_paths(args: Namespace) -> None:
    """Outputs creatable and inputs present, for what this run will write and read."""
    for flag in ("data_dir", "voc_path", "det_img", "det_weights", "make_scenes"):
        value = getattr(args, flag, None)
        if value is not None and not value.strip():
            raise UserError(f"--{flag} is empty: name a path")
    data_dir = Path(args.data_dir)
    if _exists(data_dir, "--data_dir") and not data_dir.is_dir():
        raise UserError(f"--data_dir {data_dir} is a file, not a folder")
    if args.mode == "train":
        check_output_dir(args.log_dir, "--log_dir")
        save_path = str(jobs.setting(args, "save_path"))
        check_output_file(save_path, "--save_path")
        if args.det_vis:   # detector training also writes its training state beside it
            state = Path(save_path)
            check_output_file(str(state.with_name(state.stem + ".resume.pth")),
                              "--save_path's training state")
        _check_model_inputs(args)
        if args.det_vis and args.det_weights:
            check_input_file(args.det_weights, "detector weights")
        return
    if args.make_scenes:
        check_output_dir(args.make_scenes, "--make_scenes")
        return
    check_output_dir(args.out_dir, "--out_dir")
    for path in args.image:
        check_input_file(path, "image")
    if args.image_dir is not None:
        folder = Path(args.image_dir)
        if not _exists(folder, "--image_dir") or not folder.is_dir():
            raise UserError(f"--image_dir {folder}: not a folder")
    _check_model_inputs(args)
    if args.det_img:
        check_input_file(args.det_img, "image")
    if args.det_weights:
        check_input_file(args.det_weights, "detector weights")


def check_args(args: Namespace, defaults: dict[str, object]) -> None:
    """All checks that need no model, no data and no torch: numbers, combinations, flags the
    job does not read (``defaults``: the parser's), names, paths.
    (The device is checked by the job, the first thing it does, once torch is imported.)"""
    check_numbers(args)
    check_combinations(args)
    jobs.check_unused(args, defaults)
    check_names(args)
    rgb(args.mean, "--mean")
    rgb(args.std, "--std", positive=True)
    check_paths(args)


def rgb(text: str | None, flag: str, positive: bool = False) -> tuple[float, float, float] | None:
    """``--mean`` / ``--std`` ``R,G,B`` -> three finite numbers (positive for a std)."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
        need = "three positive numbers" if positive else "three finite numbers"
        raise FlagError(f"argument {flag}: {need} R,G,B, got {text!r}")
    return values


def check_names(args: Namespace) -> None:
    """The names in ``--vis``, ``--target_layer``, ``--det_arch`` and ``--det_layer`` (the
    registry's lists, ``--det_layer``'s those of the chosen detector; no torch needed); a layer of the classifier is checked against the model once it is loaded,
    before any work."""
    from registry import det_arch, parse_det_layers, parse_layers, parse_methods
    flags = {"methods": "--vis", "layers": "--target_layer", "arch": "--det_arch"}
    try:
        if args.vis != "none":
            parse_methods(args.vis)
        parse_layers(args.target_layer)
        flags["layers"] = "--det_layer"
        if args.det_vis or args.det_img:
            arch = det_arch(args.det_arch)
            if args.det_layer is not None:
                parse_det_layers(args.det_layer, arch)
    except ParamError as exc:
        raise FlagError(exc.worded(flags)) from None
