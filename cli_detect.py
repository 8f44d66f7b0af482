"""The detector jobs of the command line: explain one image's detections, score a VOC-style
set, train the scene detector, write the test scenes. Each job turns the flags into the API's
parameters, calls the API and prints the summary (see ``jobs.py`` for which flags each reads).
"""
from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import torch
from tqdm import tqdm

import outputs
import visualize
from commands import precision_line
from registry import DEFAULT_DET_ARCH, DET_TITLES
from runtime import precision_dtype, resolve_device

GRID_IMAGES = 16  # images in the grid of detections that a VOC-style run writes


def train_detector(args: Namespace) -> int:
    """``--mode train --det_vis``: train the scene detector (``--resume`` continues)."""
    from train_detector import DetectorTrainConfig, fit_detector
    device = resolve_device(args.device)
    history = fit_detector(DetectorTrainConfig(
        data_dir=args.data_dir, save_path=args.save_path, log_dir=args.log_dir,
        num_epochs=args.num_epochs, batch_size=args.batch_size,
        lr=0.1 if args.lr is None else args.lr,
        weight_decay=args.weight_decay, seed=args.seed, det_scenes=args.det_scenes,
        det_num=args.det_num, save_half=args.save_half, resume=args.resume,
        init_weights=args.det_weights, device=device,
        dtype=precision_dtype(args.precision, device)))
    last = history[-1]["test_map"] if history else 0.0
    print(f"Last test mAP@0.5: {last:.4f}  (checkpoint {args.save_path}, metrics "
          f"{Path(args.log_dir) / 'metrics.csv'})")
    return 0


def make_scenes(args: Namespace) -> int:
    """``--make_scenes DIR``: the shipped test scenes' generator, ``--det_num`` of them."""
    from train_detector import TEST_SEED, write_test_scenes
    written = write_test_scenes(args.data_dir, args.make_scenes, args.det_num)
    print(f"wrote {args.det_num} test scenes (Fashion-MNIST test split, key {TEST_SEED}) to "
          f"{written}")
    return 0



def _score_thresh(args: Namespace, detector=None) -> float:
    """``--det_score_thresh``, else the detector's own (the checkpoint's, 0.5 for COCO)."""
    if args.det_score_thresh is not None:
        return args.det_score_thresh
    return detector.score_thresh if detector is not None else 0.5


def _layers(args: Namespace) -> list[str]:
    from registry import det_default_layer, parse_det_layers
    if args.det_method == "drise":
        return ["input"]
    if args.det_layer is not None:
        return parse_det_layers(args.det_layer, args.det_arch)
    return [det_default_layer(args.det_arch)]


def _load_detector(args: Namespace, device: torch.device):
    from detection import load_detector, score_floor
    detector = load_detector(args.det_weights, device, args.det_min_size,
                             score_floor(_score_thresh(args)), args.det_arch)
    print(f"Detector: {detector.description}, {precision_line(device, None)}")
    return detector


def explain_image(args: Namespace) -> int:
    """``--det_img PATH``: explain one image's detections."""
    from data import open_image
    from detection import image_array
    device = resolve_device(args.device)
    layers = _layers(args)
    photo = open_image(args.det_img)  # a bad image fails before the weights are loaded
    detector = _load_detector(args, device)
    image = image_array(photo, fit=detector.input_fit)
    del photo
    return detect_image(args, detector, image, layers, device)


def score_set(args: Namespace) -> int:
    """``--det_vis``: explain and score a VOC-style test set (``--voc_path``: VOC 2007 test,
    or the Fashion-MNIST scenes)."""
    from voc import VOCReader
    device = resolve_device(args.device)
    layers = _layers(args)
    with VOCReader(args.voc_path) as reader:
        reader.ids()   # a bad list of ids is refused before the weights are loaded
        detector = _load_detector(args, device)
        reader.classes = detector.classes
        return detect_voc(args, detector, reader, layers, device)


DRISE_GRID = 16     # cells per side of a D-RISE mask
DRISE_BATCH = 16    # masked images per detector pass


def _explainer(args: Namespace, layers: list[str]):
    """``explain(model, image, score_thresh, max_explained, allowed) -> DetectionResult`` for
    D-RISE with ``--det_masks``; None for a gradient method (explained at ``layers``)."""
    if args.det_method == "drise":
        from drise import explain_detections_drise

        def explain(model, image, thresh, most, allowed):
            return explain_detections_drise(model, image, thresh, most, allowed,
                                            masks=args.det_masks, grid=DRISE_GRID,
                                            batch_size=DRISE_BATCH, seed=args.seed)
        return explain
    return None   # the gradient methods: detmetrics.score_voc's own, at ``layers``


def detect_image(args: Namespace, detector, image, layers: list[str],
                 device: torch.device) -> int:
    """``--det_img PATH``: panels for one image. An image without detections is not an error
    (the detector's answer is "nothing here"): one line says so and the exit status is 0."""
    from detection import explain_detections, to_tensor
    path = args.det_img
    thresh = _score_thresh(args, detector)
    explain = _explainer(args, layers)
    if explain is None:
        result = explain_detections(detector.model, to_tensor(image, device), layers, thresh,
                                    args.det_max, method=args.det_method)
    else:
        result = explain(detector.model, to_tensor(image, device), thresh, args.det_max, None)
    names = detector.names
    if len(result.explained) == 0:
        shown, top = (outputs.distinct(thresh, float(result.scores[0])) if len(result.scores)
                      else (f"{thresh:.2f}", ""))
        best = f"; best score {top} ({names[int(result.labels[0])]})" if len(result.scores) else ""
        print(f"{path}: no detection with score >= {shown}{best}; nothing to explain")
        return 0
    found = ", ".join(visualize.caption(names, int(result.labels[i]), float(result.scores[i]))
                      for i in result.explained.tolist())
    n = len(result.explained)
    print(f"{path}: {n} detection{'s' * (n != 1)} explained: {found}")
    folder = Path(args.out_dir) / "detection"
    for written in visualize.save_panels(image, result, visualize.slug(Path(path).stem), folder,
                                         names, args.det_per_box):
        print(f"wrote {written}")
    return 0


def detect_voc(args: Namespace, detector, reader, layers: list[str],
               device: torch.device) -> int:
    """A VOC-style test set: panels for the first ``--det_num`` images, a grid of the first
    ones with ground truth and detections, then AP and explanation scores with baselines,
    printed and saved as ``voc_metrics.json``."""
    import json

    from detection import score_floor, weights_file
    from detmetrics import format_table, score_voc
    from voc import VOC_CLASSES
    thresh = _score_thresh(args, detector)
    names = {label: reader.classes[c] for label, c in detector.label_map.items()}
    folder = Path(args.out_dir) / "detection"
    grid = []
    kind = "VOC-class detection" if reader.classes == VOC_CLASSES else "detection"

    to_label = {c: label for label, c in detector.label_map.items()}
    missed: list[dict] = []

    def explain_missed(image_id, image, truth, result) -> None:
        from detection import to_tensor
        from misses import explain_misses, explain_misses_drise
        known = [i for i, c in enumerate(truth.labels.tolist()) if c in to_label]
        boxes = truth.boxes[known]
        labels = torch.tensor([to_label[c] for c in truth.labels[known].tolist()],
                              dtype=torch.long)
        tensor = to_tensor(image, device)
        if args.det_method == "drise":
            found = explain_misses_drise(detector.model, tensor, result, boxes, labels, thresh,
                                         masks=args.det_masks, grid=DRISE_GRID,
                                         batch_size=DRISE_BATCH, seed=args.seed)
        else:
            found = explain_misses(detector.model, tensor, result, boxes, labels, thresh, layers,
                                   args.det_method)
        for k, miss in enumerate(found, 1):
            name = names.get(miss.label, str(miss.label))
            winner = ("background" if miss.winner == 0 else
                      "its own class, under the threshold" if miss.winner == miss.label else
                      names.get(miss.winner, "?"))
            other = None if miss.detected_as is None else names.get(miss.detected_as, "?")
            missed.append({"image": image_id, "class": name, "kind": miss.kind,
                           "best_iou": round(miss.iou, 4), "score": round(miss.score, 4),
                           "won_by": winner, "detected_as": other or ""})
            for layer, heat in miss.maps.items():
                text = f"best proposal {name} {miss.score:.2f}" + (
                    f", detected as {other}" if other else "")
                visualize.save_rgb(visualize.miss_panel(
                    image, heat, miss.box.tolist(), miss.proposal_box.tolist(),
                    (f"missed {name}", text),
                    f"{miss.kind} miss, IoU {miss.iou:.2f}, {DET_TITLES[args.det_method]} "
                    f"{layer}"), folder / "misses" /
                    f"{visualize.slug(image_id)}_{k:02d}_{visualize.slug(name)}_{layer}.png")

    def draw(image_id, image, truth, result) -> None:
        if args.det_explain_missed:
            explain_missed(image_id, image, truth, result)
        if len(grid) < GRID_IMAGES:
            grid.append(visualize.ground_truth_panel(
                image, result, truth.boxes.tolist(),
                [reader.classes[c] for c in truth.labels.tolist()], names))
        if len(result.explained) == 0:
            tqdm.write(f"{image_id}: no {kind} with score >= {thresh:.2f}; skipped")
            return
        visualize.save_panels(image, result, visualize.slug(image_id), folder, names,
                              args.det_per_box, truth_boxes=truth.boxes.tolist())

    report = score_voc(detector, reader, layers, args.det_method, thresh, args.det_max,
                       args.det_num, device, on_image=draw, explain=_explainer(args, layers))
    print(f"{reader.path}, {len(report.ids)} images ({len(report.without_detections)} without "
          f"detections), {detector.description}")
    print(format_table(report.summary, DET_TITLES[args.det_method]))
    report.settings.update({
        **({"arch": args.det_arch} if args.det_arch != DEFAULT_DET_ARCH else {}),
        "weights": args.det_weights or weights_file(args.det_arch),
        "annotation_problems": reader.problems(),
        **({"drise": {"masks": args.det_masks, "grid": DRISE_GRID, "keep": 0.5,
                      "seed": args.seed}} if args.det_method == "drise" else {}),
        "ap_method": "VOC2007 11-point, difficult objects ignored, detections with score > "
                     f"{score_floor(thresh)}"})
    if args.det_explain_missed:
        report.settings["misses"] = miss_summary(missed)
        outputs.write_csv(folder / "misses.csv", MISS_FIELDS, missed)
        print(miss_table(report.settings["misses"]))
        print(f"wrote {folder / 'misses.csv'} and {len(missed)} panels in {folder / 'misses'}")
    if grid:
        visualize.save_panel_grid(grid, folder / "detections_grid.png")
        print(f"wrote {folder / 'detections_grid.png'}")
    path = folder / "voc_metrics.json"
    outputs.write_text(path, json.dumps(report.as_dict(), indent=2))
    print(f"wrote {path}")
    return 0


MISS_FIELDS = ("image", "class", "kind", "best_iou", "score", "won_by", "detected_as")


def miss_summary(missed: list[dict]) -> dict:
    """Misses counted by class and kind, and which classes won the classification misses."""
    from collections import Counter

    from misses import KINDS
    by_class: dict[str, dict] = {}
    for row in missed:
        entry = by_class.setdefault(row["class"], {k: 0 for k in KINDS} | {"won_by": Counter()})
        entry[row["kind"]] += 1
        if row["kind"] == "classification":
            entry["won_by"][row["won_by"]] += 1
    return {"total": len(missed), "by_kind": dict(Counter(r["kind"] for r in missed)),
            "by_class": {c: {**{k: v for k, v in e.items() if k != "won_by"},
                             "won_by": dict(e["won_by"].most_common())}
                         for c, e in sorted(by_class.items())}}


def miss_table(summary: dict) -> str:
    """The misses as a text table: one row per class."""
    from misses import KINDS
    head = (f"Missed objects: {summary['total']} (no detection of their class at IoU >= 0.5 "
            f"and the score threshold)")
    lines = [head,
             f"{'class':<12} " + " ".join(f"{k:>14}" for k in KINDS) + "  classification won by"]
    for name, e in summary["by_class"].items():
        won = ", ".join(f"{c} {n}" for c, n in e["won_by"].items())
        lines.append(f"{name:<12} " + " ".join(f"{e[k]:>14}" for k in KINDS) + f"  {won}")
    return "\n".join(lines)
