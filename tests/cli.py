"""Run ``main.py`` the way a user does, in a subprocess, with the network switched off."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Any connection attempt fails at once, as on a machine without network, so the tests never
# download anything and never wait for a timeout.
_NO_NETWORK = """
import socket, sys
def _refuse(*args, **kwargs):
    raise OSError("network disabled for tests")
_connect = socket.socket.connect
def _internet_only(self, *args, **kwargs):
    if self.family == socket.AF_UNIX:   # data-loader workers talk over local sockets
        return _connect(self, *args, **kwargs)
    return _refuse()
socket.socket.connect = _internet_only
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
sys.path.insert(0, {root!r})
sys.argv = ["main.py"] + sys.argv[1:]
import main
main._exit(main.main())   # as `python main.py` leaves
"""


def run_main(*args: str, cwd: Path | None = None, timeout: float = 900
             ) -> subprocess.CompletedProcess:
    """``python main.py ARGS`` offline; returns the completed process (text output)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    code = _NO_NETWORK.format(root=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd or ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2, exactly one line on stderr, no traceback, and the line names the problem."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@contextlib.contextmanager
def _offline():
    """Sockets to the internet refused inside the block, as ``_NO_NETWORK`` does for a
    subprocess (local sockets, as data-loader workers use, still work)."""
    saved = socket.socket.connect, socket.create_connection, socket.getaddrinfo
    connect = saved[0]

    def refuse(*args, **kwargs):
        raise OSError("network disabled for tests")

    def internet_only(self, *args, **kwargs):
        if self.family == socket.AF_UNIX:
            return connect(self, *args, **kwargs)
        return refuse()

    socket.socket.connect, socket.create_connection, socket.getaddrinfo = (
        internet_only, refuse, refuse)
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection, socket.getaddrinfo = saved


def run_here(capture, *args: str) -> subprocess.CompletedProcess:
    """``main.main(ARGS)`` in this process, offline, as a completed process (status, stdout,
    stderr from ``capture``, pytest's capsys or capfd). Much faster than :func:`run_main`
    (no new interpreter importing torch); for runs whose process-level behaviour (signals,
    exit of the interpreter) is not what the test checks."""
    import main
    capture.readouterr()
    with _offline():
        code = main.main([str(a) for a in args])
    out = capture.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)
