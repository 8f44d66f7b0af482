"""Several processes under ``torchrun``: the one module that knows ``torch.distributed``.

``torchrun --nproc_per_node N main.py ...`` starts N copies of the program and tells each, in
its environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
which one it is. :func:`session` joins them into a process group (NCCL on CUDA, gloo on the
CPU); training wraps its model with :func:`wrap_model`, evaluation takes its :func:`shard` of
the work and :func:`gather` brings the pieces to rank 0, which alone writes files.

A plain ``python main.py`` (or ``torchrun`` with one process) never initialises a process
group: every function here then acts as the identity and the program behaves as it always did.

A rank that fails must not leave the others waiting forever. A user error on one rank is
printed by that rank as one line naming it (``error: rank 1 of 2: ...``); the survivors notice
at their next collective (gloo at once when the peer's process exits, ``torchrun`` terminates
them in any case) and end with one line saying they lost a peer. A rank that stays alive but
stops answering is caught by the process group's timeout, ``DIST_TIMEOUT_S`` seconds (default
600).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from errors import UserError, reason

DEFAULT_TIMEOUT_S = 600.0
MAX_TIMEOUT_S = 7 * 24 * 3600.0   # a week: beyond that a hung peer is never noticed
_joined = False                   # whether this process entered :func:`session` yet
_left_open = False                # whether a failed block left the process group initialised

# Messages of the errors that collectives raise when a peer died or hung; gloo raises plain
# RuntimeErrors, so the type alone does not tell a lost peer from a bug.
_PEER_FAILURE_MARKERS = ("closed by peer", "reset by peer", "timed out", "timeout",
                         "broken pipe", "nccl", "gloo", "processgroup", "connection refused")


@dataclass(frozen=True)
class World:
    """This process's place among the processes ``torchrun`` started."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def label(self) -> str:
        """``"rank 1 of 2: "`` for messages of a distributed run, nothing otherwise."""
        return f"rank {self.rank} of {self.size}: " if self.distributed else ""


def _from_environment() -> World:
    """What ``torchrun`` put in the environment; one process when it put nothing."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (as torchrun sets "
                        "them)") from None
    if size < 1 or not 0 <= rank < size:
        raise UserError(f"RANK {rank} does not fit WORLD_SIZE {size}")
    return World(rank, size, local_rank)


def world() -> World:
    """This process's place: from the process group once :func:`session` joined one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def _timeout() -> datetime.timedelta:
    value = os.environ.get("DIST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_TIMEOUT_S):
        raise UserError(f"DIST_TIMEOUT_S must be a finite number of seconds > 0 and <= "
                        f"{MAX_TIMEOUT_S:g}, got '{value}'")
    return datetime.timedelta(seconds=seconds)


def quiet_before_join() -> bool:
    """Whether this process should leave a user error to local rank 0: under ``torchrun``,
    before the processes joined, an error (a flag, a path, the environment) is the same on every
    process of a machine, so one line is enough. Errors after joining are each rank's own."""
    try:
        here = _from_environment()
    except UserError:
        here = World()
    return here.distributed and not _joined and not dist.is_initialized() \
        and here.local_rank != 0


def _wants_cuda(device_name: str) -> bool:
    return device_name != "cpu" and torch.cuda.is_available()


def peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank died or hung."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(m in text for m in _PEER_FAILURE_MARKERS)


@contextlib.contextmanager
def session(device_name: str = "auto") -> Iterator[World]:
    """Join the other ranks for the duration of the block, when ``torchrun`` started several.

    NCCL when the ranks run on CUDA (each on GPU ``LOCAL_RANK``), gloo on the CPU. Errors in the
    block come out as one :class:`UserError` naming this rank: its own user error, or a peer
    that died or timed out. One process: nothing is initialised and nothing is changed.
    """
    global _joined
    here = _from_environment()
    if not here.distributed:
        yield World()
        return
    timeout = _timeout()   # a bad DIST_TIMEOUT_S is the same on every rank: before joining
    _joined = True
    if not dist.is_available():
        raise UserError(f"{here.label()}this PyTorch build has no torch.distributed, so it "
                        f"cannot run as one of {here.size} processes")
    cuda = _wants_cuda(device_name)
    if cuda:
        torch.cuda.set_device(here.local_rank % torch.cuda.device_count())
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{here.label()}could not join the other processes: {reason(exc)} "
                        f"(start with torchrun, see README 'Several GPUs or machines')") from None
    global _left_open
    _left_open = True   # until the block succeeds: destroying the group with a dead peer can block
    try:
        yield here
    except UserError as exc:  # the same type, so that its exit code stays
        raise type(exc)(f"{here.label()}{exc}") from None
    except Exception as exc:
        if not peer_failure(exc):
            raise
        raise UserError(f"{here.label()}lost contact with another rank ({_gist(exc)}); "
                        f"the failing rank's own error says why") from None
    dist.destroy_process_group()
    _left_open = False


def exit_now(code: int) -> None:
    """End the process with ``code``. At interpreter exit gloo's destructors can abort a rank
    (``terminate called without an active exception``, status -6) after its work and its
    one line were done: with the process group left open by a failure, and now and then
    after a clean ``destroy_process_group`` too. So a rank that joined a group flushes its
    streams and logs and leaves without running destructors; every output file was written
    and closed before (atomically, see ``outputs.py``)."""
    if _left_open or _joined:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _gist(exc: BaseException) -> str:
    """The first sentence of a backend's error, without its ``[source/file.cc:123]`` prefix."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", reason(exc, 400))
    return text.split(". ")[0].rstrip(".")[:160]


# --------------------------------------------------------------------------------------------
# Work split across ranks


def shard(n: int, here: World | None = None) -> slice:
    """This rank's contiguous block of ``n`` items: blocks in rank order cover ``0..n-1``
    exactly once and differ in size by at most one, so rank 0 can concatenate the gathered
    blocks back into the original order."""
    here = here or world()
    base, extra = divmod(n, here.size)
    start = here.rank * base + min(here.rank, extra)
    return slice(start, start + base + (here.rank < extra))


def gather(value: Any, here: World | None = None) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank: each rank then returns the same
    result, of the same type.

    Tensors, also inside lists, tuples and dicts, travel through the CPU so that no rank
    touches another rank's GPU. One process: ``[value]``.
    """
    here = here or world()
    if not here.distributed:
        return [value]
    values: list[Any] = [None] * here.size
    dist.all_gather_object(values, _to_cpu(value))
    return values


def gather_concat(tensor: torch.Tensor, here: World | None = None) -> torch.Tensor:
    """The ranks' blocks (from :func:`shard`) concatenated along dim 0, on the CPU, on every
    rank. One process: ``tensor`` itself."""
    here = here or world()
    if not here.distributed:
        return tensor
    return torch.cat(gather(tensor, here))


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def sum_across(values: list[float], here: World | None = None) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (for counts and loss totals)."""
    here = here or world()
    if not here.distributed:
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


# --------------------------------------------------------------------------------------------
# Training


def wrap_model(model: nn.Module, here: World | None = None) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` (gradients averaged over ranks after each
    backward pass); ``model`` itself for one process."""
    here = here or world()
    if not here.distributed:
        return model
    device = next(model.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper: its state dict has no
    ``module.`` prefixes, so checkpoints load without ``torch.distributed``."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_buffers(model: nn.Module, here: World | None = None) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that all ranks
    evaluate the model that rank 0 saves (each rank updates them from its own batches)."""
    here = here or world()
    if not here.distributed:
        return
    for buffer in unwrap_model(model).buffers():
        dist.broadcast(buffer.data, src=0)
