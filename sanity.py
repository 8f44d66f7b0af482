"""The model-parameter randomisation test (Adebayo et al., 2018, "Sanity checks for saliency
maps"), cascading: the network's layers are re-initialised one stage at a time from the
classifier down to the stem, and each method's maps after every stage are compared with its maps
on the trained network (Spearman rank correlation and SSIM, per image). A method whose maps
barely change when the weights are random does not explain the model: it fails.
"""
from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

import outputs
import registry
import visualize
from cam import check_batch
from errors import ParamError
from evaluate import BASELINES, title
from explain import Explainer, explain_batched, make_explainer, model_methods, undefined_reason
from runtime import eval_mode
from stats import Spread, mean_spread, small_sample_note

# A method fails when, with every layer re-initialised, its maps still rank pixels like the
# trained network's: mean Spearman correlation at or above this.
FAIL_SPEARMAN = 0.5


# --------------------------------------------------------------------------------------------
# Similarity of two maps


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks ``0..n-1`` of a 1-D tensor, ties sharing their average rank (as Spearman needs)."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True,
                                                  return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    mean_rank = starts.double() + (counts.double() - 1) / 2
    ranks = torch.empty(len(values), dtype=torch.float64, device=values.device)
    ranks[order] = mean_rank[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps' pixels; 0 when either map is constant (a
    constant map ranks nothing)."""
    ra, rb = average_ranks(a.flatten()), average_ranks(b.flatten())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt((ra * ra).sum().item() * (rb * rb).sum().item())
    return 0.0 if denominator == 0 else (ra * rb).sum().item() / denominator


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al., 2004) of two ``[H, W]`` maps in ``[0, 1]``: Gaussian
    window (11 taps, sigma 1.5, shrunk to fit small maps), ``C1 = 0.01^2``, ``C2 = 0.03^2``,
    mean over the valid positions."""
    window = min(window, a.shape[-2], a.shape[-1])
    window -= 1 - window % 2
    x = torch.arange(window, dtype=torch.float64) - window // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = torch.outer(g, g)[None, None].to(a.device)
    a, b = a.double()[None, None], b.double()[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
             / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return value.mean().item()


# --------------------------------------------------------------------------------------------
# Cascading randomisation


def cascade_stages(model: nn.Module) -> list[str]:
    """The top-level layers that hold parameters, from the output back to the input
    (``fc, layer4, ..., layer1, bn1, conv1`` for a ResNet)."""
    return [name for name, child in reversed(list(model.named_children()))
            if any(True for _ in child.parameters())]


def reinitialise(module: nn.Module) -> None:
    """Fresh random weights for every layer inside ``module`` (each layer's own initialiser;
    BatchNorm back to scale 1, shift 0 and unit running statistics)."""
    for layer in module.modules():
        if hasattr(layer, "reset_running_stats"):
            layer.reset_running_stats()
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
        elif isinstance(layer, nn.MultiheadAttention):   # its own initialiser has another name
            layer._reset_parameters()


@dataclass
class SanityRow:
    """One method at one layer after one stage: per-image similarity to the trained maps."""

    method: str
    layer: str | None
    stage: str
    spearman: Spread
    ssim: Spread


def run_cascade(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                methods: list[str], layers: list[str], batch_size: int, cam_batch_size: int,
                dtype: torch.dtype | None, seed: int = 0
                ) -> tuple[list[str], dict[tuple[str, str | None], list[torch.Tensor]],
                           list[str]]:
    """Maps of every (method, layer) on the trained network and after each cumulative stage.

    Works on a copy of ``model``; the model itself is never changed. Returns the stage names,
    ``{(method, layer): [maps of the trained network, maps after stage 1, ...]}`` (each
    ``[N, H, W]`` on the CPU) and a note per (method, layer) that is not defined.
    """
    net = copy.deepcopy(model).eval()
    stages = cascade_stages(net)
    pairs, notes = [], []
    asked = [(method, layer) for layer in layers for method in methods
             if method not in registry.ATTENTION_METHODS]
    asked += [(method, registry.ALL_BLOCKS) for method in methods     # every block, once
              if method in registry.ATTENTION_METHODS]
    for method, layer in asked:
        why = undefined_reason(method, net, layer, images[:1])
        if why is None:
            pairs.append((method, layer))
        else:   # CAM anywhere but the layer before pooling
            notes.append(f"note: {title(method)} left out at {layer}: {why}")
    controls = {name: make(seed) for name, make in BASELINES.items()}
    maps: dict[tuple[str, str | None], list[torch.Tensor]] = {}
    torch.manual_seed(seed)
    bar = tqdm(total=len(stages) + 1, desc="sanity stages", unit="stage", leave=False)
    for stage in [None, *stages]:
        if stage is not None:
            reinitialise(getattr(net, stage))
        for method, layer in pairs:
            explainer: Explainer = make_explainer(method, net, layer, batch_size=cam_batch_size,
                                                  dtype=dtype)
            heat = explain_batched(explainer, images, targets, batch_size).cpu()
            maps.setdefault((method, layer), []).append(heat)
        for name, control in controls.items():
            maps.setdefault((name, None), []).append(
                explain_batched(control, images, targets, batch_size).cpu())
        bar.update(1)
    bar.close()
    return stages, maps, notes


def similarity_rows(stages: list[str], maps: dict[tuple[str, str | None], list[torch.Tensor]]
                    ) -> list[SanityRow]:
    """Spearman and SSIM of each stage's maps against the trained network's, per image."""
    rows = []
    for (method, layer), series in maps.items():
        original = series[0]
        for stage, randomised in zip(stages, series[1:]):
            rho = torch.tensor([spearman(a, b) for a, b in zip(original, randomised)])
            sim = torch.tensor([ssim(a, b) for a, b in zip(original, randomised)])
            rows.append(SanityRow(method, layer, stage, mean_spread(rho), mean_spread(sim)))
    return rows


def verdicts(rows: list[SanityRow], last_stage: str) -> dict[tuple[str, str | None], bool]:
    """``True`` where a method fails: its maps with every layer random still correlate with
    the trained network's (mean Spearman >= ``FAIL_SPEARMAN``)."""
    return {(r.method, r.layer): r.spearman.mean >= FAIL_SPEARMAN
            for r in rows if r.stage == last_stage}


# --------------------------------------------------------------------------------------------
# Outputs


def label(method: str, layer: str | None) -> str:
    return title(method) if layer is None else f"{title(method)} ({layer})"


def markdown_table(rows: list[SanityRow], stages: list[str], failed: dict, caption: str) -> str:
    """Methods as rows, stages as columns, ``Spearman / SSIM`` means in each cell."""
    keys = list(dict.fromkeys((r.method, r.layer) for r in rows))
    cell = {(r.method, r.layer, r.stage): r for r in rows}
    lines = [caption, "",
             "| method | " + " | ".join(f"+{s}" for s in stages) + " | verdict |",
             "|---|" + "---:|" * len(stages) + "---|"]
    for method, layer in keys:
        values = [cell[(method, layer, s)] for s in stages]
        verdict = "**fails**" if failed[(method, layer)] else "passes"
        lines.append(f"| {label(method, layer)} | " + " | ".join(
            f"{v.spearman.mean:.2f} / {v.ssim.mean:.2f}" for v in values) + f" | {verdict} |")
    lines += ["", ("Each cell: mean Spearman rank correlation / mean SSIM between the maps of the "
              "trained network and the maps after re-initialising every layer up to that "
              "column (`+fc` first, then downwards). Near 0 means the map depends on those "
              f"weights, as it should. A method **fails** when its mean Spearman with every "
              f"layer re-initialised is still >= {FAIL_SPEARMAN}. The centre prior is a "
              f"control that must fail (it never looks at the model); the random map passes "
              f"trivially, which shows that passing is necessary, not sufficient.")]
    return "\n".join(lines) + "\n"


@dataclass
class SanityReport:
    """What :func:`sanity_check` returns: the stages in order, one :class:`SanityRow` per
    (method, layer, stage), every map (``maps[(method, layer)]``: the trained network's, then one
    ``[N, H, W]`` per stage), which pairs fail, the pairs left out (``notes``), a caption, and
    what the reader must know about the numbers (``warnings``: too few images)."""

    stages: list[str]
    rows: list[SanityRow]
    maps: dict[tuple[str, str | None], list[torch.Tensor]]
    failed: dict[tuple[str, str | None], bool]
    notes: list[str]
    caption: str
    warnings: list[str]

    def last(self, method: str, layer: str | None) -> SanityRow:
        """The row with every layer re-initialised."""
        return next(r for r in self.rows if (r.method, r.layer, r.stage)
                    == (method, layer, self.stages[-1]))


def sanity_check(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 methods: Sequence[str], layers: Sequence[str], batch_size: int = 64,
                 cam_batch_size: int = 256, dtype: torch.dtype | None = None, seed: int = 0,
                 source: str = "the images", which: str = "predicted") -> SanityReport:
    """The cascading randomisation test of every method at every layer on normalized
    ``images`` for classes ``targets``; ``source`` and ``which`` only word the caption.
    ``methods="all"`` is every method that applies to the model (rollout on a vision
    transformer only, once: it reads every block). The model is never changed (the test
    works on a copy)."""
    methods = model_methods(model, methods)
    layers = registry.names_of(layers, "layers", "layer")
    for param, value in (("batch_size", batch_size), ("cam_batch_size", cam_batch_size)):
        registry.check_number(value, param, 1, integer=True)
    if isinstance(images, torch.Tensor) and len(images) == 0:
        raise ParamError("images", "{param} is empty; the test needs at least one image")
    targets = check_batch(images, targets, model)
    stages, maps, notes = run_cascade(model, images, targets, list(methods), list(layers),
                                      batch_size, cam_batch_size, dtype, seed)
    warnings = [w for w in [small_sample_note(len(images), "sanity check")] if w]
    rows = similarity_rows(stages, maps)
    caption = (f"Cascading randomisation, {source}, {which} class, stages "
               f"{' > '.join(stages)}")
    return SanityReport(stages, rows, maps, verdicts(rows, stages[-1]), notes, caption,
                        warnings)


def predicted_classes(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The model's predicted class of each normalized image, in eval mode."""
    with torch.no_grad(), eval_mode(model):
        return torch.cat([model(images[i:i + batch_size]).argmax(1)
                          for i in range(0, len(images), batch_size)])


CSV_FIELDS = ["method", "title", "layer", "stage", "spearman_mean", "spearman_std",
              "spearman_ci95_low", "spearman_ci95_high", "ssim_mean", "ssim_std",
              "ssim_ci95_low", "ssim_ci95_high", "n", "fails"]


def write_sanity(report: SanityReport, pixels: torch.Tensor, out_dir: str | Path,
                 example: int = 0) -> list[Path]:
    """The figure (rows: methods; columns: stages, one example image's maps), the table as
    Markdown, CSV and JSON, all through ``outputs.py`` (atomic, listed in the run's manifest)."""
    out_dir = Path(out_dir)
    rows, stages, failed = report.rows, report.stages, report.failed
    cell = {(r.method, r.layer, r.stage): r for r in rows}
    keys = list(report.maps)
    labels = [label(m, layer) + (" FAILS" if failed[(m, layer)] else "") for m, layer in keys]
    grid = [[series[i][example] for i in range(len(series))] for series in report.maps.values()]
    notes_text = [[""] + [f"ρ {cell[(m, layer, s)].spearman.mean:.2f}  "
                          f"SSIM {cell[(m, layer, s)].ssim.mean:.2f}" for s in stages]
                  for m, layer in keys]
    figure = out_dir / "sanity.png"
    visualize.plot_sanity_grid(pixels[example], grid, labels,
                               ["trained", *[f"+{s}" for s in stages]], notes_text, figure,
                               title=report.caption)
    md = out_dir / "sanity.md"
    outputs.write_text(md, markdown_table(rows, stages, failed, report.caption)
                       + "".join(f"\n{n}\n" for n in [*report.notes, *report.warnings]))
    records = [{"method": r.method, "title": title(r.method), "layer": r.layer or "",
                "stage": r.stage, "spearman_mean": r.spearman.mean,
                "spearman_std": r.spearman.std,
                "spearman_ci95_low": r.spearman.ci_low, "spearman_ci95_high": r.spearman.ci_high,
                "ssim_mean": r.ssim.mean, "ssim_std": r.ssim.std, "ssim_ci95_low": r.ssim.ci_low,
                "ssim_ci95_high": r.ssim.ci_high, "n": r.spearman.n,
                "fails": failed[(r.method, r.layer)]} for r in rows]
    table = out_dir / "sanity.csv"
    outputs.write_csv(table, CSV_FIELDS, records)
    js = out_dir / "sanity.json"
    outputs.write_text(js, json.dumps({"caption": report.caption, "stages": stages,
                                       "fail_if_spearman_at_least": FAIL_SPEARMAN,
                                       "interval": mean_spread([0.0]).interval,
                                       "skipped": report.notes,
                                       "warnings": report.warnings, "rows": records},
                                      indent=2) + "\n")
    return [figure, md, table, js]
