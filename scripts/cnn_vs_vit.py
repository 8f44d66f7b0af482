"""The shipped CNN against the shipped vision transformer: the same test images, the same
methods and metrics, and the results page written from the runs' own files.

    python scripts/cnn_vs_vit.py [OUT] [--num_eval 100] [--steps 20] [--sanity_images 8]
    python scripts/cnn_vs_vit.py OUT --page_only      # rebuild the page from OUT's files
    python scripts/cnn_vs_vit.py --rebuild            # rewrite the page from its record

Both models were trained on Fashion-MNIST by this tool's own training command. The images are
the first ``--num_eval`` test images that *both* models classify correctly, each explained for
its true class, so that every difference in the tables is the models' and the methods', not the
images'. For each model it runs, through the Python API:

- test accuracy on the whole test split;
- the leaderboard: every method that applies to the model at two layers (the ResNet's last two
  stages; the ViT's middle and last block, read where ``auto`` reads a class-token ViT), and
  attention rollout on the ViT, with the random-map and centre-prior baselines, deletion and
  insertion under zero and blur hiding, Average Drop and Increase in Confidence;
- the sanity check (cascading randomisation) of every method at the later layer on the first
  ``--sanity_images`` of those images.

Everything goes into OUT (default ``./figures/cnn_vs_vit``): each model's leaderboard and sanity
folders as the command line writes them, and ``run.json`` (accuracy, the images, the machine,
the precision, the date, how long each part took). The page (default
``docs/results/cnn_vs_vit.md``, its figures beside it in ``docs/results/cnn_vs_vit/``) is then
written from OUT's JSON files alone: no number in it is typed by hand.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from pagekit import (
    BASELINES,
    best_method,
    interval,
    leaderboard_table,
    minutes,
    read,
    sanity_methods,
    sanity_table,
    short_layer,
)

PAGE = ROOT / "docs" / "results" / "cnn_vs_vit.md"
STRATEGIES = ("zero", "blur")


@dataclass(frozen=True)
class Contender:
    """One model of the comparison: its name in the tables, its checkpoint, its two layers (the
    earlier first) and the folder name of its runs."""

    name: str
    checkpoint: str
    layers: tuple[str, str]
    key: str


def shown(path: str | Path) -> str:
    """A path as the page shows it: relative to the repository when inside it."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def contenders(cnn: str, vit: str) -> tuple[Contender, Contender]:
    return (Contender("ResNet-18", cnn, ("layer3", "layer4"), "resnet18"),
            Contender("ViT (6 blocks, width 192)", vit,
                      ("encoder.layers.encoder_layer_3.ln_1",
                       "encoder.layers.encoder_layer_5.ln_1"), "vit"))


def common_correct(predictions: list, labels, n: int):
    """Indices of the first ``n`` images that every model of ``predictions`` gets right."""
    import torch
    right = torch.stack([p == labels for p in predictions]).all(0)
    return right.nonzero().flatten()[:n]


def methods_for(model, methods: str) -> str | list[str]:
    """``methods`` without those that do not apply to ``model`` (rollout on the CNN); ``all``
    is left to the API, which means the same by it."""
    from explain import attention_reason
    if methods.strip() == "all":
        return "all"
    return [m for m in methods.split(",") if attention_reason(m.strip(), model) is None]


# The maps of the side-by-side figure, one row each: (model key, method, which of its layers;
# None for rollout, which reads every block).
FIGURE_ROWS = (("resnet18", "gradcam", 1), ("vit", "gradcam", 1), ("vit", "rollout", None))
FIGURE_IMAGES = 6


def maps_figure(path: Path, models: tuple[Contender, ...], loaded: dict, common, device,
                dtype) -> None:
    """The first ``FIGURE_IMAGES`` common images, one row per entry of ``FIGURE_ROWS``: each
    model's Grad-CAM at its later layer, and the ViT's rollout."""
    import torch

    from explain import attention_reason, heatmaps
    from registry import ALL_BLOCKS, TITLES
    from visualize import save_heatmap_grid
    part = common.subset(FIGURE_IMAGES)
    pixels = part.images.float().div(255)
    by_key = {m.key: m for m in models}
    grid_pixels, grid_maps, titles = [], [], []
    for key, method, which in FIGURE_ROWS:
        m, model = by_key[key], loaded[key]
        if attention_reason(method, model.module) is not None:
            continue
        layer = ALL_BLOCKS if which is None else m.layers[which]
        images = model.inputs.normalize(pixels).to(device)
        maps = heatmaps(model.module, images, part.labels.to(device), method, layer,
                        dtype=dtype).cpu()
        grid_pixels.append(pixels)
        grid_maps.append(maps)
        where = "" if which is None else f" {short_layer(layer)}"
        titles += [f"{m.name.split()[0]} {TITLES[method]}{where}"] * len(part)
    save_heatmap_grid(torch.cat(grid_pixels), torch.cat(grid_maps), titles, path,
                      suptitle="The same test images, each explained for its true class",
                      columns=len(part))


def run(out: Path, models: tuple[Contender, ...], data_dir: str, num_eval: int, steps: int,
        sanity_images: int, precision: str, methods: str, command: str) -> dict:
    """Every part for every model into ``out``; returns what ``run.json`` records."""
    import torch

    import leaderboard as board_api
    import sanity as sanity_api
    import sources
    from data import ImageSplit
    from runtime import machine_facts, precision_dtype, precision_label, resolve_device
    from train import predict
    from zoo import load_classifier

    device = resolve_device("auto")
    dtype = precision_dtype(precision, device)
    record: dict = {"machine": {**machine_facts(), "device": str(device)},
                    "precision": precision_label(dtype), "date": datetime.date.today().isoformat(),
                    "num_eval_requested": num_eval, "steps": steps, "strategies": STRATEGIES,
                    "command": command,
                    "models": {}, "seconds": {}}
    loaded = {m.key: load_classifier(weights=m.checkpoint, device=device) for m in models}
    # one split per model: the same images and labels, each described (normalised) as its
    # model takes them
    splits = {m.key: sources.dataset_split(loaded[m.key], data_dir) for m in models}
    split = splits[models[0].key]
    if any(not torch.equal(s.labels, split.labels) for s in splits.values()):
        print("error: the models were not trained on the same dataset", file=sys.stderr)
        raise SystemExit(2)
    started = time.perf_counter()
    predictions = []
    for m in models:
        logits = predict(loaded[m.key].module, splits[m.key], device, dtype)
        predictions.append(logits.argmax(1))
        record["models"][m.key] = {
            "name": m.name, "checkpoint": shown(m.checkpoint), "layers": list(m.layers),
            "arch": loaded[m.key].arch, "dataset": loaded[m.key].dataset,
            "parameters": sum(p.numel() for p in loaded[m.key].module.parameters()),
            "test_accuracy": 100.0 * (predictions[-1] == split.labels).float().mean().item(),
            "test_images": len(split)}
    record["seconds"]["test accuracy"] = time.perf_counter() - started
    chosen = common_correct(predictions, split.labels, num_eval)
    if len(chosen) == 0:
        print("error: no test image is classified correctly by every model", file=sys.stderr)
        raise SystemExit(2)
    record["images"] = chosen.tolist()
    commons = {key: ImageSplit(s.images[chosen], s.labels[chosen], s.info)
               for key, s in splits.items()}
    started = time.perf_counter()
    maps_figure(out / "maps.png", models, loaded, commons[models[0].key], device, dtype)
    record["seconds"]["maps figure"] = time.perf_counter() - started
    for m in models:
        model = loaded[m.key].module
        started = time.perf_counter()
        mine = methods_for(model, methods)
        common = commons[m.key]
        board = board_api.leaderboard(model, common, device, mine, list(m.layers),
                                      list(STRATEGIES), steps=steps, num_images=len(common),
                                      dtype=dtype, context={"model": shown(m.checkpoint),
                                                            "arch": loaded[m.key].arch})
        board_api.write_leaderboard(board, out / m.key / "leaderboard")
        record["seconds"][f"{m.key} leaderboard"] = time.perf_counter() - started
        started = time.perf_counter()
        part = common.subset(sanity_images)
        pixels = part.images.float().div(255)
        report = sanity_api.sanity_check(
            model, loaded[m.key].inputs.normalize(pixels).to(device), part.labels.to(device),
            mine, [m.layers[1]], dtype=dtype,
            source=f"the first {len(part)} test images both models classify correctly",
            which="true")
        sanity_api.write_sanity(report, pixels, out / m.key / "sanity")
        record["seconds"][f"{m.key} sanity check"] = time.perf_counter() - started
    return record


# --------------------------------------------------------------------------------------------
# The page, from the files alone


def side_by_side(record: dict, boards: dict[str, dict], sanities: dict[str, dict]) -> list[str]:
    """One column per model: accuracy, size, its best method and the baselines under each
    hiding, its lowest Average Drop, and the methods that pass the sanity check."""
    keys = list(record["models"])
    head = ["", *[record["models"][k]["name"] for k in keys]]
    rows = [["test accuracy", *[f"{record['models'][k]['test_accuracy']:.2f}%" for k in keys]],
            ["parameters", *[f"{record['models'][k]['parameters'] / 1e6:.2f} M" for k in keys]]]
    for strategy in record["strategies"]:
        best = {k: best_method(boards[k][strategy]["rows"]) for k in keys}
        rows.append([f"best method, {strategy} hiding (insertion − deletion)",
                     *[f"{best[k]['title']} at {short_layer(best[k]['layer'])}: "
                       f"{interval(best[k], 'insertion_minus_deletion', 3)}" for k in keys]])
        for baseline in BASELINES:
            cells = [interval(next(r for r in boards[k][strategy]["rows"]
                                    if r["baseline"] and r["method"] == baseline),
                               "insertion_minus_deletion", 3) for k in keys]
            rows.append([f"{baseline} baseline, {strategy} hiding", *cells])
    lowest = {k: min((r for r in boards[k][record["strategies"][0]]["rows"] if not r["baseline"]),
                     key=lambda r: r["average_drop_pct_mean"]) for k in keys}
    rows.append(["lowest Average Drop % (a method)",
                 *[f"{lowest[k]['title']} at {short_layer(lowest[k]['layer'])}: "
                   f"{lowest[k]['average_drop_pct_mean']:.1f}" for k in keys]])
    rows.append(["methods that pass the sanity check", *[
        ", ".join(r["title"] for r in sanity_methods(sanities[k])
                  if not r["fails"] and r["method"] not in BASELINES) or "none"
        for k in keys]])
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def record(out: Path, folder: Path) -> None:
    """Copy what the page reads out of the runs in ``out`` into ``folder`` (the page's own
    folder, committed beside it): ``run.json``, each model's leaderboard and sanity JSON, and
    the figures; the page is then written from ``folder`` alone."""
    run_record = read(out / "run.json")
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "run.json").resolve() != (out / "run.json").resolve():
        shutil.copyfile(out / "run.json", folder / "run.json")
    for k in run_record["models"]:
        for s in run_record["strategies"]:
            shutil.copyfile(out / k / "leaderboard" / f"comparison_{s}.json",
                            folder / f"{k}_leaderboard_{s}.json")
            shutil.copyfile(out / k / "leaderboard" / f"ranking_{s}.png",
                            folder / f"{k}_ranking_{s}.png")
        shutil.copyfile(out / k / "sanity" / "sanity.json", folder / f"{k}_sanity.json")
        shutil.copyfile(out / k / "sanity" / "sanity.png", folder / f"{k}_sanity.png")
    shutil.copyfile(out / "maps.png", folder / "maps.png")


def page(folder: Path) -> str:
    """The results page from its record ``folder`` (see :func:`record`); the page goes beside
    the folder and shows its figures."""
    record = read(folder / "run.json")
    keys = list(record["models"])
    boards = {k: {s: read(folder / f"{k}_leaderboard_{s}.json") for s in record["strategies"]}
              for k in keys}
    sanities = {k: read(folder / f"{k}_sanity.json") for k in keys}
    figures = folder
    machine = record["machine"]
    models = record["models"]
    n = len(record["images"])
    first = boards[keys[0]]["zero"]
    lines = [
        "# A CNN against a vision transformer: the same images, the same metrics",
        "",
        ("Both models were trained from scratch on Fashion-MNIST by this tool's own training "
         "command (their reports: [the ResNet-18](fashion_mnist_resnet18.md), [the small "
         "ViT](fashion_mnist_vit.md)). This page is written by `scripts/cnn_vs_vit.py` from its "
         "runs' JSON files; no number here is typed by hand."),
        "",
        "```bash",
        record["command"].strip(),
        "```",
        "",
        (f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
         f"device {machine['device']}, precision {record['precision']}; run {record['date']}. "
         f"Time: "
         + ", ".join(f"{part} {minutes(s)}" for part, s in record["seconds"].items())
         + f" ({minutes(sum(record['seconds'].values()))} in all)."),
        "",
        (f"The images: the first {n} test images that both models classify correctly (of the "
         f"first {max(record['images']) + 1}), each explained for its true class; deletion and "
         f"insertion in {record['steps']} steps; 95% intervals in brackets "
         f"({first['interval']['means']})."),
        "",
        "## Side by side",
        "",
        *side_by_side(record, boards, sanities),
        "",
        f"![The same images explained by both models]({figures.name}/maps.png)",
        "",
        "Layers: " + "; ".join(f"{models[k]['name']} `{'`, `'.join(models[k]['layers'])}`"
                               for k in keys) + ". Rollout reads every block (\"all blocks\").",
        "",
    ]
    for k in keys:
        lines += [f"## {models[k]['name']}", ""]
        for s in record["strategies"]:
            board = boards[k][s]
            lines += [f"**{s.capitalize()} hiding**: {board['caption']}", "",
                      *leaderboard_table(board["rows"]), "",
                      f"![{models[k]['name']}, {s} hiding]({figures.name}/{k}_ranking_{s}.png)",
                      ""]
            lines += [f"- {note}" for note in board["skipped"] + board["warnings"]]
            if board["skipped"] or board["warnings"]:
                lines.append("")
        lines += [(f"**Sanity check**: {sanities[k]['caption']}. Each cell: Spearman / SSIM "
                   f"between the trained model's map and the map after that stage (near 0 is "
                   f"what a faithful method shows; a method fails at Spearman >= "
                   f"{sanities[k]['fail_if_spearman_at_least']} with every layer random)."), "",
                  *sanity_table(sanities[k]), "",
                  f"![{models[k]['name']}, sanity check]({figures.name}/{k}_sanity.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=str(ROOT / "figures" / "cnn_vs_vit"),
                        help="folder of the runs (default: figures/cnn_vs_vit in the "
                             "repository)")
    parser.add_argument("--cnn", default=str(ROOT / "checkpoints/resnet18_fashion_mnist.pth"))
    parser.add_argument("--vit", default=str(ROOT / "checkpoints/vit_fashion_mnist.pth"))
    parser.add_argument("--data_dir", default=str(ROOT / "data"))
    parser.add_argument("--num_eval", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sanity_images", type=int, default=8)
    parser.add_argument("--precision", choices=("auto", "fp32"), default="auto")
    parser.add_argument("--methods", default="all", help="methods to compare (default: all)")
    parser.add_argument("--page", default=str(PAGE), help=f"the page to write (default: {PAGE})")
    parser.add_argument("--page_only", action="store_true",
                        help="rebuild the page from OUT's files without running anything")
    parser.add_argument("--rebuild", action="store_true",
                        help="rewrite the page from its record (the folder beside --page) alone")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    for name in ("num_eval", "steps", "sanity_images"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    out = Path(args.out)
    page_path = Path(args.page)
    folder = page_path.parent / page_path.stem
    if args.rebuild:
        if not (folder / "run.json").is_file():
            print(f"error: {folder / 'run.json'} not found: run the comparison first",
                  file=sys.stderr)
            return 2
        page_path.write_text(page(folder) + "\n")
        print(f"Wrote {page_path} from {folder}")
        return 0
    if not args.page_only:
        models = contenders(args.cnn, args.vit)
        for m in models:
            if not Path(m.checkpoint).is_file():
                print(f"error: checkpoint not found: {m.checkpoint}", file=sys.stderr)
                return 2
        result = run(out, models, args.data_dir, args.num_eval, args.steps, args.sanity_images,
                     args.precision, args.methods,
                     "python scripts/cnn_vs_vit.py " + shlex.join(argv))
        out.mkdir(parents=True, exist_ok=True)
        (out / "run.json").write_text(json.dumps(result, indent=2) + "\n")
    elif not (out / "run.json").is_file():
        print(f"error: {out / 'run.json'} not found: run the comparison first", file=sys.stderr)
        return 2
    record(out, folder)
    page_path.write_text(page(folder) + "\n")
    print(f"Wrote {page_path} from {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
