"""The registry of explanation methods, and heatmaps for test images or a user's own images.

``EXPLAINERS`` is the one place that lists the methods; everything else (the CLI, the
evaluation, the benchmarks) looks them up here.
"""
from __future__ import annotations

import inspect
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import distributed
import visualize
from cam import CAM
from data import DatasetInfo, ImageSplit, load_image, normalize
from errors import UserError
from gradcam import GradCAM, GradCAMPlusPlus, GuidedGradCAM, HiResCAM, LayerCAM, XGradCAM
from gradfree import AblationCAM, EigenCAM, ScoreCAM

Explainer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

EXPLAINERS: dict[str, Callable[..., Explainer]] = {
    "cam": CAM,
    "gradcam": GradCAM,
    "gradcampp": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
    "ablationcam": AblationCAM,
    "eigencam": EigenCAM,
    "guidedgradcam": GuidedGradCAM,
}

TITLES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "xgradcam": "XGrad-CAM",
          "hirescam": "HiResCAM", "layercam": "LayerCAM", "scorecam": "Score-CAM",
          "ablationcam": "Ablation-CAM", "eigencam": "Eigen-CAM"}
TITLES["guidedgradcam"] = "Guided Grad-CAM"


def make_explainer(name: str, model: nn.Module, target_layer: str = "layer4",
                   batch_size: int = 256, dtype: torch.dtype | None = None) -> Explainer:
    """The explainer called ``name`` for ``model`` at ``target_layer``. For the methods that
    run a forward pass per channel (Score-CAM, Ablation-CAM), ``batch_size`` is the chunk of
    those passes and ``dtype`` their autocast precision (None: fp32)."""
    if name not in EXPLAINERS:
        raise UserError(f"unknown heatmap method '{name}' (known: {', '.join(EXPLAINERS)})")
    if "," in target_layer:
        raise UserError(f"--target_layer '{target_layer}' names several layers; a comma list "
                        f"works with --hidden_strategy and --sanity, heatmap panels take one")
    if name == "cam" and target_layer != "layer4":
        raise UserError("CAM is defined at the layer before global pooling (layer4) only; "
                        "use --vis gradcam for other layers")
    make = EXPLAINERS[name]
    if "batch_size" in inspect.signature(make).parameters:
        return make(model, target_layer=target_layer, batch_size=batch_size, dtype=dtype)
    return make(model, target_layer=target_layer)


def parse_layers(spec: str) -> list[str]:
    """``layer4`` / ``layer3,layer4`` -> layer names, in order, without repeats."""
    layers = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    if not layers:
        raise UserError("--target_layer names no layer")
    return layers


def parse_methods(spec: str) -> list[str]:
    """``gradcam`` / ``cam,gradcam`` / ``all`` -> method names, each checked."""
    names = list(EXPLAINERS) if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        if name not in EXPLAINERS:
            raise UserError(f"unknown heatmap method '{name}' (known: {', '.join(EXPLAINERS)}, "
                            f"all)")
    if not names:
        raise UserError("--vis names no method")
    return names


def explain_batched(explainer: Explainer, images: torch.Tensor, targets: torch.Tensor,
                    batch_size: int) -> torch.Tensor:
    """Heatmaps ``[N, H, W]`` for ``images`` in chunks of ``batch_size``, on the images' device
    (``[0, H, W]`` for no images: a rank's empty share under torchrun)."""
    if len(images) == 0:
        return images.new_zeros(0, *images.shape[-2:])
    chunks = [explainer(images[i:i + batch_size], targets[i:i + batch_size])
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


@torch.no_grad()
def _probabilities(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    probs = torch.cat([model(images[i:i + batch_size]).float().softmax(1)
                       for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return probs


GRID_MAX = 50  # images in a method's grid figure; a larger grid is unreadable and slow to draw


def run_dataset(model: nn.Module, split: ImageSplit, device: torch.device, args: Namespace) -> int:
    """``--vis METHOD --vis_num N``: a panel per test image and method, and a grid of the first
    ``GRID_MAX``.

    Images are explained in chunks of ``--batch_size`` and each panel is written as soon as it
    is made, so memory stays that of one chunk whatever N is. Under torchrun each rank writes
    the panels of its own block of images (their names are global indices); rank 0 gathers the
    grid's images and the counts, and reports.
    """
    methods = parse_methods(args.vis)
    explainers = {m: make_explainer(m, model, args.target_layer, args.cam_batch_size)
                  for m in methods}
    info = split.info
    n = min(args.vis_num, len(split))
    here = distributed.world()
    mine = distributed.shard(n, here)  # under torchrun: this rank's block of images
    correct = 0
    grid: dict[str, list[tuple[torch.Tensor, torch.Tensor, str]]] = {m: [] for m in explainers}
    bar = tqdm(total=mine.stop - mine.start, desc="heatmaps", unit="img", leave=False,
               disable=not here.is_main or n <= args.batch_size)
    for start in range(mine.start, mine.stop, args.batch_size):
        stop = min(start + args.batch_size, mine.stop)
        pixels = split.images[start:stop].float().div(255)
        labels = split.labels[start:stop].cpu()
        probs, maps = _explain_block(model, explainers, pixels, labels, info, device, args)
        preds = probs.argmax(1)
        correct += (preds == labels).sum().item()
        for method, heatmaps in maps.items():
            for j, i in enumerate(range(start, stop)):
                pred, true = info.classes[preds[j]], info.classes[labels[j]]
                name = f"{method}_{i}_pred_{visualize.slug(pred)}_gt_{visualize.slug(true)}.png"
                visualize.save_rgb(visualize.heatmap_panel(pixels[j], heatmaps[j]),
                                   Path(args.out_dir) / method / name)
                if i < GRID_MAX:
                    grid[method].append((pixels[j], heatmaps[j],
                                         f"pred {pred} ({probs[j, preds[j]]:.2f})\ntrue {true}"))
        bar.update(stop - start)
    bar.close()
    gathered = distributed.gather((correct, grid), here)
    if gathered is None:  # another rank than 0: rank 0 draws the grids and reports
        return 0
    correct = sum(count for count, _ in gathered)
    which = "predicted" if args.target == "pred" else "true"
    shown = "" if n <= GRID_MAX else f"; the grid shows the first {GRID_MAX}"
    for method in explainers:
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


def _explain_block(model: nn.Module, explainers: dict[str, Explainer], pixels: torch.Tensor,
                   labels: torch.Tensor, info: DatasetInfo, device: torch.device,
                   args: Namespace) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Class probabilities ``[n, C]`` and each method's heatmaps ``[n, H, W]`` (on the CPU) for
    a block of test images; an empty block gives empty tensors."""
    if len(pixels) == 0:
        classes = len(info.classes)
        return torch.empty(0, classes), {m: torch.empty(0, *pixels.shape[-2:]) for m in explainers}
    images = normalize(pixels, info).to(device)
    probs = _probabilities(model, images, args.batch_size)
    targets = probs.argmax(1) if args.target == "pred" else labels.to(device)
    return probs.cpu(), {m: explain_batched(e, images, targets, args.batch_size).cpu()
                         for m, e in explainers.items()}


def run_images(model: nn.Module, info: DatasetInfo, device: torch.device, args: Namespace) -> int:
    """``--image PATH``: top-5 classes of each image and, with ``--vis``, its heatmap panels."""
    methods = [] if args.vis == "none" else parse_methods(args.vis)
    explainers = {m: make_explainer(m, model, args.target_layer, args.cam_batch_size)
                  for m in methods}
    pixels = torch.stack([load_image(path, info) for path in args.image])
    images = normalize(pixels, info).to(device)
    probs = _probabilities(model, images, args.batch_size)
    top = probs.topk(min(5, probs.shape[1]), dim=1)
    preds = top.indices[:, 0]
    for path, values, indices in zip(args.image, top.values, top.indices):
        ranking = ", ".join(f"{info.classes[k]} {v:.3f}" for v, k in zip(values, indices))
        print(f"{path}: {ranking}")
    for method, explainer in explainers.items():
        heatmaps = explain_batched(explainer, images, preds, args.batch_size).cpu()
        stems = visualize.unique_slugs([Path(path).stem for path in args.image])
        for stem, pixel, heatmap, pred in zip(stems, pixels, heatmaps, preds):
            out = (Path(args.out_dir) / method /
                   f"{method}_{stem}_pred_{visualize.slug(info.classes[pred])}.png")
            visualize.save_rgb(visualize.heatmap_panel(pixel, heatmap), out)
            print(f"{TITLES[method]}: {out}")
    return 0
