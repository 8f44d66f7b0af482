"""The leaderboard: every method at every layer, and two baselines, scored on the same images by
deletion / insertion AUCs, Average Drop and Increase in Confidence, each with a 95% interval.

:func:`leaderboard` computes a :class:`Leaderboard` and returns it; :func:`write_leaderboard`
turns one into files (figures, NPZ curves, JSON summaries, the ranked table as Markdown, CSV and
JSON), all through ``outputs.py``. Under torchrun the images are split across the ranks inside
:func:`leaderboard`, which returns the whole result on rank 0 and None on the others.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

import distributed
import outputs
import registry
import visualize
from cam import resolve_layer
from data import ImageSplit, InputSpec, normalize
from errors import ParamError
from evaluate import (
    BASELINES,
    BETTER,
    BETTER_LINE,
    Curves,
    ImageScores,
    Selection,
    score_images,
    select_correct,
    title,
)
from explain import (
    Explainer,
    explain_batched,
    make_explainer,
    model_methods,
    probe_layers,
    undefined_reason,
)
from runtime import precision_label
from stats import Spread, mean_spread, proportion_spread, small_sample_note

log = logging.getLogger(__name__)
IMAGES = "correctly classified test images"   # what the images are, unless the context says


@dataclass
class MethodResult:
    """One method at one layer (``layer`` None for a baseline): its per-image scores and their
    spreads."""

    name: str
    layer: str | None
    scores: ImageScores
    deletion: Spread
    insertion: Spread
    difference: Spread
    drop: Spread
    increase: Spread

    @property
    def curves(self) -> Curves:
        return self.scores.curves

    @property
    def baseline(self) -> bool:
        return self.name in BASELINES

    @property
    def label(self) -> str:
        """Display name: the method's title and its layer, or the baseline's title."""
        return title(self.name) if self.layer is None else f"{title(self.name)} ({self.layer})"


def aggregate(name: str, layer: str | None, scores: ImageScores) -> MethodResult:
    """Mean, standard deviation and 95% interval of every metric over the images (bootstrap
    percentile for means; Wilson's for the Increase in Confidence, a proportion). The
    insertion-minus-deletion difference is taken per image (a paired interval)."""
    d, i = scores.curves.deletion_auc, scores.curves.insertion_auc
    return MethodResult(name, layer, scores, mean_spread(d), mean_spread(i), mean_spread(i - d),
                        mean_spread(scores.drop * 100),
                        proportion_spread(scores.increase).scaled(100))


@dataclass
class Leaderboard:
    """What :func:`leaderboard` returns. ``results[strategy]`` holds one :class:`MethodResult`
    per (method, layer) and baseline, in the order computed; ``notes`` the pairs left out and
    why; ``selection`` the images scored; ``context`` the settings, for the files;
    ``warnings`` what the reader of the numbers must know (too few images for an interval)."""

    strategies: list[str]
    results: dict[str, list[MethodResult]]
    selection: Selection
    notes: list[str]
    context: dict
    layers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.selection.indices)

    def ranked(self, strategy: str) -> list[MethodResult]:
        """Best first by insertion AUC minus deletion AUC (higher is better)."""
        return ranked(self.results[strategy])

    def caption(self, strategy: str) -> str:
        c = self.context
        return (f"{c['dataset']}, hidden: {strategy}, {self.n} {c.get('images', IMAGES)}, "
                f"{c['steps']} steps, {c['precision']}")

    @property
    def header(self) -> str:
        """One line for the whole run, the strategies listed once."""
        c = self.context
        return (f"Deletion / insertion: {c['dataset']}, {self.n} {c.get('images', IMAGES)}, "
                f"{c['steps']} steps, {c['precision']}, hidden: {', '.join(self.strategies)}")


def ranked(results: list[MethodResult]) -> list[MethodResult]:
    """Best first by insertion AUC minus deletion AUC (higher is better)."""
    return sorted(results, key=lambda r: -r.difference.mean)


def select_images(model: nn.Module, split: ImageSplit, device: torch.device, n: int,
                  batch_size: int = 256) -> Selection:
    """The first ``n`` correctly classified images of ``split``; at least one, or an error."""
    selection = select_correct(model, split, device, n, batch_size)
    found = len(selection.indices)
    if found == 0:
        raise ParamError("model", f"the model classifies none of the {len(split)} test images "
                                  f"correctly, so there is nothing to evaluate (is {{param}} "
                                  f"trained on {split.info.name}?)")
    if found < min(n, len(split)):
        log.warning(f"warning: only {found} of the {len(split)} test images are classified "
                    f"correctly; evaluating those {found} instead of the {n} asked for")
    return selection


def explainers_by_layer(model: nn.Module, methods: list[str], layers: list[str],
                        batch_size: int, dtype: torch.dtype | None = None,
                        image: torch.Tensor | None = None
                        ) -> tuple[list[tuple[str, str, Explainer]], list[str]]:
    """``(method, layer, explainer)`` for every method defined at every layer (probed on
    ``image``), and a note for each pair left out (CAM anywhere but the layer before global
    pooling). An attention method (rollout) reads every block: it comes once, after the
    others, its layer ``registry.ALL_BLOCKS``. An unknown layer is an error, not a note."""
    for layer in layers:
        resolve_layer(model, layer)
    entries, notes = [], []
    pairs = [(method, layer) for layer in layers for method in methods
             if method not in registry.ATTENTION_METHODS]
    pairs += [(method, registry.ALL_BLOCKS) for method in methods
              if method in registry.ATTENTION_METHODS]
    for method, layer in pairs:
        why = None if image is None else undefined_reason(method, model, layer, image)
        if why is None:
            try:
                explainer = make_explainer(method, model, layer, batch_size=batch_size,
                                           dtype=dtype)
                entries.append((method, layer, explainer))
            except ParamError as exc:
                why = exc.worded({})
        if why is not None:
            notes.append(f"note: {title(method)} left out at {layer}: {why}")
    return entries, notes


def _block_heatmaps(explainer: Explainer, baseline: bool, images: torch.Tensor,
                    targets: torch.Tensor, block: slice, batch_size: int) -> torch.Tensor:
    """Heatmaps of the images in ``block`` (all of them for one process). A baseline's maps
    are drawn for every image and then cut, so that the random baseline gives each image the
    noise it gets in a one-process run, whichever rank evaluates it."""
    if baseline:
        return explain_batched(explainer, images, targets, batch_size)[block]
    return explain_batched(explainer, images[block], targets[block], batch_size)


def leaderboard(model: nn.Module, split: ImageSplit, device: torch.device,
                methods: Sequence[str], layers: Sequence[str], strategies: Sequence[str],
                steps: int = 100, num_images: int = 100, batch_size: int = 128,
                eval_batch_size: int = 256, cam_batch_size: int = 256,
                dtype: torch.dtype | None = None, seed: int = 0, context: dict | None = None
                ) -> Leaderboard:
    """Every method of ``methods`` at every layer of ``layers``, and the baselines, scored on the
    first ``num_images`` correctly classified images of ``split`` under every hiding strategy.
    ``methods="all"`` is every method that applies to the model (:func:`explain.model_methods`:
    rollout on a vision transformer only); rollout reads every block and comes once.

    Each heatmap is computed once and scored under every strategy. ``dtype`` is the autocast
    precision of the scoring passes (None: fp32). Under torchrun every rank returns the whole
    leaderboard.
    """
    methods = model_methods(model, methods)
    layers = registry.names_of(layers, "layers", "layer")
    strategies = registry.names_of(strategies, "strategies", "strategy",
                                   registry.FILL_STRATEGIES)
    for param, value in (("steps", steps), ("num_images", num_images), ("batch_size", batch_size),
                         ("eval_batch_size", eval_batch_size),
                         ("cam_batch_size", cam_batch_size)):
        registry.check_number(value, param, 1, integer=True)
    if len(split) == 0:
        raise ParamError("split", "{param} holds no image")
    info: InputSpec = split.info
    probe = normalize(split.images[:1].float().div(255), info).to(device)
    probe_layers(model, layers, probe)
    entries, notes = explainers_by_layer(model, list(methods), layers, cam_batch_size, dtype,
                                         probe)
    entries += [(name, None, make(seed)) for name, make in BASELINES.items()]
    selection = select_images(model, split, device, num_images, eval_batch_size)
    pixels = split.images[selection.indices].float().div(255).to(device)
    images = normalize(pixels, info)
    targets = selection.labels.to(device)
    here = distributed.world()
    n = len(targets)
    warnings = [w for w in [small_sample_note(n, "deletion / insertion")] if w]
    mine = distributed.shard(n, here)  # under torchrun: this rank's block of the images
    used = (layers if any(m not in registry.ATTENTION_METHODS for m in methods) else []) \
        + ([registry.ALL_BLOCKS] if set(methods) & set(registry.ATTENTION_METHODS) else [])
    context = {"steps": steps, "num_eval_requested": num_images, "dataset": info.name,
               "target_layers": used, "precision": precision_label(dtype), "seed": seed,
               "test_images_scanned": selection.scanned, "interval": {
                   "means": mean_spread([0.0]).interval,
                   "proportions": proportion_spread([0.0]).interval}, **(context or {})}
    results: dict[str, list[MethodResult]] = {s: [] for s in strategies}
    for name, layer, explainer in entries:
        label = name if layer is None else f"{name} {layer}"
        maps = _block_heatmaps(explainer, name in BASELINES, images, targets, mine, batch_size)
        for strategy in strategies:
            block = None if len(maps) == 0 else score_images(  # more ranks than images
                model, pixels[mine], maps, targets[mine], info, strategy, steps,
                eval_batch_size, dtype, desc=f"{label} ({strategy})" if here.is_main else None)
            blocks = distributed.gather(block, here)
            results[strategy].append(aggregate(name, layer, ImageScores.join(
                [b for b in blocks if b is not None])))
    return Leaderboard(strategies, results, selection, notes, context, layers, warnings)


# --------------------------------------------------------------------------------------------
# Text


def report_lines(result: MethodResult) -> list[str]:
    """The original's two ``Average ... AUC`` lines, each followed by its spread, then the
    Average Drop and Increase in Confidence."""
    lines = [f"{result.label}:"]
    for curve, s in (("Deletion", result.deletion), ("Insertion", result.insertion)):
        std = "n/a" if s.std is None else f"{s.std:.4f}"
        lines.append(f"Average {curve} AUC: {s.mean:.4f}")
        lines.append(f"  std {std}, 95% CI {s.interval_text(4)}, n {s.n}")
    for metric, s in (("Average Drop", result.drop), ("Increase in Confidence", result.increase)):
        lines.append(f"{metric}: {s.mean:.2f}% (95% CI {s.interval_text(2)})")
    return lines


def markdown_table(results: list[MethodResult], caption: str) -> str:
    """The leaderboard as a Markdown table, best first, each number with its 95% interval."""
    def cell(s: Spread, digits: int) -> str:
        return f"{s.mean:.{digits}f} {s.interval_text(digits)}"

    lines = [caption, "",
             ("| rank | method | layer | insertion − deletion ↑ | deletion AUC ↓ | insertion AUC ↑ "
              "| Average Drop % ↓ | Increase in Confidence % ↑ |"),
             "|---:|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(ranked(results), 1):
        name = f"*{title(r.name)}*" if r.baseline else title(r.name)
        lines.append(f"| {rank} | {name} | {r.layer or '–'} | {cell(r.difference, 4)} | "
                     f"{cell(r.deletion, 4)} | {cell(r.insertion, 4)} | {cell(r.drop, 1)} | "
                     f"{cell(r.increase, 1)} |")
    lines += ["", f"Mean [95% interval] over the same {results[0].deletion.n} images "
              f"(means: bootstrap percentile; Increase in Confidence: Wilson); baselines in "
              f"italics. " + BETTER_LINE + " Average Drop: lower is better. Increase in "
              "Confidence: higher is better. Ranked by insertion minus deletion."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Files


def _stem(result: MethodResult, strategy: str, several_layers: bool) -> str:
    if result.layer is not None and several_layers:
        return f"{result.name}_{visualize.slug(result.layer)}_{strategy}"
    return f"{result.name}_{strategy}"


def _metrics_dict(r: MethodResult) -> dict:
    return {"deletion_auc": r.deletion.as_dict(), "insertion_auc": r.insertion.as_dict(),
            "insertion_minus_deletion": r.difference.as_dict(),
            "average_drop_pct": r.drop.as_dict(), "increase_in_confidence_pct": r.increase.as_dict()}


METRICS = (("deletion", "deletion_auc"), ("insertion", "insertion_auc"),
           ("difference", "insertion_minus_deletion"), ("drop", "average_drop_pct"),
           ("increase", "increase_in_confidence_pct"))
TABLE_FIELDS = ("rank", "method", "title", "layer", "baseline", "n",
                *(f"{key}_{part}" for _, key in METRICS for part in ("mean", "std", "ci95_low",
                                                                      "ci95_high")))
RANKING_PANELS = (("insertion − deletion (higher is better)", "difference"),
                  ("deletion AUC (lower is better)", "deletion"),
                  ("insertion AUC (higher is better)", "insertion"),
                  ("Average Drop % (lower is better)", "drop"),
                  ("Increase in Confidence % (higher is better)", "increase"))


def table_rows(results: list[MethodResult]) -> list[dict]:
    """One row per method and layer, best first (CSV columns ``TABLE_FIELDS``); an interval
    that does not exist (one image) is left empty."""
    rows = []
    for rank, r in enumerate(ranked(results), 1):
        row = {"rank": rank, "method": r.name, "title": title(r.name), "layer": r.layer or "",
               "baseline": r.baseline, "n": r.deletion.n}
        for attr, key in METRICS:
            s = getattr(r, attr)
            row.update({f"{key}_mean": s.mean, f"{key}_std": s.std, f"{key}_ci95_low": s.ci_low,
                        f"{key}_ci95_high": s.ci_high})
        rows.append(row)
    return rows


def save_method_outputs(result: MethodResult, selection: Selection, strategy: str,
                        out_dir: Path, context: dict, several_layers: bool = False) -> list[Path]:
    """Figure, per-image curves and metrics (NPZ) and summary (JSON) of one method."""
    stem = _stem(result, strategy, several_layers)
    curves = result.curves
    figure = out_dir / f"results_{stem}.png"
    visualize.plot_deletion_insertion(
        curves.fractions.numpy(), {result.label: (curves.deletion.numpy(),
                                                  curves.insertion.numpy())},
        {result.label: (result.deletion.mean, result.insertion.mean)}, figure,
        title=f"{result.label}, hidden: {strategy}, {result.deletion.n} images", band=True)
    npz = out_dir / f"curves_{stem}.npz"
    with outputs.atomic(npz) as tmp:
        np.savez_compressed(tmp, fractions=curves.fractions.numpy(),
                            deletion=curves.deletion.numpy(), insertion=curves.insertion.numpy(),
                            deletion_auc=curves.deletion_auc.numpy(),
                            insertion_auc=curves.insertion_auc.numpy(),
                            drop=result.scores.drop.numpy(),
                            increase=result.scores.increase.numpy(),
                            indices=selection.indices.numpy(), targets=selection.labels.numpy())
    summary = {"method": result.name, "title": title(result.name), "layer": result.layer,
               "baseline": result.baseline, "strategy": strategy, "n": result.deletion.n,
               **context, **_metrics_dict(result), "better": BETTER,
               "curves": npz.name, "figure": figure.name}
    path = out_dir / f"summary_{stem}.json"
    outputs.write_text(path, json.dumps(summary, indent=2) + "\n")
    return [figure, npz, path]


def save_comparison(results: list[MethodResult], strategy: str, out_dir: Path,
                    caption: str, context: dict, notes: list[str],
                    warnings: list[str] = ()) -> list[Path]:
    """The leaderboard: curves of everything in one figure, the ranking figure, and the table
    as Markdown, CSV and JSON."""
    figure = out_dir / f"comparison_{strategy}.png"
    fractions = results[0].curves.fractions.numpy()
    visualize.plot_deletion_insertion(
        fractions,
        {r.label: (r.curves.deletion.numpy(), r.curves.insertion.numpy()) for r in results},
        {r.label: (r.deletion.mean, r.insertion.mean) for r in results}, figure,
        title=caption, band=False, dashed=[r.label for r in results if r.baseline])
    order = ranked(results)
    ranking = out_dir / f"ranking_{strategy}.png"
    plot_board_ranking(order, ranking, caption)
    md = out_dir / f"comparison_{strategy}.md"
    outputs.write_text(md, markdown_table(results, caption)
                       + "".join(f"\n{n}\n" for n in [*notes, *warnings]))
    table = out_dir / f"comparison_{strategy}.csv"
    rows = table_rows(results)
    outputs.write_csv(table, TABLE_FIELDS, rows)
    js = out_dir / f"comparison_{strategy}.json"
    outputs.write_text(js, json.dumps({"caption": caption, **context, "better": {
        **BETTER, "insertion_minus_deletion": "higher", "average_drop_pct": "lower",
        "increase_in_confidence_pct": "higher"}, "ranked_by": "insertion_minus_deletion",
        "skipped": notes, "warnings": list(warnings), "rows": rows}, indent=2) + "\n")
    return [figure, ranking, md, table, js]


def plot_board_ranking(order: list[MethodResult], path: Path, caption: str) -> None:
    """The ranking figure of results already in rank order: each metric's mean and interval
    (a mean without interval is drawn as a point)."""
    def bar(s: Spread) -> tuple[float, float, float]:
        return (s.mean, s.mean if s.ci_low is None else s.ci_low,
                s.mean if s.ci_high is None else s.ci_high)

    visualize.plot_ranking([r.label for r in order],
                           {name: [bar(getattr(r, attr)) for r in order]
                            for name, attr in RANKING_PANELS},
                           [r.baseline for r in order], path, title=caption)


def write_leaderboard(board: Leaderboard, out_dir: str | Path) -> list[Path]:
    """Every file of a leaderboard into ``out_dir`` (created by the first file written)."""
    out_dir = Path(out_dir)
    several = len(board.layers) > 1
    written: list[Path] = []
    for strategy in board.strategies:
        for result in board.results[strategy]:
            written += save_method_outputs(result, board.selection, strategy, out_dir,
                                           board.context, several)
    for strategy in board.strategies:
        written += save_comparison(board.results[strategy], strategy, out_dir,
                                   board.caption(strategy), board.context, board.notes,
                                   board.warnings)
    return written
