"""The error types for bad input from the user and stopped runs; ``main.py`` prints them as one
line and exits with their ``exit_code``.

Exit codes: 0 done, 2 bad input (a flag, a path, a file's content, no data and no network),
3 training stopped because the loss or the weights stopped being finite, 130 interrupted
(Ctrl-C, or SIGTERM once :func:`install_signal_handlers` ran).
"""
import signal
import sys
import threading

from tqdm import tqdm

EXIT_BAD_INPUT = 2
EXIT_TRAINING_STOPPED = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with what the user gave us (a file, a flag, the network), not a bug."""

    exit_code = EXIT_BAD_INPUT


class FlagError(UserError):
    """A flag that cannot be parsed or is out of range; the line points to ``--help``."""


class TrainingStopped(UserError):
    """Training stopped early on purpose (a non-finite loss): nothing was saved from it."""

    exit_code = EXIT_TRAINING_STOPPED


def reason(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message (or its type's name), at most ``limit``
    characters: enough to say why, short enough for a one-line error."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def note(message: str) -> None:
    """One ``note:`` line on stderr: something was skipped or changed on purpose, and the run
    goes on. Written through ``tqdm`` so that an open progress bar is not torn."""
    tqdm.write(f"note: {message}", file=sys.stderr)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_signal_handlers() -> None:
    """Treat SIGTERM (``kill``, a job scheduler, ``torchrun`` stopping its workers) like Ctrl-C:
    it raises ``KeyboardInterrupt`` in the main thread, so temporary files are removed by the
    writers' clean-up and ``main`` ends with ``error: interrupted`` and exit status 130,
    instead of dying at once with 143 and a half-written temporary file. Call it once, first
    thing in ``main``; outside the main thread (where signals cannot be handled) it does
    nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
