"""The CIFAR-style ResNet-18 and the self-describing checkpoints it is saved in.

The network is torchvision's ResNet-18 with the stem that small images need (3x3 convolution,
stride 1, no max-pool), so a 32x32 input keeps a 4x4 map at ``layer4``. Its named stages
(``layer1`` .. ``layer4``, ``fc``) are what explainers name as target layers.
"""
from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18

import outputs
from errors import TrainingStopped, UserError, reason

ARCH = "resnet18_cifar"


def build_resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max-pool, GAP + one linear layer."""
    model = resnet18(weights=None, num_classes=num_classes, zero_init_residual=True)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, half: bool = False) -> None:
    """Write a checkpoint that records what it holds, atomically (temporary file + rename).

    ``meta`` carries ``dataset``, ``classes``, ``mean``, ``std``, ``input_size``, ``epoch`` and
    ``acc``; ``half`` stores floating-point weights in fp16 to halve the file (loading restores
    fp32).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    try:
        check_finite(state, f"not saving {path}")
    except UserError as exc:   # a diverged model never replaces a good checkpoint
        raise TrainingStopped(str(exc)) from None
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"arch": ARCH, "model_state_dict": state, **meta}
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer.state_dict()
    # Serialized in memory, then written by Python: a full disk is then an OSError with its
    # reason instead of PyTorch's "[enforce fail at inline_container.cc]".
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with outputs.atomic(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file into a dict, naming the problem in one line when it cannot.

    A bare state dict (what ``torch.save(model.state_dict())`` writes) is accepted too and
    wrapped as ``{"model_state_dict": ...}`` without metadata.
    """
    path = Path(path)
    kind = outputs.path_kind(path)
    if kind == outputs.MISSING:
        raise UserError(f"checkpoint not found: {path} (train one with --mode train, "
                        f"or pass --save_path PATH)")
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


def check_metadata(ckpt: dict[str, Any], path: str | os.PathLike, n_classes: int) -> None:
    """The fields a checkpoint describes itself with have the types and ranges that the rest
    of the tool relies on: ``classes`` names every output, ``mean`` and ``std`` are three
    finite numbers (``std`` above 0), ``input_size`` a sensible side length."""
    for key in ("arch", "dataset"):
        if key in ckpt and not isinstance(ckpt[key], str):
            raise UserError(f"checkpoint {path}: '{key}' is {ckpt[key]!r}, not a name")
    classes = ckpt.get("classes")
    if classes is not None:
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
            raise UserError(f"checkpoint {path}: 'classes' is {classes!r}, not a list of names")
        if len(classes) != n_classes:
            raise UserError(f"checkpoint {path} lists {len(classes)} classes but its last layer "
                            f"has {n_classes} outputs")
    for key in ("mean", "std"):
        value = ckpt.get(key)
        if value is None:
            continue
        if (not isinstance(value, (list, tuple)) or len(value) != 3
                or not all(_is_number(v) for v in value)):
            raise UserError(f"checkpoint {path}: '{key}' is {value!r}, not three finite numbers")
        if key == "std" and min(value) <= 0:
            raise UserError(f"checkpoint {path}: 'std' is {list(value)}; every value must be "
                            f"above 0 (inputs are divided by it)")
    size = ckpt.get("input_size")
    if size is not None and not (isinstance(size, int) and 8 <= size <= 4096):
        raise UserError(f"checkpoint {path}: 'input_size' is {size!r}, not a side length "
                        f"between 8 and 4096 pixels")


def check_finite(state: dict[str, torch.Tensor], what: str) -> None:
    """Every floating-point tensor of ``state`` is finite (no NaN, no inf)."""
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise UserError(f"{what}: weight '{key}' is not finite (NaN or inf); the model "
                            f"that wrote it had diverged")


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu",
               num_classes: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network a checkpoint describes, load its weights, return ``(model, meta)``.

    The model is in eval mode, fp32, on ``device``. ``meta`` is the checkpoint without its
    weights. A checkpoint of another architecture or class count is a one-line ``UserError``.
    """
    ckpt = read_checkpoint(path)
    arch = ckpt.get("arch", ARCH)
    if arch != ARCH:
        raise UserError(f"checkpoint {path} is a '{arch}' model; this tool loads '{ARCH}'")
    state = ckpt["model_state_dict"]
    fc_weight = state.get("fc.weight")
    if fc_weight is None or fc_weight.ndim != 2:
        raise UserError(f"checkpoint {path} is not a ResNet-18 of this project (no 'fc.weight'; "
                        f"first keys: {', '.join(list(state)[:3])})")
    n_classes = int(fc_weight.shape[0])
    check_metadata(ckpt, path, n_classes)
    if num_classes is not None and num_classes != n_classes:
        raise UserError(f"checkpoint {path} has {n_classes} classes, the dataset has {num_classes}")
    model = build_resnet18(n_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise UserError(f"checkpoint {path} does not fit ResNet-18 ({len(missing)} missing and "
                        f"{len(unexpected)} unexpected weights, e.g. {detail})")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise UserError(f"checkpoint {path} does not fit ResNet-18: '{key}' has shape "
                            f"{tuple(state[key].shape)}, expected {tuple(value.shape)}")
    check_finite(state, f"checkpoint {path}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model_state_dict", "optimizer_state_dict")}
    meta.setdefault("arch", ARCH)
    return model, meta
