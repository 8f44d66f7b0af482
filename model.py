"""The networks this tool trains on its built-in datasets, and the self-describing checkpoints
they are saved in.

``resnet18_cifar`` is torchvision's ResNet-18 with the stem that small images need (3x3
convolution, stride 1, no max-pool), so a 32x32 input keeps a 4x4 map at ``layer4``. Its named
stages (``layer1`` .. ``layer4``, ``fc``) are what explainers name as target layers.
``vit_small_cifar`` is a small torchvision ``VisionTransformer`` for 32x32 inputs (4x4 patches:
an 8x8 grid of patch tokens and a class token). ``BUILDERS`` maps each name to its builder: a
checkpoint records the name, and loading looks the builder up by it (no code runs from a
file).
"""
from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import VisionTransformer, resnet18

import outputs
from errors import TrainingStopped, UserError, note, reason

ARCH = "resnet18_cifar"
VIT_ARCH = "vit_small_cifar"


def build_resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max-pool, GAP + one linear layer."""
    model = resnet18(weights=None, num_classes=num_classes, zero_init_residual=True)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def build_vit_small(num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """A small vision transformer for 32x32 inputs (about 2.7 M parameters): torchvision's
    ``VisionTransformer`` with 4x4 patches (64 patch tokens and a class token), 6 blocks of 3
    heads, width 192, MLP width 768. torchvision starts the head at zero; here it starts small
    and random (truncated normal, std 0.02), so that a fresh model's logits and gradients
    already depend on the image."""
    model = VisionTransformer(image_size=image_size, patch_size=4, num_layers=6, num_heads=3,
                              hidden_dim=192, mlp_dim=768, num_classes=num_classes)
    nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
    return model


# The one map from a built-in arch's name (what a checkpoint records) to its builder, which
# takes the number of classes.
BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    ARCH: build_resnet18,
    VIT_ARCH: build_vit_small,
}


def build(arch: str, num_classes: int = 10) -> nn.Module:
    """The built-in network ``arch`` (a key of ``BUILDERS``) with ``num_classes`` outputs."""
    return BUILDERS[arch](num_classes)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, half: bool = False) -> None:
    """Write a checkpoint that records what it holds, atomically (temporary file + rename).

    ``meta`` carries ``arch`` (``resnet18_cifar`` when it does not), ``dataset``, ``classes``,
    ``mean``, ``std``, ``input_size``, ``epoch`` and ``acc``; ``half`` stores floating-point weights in fp16 to halve the file (loading restores
    fp32).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    try:
        check_finite(state, f"not saving {path}")
    except UserError as exc:   # a diverged model never replaces a good checkpoint
        raise TrainingStopped(str(exc)) from None
    if half:
        state = half_state(state, path)
    payload = {"arch": ARCH, "model_state_dict": state, **meta}
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer.state_dict()
    # Serialized in memory, then written by Python: a full disk is then an OSError with its
    # reason instead of PyTorch's "[enforce fail at inline_container.cc]".
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with outputs.atomic(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def resume_path(save_path: str | os.PathLike) -> Path:
    """Where the full training state (optimizer, schedule, RNG) of ``save_path`` is kept: a
    training run writes it after every epoch, and ``resume`` continues from it."""
    save_path = Path(save_path)
    return save_path.with_name(save_path.stem + ".resume.pth")


_told_fp32: set[str] = set()   # files whose fp32 tensors were already noted in this process


def half_state(state: dict[str, torch.Tensor], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """``--save_half``: floating-point tensors in fp16, except those that fp16 cannot hold
    (a value beyond +-65504, such as a large BatchNorm ``running_var``, would become inf and
    the file unloadable): they stay fp32, said once per file in a ``note:``. The fp16 copy is
    checked, not the fp32 weights, and before anything is written."""
    halved, kept = {}, []
    for key, value in state.items():
        if value.is_floating_point():
            small = value.half()
            if torch.isfinite(small).all():
                value = small
            else:
                kept.append(key)
        halved[key] = value
    if kept and str(path) not in _told_fp32:
        _told_fp32.add(str(path))
        note(f"{len(kept)} tensor{'s' * (len(kept) > 1)} of {path} exceed fp16's range and "
             f"stay fp32 in the half-precision file, e.g. {kept[0]}")
    return halved


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file into a dict, naming the problem in one line when it cannot.

    A bare state dict (what ``torch.save(model.state_dict())`` writes) is accepted too and
    wrapped as ``{"model_state_dict": ...}`` without metadata.
    """
    path = Path(path)
    kind = outputs.path_kind(path)
    if kind == outputs.MISSING:
        raise UserError(f"checkpoint not found: {path}")
    if kind != outputs.REGULAR:
        raise UserError(f"checkpoint {path} is {kind}, not a checkpoint file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage bytes raise anything from the unpickler
        why = reason(exc)
        if why.startswith("Weights only load failed"):
            why = "it is not a pickle of tensors and plain values"
        if _looks_like_text(path):
            why = "it is a text file"
        raise UserError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({why})"
                        ) from None
    if isinstance(payload, dict) and "model_state_dict" in payload:
        state = payload["model_state_dict"]
        if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v)
                                                  for k, v in state.items()):
            raise UserError(f"checkpoint {path}: 'model_state_dict' is a "
                            f"{type(state).__name__}, not a dict of named tensors")
        return payload
    if isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values()):
        return {"model_state_dict": payload}
    raise UserError(f"checkpoint {path} holds no model weights (expected a dict with "
                    f"'model_state_dict' or a state dict)")


def _looks_like_text(path: Path) -> bool:
    """Whether a file starts with UTF-8 text (a log or a note saved as ``.pth`` by mistake)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:   # a character cut at the 512-byte edge is still text
            return False
    return bool(head) and b"\0" not in head


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Field:
    """What one field of a checkpoint's description must be.

    ``kind``: ``name`` (a non-empty string), ``names`` (a list of strings), ``int``, ``number``
    (int or float), ``numbers`` (a list of ``length`` numbers, any non-empty length when
    None), ``levels`` (``length`` non-empty lists of ints), ``rows`` (a list of dicts),
    ``dict``, ``bytes`` (a uint8 tensor). Numbers are finite and lie in ``[low, high]``.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    length: int | None = None
    why: str = ""

    def _range(self) -> str:
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f" >= {self.low:g}"
        return f" between {self.low:g} and {self.high:g}"

    def expected(self) -> str:
        count = f"{self.length} " if self.length else ""
        text = {
            "name": "a name", "names": "a list of names",
            "int": f"an integer{self._range()}", "number": f"a finite number{self._range()}",
            "numbers": f"a list of {count}finite numbers{self._range()}",
            "levels": f"a list of {count}non-empty lists of integers{self._range()}",
            "rows": "a list of tables", "dict": "a dict", "bytes": "a uint8 tensor"}[self.kind]
        return text + (f" ({self.why})" if self.why else "")

    def _in_range(self, value: Any, integer: bool = False) -> bool:
        if integer and not (isinstance(value, int) and not isinstance(value, bool)):
            return False
        return (_is_number(value) and (self.low is None or value >= self.low)
                and (self.high is None or value <= self.high))

    def _sized(self, value: Any) -> bool:
        return (isinstance(value, (list, tuple)) and len(value) > 0
                and (self.length is None or len(value) == self.length))

    def accepts(self, value: Any) -> bool:
        kind = self.kind
        if kind == "name":
            return isinstance(value, str) and bool(value.strip())
        if kind == "names":
            return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        if kind in ("int", "number"):
            return self._in_range(value, integer=kind == "int")
        if kind == "numbers":
            return self._sized(value) and all(self._in_range(v) for v in value)
        if kind == "levels":
            return self._sized(value) and all(
                isinstance(level, (list, tuple)) and level
                and all(self._in_range(v, integer=True) for v in level) for level in value)
        if kind == "rows":
            return isinstance(value, list) and all(isinstance(v, dict) for v in value)
        if kind == "dict":
            return isinstance(value, dict)
        if kind == "bytes":
            return torch.is_tensor(value) and value.dtype == torch.uint8
        raise ValueError(f"unknown field kind {kind}")


# One row per field that a checkpoint of any kind of model (the classifier, the scene
# detector, a detector's training state) describes itself with. A field that is absent is
# not checked (older files lack some); one that is present must fit its row.
FIELDS: dict[str, Field] = {
    "arch": Field("name"),
    "dataset": Field("name"),
    "classes": Field("names"),
    "mean": Field("numbers", -10, 10, 3),
    "std": Field("numbers", 1e-4, 100, 3, "inputs are divided by it"),
    "input_size": Field("int", 8, 4096, why="a side length in pixels"),
    "epoch": Field("int", 0, 10**7),
    "acc": Field("number", 0, 100, why="a percentage"),
    "map": Field("number", 0, 1),
    "seed": Field("int", 0, 2**32 - 1),
    "scenes_per_epoch": Field("int", 1, 10**7),
    "batch_size": Field("int", 1, 65536),
    "step": Field("int", 0, 10**12),
    "fpn_channels": Field("int", 1, 4096),
    "head_channels": Field("int", 1, 16384),
    "anchor_sizes": Field("levels", 1, 4096, 4, "anchor sizes in pixels, one list per FPN "
                                                "level"),
    "aspect_ratios": Field("numbers", 0.01, 100),
    "score_thresh": Field("number", 0, 1),
    "score_floor": Field("number", 0, 1),
    "pointing_tolerance": Field("number", 0, 10000, why="pixels"),
    "history": Field("rows"),
    "optimizer_state_dict": Field("dict"),
    "torch_rng": Field("bytes"),
}


def _shown(value: Any) -> str:
    if torch.is_tensor(value):
        return f"a tensor ({value.dtype}, shape {tuple(value.shape)})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_metadata(ckpt: dict[str, Any], path: str | os.PathLike, n_classes: int) -> None:
    """Every field of ``FIELDS`` that the checkpoint has fits its row (type, range,
    finiteness), and ``classes`` names every output of the last layer: one table for the
    classifier's and the detector's checkpoints alike."""
    for key, rule in FIELDS.items():
        if key in ckpt and ckpt[key] is not None and not rule.accepts(ckpt[key]):
            raise UserError(f"checkpoint {path}: '{key}' is {_shown(ckpt[key])}, not "
                            f"{rule.expected()}")
    classes = ckpt.get("classes")
    if classes is not None and len(classes) != n_classes:
        raise UserError(f"checkpoint {path} lists {len(classes)} classes but its last layer "
                        f"has {n_classes} outputs")


def check_weight_types(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                       what: str) -> None:
    """Every tensor that the model holds in floating point is floating point in the file too:
    integer weights would be cast without a word (and a NaN cast to an integer is garbage)."""
    for key, value in expected.items():
        if key in state and value.is_floating_point() and not state[key].is_floating_point():
            raise UserError(f"{what}: weight '{key}' is {str(state[key].dtype).replace('torch.', '')}"
                            f", not floating point; this is not a file that training wrote")


def load_state(module: nn.Module, state: dict[str, torch.Tensor], what: str, layout: str
               ) -> None:
    """Load ``state`` into ``module`` exactly (each tensor cast to the module's dtype), or raise
    one line, ``{what} does not fit {layout}: ...``, naming the keys or the shape that do not
    fit, an integer weight or a weight that is not finite. A batch-norm step counter
    (``num_batches_tracked``: unused in eval mode, and frozen batch norm has none) that is
    missing or extra is no mismatch. The one state-dict loader of the tool: classifiers, the
    zoo's models and the detectors."""
    expected = module.state_dict()
    counter = "num_batches_tracked"
    missing = [k for k in expected if k not in state and not k.endswith(counter)]
    unexpected = [k for k in state if k not in expected and not k.endswith(counter)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UserError(f"{what} does not fit {layout}: {' and '.join(parts)} weights")
    for key, value in expected.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            raise UserError(f"{what} does not fit {layout}: '{key}' has shape "
                            f"{tuple(state[key].shape)} where the model has {tuple(value.shape)}")
    check_weight_types(state, expected, what)
    check_finite(state, what)
    module.load_state_dict({k: v.to(expected[k].dtype) if k in expected else v
                            for k, v in state.items()}, strict=False)


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Every floating-point tensor of ``state`` is finite (no NaN, no inf)."""
    for key, value in state.items():
        if value.is_meta:
            raise UserError(f"{what}: weight '{key}' is a meta tensor (a shape without values); "
                            f"it was saved from a model that was never materialised")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{what}: weight '{key}' is not finite (NaN or inf); the model "
                            f"that wrote it had diverged")
