"""Launch several copies of a program the way ``torchrun`` does, for the distributed tests.

Each copy gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
its environment, and there is no agent that kills the survivors when one copy fails: what the
tests see is what the program itself does about a failed peer.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cli import _NO_NETWORK, ROOT


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Rank:
    returncode: int
    stdout: str
    stderr: str


def run_ranks(argvs: list[list[str]], code: str | None = None, timeout: float = 300,
              cwd: Path | None = None) -> list[Rank]:
    """Run ``python -c CODE ARGV`` once per entry of ``argvs`` (rank i gets ``argvs[i]``), all
    at once as one job; by default CODE is ``main.py`` offline. Returns every rank's outcome;
    a job that outlives ``timeout`` is killed and fails the test with its output."""
    code = code if code is not None else _NO_NETWORK.format(root=str(ROOT))
    port = free_port()
    procs = []
    for rank, argv in enumerate(argvs):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": str(len(argvs)),
               "LOCAL_WORLD_SIZE": str(len(argvs))}
        procs.append(subprocess.Popen([sys.executable, "-c", code, *map(str, argv)],
                                      cwd=cwd or ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append(Rank(proc.returncode, out, err))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        outputs = [proc.communicate() for proc in procs]
        raise AssertionError(f"the ranks still ran after {timeout} s: {outputs}") from None
    return results


def run_torchrun(nproc: int, *args: str, timeout: float = 300, cwd: Path | None = None
                 ) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node NPROC main.py ARGS`` on this machine, offline."""
    folder = Path(tempfile.mkdtemp(prefix="torchrun_"))
    script = folder / "main_offline.py"
    script.write_text(_NO_NETWORK.format(root=str(ROOT)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
             "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script),
             *map(str, args)], cwd=cwd or ROOT, env=env, capture_output=True, text=True,
            timeout=timeout, check=False)
    finally:
        script.unlink(missing_ok=True)
        folder.rmdir()
