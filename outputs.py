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
import itertools
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from errors import UserError, reason

written: list[Path] = []   # this process's files, in the order they were completed


def _temporary(path: Path, pid: int) -> Path:
    # The real suffix stays last: matplotlib, OpenCV and NumPy choose the format by it.
    return path.with_name(f".{path.name}.{pid}.tmp{path.suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of ``path`` left by processes that no longer run."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.tmp{re.escape(path.suffix)}$")
    with contextlib.suppress(OSError):
        for candidate in path.parent.iterdir():
            match = pattern.match(candidate.name)
            if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
                candidate.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; on success it replaces ``path``
    (and is recorded for this run), on failure it is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = _temporary(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
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


def finish_run(folder: str | os.PathLike, announce: bool = True) -> Path | None:
    """List this run's files in ``folder/runs/<UTC time>-<pid>.txt`` (with the command line)
    and say where; nothing when the run wrote nothing."""
    if not written:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    manifest = Path(folder) / "runs" / f"{stamp}-{os.getpid()}.txt"
    for n in itertools.count(2):   # two runs of one process in the same second
        if not manifest.exists():
            break
        manifest = manifest.with_name(f"{stamp}-{os.getpid()}-{n}.txt")
    lines = ["# python main.py " + " ".join(sys.argv[1:]), *map(str, written)]
    count = len(written)
    write_text(manifest, "\n".join(lines) + "\n")
    written.clear()
    if announce:
        logging.getLogger(__name__).info(f"Files of this run: {manifest} ({count} files)")
    return manifest
