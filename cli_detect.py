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
from commands import note, precision_line
from registry import DET_TITLES
from runtime import precision_dtype, resolve_device

GRID_IMAGES = 16  # images in the grid of detections that a VOC-style run writes
# The flags that set the parameters of the VOC reader, the detector trainer and the scene
# writer, beside those of jobs.py's DETECTOR_PARAMS (which words every other one).
def train_detector(args: Namespace) -> int:
    """``--mode train --det_vis``: train the scene detector (``--resume`` continues). A recipe
    flag left out (None) takes ``DetectorTrainConfig``'s default."""
    from recipes import DetectorTrainConfig, given
    from train_detector import fit_detector
    device = resolve_device(args.device)
    precision_line(device, precision_dtype(args.precision, device))   # noted for the report
    note(model=f"the scene detector ({args.det_weights or 'new'})",
         random_weights=not args.det_weights and not args.resume)
    history = fit_detector(given(
        DetectorTrainConfig, data_dir=args.data_dir, save_path=args.save_path,
        log_dir=args.log_dir, num_epochs=args.num_epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        scenes_per_epoch=args.det_scenes, test_scenes=args.det_num,
        save_half=args.save_half, resume=args.resume, init_weights=args.det_weights,
        device=device, dtype=precision_dtype(args.precision, device)))
    last = history.rows[-1]["test_map"] if history.rows else 0.0
    print(f"Last test mAP@0.5: {last:.4f}  (checkpoint {history.checkpoint}, metrics "
          f"{history.metrics})")
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


def _drise(args: Namespace):
    """D-RISE's settings from ``--det_masks`` and ``--seed`` (None for the other methods)."""
    if args.det_method != "drise":
        return None
    from drise import DriseSettings
    return DriseSettings(masks=args.det_masks, seed=args.seed)


def _load_detector(args: Namespace, device: torch.device):
    from detectors import load_detector, score_floor
    detector = load_detector(args.det_weights, device, args.det_min_size,
                             score_floor(_score_thresh(args)), args.det_arch)
    print(f"Detector: {detector.description}, {precision_line(device, None)}")
    note(model=detector.description, random_weights=False)
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


def detect_image(args: Namespace, detector, image, layers: list[str],
                 device: torch.device) -> int:
    """``--det_img PATH``: panels for one image. An image without detections is not an error
    (the detector's answer is "nothing here"): one line says so and the exit status is 0."""
    from detection import explain_detections, to_tensor
    path = args.det_img
    thresh = _score_thresh(args, detector)
    note(images=1)
    result = explain_detections(detector.model, to_tensor(image, device), layers, thresh,
                                args.det_max, method=args.det_method, drise=_drise(args))
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


def _save_miss_panels(image, misses, folder: Path, method: str) -> None:
    """One panel per missed object and layer: the object, its best proposal and the map."""
    for k, (miss, row) in enumerate(misses, 1):
        name, other = row["class"], row["detected_as"]
        for layer, heat in miss.maps.items():
            text = f"best proposal {name} {miss.score:.2f}" + (
                f", detected as {other}" if other else "")
            visualize.save_rgb(visualize.miss_panel(
                image, heat, miss.box.tolist(), miss.proposal_box.tolist(),
                (f"missed {name}", text),
                f"{miss.kind} miss, IoU {miss.iou:.2f}, {DET_TITLES[method]} {layer}"),
                folder / f"{visualize.slug(row['image'])}_{k:02d}_{visualize.slug(name)}_"
                         f"{layer}.png")


def detect_voc(args: Namespace, detector, reader, layers: list[str],
               device: torch.device) -> int:
    """A VOC-style test set: panels for the first ``--det_num`` images, a grid of the first
    ones with ground truth and detections, then AP and explanation scores with baselines,
    printed and saved as ``voc_metrics.json``."""
    import json

    from detmetrics import format_table, score_voc
    from misses import MISS_FIELDS, miss_table
    from voc import VOC_CLASSES
    thresh = _score_thresh(args, detector)
    names = {label: reader.classes[c] for label, c in detector.label_map.items()}
    folder = Path(args.out_dir) / "detection"
    grid = []
    kind = "VOC-class detection" if reader.classes == VOC_CLASSES else "detection"

    def draw(image_id, image, truth, result, misses) -> None:
        _save_miss_panels(image, misses, folder / "misses", args.det_method)
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
                       args.det_num, device, on_image=draw, drise=_drise(args),
                       explain_missed=args.det_explain_missed)
    note(images=len(report.ids))
    print(f"{reader.path}, {len(report.ids)} images ({len(report.without_detections)} without "
          f"detections), {detector.description}")
    print(format_table(report.summary, DET_TITLES[args.det_method]))
    if report.misses is not None:
        outputs.write_csv(folder / "misses.csv", MISS_FIELDS, report.miss_rows)
        print(miss_table(report.misses))
        print(f"wrote {folder / 'misses.csv'} and {len(report.miss_rows)} panels in "
              f"{folder / 'misses'}")
    if grid:
        visualize.save_panel_grid(grid, folder / "detections_grid.png")
        print(f"wrote {folder / 'detections_grid.png'}")
    path = folder / "voc_metrics.json"
    outputs.write_text(path, json.dumps(report.as_dict(), indent=2))
    print(f"wrote {path}")
    return 0
