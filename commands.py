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
        from cli_detect import train_detector
        return train_detector(args)
    if args.mode == "train":
        from validation import fine_tuning
        return fine_tune(args) if fine_tuning(args) else train_classifier(args)
    if args.make_scenes:
        from cli_detect import make_scenes
        return make_scenes(args)
    device = resolve_device(args.device)
    if args.det_vis or args.det_img:
        import cli_detect
        return cli_detect.explain_image(args) if args.det_img else cli_detect.score_set(args)
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


# --------------------------------------------------------------------------------------------
# The classifier


def precision_line(device: torch.device, dtype: torch.dtype | None) -> str:
    from train import precision_label
    return f"device {device}, precision {precision_label(dtype)}"


def test_accuracy(args: Namespace, model: torch.nn.Module, split: ImageSplit,
                  device: torch.device) -> int:
    """``--mode test --vis none``: accuracy, per-class accuracy, confusion-matrix PNG."""
    from train import test_accuracy as accuracy
    dtype = precision_dtype(args.precision, device)
    if distributed.world().is_main:
        print(f"Testing on {len(split)} {split.info.name} test images, "
              f"{precision_line(device, dtype)}")
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
              f"at {args.target_layer}, {precision_line(device, None)}")
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
          f"{precision_line(device, None)}")
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
          f"{precision_line(device, dtype)} (Score-CAM / Ablation-CAM passes; the rest fp32)")
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
          f"{precision_line(device, None)}")
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
    print(f"Testing on {len(paths)} images of {args.data_dir}, {precision_line(device, dtype)}")
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
