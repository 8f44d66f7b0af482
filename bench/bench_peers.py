"""Heatmap speed against torchcam and pytorch-grad-cam, in one process, on the same model and
images, and the floor every gradient method stands on.

    python bench/bench_peers.py [--repeat 3] [--device auto] [--precision auto]

* Two settings: a random-weight ResNet-50 at 224 px, batch 8, explained at ``layer4``; the
  shipped Fashion-MNIST ResNet-18 at 32 px, batch 64, at ``layer4``.
* Grad-CAM, LayerCAM and Score-CAM: milliseconds per image for the project (at
  ``--precision``: reduced only where the method is validated for it, see
  ``cam.LayerExplainer.reduced_precision_on``), torchcam 0.5 and pytorch-grad-cam 1.5 (both
  fp32, as they run), interleaved repeats, the minimum; the peers' time over the project's,
  and the Pearson r of the project's maps against each peer's (per map, the smallest).
* The floor of a gradient method: one forward pass plus one ``autograd.grad`` to the layer, at
  the same precision as the project's run.
Where a peer is not installed, the line says so. Score-CAM at 224 px runs on 2 images only
(2,048 masked passes each).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cam import capture_activation, normalize_heatmaps, resolve_layer
from explain import heatmap_precision, make_explainer
from runtime import autocast, precision_dtype, precision_label, resolve_device
from zoo import load_classifier

METHODS = {"gradcam": ("GradCAM", "GradCAM"), "layercam": ("LayerCAM", "LayerCAM"),
           "scorecam": ("ScoreCAM", "ScoreCAM")}


def smallest_r(a: torch.Tensor, b: torch.Tensor) -> float:
    x, y = a.flatten(1).double(), b.flatten(1).double()
    live = (x.amax(1) > 0) | (y.amax(1) > 0)
    x, y = x[live] - x[live].mean(1, keepdim=True), y[live] - y[live].mean(1, keepdim=True)
    r = (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1)).clamp(min=1e-30)
    return r.min().item() if len(r) else 1.0


def torchcam_maps(model, layer: str, name: str) -> Callable | None:
    try:
        from torchcam import methods
    except ImportError:
        return None

    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        extractor = getattr(methods, METHODS[name][0])(model, target_layer=layer,
                                                         input_shape=tuple(images.shape[1:]))
        try:
            with torch.set_grad_enabled(name != "scorecam"):
                scores = model(images)
                cams = extractor(targets.tolist(), scores)[0]
        finally:
            extractor.remove_hooks()
        cams = F.interpolate(cams[:, None].float(), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        return normalize_heatmaps(cams)
    return run


def grad_cam_maps(model, layer: str, name: str) -> Callable | None:
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return None

    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        method = getattr(pytorch_grad_cam, METHODS[name][1])
        with method(model=model, target_layers=[resolve_layer(model, layer)]) as cam:
            if name == "scorecam":
                cam.batch_size = 16
            maps = cam(input_tensor=images,
                       targets=[ClassifierOutputTarget(int(t)) for t in targets])
        return normalize_heatmaps(torch.from_numpy(maps))
    return run


def floor(model, layer: str, dtype: torch.dtype | None, device: torch.device
          ) -> Callable:
    """One forward pass and one ``autograd.grad`` to the layer: what every gradient method
    costs at least."""
    module = resolve_layer(model, layer)

    def run(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        inputs = images if dtype is None else images.contiguous(memory_format=torch.channels_last)
        with capture_activation(module) as capture, torch.enable_grad(), \
                autocast(device, dtype):
            logits = model(inputs)
            score = logits.gather(1, targets[:, None]).sum()
            return torch.autograd.grad(score, capture.activation)[0]
    return run


def interleaved(runs: dict[str, Callable[[], object]], repeat: int, device: torch.device
                ) -> dict[str, float]:
    """Each run's fastest time over ``repeat`` rounds, the runs taking turns in every round
    (so a change of the machine's speed touches all alike)."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def setting(title: str, model, images: torch.Tensor, targets: torch.Tensor, layer: str,
            dtype: torch.dtype | None, device: torch.device, repeat: int,
            methods: list[str]) -> None:
    print(f"\n{title}: {len(images)} images {tuple(images.shape[-2:])}, layer {layer}")
    floor_s = interleaved({"floor": lambda: floor(model, layer, dtype, device)(images, targets)},
                          repeat, device)["floor"]
    print(f"  floor (forward + autograd.grad, {precision_label(dtype)}): "
          f"{1000 * floor_s / len(images):.2f} ms/image")
    for name in methods:
        count = len(images) if name != "scorecam" or images.shape[-1] < 100 else 2
        x, t = images[:count], targets[:count]
        ours = make_explainer(name, model, layer, batch_size=256, dtype=dtype)
        runs: dict[str, Callable[[], object]] = {"project": lambda ours=ours, x=x, t=t: ours(x, t)}
        peers = {"torchcam": torchcam_maps(model, layer, name),
                 "pytorch-grad-cam": grad_cam_maps(model, layer, name)}
        for peer, make in peers.items():
            if make is not None:
                runs[peer] = (lambda make=make, x=x, t=t: make(x, t))
        times = interleaved(runs, repeat, device)
        used = precision_label(heatmap_precision([name], dtype, device)[name])
        line = (f"  {name:<9} project {1000 * times['project'] / count:8.2f} ms/image "
                f"({used})")
        ours_maps = ours(x, t)
        for peer, make in peers.items():
            if make is None:
                line += f"; {peer}: not installed"
                continue
            ratio = times[peer] / times["project"]
            line += (f"; {peer} {1000 * times[peer] / count:8.2f} ({ratio:.2f}x the project's "
                     f"time, maps r >= {smallest_r(ours_maps, make(x, t)):.5f})")
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32"), default="auto")
    parser.add_argument("--methods", default="gradcam,layercam,scorecam")
    args = parser.parse_args()
    device = resolve_device(args.device)
    dtype = precision_dtype(args.precision, device)
    methods = args.methods.split(",")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"precision {args.precision} ({precision_label(dtype)})")
    torch.manual_seed(0)
    model = torchvision.models.resnet50().eval().to(device)
    images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    targets = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(2)).to(device)
    setting("ResNet-50, random weights", model, images, targets, "layer4", dtype, device,
            args.repeat, methods)
    shipped = load_classifier(weights="checkpoints/resnet18_fashion_mnist.pth", device=device)
    from sources import dataset_split
    split = dataset_split(shipped, "data")
    images = shipped.inputs.normalize(split.images[:64].float() / 255).to(device)
    setting("the shipped Fashion-MNIST ResNet-18", shipped.module, images,
            split.labels[:64].to(device), "layer4", dtype, device, args.repeat, methods)


if __name__ == "__main__":
    main()
