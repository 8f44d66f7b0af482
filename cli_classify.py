"""The classifier jobs of the command line: test accuracy, heatmaps, the leaderboard, the
sanity check and the list of layers, for any classifier (this tool's checkpoints, torchvision's,
your own) on any of its image sources (its built-in test split, an image folder, photos).

Each job loads the model through the one loader (:func:`load`), picks its images
(:func:`uses_photos`), calls the API and prints what it found.
"""
from __future__ import annotations

import sys
from argparse import Namespace
from pathlib import Path

import torch
from tqdm import tqdm

import distributed
import outputs
import sources
import visualize
from commands import note, precision_line, say
from data import ImageSplit
from errors import FlagError, ParamError, UserError
from jobs import setting
from recipes import (
    SHIPPED_CLASSIFIER,
    TRAIN_RECIPES,
    ExplainConfig,
    TrainConfig,
    default,
    train_recipe,
)
from registry import ALL_BLOCKS, ATTENTION_METHODS, TITLES, parse_layers, parse_strategies
from runtime import precision_dtype, precision_label, resolve_device
from zoo import LoadedModel

GRID_MAX = 50  # images in a method's grid figure; a larger grid is unreadable and slow to draw
PANEL_SIDE = 512   # a photo's longer side in its panel, at most


def _checkpoint(args: Namespace) -> str:
    """The checkpoint of a built-in arch to test: ``--save_path``; without it the one training
    writes by default (``--arch``'s recipe), else for the CIFAR ResNet-18 the shipped
    classifier (said in one line)."""
    if args.save_path is not None:
        return args.save_path
    trained = default(train_recipe(args.arch), "save_path")
    if Path(trained).is_file() or args.arch not in (None, TrainConfig.arch) \
            or not Path(SHIPPED_CLASSIFIER).is_file():
        return trained
    return SHIPPED_CLASSIFIER


def _weights(args: Namespace) -> str | None:
    """The weights the flags name: ``--weights``, or for this tool's built-in archs their
    checkpoint; None for a random or a factory's own network."""
    if args.weights is None and args.model is None and args.arch in (None, *TRAIN_RECIPES):
        return _checkpoint(args)
    return args.weights


def load(args: Namespace, device: torch.device) -> LoadedModel:
    """The classifier the flags name (see ``zoo.load_classifier``), with its first line."""
    from validation import rgb
    from zoo import load_classifier
    weights = _weights(args)
    if weights == SHIPPED_CLASSIFIER and args.save_path is None:
        say(f"No --save_path, and no {default(TrainConfig, 'save_path')} trained here: "
              f"using the shipped classifier {SHIPPED_CLASSIFIER}")
    # --save_path names a checkpoint of one of this tool's built-in archs (its recorded one)
    saved = weights is not None and args.weights is None
    try:
        loaded = load_classifier(args.arch, weights, args.model, args.input_size,
                                 rgb(args.mean, "--mean"), rgb(args.std, "--std", positive=True),
                                 args.classes, device, dataset=args.dataset, builtin_only=saved)
    except ParamError as exc:   # the checkpoint came from --save_path, not from --weights
        if exc.param != "weights" or args.weights is not None:
            raise
        raise UserError(exc.worded({"weights": "--save_path"})) from None
    if getattr(args, "token_grid", None) is not None:
        loaded = _with_token_grid(loaded, args.token_grid)
    random = weights is None and args.model is None
    note(model=loaded.description, random_weights=random, device=str(device), precision="fp32")
    say(f"Model: {loaded.description}{' (random weights: no --weights)' * random}, "
        f"device {device}")
    return loaded


def _with_token_grid(loaded: LoadedModel, grid: str) -> LoadedModel:
    """``loaded`` with its token layers read on ``--token_grid``'s grid, and the ``auto`` layer
    found again on it (None, with the reason at its use, when there is none)."""
    from dataclasses import replace

    from cam import auto_layer
    from tokens import set_token_grid
    set_token_grid(loaded.module, grid)
    try:
        layer = auto_layer(loaded.module, loaded.input_size)
    except UserError:
        layer = None
    return replace(loaded, default_layer=layer)


def uses_photos(args: Namespace, loaded: LoadedModel) -> bool:
    """Whether the job's images are photos (``--image``, ``--image_dir``, or an image folder
    in ``--data_dir`` for a model without a built-in dataset) rather than a test split."""
    return bool(args.image or args.image_dir) or loaded.dataset is None


def _methods(args: Namespace, loaded: LoadedModel, spec: str | None = None) -> list[str]:
    """``--vis``'s methods (``spec`` where given) for the loaded model: ``all`` is every
    method that applies to it (rollout on a vision transformer only); rollout named for a
    model without attention blocks is an error. ``--target_layer`` given with rollout alone
    is refused: rollout reads every block, so the flag would change nothing."""
    from explain import model_methods
    methods = model_methods(loaded.module, spec or args.vis)
    if methods and set(methods) <= set(ATTENTION_METHODS) and args.target_layer != "auto":
        raise ParamError("layer", f"{{param}} {args.target_layer}: {', '.join(methods)} reads "
                                  f"every attention block, not one layer; leave {{param}} out")
    return methods


def _defined(methods: list[str], loaded: LoadedModel, layer: str, device: torch.device
             ) -> list[str]:
    """``all``'s methods that are defined for the model at ``layer``, with a note for each left
    out (CAM where the head is not global average pooling + one linear layer, as on a ViT that
    reads its class token), as the leaderboard and the sanity check leave them out."""
    from explain import undefined_reason
    image = torch.zeros(1, 3, loaded.input_size, loaded.input_size, device=device)
    kept = []
    for method in methods:
        why = undefined_reason(method, loaded.module, layer, image)
        if why is None:
            kept.append(method)
        elif distributed.world().is_main:
            print(f"note: {TITLES[method]} left out at {layer}: {why}", file=sys.stderr)
    return kept


def _shown_layer(method: str, layer: str) -> str:
    """The layer a method's map comes from, as the panels and lines name it."""
    return ALL_BLOCKS if method in ATTENTION_METHODS else layer


def _methods_at(methods: list[str], layer: str) -> str:
    """``Grad-CAM, LayerCAM at layer4``; rollout's ``at all blocks`` beside them."""
    groups: dict[str, list[str]] = {}
    for method in methods:
        groups.setdefault(_shown_layer(method, layer), []).append(TITLES[method])
    return "; ".join(f"{', '.join(titles)} at {where}" for where, titles in groups.items()) \
        or f"none at {layer}"


def _layers(args: Namespace, loaded: LoadedModel, device: torch.device) -> list[str]:
    """``--target_layer``'s layers, ``auto`` resolved to the model's default, each probed on
    one input before any work."""
    from explain import probe_layers
    layers = [loaded.layer(name) for name in parse_layers(args.target_layer)]
    if args.target_layer == "auto":
        say(f"target layer: {layers[0]} (auto: {loaded.layer_reason})")
    size = loaded.input_size
    probe_layers(loaded.module, layers, torch.zeros(1, 3, size, size, device=device))
    return layers


def _folder(args: Namespace, loaded: LoadedModel) -> tuple[list[Path], list[int]]:
    """The photos and labels of the image folder ``--data_dir`` (its ``val/`` when it has
    ``train/`` and ``val/``, said in one line)."""
    paths, labels, root = sources.folder_images(args.data_dir, loaded.classes)
    if root != Path(args.data_dir):
        say(f"{args.data_dir} has train/ and val/: testing on {root}")
    return paths, labels


def _target_class(args: Namespace, loaded: LoadedModel) -> int | None:
    """``--target CLASS``'s index; None for ``pred`` and ``gt``."""
    return None if args.target in ("pred", "gt") else loaded.class_index(args.target)


def heatmaps_line(methods: list[str], dtype: torch.dtype | None, device: torch.device) -> str:
    """``device cpu, heatmaps in bfloat16 (Grad-CAM in fp32)``: the precision of each method's
    maps, reduced only where the method was validated for it (``explain.heatmap_precision``)."""
    from explain import heatmap_precision
    chosen = heatmap_precision(methods, dtype, device)
    reduced = {m for m, d in chosen.items() if d is not None}
    note(device=str(device), precision=precision_label(dtype if reduced else None))
    if not reduced:
        return f"device {device}, heatmaps in fp32"
    line = f"device {device}, heatmaps in {precision_label(dtype)}"
    kept = [TITLES[m] for m in methods if m not in reduced]
    return line + (f" ({', '.join(kept)} in fp32)" if kept else "")


def _batch(args: Namespace) -> int:
    return int(setting(args, "batch_size"))


def _how_many(args: Namespace) -> int | None:
    """``--vis_num``; left out: every ``--image``, else the recipe's number of images."""
    if args.vis_num is not None:
        return args.vis_num
    return None if args.image else default(ExplainConfig, "num_images")


# --------------------------------------------------------------------------------------------
# Jobs


def list_layers(args: Namespace) -> int:
    """``--list_layers``: every module with a spatial output (token layers with their grid),
    its map for an input of the model's size, which one ``auto`` picks, and whether CAM is
    defined."""
    from cam import cam_head, map_layouts
    loaded = load(args, resolve_device(args.device))
    rows = map_layouts(loaded.module, loaded.input_size)
    width = max((len(name) for name, _ in rows), default=5)
    print(f"{'layer':<{width}}  map (channels x h x w) for a {loaded.input_size} px input")
    for name, layout in rows:
        k, h, w = layout.shape
        read = f" ({layout.describe()})" if layout.describe() else ""
        mark = "  <- auto" if name == loaded.default_layer else ""
        print(f"{name:<{width}}  {k} x {h} x {w}{read}{mark}")
    try:
        head = cam_head(loaded.module, loaded.input_size)
        print(f"CAM: defined at {head.layer} (global average pooling + one linear layer)")
    except UserError as exc:
        print(f"CAM: not defined: {exc}")
    return 0


def test_accuracy(args: Namespace) -> int:
    """``--mode test``: accuracy, per-class accuracy and the confusion matrix, on the test
    split or on an image folder."""
    from train import AccuracyReport, accuracy_report
    from train import test_accuracy as split_accuracy
    device = resolve_device(args.device)
    loaded = load(args, device)
    dtype = precision_dtype(args.precision, device)
    batch_size = max(_batch(args), 256)
    if uses_photos(args, loaded):
        paths, labels = _folder(args, loaded)
        root = Path(args.data_dir)
        print(f"Testing on {len(paths)} images of {root}, {precision_line(device, dtype)}")
        logits, truth = sources.folder_logits(loaded, paths, labels, device, dtype, batch_size)
        report = AccuracyReport(*accuracy_report(logits, truth, loaded.classes), loaded.classes,
                                len(truth))
        name = root.name or str(root)
    else:
        split = sources.dataset_split(loaded, args.data_dir)
        if distributed.world().is_main:
            print(f"Testing on {len(split)} {loaded.dataset} test images, "
                  f"{precision_line(device, dtype)}")
        report = split_accuracy(loaded.module, split, device, dtype, batch_size=batch_size)
        name = loaded.dataset
    if not distributed.world().is_main:  # under torchrun rank 0 reports
        return 0
    present = report.confusion.sum(1) > 0
    print(f"Test Accuracy: {report.accuracy:.2f}%")
    note(images=report.n, accuracy={"accuracy": report.accuracy, "n": report.n, "per_class": {
        c: v for c, v, here in zip(report.classes, report.per_class, present.tolist()) if here}})
    width = max(len(c) for c in report.classes)
    for name_, value, here in zip(report.classes, report.per_class, present.tolist()):
        if here:
            print(f"  {name_:<{width}}  {value:6.2f}%")
    out = Path(args.out_dir) / "confusion_matrix.png"
    visualize.plot_confusion_matrix(report.confusion, report.classes, out,
                                    title=f"{name}: {report.accuracy:.2f}% of {report.n}")
    print(f"Confusion matrix: {out}")
    return 0


def heatmaps(args: Namespace) -> int:
    """``--vis``, ``--image``, ``--image_dir``: heatmap panels (and a grid) of test images, of
    an image folder's first images, or of photos; photos' top-5 classes."""
    if args.panel_format is not None and args.vis == "none":
        raise FlagError("argument --panel_format: no panels are drawn without --vis; leave it "
                        "out or name the methods to draw")
    device = resolve_device(args.device)
    loaded = load(args, device)
    methods = [] if args.vis == "none" else _methods(args, loaded)
    if methods and set(methods) <= set(ATTENTION_METHODS):
        layer = ALL_BLOCKS                 # rollout alone: no layer to resolve
    else:
        layer = _layers(args, loaded, device)[0] if methods else args.target_layer
    if args.vis == "all":
        methods = _defined(methods, loaded, layer, device)
    n = _how_many(args)
    if args.image or args.image_dir:
        paths = sources.photo_files(args.image, args.image_dir)
        return explain_photos(args, loaded, paths[:n], methods, layer, device)
    if loaded.dataset is None:
        paths, labels = _folder(args, loaded)
        return explain_photos(args, loaded, paths[:n], methods, layer, device, labels[:n])
    return explain_dataset(args, loaded, sources.dataset_split(loaded, args.data_dir), methods,
                           layer, n, device)


def leaderboard(args: Namespace) -> int:
    """``--vis METHODS --target_layer LAYERS --hidden_strategy S``: the leaderboard, on the
    correctly classified test images or folder images, or on your photos explained for their
    predicted class (or ``--target CLASS``)."""
    import leaderboard as board_api
    device = resolve_device(args.device)
    loaded = load(args, device)
    methods = _methods(args, loaded)
    layers = _layers(args, loaded, device)
    batch_size = _batch(args)
    images = None
    if args.image or args.image_dir:
        split = sources.photos_in_memory(loaded, sources.photo_files(args.image, args.image_dir),
                                         device, args.num_eval, batch_size,
                                         _target_class(args, loaded))
        which = "predicted class" if args.target == "pred" else f"class {args.target}"
        images = f"of your images, each explained for its {which}"
    elif loaded.dataset is None:
        paths, labels = _folder(args, loaded)
        split = sources.folder_in_memory(loaded, paths, labels, device, args.num_eval, True,
                                         batch_size)
    else:
        split = sources.dataset_split(loaded, args.data_dir)
    dtype = precision_dtype(args.precision, device)
    say(f"Leaderboard: {heatmaps_line(methods, dtype, device)}, curves in "
        f"{precision_label(dtype)}")
    board = board_api.leaderboard(
        loaded.module, split, device, methods, layers,
        parse_strategies(args.hidden_strategy), steps=args.steps, num_images=args.num_eval,
        batch_size=batch_size, eval_batch_size=args.eval_batch_size,
        cam_batch_size=args.cam_batch_size, dtype=dtype, seed=args.seed,
        context={"model": str(args.model or _weights(args) or "random weights"),
                 "arch": loaded.arch, **({"images": images} if images else {})})
    if not distributed.world().is_main:  # under torchrun rank 0 reports and writes
        return 0
    for line in [*board.notes, *board.warnings]:
        print(line, file=sys.stderr)
    note(images=board.n)
    print(board.header)
    for strategy in board.strategies:
        for result in board.results[strategy]:
            print(f"[{strategy}] " + "\n".join(board_api.report_lines(result)))
    written = board_api.write_leaderboard(board, args.out_dir)
    print(board_api.BETTER_LINE)
    for strategy in board.strategies:
        print(board_api.markdown_table(board.results[strategy], board.caption(strategy)), end="")
    figures = ", ".join(p.name for p in written if p.suffix == ".png")
    others = sorted({p.suffix for p in written if p.suffix != ".png"})
    print(f"Wrote {len(written)} files to {Path(args.out_dir)}: figures {figures}; and "
          f"{', '.join(others)} files of the curves, summaries and the leaderboard")
    return 0


def sanity(args: Namespace) -> int:
    """``--sanity``: the cascading randomisation test on the first ``--vis_num`` images (test
    split, image folder or photos), for the methods of ``--vis`` (all if none) at every layer
    of ``--target_layer``, explaining the trained network's predicted (or true, or named)
    class."""
    from sanity import label, markdown_table, sanity_check, write_sanity
    device = resolve_device(args.device)
    loaded = load(args, device)
    methods = _methods(args, loaded, "all" if args.vis == "none" else args.vis)
    layers = _layers(args, loaded, device)
    where = [ALL_BLOCKS] if set(methods) <= set(ATTENTION_METHODS) else layers
    batch_size = _batch(args)
    n = _how_many(args)
    if args.image or args.image_dir:
        paths = sources.photo_files(args.image, args.image_dir)[:n]
        part = sources.photos_in_memory(loaded, paths, device, len(paths), batch_size,
                                        _target_class(args, loaded))
        source = (f"{len(part)} image(s) from --image" if args.image
                  else f"{len(part)} of your images")
        use_true = True
    elif loaded.dataset is None:
        paths, labels = _folder(args, loaded)
        part = sources.folder_in_memory(loaded, paths, labels, device, n, False, batch_size)
        source, use_true = f"{len(part)} of your images", True
    else:
        part = sources.dataset_split(loaded, args.data_dir).subset(n)
        source = f"the first {len(part)} {loaded.dataset} test images"
        use_true = args.target == "gt"
    pixels = part.images.float().div(255)
    images = loaded.inputs.normalize(pixels).to(device)
    dtype = precision_dtype(args.precision, device)
    print(f"Sanity check: {source}, {len(methods)} method(s) at {', '.join(where)}, "
          f"{heatmaps_line(methods, dtype, device)}")
    from sanity import predicted_classes
    targets = (part.labels.to(device) if use_true
               else predicted_classes(loaded.module, images, batch_size))
    report = sanity_check(loaded.module, images, targets, methods, layers, batch_size,
                          args.cam_batch_size, dtype, args.seed, source,
                          {"pred": "predicted", "gt": "true"}.get(args.target, args.target))
    for line in [*report.notes, *report.warnings]:
        print(line, file=sys.stderr)
    note(images=len(part))
    written = write_sanity(report, pixels, Path(args.out_dir) / "sanity")
    print(markdown_table(report.rows, report.stages, report.failed, report.caption), end="")
    for (method, layer), fails in report.failed.items():
        last = report.last(method, layer)
        print(f"{label(method, layer)}: {'FAILS' if fails else 'passes'} (Spearman "
              f"{last.spearman.mean:.2f} {last.spearman.interval_text(2)}, SSIM "
              f"{last.ssim.mean:.2f} with every layer random)")
    print(f"Wrote {', '.join(str(p) for p in written)}")
    return 0


# --------------------------------------------------------------------------------------------
# Panels


def explain_dataset(args: Namespace, loaded: LoadedModel, split: ImageSplit,
                    methods: list[str], layer: str, n: int, device: torch.device) -> int:
    """``--vis METHOD --vis_num N``: a panel per test image and method, written as each chunk
    is explained, and a grid of the first ``GRID_MAX``. Under torchrun each rank writes its
    own block's panels; rank 0 gathers the grid's images and the counts."""
    from explain import explain_split
    info = split.info
    n = min(n, len(split))
    dtype = precision_dtype(args.precision, device)
    here = distributed.world()
    if here.is_main:
        print(f"Heatmaps of {n} {info.name} test images: {_methods_at(methods, layer)}, "
              f"{heatmaps_line(methods, dtype, device)}")
    correct = 0
    note(images=n)
    grid: dict[str, list[tuple[torch.Tensor, torch.Tensor, str]]] = {m: [] for m in methods}
    mine = distributed.shard(n, here)
    batch_size = _batch(args)
    suffix = setting(args, "panel_format")
    bar = tqdm(total=mine.stop - mine.start, desc="heatmaps", unit="img", leave=False,
               disable=not here.is_main or n <= batch_size)
    for block in explain_split(loaded.module, split, methods, layer, n, device, args.target,
                               batch_size, args.cam_batch_size, dtype):
        preds = block.preds
        correct += (preds == block.labels).sum().item()
        for method, maps in block.maps.items():
            for j, i in enumerate(block.indices):
                pred, true = info.classes[preds[j]], info.classes[block.labels[j]]
                name = (f"{method}_{i}_pred_{visualize.slug(pred)}_gt_{visualize.slug(true)}"
                        f".{suffix}")
                visualize.save_rgb(visualize.heatmap_panel(block.pixels[j], maps[j]),
                                   Path(args.out_dir) / method / name)
                if i < GRID_MAX:
                    caption = f"pred {pred} ({block.probs[j, preds[j]]:.2f})\ntrue {true}"
                    grid[method].append((block.pixels[j], maps[j], caption))
        bar.update(len(block.indices))
    bar.close()
    gathered = distributed.gather((correct, grid), here)
    if not here.is_main:  # rank 0 draws the grids and reports
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
                                    suptitle=f"{TITLES[method]} "
                                             f"({_shown_layer(method, layer)}, {which} class)")
        print(f"{TITLES[method]}: {n} panels and {path} ({correct}/{n} predicted "
              f"correctly{shown})")
    return 0


def explain_photos(args: Namespace, loaded: LoadedModel, paths: list[Path], methods: list[str],
                   layer: str, device: torch.device, labels: list[int] | None = None) -> int:
    """Heatmaps of photos at the model's resolution, each panel the photo at its own aspect
    ratio with the map over the region the model saw. The photos are decoded by two worker
    processes while the model works, one batch at a time; ``predictions.csv`` lists every
    photo's top-5 classes."""
    from explain import explain_batched, make_explainer, predict_and_explain, probabilities
    prep = loaded.inputs
    batch_size = _batch(args)
    target_class = _target_class(args, loaded)
    dtype = precision_dtype(args.precision, device)
    stems = visualize.unique_slugs([p.stem for p in paths])
    note(images=len(paths))
    which = "class" if target_class is not None else args.target   # pred, gt or a class
    rows = []
    out = Path(args.out_dir)
    print(f"{len(paths)} image(s) at {loaded.input_size} px, methods: "
          f"{_methods_at(methods, layer)}"
          f"{', ' + heatmaps_line(methods, dtype, device) if methods else ''}")
    bar = tqdm(total=len(paths), desc="images", unit="img", leave=False, disable=len(paths) < 20)
    explainers = {m: make_explainer(m, loaded.module, layer, batch_size=args.cam_batch_size,
                                    dtype=dtype) for m in methods}
    predicted = target_class is None and args.target == "pred"
    panel_side = PANEL_SIDE if methods else None
    suffix = setting(args, "panel_format")
    for batch in sources.loaded_batches(loaded, paths, device, batch_size, labels, panel_side):
        images = prep.normalize(batch.pixels).to(device)
        if predicted:   # the prediction from the first method's own pass where it can
            probs, maps = predict_and_explain(loaded.module, images, explainers, batch_size)
            targets = probs.argmax(1)
        else:
            probs = probabilities(loaded.module, images, batch_size)
            targets = (torch.full_like(probs[:, 0], target_class, dtype=torch.long)
                       if target_class is not None else batch.labels.to(device))
            maps = {m: explain_batched(e, images, targets, batch_size)
                    for m, e in explainers.items()}
        maps = {m: heat.cpu() for m, heat in maps.items()}
        top = probs.topk(min(5, probs.shape[1]), dim=1)
        for j, i in enumerate(batch.indices.tolist()):
            ranking = ", ".join(f"{loaded.classes[k]} {v:.3f}"
                                for v, k in zip(top.values[j].tolist(), top.indices[j].tolist()))
            rows.append({"image": str(paths[i]), "top5": ranking,
                         "explained": loaded.classes[int(targets[j])]})
            if len(paths) <= 20:
                print(f"{paths[i]}: {ranking}")
            if not methods:
                continue
            photo = batch.panels[j]
            for method, heat in maps.items():
                explained = loaded.classes[int(targets[j])]
                title = f"{explained} {probs[j, targets[j]]:.2f} ({TITLES[method]})"
                panel = visualize.photo_panel(photo, heat[j], prep, batch.sizes[j], title)
                name = visualize.slug(explained)
                visualize.save_rgb(panel, out / method / f"{method}_{stems[i]}_{which}_{name}"
                                          f".{suffix}")
        bar.update(len(batch.indices))
    bar.close()
    outputs.write_csv(out / "predictions.csv", ("image", "top5", "explained"), rows)
    for method in methods:
        print(f"{TITLES[method]}: {len(paths)} panels in {out / method}")
    print(f"Predictions: {out / 'predictions.csv'}")
    return 0


