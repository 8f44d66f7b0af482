"""The command layer's jobs: each turns the flags into the API's parameters, calls the API, hands
the result to a writer and prints the summary. Only this module, ``main.py`` and
``validation.py`` read flags or print; the library underneath takes parameters and returns
results, so a script calls the same functions (see the README's "From Python").

Library errors name their own parameters (``layer``, ``methods``); :func:`run` rewords them as
the flags of the job that set them.
"""
from __future__ import annotations

import logging
import sys
from argparse import Namespace
from pathlib import Path

import torch
from tqdm import tqdm

import distributed
import outputs
import visualize
from data import DatasetInfo, ImageSplit, info_from_meta, load_image, load_split, normalize
from errors import ParamError, UserError
from registry import (
    DEFAULT_DET_ARCH,
    DET_TITLES,
    TITLES,
    parse_layers,
    parse_methods,
    parse_strategies,
)
from runtime import autocast, precision_dtype, resolve_device

# Which flag set each library parameter, for the jobs on classifiers and on detectors.
CLASSIFIER_FLAGS = {"layer": "--target_layer", "layers": "--target_layer", "methods": "--vis",
                    "method": "--vis", "strategies": "--hidden_strategy", "device": "--device"}
DETECTOR_FLAGS = {"layers": "--det_layer", "method": "--det_method", "device": "--device",
                  "arch": "--det_arch", "min_size": "--det_min_size"}
GRID_MAX = 50  # images in a method's grid figure; a larger grid is unreadable and slow to draw
GRID_IMAGES = 16  # images in the grid of detections that a VOC-style run writes


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
    """Run what the flags ask for; a library parameter's error is reworded as its flag."""
    detector_job = bool(args.det_vis or args.det_img)
    names = DETECTOR_FLAGS if detector_job else {**CLASSIFIER_FLAGS, "model": args.save_path}
    try:
        return _dispatch(args)
    except ParamError as exc:
        raise UserError(exc.worded(names)) from None
    except UserError as exc:
        worded = _as_flags(str(exc))
        if worded == str(exc):
            raise
        raise type(exc)(worded) from None


# ``name=`` in a library message (zoo.py, cam.py) -> the flag that set it
_PARAM_FLAGS = {"arch": "--arch", "weights": "--weights", "model": "--model",
                "model_spec": "--model", "input_size": "--input_size", "mean": "--mean",
                "std": "--std", "classes_file": "--classes", "target": "--target",
                "target_layer": "--target_layer", "data_dir": "--data_dir",
                "image_dir": "--image_dir", "val_fraction": "--val_fraction",
                "det_weights": "--det_weights"}


def _as_flags(text: str) -> str:
    import re
    text = re.sub(r"\b(" + "|".join(_PARAM_FLAGS) + r")=",
                  lambda m: _PARAM_FLAGS[m.group(1)] + " ", text)
    return re.sub(r"\bclasses_file\b", "--classes FILE", text)


def _dispatch(args: Namespace) -> int:
    if (args.det_vis or args.det_img or args.image or args.make_scenes or args.sanity) \
            and not distributed.world().is_main:
        return 0  # under torchrun rank 0 alone does the jobs that are not split across ranks
    if args.mode == "train" and args.det_vis:
        return train_detector(args)
    if args.mode == "train":
        from validation import fine_tuning
        return fine_tune(args) if fine_tuning(args) else train_classifier(args)
    if args.make_scenes:
        return make_scenes(args)
    device = resolve_device(args.device)
    if args.det_vis or args.det_img:
        return detect(args, device)
    if from_anywhere(args):
        return any_model(args, device)
    if args.target_layer == "auto":
        args.target_layer = "layer4"    # the CIFAR ResNet-18's layer before global pooling
    from model import load_model
    model, meta = load_model(args.save_path, device)
    info = info_from_meta(meta, args.dataset, num_outputs=model.fc.out_features)
    if args.vis != "none" or args.sanity:   # every named layer, before any work
        from explain import probe_layers
        probe_layers(model, parse_layers(args.target_layer),
                     torch.zeros(1, 3, info.input_size, info.input_size, device=device))
    if args.sanity and args.image:
        return sanity(args, model, info, None, device)
    if args.image:
        return explain_images(args, model, info, device)
    split = load_split(info.name, args.data_dir, train=False)
    split.info = info
    if args.sanity:
        return sanity(args, model, info, split, device)
    if args.hidden_strategy != "none":
        return leaderboard(args, model, split, device)
    if args.vis != "none":
        return explain_dataset(args, model, split, device)
    return test_accuracy(args, model, split, device)


# --------------------------------------------------------------------------------------------
# Training


def train_classifier(args: Namespace) -> int:
    """``--mode train``: train, keep the best checkpoint, log metrics and curves."""
    from train import TrainConfig, fit
    device = resolve_device(args.device)
    history = fit(TrainConfig(
        dataset=args.dataset or "cifar10", data_dir=args.data_dir, save_path=args.save_path,
        log_dir=args.log_dir, num_epochs=args.num_epochs, batch_size=args.batch_size,
        lr=0.1 if args.lr is None else args.lr,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, seed=args.seed,
        save_half=args.save_half, device=device, dtype=precision_dtype(args.precision, device)))
    if distributed.world().is_main:
        print(f"Best test accuracy: {history.best:.2f}%  (checkpoint {args.save_path}, "
              f"metrics {history.metrics})")
    return 0


def fine_tune(args: Namespace) -> int:
    """``--mode train --arch/--weights/--model --data_dir FOLDER``: fine-tune on the folder,
    keep the best checkpoint (with arch, classes, preprocessing), log metrics and curves."""
    from finetune import DEFAULT_LR, FineTuneConfig
    from finetune import fine_tune as run_fine_tuning
    from validation import rgb
    device = resolve_device(args.device)
    history = run_fine_tuning(FineTuneConfig(
        data_dir=args.data_dir, arch=args.arch, weights=args.weights, model_spec=args.model,
        classes_file=args.classes, input_size=args.input_size, mean=rgb(args.mean, "--mean"),
        std=rgb(args.std, "--std", positive=True), save_path=args.save_path,
        log_dir=args.log_dir, num_epochs=args.num_epochs, batch_size=args.batch_size,
        lr=DEFAULT_LR if args.lr is None else args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, val_fraction=args.val_fraction, seed=args.seed,
        save_half=args.save_half, device=device, dtype=precision_dtype(args.precision, device)))
    if distributed.world().is_main:
        print(f"Best validation accuracy: {history.best:.2f}% at epoch {history.best_epoch} "
              f"(checkpoint {args.save_path}, metrics {history.metrics})")
    return 0


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


# --------------------------------------------------------------------------------------------
# The classifier


def _precision_line(device: torch.device, dtype: torch.dtype | None) -> str:
    from train import precision_label
    return f"device {device}, precision {precision_label(dtype)}"


def test_accuracy(args: Namespace, model: torch.nn.Module, split: ImageSplit,
                  device: torch.device) -> int:
    """``--mode test --vis none``: accuracy, per-class accuracy, confusion-matrix PNG."""
    from train import test_accuracy as accuracy
    dtype = precision_dtype(args.precision, device)
    if distributed.world().is_main:
        print(f"Testing on {len(split)} {split.info.name} test images, "
              f"{_precision_line(device, dtype)}")
    report = accuracy(model, split, device, dtype, batch_size=max(args.batch_size, 256))
    if report is None:  # another rank than 0 under torchrun: rank 0 reports
        return 0
    print(f"Test Accuracy: {report.accuracy:.2f}%")
    width = max(len(c) for c in report.classes)
    for name, value in zip(report.classes, report.per_class):
        print(f"  {name:<{width}}  {value:6.2f}%")
    out = Path(args.out_dir) / "confusion_matrix.png"
    visualize.plot_confusion_matrix(report.confusion, report.classes, out,
                                    title=f"{split.info.name}: {report.accuracy:.2f}% of "
                                          f"{report.n}")
    print(f"Confusion matrix: {out}")
    return 0


def explain_dataset(args: Namespace, model: torch.nn.Module, split: ImageSplit,
                    device: torch.device) -> int:
    """``--vis METHOD --vis_num N``: a panel per test image and method, written as each chunk
    is explained, and a grid of the first ``GRID_MAX``. Under torchrun each rank writes its
    own block's panels; rank 0 gathers the grid's images and the counts."""
    from explain import explain_split
    methods = parse_methods(args.vis)
    info = split.info
    n = min(args.vis_num, len(split))
    here = distributed.world()
    if here.is_main:
        print(f"Heatmaps of {n} {info.name} test images: {', '.join(TITLES[m] for m in methods)} "
              f"at {args.target_layer}, {_precision_line(device, None)}")
    correct = 0
    grid: dict[str, list[tuple[torch.Tensor, torch.Tensor, str]]] = {m: [] for m in methods}
    mine = distributed.shard(n, here)
    bar = tqdm(total=mine.stop - mine.start, desc="heatmaps", unit="img", leave=False,
               disable=not here.is_main or n <= args.batch_size)
    for block in explain_split(model, split, methods, args.target_layer, n, device, args.target,
                               args.batch_size, args.cam_batch_size):
        preds = block.preds
        correct += (preds == block.labels).sum().item()
        for method, maps in block.maps.items():
            for j, i in enumerate(block.indices):
                pred, true = info.classes[preds[j]], info.classes[block.labels[j]]
                name = f"{method}_{i}_pred_{visualize.slug(pred)}_gt_{visualize.slug(true)}.png"
                visualize.save_rgb(visualize.heatmap_panel(block.pixels[j], maps[j]),
                                   Path(args.out_dir) / method / name)
                if i < GRID_MAX:
                    caption = f"pred {pred} ({block.probs[j, preds[j]]:.2f})\ntrue {true}"
                    grid[method].append((block.pixels[j], maps[j], caption))
        bar.update(len(block.indices))
    bar.close()
    gathered = distributed.gather((correct, grid), here)
    if gathered is None:  # another rank than 0: rank 0 draws the grids and reports
        return 0
    correct = sum(count for count, _ in gathered)
    which = "predicted" if args.target == "pred" else "true"
    shown = "" if n <= GRID_MAX else f"; the grid shows the first {GRID_MAX}"
    for method in methods:
        items = [item for _, part in gathered for item in part[method]]
        path = Path(args.out_dir) / method / f"{method}_grid.png"
        visualize.save_heatmap_grid(torch.stack([p for p, _, _ in items]),
                                    torch.stack([h for _, h, _ in items]),
                                    [t for _, _, t in items], path,
                                    suptitle=f"{TITLES[method]} ({args.target_layer}, "
                                             f"{which} class)")
        print(f"{TITLES[method]}: {n} panels and {path} ({correct}/{n} predicted "
              f"correctly{shown})")
    return 0


def explain_images(args: Namespace, model: torch.nn.Module, info: DatasetInfo,
                   device: torch.device) -> int:
    """``--image PATH``: top-5 classes of each image and, with ``--vis``, its heatmap panels."""
    from explain import heatmaps, probabilities
    methods = [] if args.vis == "none" else parse_methods(args.vis)
    pixels = torch.stack([load_image(path, info) for path in args.image])
    print(f"{len(pixels)} image(s) at {info.input_size} px for the {info.name} model, "
          f"{_precision_line(device, None)}")
    images = normalize(pixels, info).to(device)
    probs = probabilities(model, images, args.batch_size)
    top = probs.topk(min(5, probs.shape[1]), dim=1)
    preds = top.indices[:, 0]
    for path, values, indices in zip(args.image, top.values, top.indices):
        ranking = ", ".join(f"{info.classes[k]} {v:.3f}" for v, k in zip(values, indices))
        print(f"{path}: {ranking}")
    stems = visualize.unique_slugs([Path(path).stem for path in args.image])
    for method in methods:
        maps = heatmaps(model, images, preds, method, args.target_layer, args.batch_size,
                        args.cam_batch_size).cpu()
        for stem, pixel, heatmap, pred in zip(stems, pixels, maps, preds):
            out = (Path(args.out_dir) / method /
                   f"{method}_{stem}_pred_{visualize.slug(info.classes[pred])}.png")
            visualize.save_rgb(visualize.heatmap_panel(pixel, heatmap), out)
            print(f"{TITLES[method]}: {out}")
    return 0


def leaderboard(args: Namespace, model: torch.nn.Module, split: ImageSplit,
                device: torch.device, arch: str | None = None, images: str | None = None
                ) -> int:
    """``--vis METHODS --target_layer LAYERS --hidden_strategy S``: the leaderboard."""
    import leaderboard as board_api
    from model import ARCH
    dtype = precision_dtype(args.precision, device)
    board = board_api.leaderboard(
        model, split, device, parse_methods(args.vis), parse_layers(args.target_layer),
        parse_strategies(args.hidden_strategy), steps=args.steps, num_images=args.num_eval,
        batch_size=args.batch_size, eval_batch_size=args.eval_batch_size,
        cam_batch_size=args.cam_batch_size, dtype=dtype, seed=args.seed,
        context={"model": str(args.model or args.weights or args.save_path),
                 "arch": arch or ARCH, **({"images": images} if images else {})})
    if board is None:  # another rank than 0
        return 0
    for note in [*board.notes, *board.warnings]:
        print(note, file=sys.stderr)
    print(board.header)
    for strategy in board.strategies:
        for result in board.results[strategy]:
            print(f"[{strategy}] " + "\n".join(board_api.report_lines(result)))
    written = board_api.write_leaderboard(board, args.out_dir)
    print(board_api.BETTER_LINE)
    for strategy in board.strategies:
        print(board_api.markdown_table(board.results[strategy], board.caption(strategy)), end="")
    print(f"Wrote {len(written)} files to {Path(args.out_dir)} for "
          f"{','.join(board.strategies)}: figures results_*_S.png, comparison_S.png and "
          f"ranking_S.png, curves curves_*_S.npz, summaries summary_*_S.json, leaderboard "
          f"comparison_S.md/.csv/.json")
    return 0


def sanity(args: Namespace, model: torch.nn.Module, info: DatasetInfo,
           split: ImageSplit | None, device: torch.device) -> int:
    """``--sanity``: the cascading randomisation test on the first ``--vis_num`` test images
    (or on ``--image`` files), for the methods of ``--vis`` (all if none) at every layer of
    ``--target_layer``, explaining the trained network's predicted (or true) class."""
    from sanity import predicted_classes, sanity_check, write_sanity
    methods = parse_methods("all" if args.vis == "none" else args.vis)
    layers = parse_layers(args.target_layer)
    if split is None:
        pixels = torch.stack([load_image(path, info) for path in args.image])
        labels = None
        source = f"{len(pixels)} image(s) from --image"
    else:
        part = split.subset(args.vis_num)
        pixels, labels = part.images.float().div(255), part.labels
        photos = bool(args.image or args.image_dir)
        source = (f"{len(pixels)} of your images" if photos else
                  f"the first {len(pixels)} {info.name} test images")
    images = normalize(pixels, info).to(device)
    dtype = precision_dtype(args.precision, device)
    print(f"Sanity check: {source}, {len(methods)} method(s) at {', '.join(layers)}, "
          f"{_precision_line(device, dtype)} (Score-CAM / Ablation-CAM passes; the rest fp32)")
    use_true = labels is not None and (args.target == "gt" or args.image or args.image_dir)
    targets = labels.to(device) if use_true else predicted_classes(model, images,
                                                                   args.batch_size)
    report = sanity_check(model, images, targets, methods, layers, args.batch_size,
                          args.cam_batch_size, dtype, args.seed, source,
                          {"pred": "predicted", "gt": "true"}.get(args.target, args.target))
    for note in [*report.notes, *report.warnings]:
        print(note, file=sys.stderr)
    written = write_sanity(report, pixels, Path(args.out_dir) / "sanity")
    from sanity import label, markdown_table
    print(markdown_table(report.rows, report.stages, report.failed, report.caption), end="")
    for (method, layer), fails in report.failed.items():
        last = report.last(method, layer)
        print(f"{label(method, layer)}: {'FAILS' if fails else 'passes'} (Spearman "
              f"{last.spearman.mean:.2f} {last.spearman.interval_text(2)}, SSIM "
              f"{last.ssim.mean:.2f} with every layer random)")
    print(f"Wrote {', '.join(str(p) for p in written)}")
    return 0


# --------------------------------------------------------------------------------------------
# Detections


def _score_thresh(args: Namespace, detector=None) -> float:
    """``--det_score_thresh``, else the detector's own (the checkpoint's, 0.5 for COCO)."""
    if args.det_score_thresh is not None:
        return args.det_score_thresh
    return detector.score_thresh if detector is not None else 0.5


def detect(args: Namespace, device: torch.device) -> int:
    """``--det_vis``: explain one image (``--det_img``) or a VOC-style test set (``--voc_path``:
    VOC 2007 test, or the Fashion-MNIST scenes)."""
    from data import open_image
    from detection import image_array, load_detector, score_floor
    from registry import det_default_layer, parse_det_layers
    from voc import VOCReader
    layers = (["input"] if args.det_method == "drise" else
              parse_det_layers(args.det_layer, args.det_arch) if args.det_layer is not None else
              [det_default_layer(args.det_arch)])
    floor = score_floor(_score_thresh(args))
    if args.det_img:
        photo = open_image(args.det_img)  # a bad image fails before the weights are loaded
        detector = load_detector(args.det_weights, device, args.det_min_size, floor,
                                 args.det_arch)
        print(f"Detector: {detector.description}, {_precision_line(device, None)}")
        image = image_array(photo, fit=detector.input_fit)
        del photo
        return detect_image(args, detector, image, layers, device)
    with VOCReader(args.voc_path) as reader:
        reader.ids()   # a bad list of ids is refused before the weights are loaded
        detector = load_detector(args.det_weights, device, args.det_min_size, floor,
                                 args.det_arch)
        print(f"Detector: {detector.description}, {_precision_line(device, None)}")
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


# --------------------------------------------------------------------------------------------
# Any CNN: torchvision classifiers, the user's own model, photos and image folders


def from_anywhere(args: Namespace) -> bool:
    """Whether the flags name a model or images beyond the CIFAR checkpoint and test split."""
    return bool(args.arch or args.weights or args.model or args.image_dir or args.list_layers
                or (args.image and (args.target not in ("pred", "gt")
                                    or args.hidden_strategy != "none")))


def _load(args: Namespace, device: torch.device):
    from validation import rgb
    from zoo import CIFAR_ARCH, load_classifier
    weights = args.weights
    if weights is None and args.model is None and args.arch in (None, CIFAR_ARCH):
        weights = args.save_path          # this tool's checkpoint, as the original commands
        if not Path(weights).is_file():
            raise UserError(f"checkpoint not found: {weights} (pass --save_path PATH, or name "
                            f"a model with --arch / --weights / --model)")
    loaded = load_classifier(args.arch, weights, args.model, args.input_size,
                             rgb(args.mean, "--mean"), rgb(args.std, "--std", positive=True),
                             args.classes, device)
    return loaded, weights is None and args.model is None


def any_model(args: Namespace, device: torch.device) -> int:
    """The classifier jobs for a model from anywhere: ``--list_layers``; heatmaps, the
    leaderboard and the sanity check of ``--image`` / ``--image_dir`` photos; and test accuracy,
    heatmaps, leaderboard and sanity check on an ImageFolder ``--data_dir``."""
    loaded, random = _load(args, device)
    print(f"Model: {loaded.description}{' (random weights: no --weights)' * random}, "
          f"{_precision_line(device, None)}")
    if args.list_layers:
        return list_layers(loaded)
    layers = [loaded.layer(name) for name in parse_layers(args.target_layer)]
    if args.target_layer == "auto":
        print(f"target layer: {layers[0]} (auto: the last layer with a spatial map)")
    args.target_layer = ",".join(layers)
    if args.vis != "none" or args.sanity:
        from explain import probe_layers
        size = loaded.input_size
        probe_layers(loaded.module, layers, torch.zeros(1, 3, size, size, device=device))
    if args.image or args.image_dir:
        from folders import list_images
        paths = [Path(p) for p in args.image] or list_images(args.image_dir)
        if args.sanity or args.hidden_strategy != "none":
            split = _images_in_memory(args, loaded, paths, device)
            if args.sanity:
                return sanity(args, loaded.module, split.info, split, device)
            which = "predicted class" if args.target == "pred" else f"class {args.target}"
            return leaderboard(args, loaded.module, split, device, loaded.arch,
                               f"of your images, each explained for its {which}")
        return explain_photos(args, loaded, paths, device)
    return _image_folder_job(args, loaded, device)


def list_layers(loaded) -> int:
    """Every module with a spatial output, its map for an input of the model's size, which one
    ``auto`` picks, and whether CAM is defined."""
    from cam import cam_head, spatial_layers
    rows = spatial_layers(loaded.module, loaded.input_size)
    width = max((len(name) for name, _ in rows), default=5)
    print(f"{'layer':<{width}}  map (channels x h x w) for a {loaded.input_size} px input")
    for name, (k, h, w) in rows:
        mark = "  <- auto" if name == loaded.default_layer else ""
        print(f"{name:<{width}}  {k} x {h} x {w}{mark}")
    try:
        head = cam_head(loaded.module, loaded.input_size)
        print(f"CAM: defined at {head.layer} (global average pooling + one linear layer)")
    except UserError as exc:
        print(f"CAM: not defined: {exc}")
    return 0


def _targets(args: Namespace, loaded, probs: torch.Tensor, labels: torch.Tensor | None
             ) -> torch.Tensor:
    if args.target == "pred":
        return probs.argmax(1)
    if args.target == "gt":
        return labels.to(probs.device)
    return torch.full((len(probs),), loaded.class_index(args.target), device=probs.device)


def explain_photos(args: Namespace, loaded, paths: list[Path], device: torch.device,
                   labels: list[int] | None = None) -> int:
    """Heatmaps of photos at the model's resolution, each panel the photo at its own aspect
    ratio with the map over the region the model saw. The photos are decoded by two worker
    processes while the model works, one batch at a time; ``predictions.csv`` lists every
    photo's top-5 classes."""
    from explain import heatmaps, probabilities
    from folders import (
        PhotoDataset,
        heatmap_on_photo,
        load_photo,
        loader_workers,
        photo_batches,
        photo_loader,
    )
    methods = [] if args.vis == "none" else parse_methods(args.vis)
    prep = loaded.preprocessing
    loader = photo_loader(PhotoDataset(paths, prep, labels), args.batch_size,
                          workers=loader_workers(device))
    stems = visualize.unique_slugs([p.stem for p in paths])
    rows = []
    out = Path(args.out_dir)
    print(f"{len(paths)} image(s) at {loaded.input_size} px, methods: "
          f"{', '.join(TITLES[m] for m in methods) or 'none'} at {args.target_layer}")
    bar = tqdm(total=len(paths), desc="images", unit="img", leave=False, disable=len(paths) < 20)
    for batch in photo_batches(loader):
        images = prep.normalize(batch.pixels).to(device)
        probs = probabilities(loaded.module, images, args.batch_size)
        targets = _targets(args, loaded, probs, None if labels is None else batch.labels)
        top = probs.topk(min(5, probs.shape[1]), dim=1)
        maps = {m: heatmaps(loaded.module, images, targets, m, args.target_layer,
                            args.batch_size, args.cam_batch_size).cpu() for m in methods}
        for j, i in enumerate(batch.indices.tolist()):
            ranking = ", ".join(f"{loaded.classes[k]} {v:.3f}"
                                for v, k in zip(top.values[j].tolist(), top.indices[j].tolist()))
            rows.append({"image": str(paths[i]), "top5": ranking,
                         "explained": loaded.classes[int(targets[j])]})
            if len(paths) <= 20:
                print(f"{paths[i]}: {ranking}")
            if not methods:
                continue
            photo = load_photo(paths[i], max_side=512)
            for method, heat in maps.items():
                on_photo, _ = heatmap_on_photo(heat[j], (photo.shape[2], photo.shape[1]), prep,
                                               batch.sizes[j])
                panel = visualize.heatmap_panel(photo, on_photo, min_side=224)
                name = visualize.slug(loaded.classes[int(targets[j])])
                visualize.save_rgb(panel, out / method / f"{method}_{stems[i]}_{name}.png")
        bar.update(len(batch.indices))
    bar.close()
    outputs.write_csv(out / "predictions.csv", ("image", "top5", "explained"), rows)
    for method in methods:
        print(f"{TITLES[method]}: {len(paths)} panels in {out / method}")
    print(f"Predictions: {out / 'predictions.csv'}")
    return 0


def _image_folder_job(args: Namespace, loaded, device: torch.device) -> int:
    """``--data_dir`` in the ImageFolder layout (a subfolder per class): accuracy, and with
    ``--vis`` heatmaps, with ``--hidden_strategy`` the leaderboard, with ``--sanity`` the
    sanity check, of its images."""
    from folders import image_folder, train_val_folders
    root = args.data_dir
    pair = train_val_folders(root)
    if pair:      # a fine-tuning layout: test on its validation images
        root = pair[1]
        print(f"{args.data_dir} has train/ and val/: testing on {root}")
    paths, labels = image_folder(root, loaded.classes)
    if args.vis == "none" and not args.sanity:
        return _folder_accuracy(args, loaded, paths, labels, device)
    if args.sanity or args.hidden_strategy != "none":
        split = _images_in_memory(args, loaded, paths, device, labels)
        if args.sanity:
            return sanity(args, loaded.module, split.info, split, device)
        return leaderboard(args, loaded.module, split, device, loaded.arch)
    n = args.vis_num
    return explain_photos(args, loaded, [Path(p) for p in paths[:n]], device, list(labels[:n]))


def _folder_accuracy(args: Namespace, loaded, paths, labels, device: torch.device) -> int:
    from explain import probabilities
    from folders import PhotoDataset, loader_workers, photo_batches, photo_loader
    from train import accuracy_report
    dtype = precision_dtype(args.precision, device)
    print(f"Testing on {len(paths)} images of {args.data_dir}, {_precision_line(device, dtype)}")
    loader = photo_loader(PhotoDataset(paths, loaded.preprocessing, labels), args.batch_size,
                          workers=loader_workers(device))
    logits, truth = [], []
    for batch in tqdm(photo_batches(loader), total=len(loader), desc="test", unit="batch",
                      leave=False):
        with autocast(device, dtype):     # the precision the first line names
            probs = probabilities(loaded.module, loaded.preprocessing.normalize(batch.pixels)
                                  .to(device), args.batch_size)
        logits.append(probs.log().cpu())
        truth.append(batch.labels)
    acc, per_class, confusion = accuracy_report(torch.cat(logits), torch.cat(truth),
                                                loaded.classes)
    print(f"Test Accuracy: {acc:.2f}%")
    present = confusion.sum(1) > 0
    width = max(len(c) for c in loaded.classes)
    for name, value, here in zip(loaded.classes, per_class, present.tolist()):
        if here:
            print(f"  {name:<{width}}  {value:6.2f}%")
    return 0


def _images_in_memory(args: Namespace, loaded, paths, device: torch.device,
                      labels: list[int] | None = None):
    """The images the leaderboard or the sanity check scores, in memory at the model's
    resolution (they are scored many times): the first ``--vis_num`` for the sanity check,
    the first ``--num_eval`` for the leaderboard. Photos without labels are labelled with the
    class to explain (predicted, or ``--target CLASS``); an ImageFolder's images keep their
    labels, and the leaderboard takes only those the model classifies correctly, read batch by
    batch until there are enough."""
    from data import ImageSplit
    from explain import probabilities
    from folders import PhotoDataset, loader_workers, photo_batches, photo_loader
    want = args.vis_num if args.sanity else args.num_eval
    prep = loaded.preprocessing
    dataset = PhotoDataset(paths if labels is not None else paths[:want], prep, labels)
    pixels, kept, have = [], [], 0
    for batch in photo_batches(photo_loader(dataset, args.batch_size,
                                            workers=loader_workers(device))):
        keep = torch.ones(len(batch.labels), dtype=torch.bool)
        truth = batch.labels
        if labels is None or not args.sanity:
            probs = probabilities(loaded.module, prep.normalize(batch.pixels).to(device),
                                  args.batch_size)
            if labels is None:
                truth = _targets(args, loaded, probs, None).cpu()
            else:
                keep = probs.argmax(1).cpu() == truth
        pixels.append(batch.pixels[keep].mul(255).round().to(torch.uint8))
        kept.append(truth[keep])
        have += int(keep.sum())
        if have >= want:
            break
    if have == 0:
        raise UserError(f"the model classifies none of the images of {args.data_dir} "
                        f"correctly: nothing to evaluate")
    return ImageSplit(torch.cat(pixels)[:want], torch.cat(kept)[:want], loaded.info())
