"""Where and in what precision the work runs: device choice, autocast, seeding."""
from __future__ import annotations

import contextlib
import functools
import platform
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from errors import ParamError


def usable_devices() -> list[str]:
    """The ``--device`` values this PyTorch build can run on, here and now."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Any device this build cannot use (no GPU, a
    CUDA index past the last GPU, ``mps`` without Metal, ``meta``) is a one-line user error.

    A bare ``cuda`` becomes the current GPU with its index (``cuda:0``, or ``cuda:LOCAL_RANK``
    under ``torchrun``, where :func:`distributed.session` selected it), so that device
    comparisons never mix ``cuda`` and ``cuda:0``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ParamError("device", f"unknown {{param}} '{name}' (usable here: "
                                   f"{', '.join(usable_devices())})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ParamError("device", f"{{param}} {name} was asked for, but PyTorch sees no CUDA "
                                   f"device (use {{param}} auto or cpu)")
    usable = (device.type == "cpu" and device.index in (None, 0)
              or device.type == "cuda" and (device.index or 0) < torch.cuda.device_count()
              or device.type == "mps" and torch.backends.mps.is_available())
    if not usable:
        raise ParamError("device", f"{{param}} {name} cannot be used by this PyTorch build on "
                                   f"this machine (usable here: {', '.join(usable_devices())})")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def machine_facts() -> dict[str, object]:
    """What a measurement ran on: the CPU's model name, its cores, torch and Python, for the
    records that results pages and reports are written from."""
    import os
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version()}


def cpu_name() -> str:
    """The CPU's model name, as ``lscpu`` gives it (``/proc/cpuinfo``), for the machine line of
    benchmarks and reports; what the platform says where there is none."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX), where autocast pays.

    oneDNN emulates bf16 on other CPUs, which is slower than fp32, so only these count.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and torch.backends.mkldnn.is_available()


def fast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced-precision dtype worth using on ``device``, or None for plain fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype that ``--precision`` asks for: ``fp32`` never reduces, ``auto`` uses
    :func:`fast_dtype`."""
    return None if precision == "fp32" else fast_dtype(device)


def precision_label(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bfloat16`` or ``float16``: how every job names the precision it runs in
    (its first line, the leaderboard's ``precision`` field)."""
    return "fp32" if dtype is None or dtype == torch.float32 else str(dtype).replace("torch.", "")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (samples independent, BatchNorm on running statistics),
    then restore the train/eval flag of every submodule."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution before it.

    For inference-only hot loops (deletion/insertion runs thousands of forward passes): the
    folded network computes the same function with one operation less per convolution. The
    model itself is left untouched; one that torch.fx cannot trace comes back as it is.
    """
    with eval_mode(model):
        try:
            return fuse(model)
        except Exception:  # noqa: BLE001 - any untraceable model simply runs unfolded
            return model


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch; return a CPU generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
