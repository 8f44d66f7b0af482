"""The CIFAR-style ResNet-18 and the self-describing checkpoints it is saved in.

The network is torchvision's ResNet-18 with the stem that small images need (3x3 convolution,
stride 1, no max-pool), so a 32x32 input keeps a 4x4 map at ``layer4``. Its named stages
(``layer1`` .. ``layer4``, ``fc``) are what explainers name as target layers.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet18

from errors import UserError, reason

ARCH = "resnet18_cifar"


def build_resnet18(num_classes: int = 10) -> nn.Module:
    """ResNet-18 for 32x32 inputs: 3x3 stride-1 stem, no max-pool, GAP + one linear layer."""
    model = resnet18(weights=None, num_classes=num_classes, zero_init_residual=True)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, half: bool = False) -> None:
    """Write a checkpoint that records what it holds, atomically (temporary file + rename).

    ``meta`` carries ``dataset``, ``classes``, ``mean``, ``std``, ``input_size``, ``epoch`` and
    ``acc``; ``half`` stores floating-point weights in fp16 to halve the file (loading restores
    fp32).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    payload = {"arch": ARCH, "model_state_dict": state, **meta}
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer.state_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file into a dict, naming the problem in one line when it cannot.

    A bare state dict (what ``torch.save(model.state_dict())`` writes) is accepted too and
    wrapped as ``{"model_state_dict": ...}`` without metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (train one with --mode train, "
                        f"or pass --save_path PATH)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - garbage bytes raise anything from the unpickler
        why = reason(exc)
        if why.startswith("Weights only load failed"):
            why = "it is not a pickle of tensors and plain values"
        raise UserError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint ({why})"
                        ) from None
    if isinstance(payload, dict) and "model_state_dict" in payload:
        return payload
    if isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values()):
        return {"model_state_dict": payload}
    raise UserError(f"checkpoint {path} holds no model weights (expected a dict with "
                    f"'model_state_dict' or a state dict)")


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
    classes = ckpt.get("classes")
    if classes is not None and len(classes) != n_classes:
        raise UserError(f"checkpoint {path} lists {len(classes)} classes but its last layer has "
                        f"{n_classes} outputs")
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
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model_state_dict", "optimizer_state_dict")}
    meta.setdefault("arch", ARCH)
    return model, meta
