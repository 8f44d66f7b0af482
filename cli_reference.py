"""The command-line reference, ``docs/cli.md``, written from the parser and the job table, so
that it cannot drift from what ``main.py`` accepts (a test compares it with a fresh rendering).

``python cli_reference.py`` rewrites the page.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import jobs
import main

PAGE = Path(__file__).resolve().parent / "docs" / "cli.md"


def _flag_row(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings)
    if action.metavar:
        names += f" `{action.metavar}`"
    elif action.choices:
        names += f" `{{{','.join(map(str, action.choices))}}}`"
    hidden = action.default is None or action.default is False \
        or action.default == argparse.SUPPRESS
    shown = "" if hidden else f"`{action.default}`"
    text = (action.help or "").replace("%(default)s", str(action.default)).replace("|", "\\|")
    return f"| {names} | {shown} | {' '.join(text.split())} |"


def markdown(parser: argparse.ArgumentParser) -> str:
    """The reference page: every flag by group, with its default, then every job with the
    flags it reads."""
    lines = ["# Command-line reference", "",
             ("Written by `python cli_reference.py` from the parser and the job table "
             "(`jobs.py`); a test fails when it is stale. `python main.py --help` prints the "
             "same."), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings and a.dest != "help"]
        if not actions:
            continue
        title = "general" if group.title in ("options", "optional arguments") else group.title
        lines += [f"## {title[0].upper()}{title[1:]}", "", "| flag | default | meaning |",
                  "|---|---|---|", *(_flag_row(a) for a in actions), ""]
    shared = ", ".join(f"`--{f}`" for f in sorted(jobs.SHARED))
    lines += ["## Jobs", "",
              (f"The first job whose condition the flags meet runs. Every job reads {shared}; "
              "any other flag given to a job that does not read it is refused."), "",
              "| job | what it does | flags it reads |", "|---|---|---|"]
    for job in jobs.JOBS:
        flags = " ".join(f"`--{f}`" for f in sorted(job.reads))
        lines.append(f"| `{job.name}` | {job.title} | {flags} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    PAGE.write_text(markdown(main.build_parser()), encoding="utf-8")
    print(f"wrote {PAGE}")
