"""The error types for bad input from the user and stopped runs; the command layer prints them
as one line and exits with their ``exit_code``.

Exit codes: 0 done, 2 bad input (a flag, a path, a file's content, no data and no network),
3 training stopped because the loss or the weights stopped being finite, 130 interrupted
(Ctrl-C, or SIGTERM once :func:`install_signal_handlers` ran).

Library functions name their own parameters (``layer``, ``methods``) through
:class:`ParamError`; the command layer rewords a parameter as the flag that set it, so a Python
caller reads ``layer`` and a terminal user reads ``--target_layer``.
"""
from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping

EXIT_BAD_INPUT = 2
EXIT_TRAINING_STOPPED = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with what the user gave us (a file, a flag, the network), not a bug."""

    exit_code = EXIT_BAD_INPUT


class FlagError(UserError):
    """A flag that cannot be parsed or is out of range; the line points to ``--help``."""


class ParamError(UserError):
    """A bad value of a library function's parameter. ``template`` holds ``{param}`` where the
    parameter's name goes (and ``{name}`` for each of ``others``, further parameters the
    message names): ``str()`` gives the parameters' names (``layer``), :meth:`worded` the
    names a caller gives them, such as the command line's flags."""

    def __init__(self, param: str, template: str, *others: str):
        self.param, self.template, self.others = param, template, others
        super().__init__(self.worded({}))

    def worded(self, names: Mapping[str, str]) -> str:
        """The message with each parameter replaced by ``names[param]`` (itself if absent)."""
        text = self.template.replace("{param}", names.get(self.param, self.param))
        for other in self.others:
            text = text.replace("{" + other + "}", names.get(other, other))
        return text


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
    goes on. Sent through ``logging`` (a warning of the ``notes`` logger): the command line
    prints it on stderr without tearing a progress bar, a script can silence or capture it."""
    logging.getLogger("notes").warning(f"note: {message}")


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
