"""The error types for bad input from the user and stopped runs; ``main.py`` prints them as one
line and exits with their ``exit_code``.

Exit codes: 0 done, 2 bad input (a flag, a path, a file's content, no data and no network),
3 training stopped because the loss or the weights stopped being finite, 130 interrupted.
"""

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
