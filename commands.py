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
import shlex
import sys
import time
from argparse import Namespace

import torch
from tqdm import tqdm

from errors import ParamError, UserError
from report import RunFacts

_facts: RunFacts | None = None   # the running job's facts, for its report


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
    that job that set it (the job's ``params``, see ``jobs.py``). The run's facts start here
    (command, job, wall time); the job adds its own through :func:`note`."""
    import jobs
    global _facts
    job = jobs.job_of(args)
    _facts = RunFacts(f"{jobs.PROG} " + shlex.join(sys.argv[1:]), job.name, job.title)
    start = time.perf_counter()
    try:
        return jobs.run(args)
    except ParamError as exc:
        close_bars()
        raise UserError(exc.worded(job.params)) from None
    except BaseException:   # an error, Ctrl-C: the one line printed next starts a line
        close_bars()
        raise
    finally:
        _facts.seconds = time.perf_counter() - start


def close_bars() -> None:
    """Erase every progress bar still open: a job that stops mid-loop (an unreadable image in
    an epoch, Ctrl-C) leaves its bar's last frame without a newline, and the ``error:`` line
    printed next would be glued to it. Erased, the bar gives its line to the error."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


def note(**facts: object) -> None:
    """Hand facts of the running job to its report: any field of ``report.RunFacts``
    (``model``, ``random_weights``, ``device``, ``precision``, ``images``, ``accuracy``).
    Outside a command-line run (a script, a test calling a job's function) nothing happens."""
    unknown = set(facts) - set(RunFacts.__dataclass_fields__)
    if unknown:
        raise TypeError(f"not a fact of a run: {', '.join(sorted(unknown))}")
    if _facts is not None:
        for name, value in facts.items():
            setattr(_facts, name, value)


def finish(args: Namespace) -> None:
    """After the job, the one place a run's pages and lists are written: on rank 0 the run's
    ``report.html`` (the files of every rank, its facts, a link to the manifest), then each
    rank's manifest (``outputs.finish_run``). Into ``--log_dir`` for training, else
    ``--out_dir``; nothing when the run wrote nothing."""
    import distributed
    import jobs
    import outputs
    from report import write_facts, write_report
    here = distributed.world()
    folder = args.log_dir if args.mode == "train" else args.out_dir
    files = list(outputs.written)
    if not jobs.job_of(args).rank0:   # every rank ran the job and wrote its share
        files = [path for part in distributed.gather(files, here) for path in part]
    manifest = outputs.manifest_path(folder)
    if here.is_main and files and _facts is not None:
        files.append(write_facts(folder, _facts))
        page = write_report(folder, files, _facts, manifest)
        logging.getLogger(__name__).info(f"Report of this run: {page}")
    outputs.finish_run(folder, announce=here.is_main, manifest=manifest)


def say(line: str) -> None:
    """Print ``line`` once: under torchrun rank 0 alone prints what every rank would say."""
    import distributed
    if distributed.world().is_main:
        print(line)


def precision_line(device: torch.device, dtype: torch.dtype | None) -> str:
    """``device cpu, precision bf16``: how a job's first line names where and how it runs
    (and, noted for the run's report, the last such line of a job is its device and
    precision)."""
    from runtime import precision_label
    note(device=str(device), precision=precision_label(dtype))
    return f"device {device}, precision {precision_label(dtype)}"
