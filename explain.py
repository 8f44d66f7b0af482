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

import distributed
import visualize
from cam import CAM
from data import DatasetInfo, ImageSplit, load_image, normalize
from errors import UserError
from gradcam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
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
}

TITLES = {"cam": "CAM", "gradcam": "Grad-CAM", "gradcampp": "Grad-CAM++", "xgradcam": "XGrad-CAM",
          "hirescam": "HiResCAM", "layercam": "LayerCAM", "scorecam": "Score-CAM",
          "ablationcam": "Ablation-CAM", "eigencam": "Eigen-CAM"}


def make_explainer(name: str, model: nn.Module, target_layer: str = "layer4",
                   batch_size: int = 256) -> Explainer:
    """The explainer called ``name`` for ``model`` at ``target_layer``. ``batch_size`` is the
    chunk of forward passes for the methods that run one per channel (Score-CAM, Ablation-CAM).
    """
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
        return make(model, target_layer=target_layer, batch_size=batch_size)
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
    """Heatmaps ``[N, H, W]`` for ``images`` in chunks of ``batch_size``, on the images' device."""
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


def run_dataset(model: nn.Module, split: ImageSplit, device: torch.device, args: Namespace) -> int:
    """``--vis METHOD --vis_num N``: panels and a grid for the first N test images."""
    methods = parse_methods(args.vis)
    explainers = {m: make_explainer(m, model, args.target_layer, args.cam_batch_size)
                  for m in methods}
    info = split.info
    part = split.subset(args.vis_num)
    pixels = part.images.float().div(255)
    labels = part.labels
    here = distributed.world()
    mine = distributed.shard(len(part), here)  # under torchrun: this rank's block of images
    gathered = distributed.gather(_explain_block(model, explainers, pixels[mine], labels[mine],
                                                 info, device, args), here)
    if gathered is None:  # another rank than 0: rank 0 writes the panels and grids
        return 0
    probs = torch.cat([p for p, _ in gathered])
    all_maps = {m: torch.cat([maps[m] for _, maps in gathered]) for m in explainers}
    preds = probs.argmax(1)
    for method in explainers:
        heatmaps = all_maps[method]
        folder = Path(args.out_dir) / method
        titles = []
        for i in range(len(pixels)):
            pred, true = info.classes[preds[i]], info.classes[labels[i]]
            name = f"{method}_{i}_pred_{visualize.slug(pred)}_gt_{visualize.slug(true)}.png"
            visualize.save_rgb(visualize.heatmap_panel(pixels[i], heatmaps[i]), folder / name)
            titles.append(f"pred {pred} ({probs[i, preds[i]]:.2f})\ntrue {true}")
        grid = folder / f"{method}_grid.png"
        which = "predicted" if args.target == "pred" else "true"
        visualize.save_heatmap_grid(pixels, heatmaps, titles, grid, suptitle=f"{TITLES[method]} "
                                    f"({args.target_layer}, {which} class)")
        correct = (preds == labels).sum().item()
        print(f"{TITLES[method]}: {len(pixels)} panels and {grid} "
              f"({correct}/{len(pixels)} predicted correctly)")
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
        for path, pixel, heatmap, pred in zip(args.image, pixels, heatmaps, preds):
            out = (Path(args.out_dir) / method /
                   f"{method}_{visualize.slug(Path(path).stem)}_pred_"
                   f"{visualize.slug(info.classes[pred])}.png")
            visualize.save_rgb(visualize.heatmap_panel(pixel, heatmap), out)
            print(f"{TITLES[method]}: {out}")
    return 0
