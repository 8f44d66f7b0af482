"""What every job of the command line shares: the console the library logs to, the run of
the job the flags ask for (``jobs.py``), and the wording of a library error as the job's flags.

Only the command layer (``main.py``, ``jobs.py``, ``validation.py``, this module and the jobs'
modules ``cli_*.py``) reads flags or prints; the library underneath takes parameters and
returns results, so a script calls the same functions (see the README's "From Python").
Library errors name their own parameters (``layer``, ``weights``); :func:`run` rewords them as
the flags of the job that set them.
"""
from __future__ import annotations

import logging
import sys
from argparse import Namespace

import torch
from tqdm import tqdm

from errors import ParamError, UserError


class _Console(logging.Handler):
    """The library's progress lines on stdout and its notes and warnings on stderr, written
    through tqdm so that they never break a progress bar; the streams are looked up when a line
    is written (tests and scripts swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
        tqdm.write(self.format(record), file=stream)
        stream.flush()


def configure_console() -> None:
    """Send the library's log lines to the terminal, once per process; a script that wants
    them silent or captured configures ``logging`` itself instead."""
    root = logging.getLogger()
    if not any(isinstance(h, _Console) for h in root.handlers):
        root.addHandler(_Console())
    root.setLevel(logging.INFO)


def run(args: Namespace) -> int:
    """Run the job the flags ask for; a library parameter's error is reworded as the flag of
    that job that set it (the job's ``params``, see ``jobs.py``)."""
    import jobs
    try:
        return jobs.run(args)
    except ParamError as exc:
        raise UserError(exc.worded(jobs.job_of(args).params)) from None


def precision_line(device: torch.device, dtype: torch.dtype | None) -> str:
    """``device cpu, precision bf16``: how a job's first line names where and how it runs."""
    from runtime import precision_label
    return f"device {device}, precision {precision_label(dtype)}"
