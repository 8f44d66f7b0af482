"""Pieces of the results pages that several page writers share: reading a run's JSON, a mean
with its interval, the leaderboard and sanity-check tables as Markdown, and the time and
machine lines. Plain Python (no torch), so that rebuilding a page is instant.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry import BASELINE_TITLES  # the repository's modules (no torch)

BASELINES = tuple(BASELINE_TITLES)   # the leaderboard's and sanity check's baseline maps


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def interval(row: dict, key: str, digits: int) -> str:
    """``mean [low, high]`` of ``row``'s ``key`` (``key_mean``, ``key_ci95_low``, ...)."""
    mean, low, high = row[f"{key}_mean"], row[f"{key}_ci95_low"], row[f"{key}_ci95_high"]
    if low is None or high is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def short_layer(layer: str) -> str:
    """``encoder.layers.encoder_layer_5.ln_1`` -> ``block 6 ln_1``; other names as they are."""
    prefix = "encoder.layers.encoder_layer_"
    if layer.startswith(prefix):
        block, _, rest = layer[len(prefix):].partition(".")
        return f"block {int(block) + 1} {rest}".strip()
    return layer or "–"


def leaderboard_table(rows: list[dict]) -> list[str]:
    lines = [("| rank | method | layer | insertion − deletion ↑ | deletion AUC ↓ | "
              "insertion AUC ↑ | Average Drop % ↓ | Increase in Confidence % ↑ |"),
             "|---:|---|---|---|---|---|---|---|"]
    for r in rows:
        title = f"*{r['title']}*" if r["baseline"] else r["title"]
        lines.append(f"| {r['rank']} | {title} | {short_layer(r['layer'])} | "
                     f"{interval(r, 'insertion_minus_deletion', 4)} | "
                     f"{interval(r, 'deletion_auc', 4)} | {interval(r, 'insertion_auc', 4)} | "
                     f"{interval(r, 'average_drop_pct', 1)} | "
                     f"{interval(r, 'increase_in_confidence_pct', 1)} |")
    return lines


def best_method(rows: list[dict]) -> dict:
    """The first row of a ranked leaderboard that is not a baseline."""
    return next(r for r in rows if not r["baseline"])


def baseline_row(rows: list[dict], method: str) -> dict:
    return next(r for r in rows if r["baseline"] and r["method"] == method)


def above(a: dict, b: dict, key: str = "insertion_minus_deletion") -> bool:
    """Whether ``a``'s 95% interval of ``key`` lies wholly above ``b``'s (a clear win)."""
    return a[f"{key}_ci95_low"] is not None and a[f"{key}_ci95_low"] > b[f"{key}_ci95_high"]


def against_baselines(rows: list[dict]) -> str:
    """One sentence: the best method against the centre prior and the random map, read from
    the intervals (overlapping intervals are a tie, not a win)."""
    best, centre, rand = best_method(rows), baseline_row(rows, "centre"), \
        baseline_row(rows, "random")
    name = f"{best['title']} at `{short_layer(best['layer'])}`"
    score = interval(best, "insertion_minus_deletion", 3)
    centre_score = interval(centre, "insertion_minus_deletion", 3)
    if above(best, centre):
        verdict = f"beats the centre prior ({centre_score}): the intervals do not overlap"
    elif above(centre, best):
        verdict = f"stays below the centre prior ({centre_score}): no method beats it"
    else:
        verdict = (f"ties the centre prior ({centre_score}): the intervals overlap, so no "
                   "method is shown to beat it")
    methods = [r for r in rows if not r["baseline"]]
    beat_random = sum(above(r, rand) for r in methods)
    return (f"The best method, **{name}** ({score}), {verdict}. {beat_random} of the "
            f"{len(methods)} method-and-layer rows beat the random map "
            f"({interval(rand, 'insertion_minus_deletion', 3)}) clearly.")


def sanity_methods(sanity: dict) -> list[dict]:
    """One row per method (and baseline) of a sanity check: the one after the last stage."""
    last = sanity["stages"][-1]
    return [r for r in sanity["rows"] if r["stage"] == last]


def sanity_table(sanity: dict) -> list[str]:
    stages = sanity["stages"]
    lines = ["| method | layer | " + " | ".join(f"+{s}" for s in stages) + " | verdict |",
             "|---|---|" + "---:|" * len(stages) + "---|"]
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    for r in sanity["rows"]:
        cells.setdefault((r["title"], r["layer"]), {})[r["stage"]] = r
    for (title, layer), by_stage in cells.items():
        fails = by_stage[stages[-1]]["fails"]
        lines.append(f"| {title} | {short_layer(layer)} | " + " | ".join(
            f"{by_stage[s]['spearman_mean']:.2f} / {by_stage[s]['ssim_mean']:.2f}"
            for s in stages) + f" | {'**fails**' if fails else 'passes'} |")
    return lines


def sanity_verdict(sanity: dict) -> str:
    """Which methods pass and which fail, in one sentence."""
    rows = [r for r in sanity_methods(sanity) if r["method"] not in BASELINES]
    passing = [r["title"] for r in rows if not r["fails"]]
    failing = [f"{r['title']} ({r['spearman_mean']:.2f})" for r in rows if r["fails"]]
    return (f"With every layer random, {len(passing)} of {len(rows)} methods pass ("
            + (", ".join(passing) or "none") + ")"
            + (f"; {', '.join(failing)} fail: their maps still rank pixels much as the "
               "trained network's do" if failing else "")
            + ". The random map passes and the centre prior fails, as they must: passing is "
            "necessary, not sufficient.")


def minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60):02d} min"


def read_parts(path: Path) -> dict[str, float]:
    """``parts.tsv`` as the reproduction scripts write it: part name -> wall seconds."""
    parts: dict[str, float] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            name, seconds = line.rsplit("\t", 1)
            parts[name] = float(seconds)
    return parts


def machine_line(facts: dict) -> str:
    """``Intel(R) Xeon(R) Processor, 2 cores, torch 2.14.1, precision bfloat16, 2026-12-06``,
    from a run's ``run_facts.json``."""
    m = facts["machine"]
    return (f"{m['cpu']}, {m['cores']} cores, torch {m['torch'].split('+')[0]}, device "
            f"{facts['device']}, precision {facts['precision']}, run {facts['date']}")
