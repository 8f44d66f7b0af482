"""Every file the tool writes goes through here: whole or not at all, failures in one line.

A file is written to a temporary name beside its target and renamed into place when complete,
so a full disk, a kill or an exception never leaves half a picture, table or checkpoint; an
``OSError`` while writing becomes one ``UserError`` line naming the file. Temporary files of a
killed process (its pid is in their name) are removed by the next write of the same target.
Each run lists the files it wrote in ``FOLDER/runs/<time>-<pid>.txt``, so that two runs into
the same folder can be told apart.
"""
from __future__ import annotations

import contextlib
import csv
import datetime
import errno
import itertools
import logging
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from errors import UserError, reason

written: list[Path] = []   # this process's files, in the order they were completed

MISSING, REGULAR = "missing", "a regular file"


def path_kind(path: str | os.PathLike) -> str:
    """What ``path`` is, in words: ``MISSING`` (nothing there, or under a file), ``REGULAR``,
    or ``"a folder"``, ``"a FIFO (named pipe)"``, ``"a character device"``, ``"a block
    device"``, ``"a socket"``, ``"a symbolic link to a missing target"``, ``"a loop of symbolic
    links"``, ``"a name too long"``. Links are followed, as opening the path would."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a symbolic link to a missing target" if os.path.islink(path) else MISSING
    except NotADirectoryError:
        return MISSING
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a loop of symbolic links"
        if exc.errno == errno.ENAMETOOLONG:
            return "a name too long"
        return f"unreadable ({exc.strerror or reason(exc)})"
    for test, kind in ((stat.S_ISREG, REGULAR), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def writable_target(path: str | os.PathLike) -> str | None:
    """The one rule for files the tool writes: only a regular file (replaced whole) or a path
    where nothing is yet. ``None`` when ``path`` may be written, else why not."""
    kind = path_kind(path)
    if kind in (MISSING, REGULAR):
        return None
    return f"it is {kind}, and only a regular file or a new path is written"


NAME_BYTES = 255   # the longest file name of Linux's and macOS's file systems


def _temporary_stem(path: Path) -> str:
    """What a temporary of ``path`` starts with: ``.NAME``, cut so that the whole temporary
    name (with a pid of up to 10 digits) fits wherever ``path``'s own name fits."""
    room = NAME_BYTES - len(f"..{10 ** 10}.tmp{path.suffix}".encode())
    return "." + path.name.encode()[:room].decode(errors="ignore")


def _temporary(path: Path, pid: int) -> Path:
    # The real suffix stays last: matplotlib, OpenCV and NumPy choose the format by it.
    return path.with_name(f"{_temporary_stem(path)}.{pid}.tmp{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# A temporary's name: ``.NAME.PID.tmp`` and the target's suffix (see :func:`_temporary`).
TEMPORARY = re.compile(r"(?P<stem>\..*)\.(?P<pid>\d+)\.tmp(?P<suffix>(?:\.[^.]*)?)$")
# Per folder written in this run, the temporaries that processes no longer running left
# there, by the (stem, suffix) of the file they were to become.
_stale: dict[Path, dict[tuple[str, str], list[Path]]] = {}


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of ``path`` left by processes that no longer run. The folder
    is listed once per run, on its first write: listing it for every file cost a folder of
    4,000 panels 4.4 ms per panel (and grew with the folder) against 0.09 ms for the write."""
    folder = path.parent.absolute()
    if folder not in _stale:
        found: dict[tuple[str, str], list[Path]] = {}
        with contextlib.suppress(OSError):
            for candidate in folder.iterdir():
                match = TEMPORARY.match(candidate.name)
                pid = int(match["pid"]) if match else os.getpid()
                if pid != os.getpid() and not _alive(pid):
                    found.setdefault((match["stem"], match["suffix"]), []).append(candidate)
        _stale[folder] = found
    for candidate in _stale[folder].pop((_temporary_stem(path), path.suffix), []):
        with contextlib.suppress(OSError):
            candidate.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic(path: str | os.PathLike, fresh: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it replaces ``path``
    (and is recorded for this run), on failure it is removed and ``path`` is untouched.
    ``fresh``: the folder is one this run fills from empty, so there are no temporaries of
    killed runs to look for (thousands of files then cost no folder scan each)."""
    path = Path(path)
    refused = writable_target(path)
    if refused:
        raise UserError(f"cannot write {path}: {refused}")
    tmp = _temporary(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not fresh:
            remove_stale_temporaries(path)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):   # a read-only folder refuses the clean-up too
            tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {exc.strerror or reason(exc)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    record(path)


def record(path: str | os.PathLike) -> None:
    """Count ``path`` as written by this run (for writers that are atomic on their own)."""
    written.append(Path(path))


def write_text(path: str | os.PathLike, text: str) -> None:
    """``text`` to ``path``, atomically."""
    with atomic(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | os.PathLike, fields: Sequence[str], rows: Iterable[dict]) -> None:
    """A CSV file with a header row, atomically."""
    with atomic(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def manifest_path(folder: str | os.PathLike) -> Path:
    """Where this run's manifest goes: ``folder/runs/<UTC time>-<pid>.txt``, a name no
    earlier run of this process took (the report links to it before it is written)."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    manifest = Path(folder) / "runs" / f"{stamp}-{os.getpid()}.txt"
    for n in itertools.count(2):   # two runs of one process in the same second
        if not manifest.exists():
            break
        manifest = manifest.with_name(f"{stamp}-{os.getpid()}-{n}.txt")
    return manifest


def finish_run(folder: str | os.PathLike, announce: bool = True,
               manifest: Path | None = None) -> Path | None:
    """List this run's files in ``manifest`` (default :func:`manifest_path`) with the
    command line and say where; nothing when the run wrote nothing."""
    if not written:
        _stale.clear()
        return None
    manifest = manifest or manifest_path(folder)
    from jobs import PROG
    lines = [f"# {PROG} " + " ".join(sys.argv[1:]), *map(str, written)]
    count = len(written)
    write_text(manifest, "\n".join(lines) + "\n")
    written.clear()
    _stale.clear()
    if announce:
        logging.getLogger(__name__).info(f"Files of this run: {manifest} ({count} files)")
    return manifest


def distinct(value: float, versus: float, digits: int = 2) -> tuple[str, str]:
    """``value`` and ``versus`` printed with at least ``digits`` decimals and as many more as
    it takes for two different numbers to read differently (a best score of 0.9996 under a
    threshold of 1.0 must not read "1.00"): for messages that compare two numbers."""
    for d in range(digits, 10):
        a, b = f"{value:.{d}f}", f"{versus:.{d}f}"
        if a != b or value == versus:
            return a, b
    return repr(float(value)), repr(float(versus))

