"""The explanation pass for detectors: a target (a detection's class logit, or a missed
object's best proposal or anchor) explained with Grad-CAM and its relatives, or D-RISE.

The detector is one of ``detectors.py`` (torchvision's COCO detectors or this tool's scene
detector). :func:`explain` is the one entry: it takes the image, a target and the method, and
dispatches the method (the gradient methods here, D-RISE in ``drise.py``):

* :class:`DetectionTarget`: every detection with a score of at least ``score_thresh`` (at
  most ``max_explained``, highest scores first); the explained score is the class logit of the
  proposal (Faster R-CNN) or anchor (RetinaNet, FCOS, SSD: traced back through
  post-processing by :func:`source_anchors`) the detection came from (Grad-CAM's pre-softmax /
  pre-sigmoid score). The softmax probability that torchvision reports saturates for
  confident detections (it is exactly 1.0 in float32 beyond a logit margin of about 17), and
  its gradient then loses the class's own evidence;
* :class:`MissTarget`: ground-truth objects; the explained score is the object's class logit
  at the proposal or anchor whose box overlaps the object most (``misses.py`` classifies the
  miss);
* Faster R-CNN's second stage (RoI pooling, box head, classifier) is run again on the
  explained proposals only, from the features of the one forward pass, so each backward pass
  goes through a few rows instead of all 1000 proposals. Gradients are taken with
  ``torch.autograd.grad`` with respect to the captured activations only; the parameters are
  frozen while the graph is built, so no weight gradient exists to compute;
* the detector resizes its input and pads it at the bottom and right to a multiple of 32 (the
  SSDs resize it to a square and do not pad); a map is cropped to the part that covers the
  resized image before it is resized to the original image, so that heatmaps and boxes line
  up.

Boxes are in continuous pixel coordinates (torchvision's): pixel column ``i`` (0-based) covers
``[i, i + 1)``. The detector runs in float32.
"""
from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou, clip_boxes_to_image

import registry
from cam import capture_activation, normalize_heatmaps, resolve_layer
from data import open_image
from detectors import DEFAULT_ARCH
from detheads import (
    OneStageOutputs,
    anchor_boxes,
    anchor_scores,
    family,
    one_stage_detections,
    one_stage_outputs,
    second_stage,
    source_anchors,
    source_rows,
)
from errors import ParamError
from gradcam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from runtime import eval_mode

if TYPE_CHECKING:
    from drise import DriseSettings

LAYERS = registry.DET_LAYERS

# The gradient methods by name (registry.DET_METHODS lists them, D-RISE included): each
# combines a layer's activation and the target score's gradient in its own way (gradcam.py).
GRADIENT_METHODS: dict[str, type[GradCAM]] = {
    "gradcam": GradCAM, "gradcampp": GradCAMPlusPlus, "xgradcam": XGradCAM,
    "hirescam": HiResCAM, "layercam": LayerCAM}


def check_image(model: nn.Module, image: torch.Tensor) -> None:
    """A detector's input, checked once at the entry: a finite float ``[3, H, W]`` tensor with
    values in [0, 1] (the detector normalizes it itself; an image in 0..255 finds nothing), on
    the model's device. Each problem is a :class:`ParamError` naming ``image``."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ParamError("image", f"{{param}} is {got}; it takes one RGB image [3, H, W] "
                                  f"(a batch of one: images[0])")
    if not image.is_floating_point():
        raise ParamError("image", f"{{param}} is {str(image.dtype).replace('torch.', '')}; it "
                                  f"takes float values in [0, 1] (image.float() / 255)")
    param = next(model.parameters(), None)
    if param is not None and image.device != param.device:
        raise ParamError("image", f"{{param}} is on {image.device} but the detector on "
                                  f"{param.device}")
    if not torch.isfinite(image).all():
        raise ParamError("image", "{param} holds NaN or inf values")
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        raise ParamError("image", f"{{param}} has values from {low:g} to {high:g}; it takes "
                                  f"values in [0, 1] (an 8-bit image: divide by 255)")


def check_method(method: str) -> str:
    """``method`` if it is one of ``registry.DET_METHODS``, else a ParamError (``method``)."""
    if method not in registry.DET_METHODS:
        raise ParamError("method", f"{{param}}: unknown detection method '{method}' (known: "
                                   f"{', '.join(registry.DET_METHODS)})")
    return method


def parse_layers(spec: str, arch: str = DEFAULT_ARCH) -> list[str]:
    """``layer4`` or ``layer2,layer4`` -> checked backbone layers of ``arch``, in order,
    without repeats."""
    return registry.parse_det_layers(spec, arch)


def backbone_layers(model: nn.Module) -> dict[str, str]:
    """The detector's explainable layers: name -> module path (``registry.DET_BACKBONE_LAYERS``
    of its backbone, recognised from the model's structure)."""
    from torchvision.models.detection.ssd import SSDFeatureExtractorVGG
    from torchvision.models.detection.ssdlite import SSDLiteFeatureExtractorMobileNet
    backbone = getattr(model, "backbone", None)
    body = getattr(backbone, "body", None)
    kind = ("vgg" if isinstance(backbone, SSDFeatureExtractorVGG) else
            "ssdlite" if isinstance(backbone, SSDLiteFeatureExtractorMobileNet) else
            "resnet" if hasattr(body, "layer4") else
            "mobilenet_fpn" if body is not None and hasattr(body, "16") else None)
    if kind is None:
        raise ParamError("layers", f"{{param}}: the backbone of this {type(model).__name__} is "
                                   f"none that this tool knows the layers of")
    return registry.DET_BACKBONE_LAYERS[kind]


def default_layer(model: nn.Module) -> str:
    """The layer a detector is explained at when none is named (``registry.DET_DEFAULT_LAYERS``
    of its backbone)."""
    paths = backbone_layers(model)
    kind = next(k for k, v in registry.DET_BACKBONE_LAYERS.items() if v == paths)
    return registry.DET_DEFAULT_LAYERS[kind]


def layer_modules(model: nn.Module, layers: Sequence[str]) -> list[nn.Module]:
    """The modules of ``layers`` (names of :func:`backbone_layers`); an unknown name is a
    ParamError (``layers``) listing the detector's names."""
    paths = backbone_layers(model)
    unknown = [name for name in layers if name not in paths]
    if unknown:
        raise ParamError("layers", f"{{param}}: unknown layer '{unknown[0]}' of this detector "
                                   f"(known: {', '.join(paths)}, or a comma list)")
    return [resolve_layer(model, paths[name]) for name in layers]


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class DetectionResult:
    """One image's detections (or missed objects) and the heatmaps of the explained ones.

    For a :class:`DetectionTarget`: ``boxes`` ``[M, 4]`` (original pixel coordinates),
    ``labels`` ``[M]`` (the detector's) and ``scores`` ``[M]`` hold every detection the
    detector returned, highest score first; ``explained`` ``[N]`` indexes the explained ones.
    For a :class:`MissTarget`: ``boxes`` are the best proposals' boxes for the objects'
    classes, ``labels`` the objects' classes, ``scores`` the proposals' probabilities for them,
    ``ious`` their IoU with the objects and ``winners`` the class that took each proposal (0:
    none, or the background); every one is explained.

    ``maps[layer]`` ``[N, h, w]`` holds the raw maps at the detector's resolution, so memory
    does not grow with the image; :meth:`heatmap` brings one to the image, in ``[0, 1]``, when
    it is drawn or scored. With ``geometry`` None the maps are final heatmaps at the image size
    already (D-RISE's). All on the CPU.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    explained: torch.Tensor
    maps: dict[str, torch.Tensor]
    geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    method: str = "gradcam"
    method_title: str = "Grad-CAM"
    ious: torch.Tensor | None = None
    winners: torch.Tensor | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image the boxes and heatmaps refer to."""
        if self.geometry is not None:
            return self.geometry[2]
        return tuple(next(iter(self.maps.values())).shape[-2:])

    def heatmap(self, layer: str, rank: int) -> torch.Tensor:
        """The ``rank``-th explained target's heatmap ``[H, W]`` in ``[0, 1]``."""
        maps = self.maps[layer]
        if self.geometry is None:
            return maps[rank]
        return fit_to_image(maps[rank:rank + 1], *self.geometry)[0]

    def heatmaps(self, layer: str) -> torch.Tensor:
        """Every explained target's heatmap ``[N, H, W]`` in ``[0, 1]``."""
        maps = self.maps[layer]
        return maps if self.geometry is None else fit_to_image(maps, *self.geometry)


@dataclass
class DetectorPass:
    """What one forward pass leaves for the backward passes of its targets
    (:func:`detector_pass` makes it, :func:`gradcam_maps` uses it up). The fields after
    ``activations`` and ``targets`` are those of :class:`DetectionResult`."""

    activations: list[torch.Tensor]  # per layer [1, K, h, w], in the graph
    targets: torch.Tensor            # [N] class logits of the explained targets, in the graph
    boxes: torch.Tensor              # [M, 4] original coordinates
    labels: torch.Tensor
    scores: torch.Tensor
    explained: torch.Tensor          # [N] indices into the boxes
    resized: tuple[int, int]         # the image inside the detector's padded input
    padded: tuple[int, int]
    original: tuple[int, int]
    sources: torch.Tensor | None = None  # [N] the proposal (row) or anchor each came from
    ious: torch.Tensor | None = None
    winners: torch.Tensor | None = None


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad inside the block, so autograd records no weight gradients;
    each parameter's flag is restored on every path."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


# --------------------------------------------------------------------------------------------
# Targets


@dataclass
class Stage:
    """What the detector computed for one image before the explained scores, without grad:
    the transformed ``batch`` (one image) and the ``original`` image size; for Faster R-CNN the
    ``proposals`` ``[R, 4]`` with their class ``logits`` ``[R, K]`` and box ``regression``; for
    the one-stage detectors the head ``outputs`` and this image's detached ``head``."""

    model: nn.Module
    batch: object
    original: tuple[int, int]
    proposals: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    regression: torch.Tensor | None = None
    outputs: OneStageOutputs | None = None
    head: dict[str, torch.Tensor] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """The resized image inside the detector's input."""
        return self.batch.image_sizes[0]


@dataclass
class Picked:
    """What a target picks from a :class:`Stage`: the proposal rows or anchors ``rows`` [N]
    and the classes ``labels`` [N] whose logits are explained, and the record of the result
    (``boxes`` in original pixels, ``scores``, their ``classes``, the ``explained`` indices,
    and for missed objects the ``ious`` and ``winners``)."""

    rows: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    explained: torch.Tensor
    ious: torch.Tensor | None = None
    winners: torch.Tensor | None = None


@dataclass(frozen=True)
class DetectionTarget:
    """The detector's own detections: each with ``score >= score_thresh`` and a label in
    ``allowed`` (any when None), highest scores first, at most ``max_explained``. The explained
    score of one is the class logit of the proposal or anchor it came from."""

    score_thresh: float = 0.5
    max_explained: int = 20
    allowed: Collection[int] | None = None

    def __post_init__(self) -> None:
        registry.check_number(self.score_thresh, "score_thresh", 0, 1)
        registry.check_number(self.max_explained, "max_explained", 1, integer=True)

    def select(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Indices of the detections to explain (``scores``, ``labels`` best first)."""
        keep = scores >= self.score_thresh
        if self.allowed is not None:
            keep &= torch.isin(labels, torch.tensor(sorted(self.allowed), device=labels.device))
        return keep.nonzero()[:, 0][:self.max_explained]

    def _picked(self, stage: Stage, boxes: torch.Tensor, scores: torch.Tensor,
                labels: torch.Tensor, explained: torch.Tensor, rows: torch.Tensor) -> Picked:
        original = stage.model.transform.postprocess([{"boxes": boxes}], [stage.size],
                                                     [stage.original])[0]["boxes"]
        return Picked(rows, labels[explained], original, scores, labels, explained)

    def two_stage(self, stage: Stage) -> Picked:
        """Faster R-CNN: post-processing, then each explained detection's proposal."""
        roi_heads, size = stage.model.roi_heads, stage.size
        (boxes,), (scores,), (labels,) = roi_heads.postprocess_detections(
            stage.logits, stage.regression, [stage.proposals], [size])
        explained = self.select(scores, labels)
        rows = source_rows(roi_heads, stage.logits, stage.regression, stage.proposals, size,
                           boxes[explained], scores[explained], labels[explained])
        return self._picked(stage, boxes, scores, labels, explained, rows)

    def one_stage(self, stage: Stage) -> Picked:
        """RetinaNet, FCOS, SSD: post-processing, then each explained detection's anchor. The
        logit is pre-sigmoid for RetinaNet and FCOS, pre-softmax for SSD; FCOS's centerness (a
        property of the location, not of the class) is not explained."""
        (found,) = one_stage_detections(stage.model, stage.outputs, [stage.size])
        boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
        explained = self.select(scores, labels)
        rows = source_anchors(stage.model, stage.head, stage.outputs.anchors[0], stage.size,
                              boxes[explained], scores[explained], labels[explained])
        return self._picked(stage, boxes, scores, labels, explained, rows)


@dataclass(frozen=True)
class MissTarget:
    """Ground-truth objects (``boxes`` ``[T, 4]`` in original pixels, ``labels`` ``[T]`` in the
    detector's labels, on the CPU): each explained at the proposal or anchor whose box for the
    object's class overlaps it most. ``score_thresh`` decides the winning class of a
    RetinaNet or FCOS anchor (the best class if its score reaches it, else 0, for none)."""

    boxes: torch.Tensor
    labels: torch.Tensor
    score_thresh: float = 0.5

    def __post_init__(self) -> None:
        registry.check_number(self.score_thresh, "score_thresh", 0, 1)

    def _in_stage(self, stage: Stage) -> tuple[torch.Tensor, torch.Tensor]:
        """The boxes in the resized image's pixels and the labels, on the detector's device."""
        ry = stage.size[0] / stage.original[0]
        rx = stage.size[1] / stage.original[1]
        boxes = self.boxes.float() * self.boxes.new_tensor([rx, ry, rx, ry]).float()
        return boxes.to(stage.batch.tensors), self.labels.long().to(stage.batch.tensors.device)

    def _picked(self, stage: Stage, rows: torch.Tensor, labels: torch.Tensor,
                boxes: torch.Tensor, ious: torch.Tensor, scores: torch.Tensor,
                winners: torch.Tensor) -> Picked:
        size, original = stage.size, stage.original
        scale = boxes.new_tensor([original[1] / size[1], original[0] / size[0]] * 2)
        return Picked(rows, labels, boxes * scale, scores, labels,
                      torch.arange(len(labels), device=labels.device), ious, winners)

    def two_stage(self, stage: Stage) -> Picked:
        """Faster R-CNN: the proposal whose decoded box for the object's class overlaps it
        most, its softmax probability for the class, and the class that took it."""
        targets, wanted = self._in_stage(stage)
        proposals = stage.proposals
        decoded = clip_boxes_to_image(stage.model.roi_heads.box_coder.decode(
            stage.regression, [proposals]), stage.size)                        # [R, C, 4]
        probs = F.softmax(stage.logits.float(), -1)
        rows, ious = [], []
        for box, label in zip(targets, wanted):
            iou = box_iou(box[None], decoded[:, label])[0]
            r = int(iou.argmax())
            rows.append(r)
            ious.append(float(iou[r]))
        rows_t = torch.tensor(rows, device=proposals.device)
        return self._picked(stage, rows_t, wanted, decoded[rows_t, wanted], torch.tensor(ious),
                            probs[rows_t, wanted], probs[rows_t].argmax(1))

    def one_stage(self, stage: Stage) -> Picked:
        """RetinaNet, FCOS, SSD: the anchor whose decoded box overlaps the object most (their
        boxes do not depend on the class), its score for the class as post-processing computes
        it, and the winning class (SSD: the softmax's argmax, 0 the background)."""
        targets, wanted = self._in_stage(stage)
        model, head = stage.model, stage.head
        decoded = anchor_boxes(model, head, stage.outputs.anchors[0], stage.size)  # [A, 4]
        best, rows = box_iou(targets, decoded).max(dim=1)                          # [T]
        probs = anchor_scores(model, head)[rows].float()                          # [T, K]
        scores = probs.gather(1, wanted[:, None])[:, 0]
        if isinstance(model, SSD):
            winners = probs.argmax(1)
        else:
            top, cls = probs[:, 1:].max(1)
            winners = torch.where(top >= self.score_thresh, cls + 1, 0)
        return self._picked(stage, rows, wanted, decoded[rows], best, scores, winners)


Target = DetectionTarget | MissTarget


# --------------------------------------------------------------------------------------------
# The pass


def detector_pass(model: nn.Module, image: torch.Tensor, layers: Sequence[str],
                  target: Target | float, max_explained: int = 20,
                  allowed: Collection[int] | None = None) -> DetectorPass:
    """One detector pass that keeps the activations at ``layers`` and the explained targets'
    logits in the graph: the class logit of the proposal (Faster R-CNN) or anchor (RetinaNet,
    FCOS, SSD) that ``target`` picks. A number for ``target`` stands for
    ``DetectionTarget(target, max_explained, allowed)``.

    Hooks, train/eval flags and ``requires_grad`` are restored when it returns or raises; the
    graph from the activations to the logits stays alive in the result.
    """
    if not isinstance(target, (DetectionTarget, MissTarget)):
        target = DetectionTarget(float(target), max_explained, allowed)
    modules = layer_modules(model, layers)
    two_stage = family(model) == "fasterrcnn"
    with eval_mode(model), frozen(model), contextlib.ExitStack() as stack, torch.enable_grad():
        captures = [stack.enter_context(capture_activation(m)) for m in modules]
        batch, _ = model.transform([image])
        sizes = batch.image_sizes
        original = tuple(image.shape[-2:])
        if two_stage:
            features = model.backbone(batch.tensors)
            with torch.no_grad():
                proposals, _ = model.rpn(batch, features)
                logits, regression = second_stage(model.roi_heads, features, proposals, sizes)
                picked = target.two_stage(Stage(model, batch, original, proposals[0], logits,
                                                regression))
            scores = picked.boxes.new_zeros(0)
            if len(picked.rows):
                own, _ = second_stage(model.roi_heads, features,
                                      [proposals[0][picked.rows]], sizes)
                scores = own.gather(1, picked.labels[:, None])[:, 0]
        else:
            out = one_stage_outputs(model, batch)
            with torch.no_grad():
                head = {k: v[0].detach() for k, v in out.head.items()}
                picked = target.one_stage(Stage(model, batch, original, outputs=out, head=head))
            scores = out.head["cls_logits"][0, picked.rows, picked.labels]
    return DetectorPass([c.activation for c in captures], scores, picked.boxes, picked.classes,
                        picked.scores, picked.explained, tuple(sizes[0]),
                        tuple(batch.tensors.shape[-2:]), original, picked.rows, picked.ious,
                        picked.winners)


def gradcam_maps(state: DetectorPass, method: str = "gradcam") -> list[torch.Tensor]:
    """Raw maps per layer, ``[N, h, w]``, of the gradient ``method`` (Grad-CAM by default):
    one backward pass per target.

    A loop of ``autograd.grad(..., retain_graph=True)`` rather than ``is_grads_batched``: the
    benchmark finds them equally fast on a CPU, and the loop never holds N gradients at once.
    The graph is freed by the last one.
    """
    if method not in GRADIENT_METHODS:
        raise ParamError("method", f"{{param}}: '{method}' is no gradient method (known: "
                                   f"{', '.join(GRADIENT_METHODS)})")
    combine = GRADIENT_METHODS[method].combine
    n = len(state.targets)
    maps: list[list[torch.Tensor]] = [[] for _ in state.activations]
    for i in range(n if state.activations else 0):
        grads = torch.autograd.grad(state.targets[i], state.activations, retain_graph=i < n - 1)
        for per_layer, activation, grad in zip(maps, state.activations, grads):
            per_layer.append(combine(activation.detach(), grad)[0])
    return [torch.stack(m) if m else a.new_zeros((0, *a.shape[-2:]))
            for m, a in zip(maps, state.activations)]


def fit_to_image(maps: torch.Tensor, resized: tuple[int, int], padded: tuple[int, int],
                 original: tuple[int, int]) -> torch.Tensor:
    """Maps over the detector's padded input ``[N, h, w]`` -> heatmaps ``[N, H, W]`` in [0, 1].

    The map covers the padded input (``padded``, a multiple of 32) whose top-left ``resized``
    part is the image: it is upsampled to the padded size, cropped to that part (dropping the
    padding), and only then resized to the ``original`` image size and scaled to [0, 1].
    """
    maps = maps.float().clamp(min=0)
    if len(maps) == 0:
        return maps.new_zeros((0, *original))
    if tuple(maps.shape[-2:]) != tuple(padded):
        maps = F.interpolate(maps[:, None], size=padded, mode="bilinear",
                             align_corners=False)[:, 0]
    return normalize_heatmaps(maps[:, :resized[0], :resized[1]], original)


def explain(model: nn.Module, image: torch.Tensor, target: Target,
            layers: Sequence[str] | None = None, method: str = "gradcam",
            drise: DriseSettings | None = None) -> DetectionResult:
    """Explain ``target`` in ``image`` (``[3, H, W]`` in [0, 1], on the model's device) with
    ``method``, one of ``registry.DET_METHODS``: the one place that dispatches a detection
    method. The gradient methods take one forward pass and one gradient call per explained
    target, at ``layers`` (names of :func:`backbone_layers`; :func:`default_layer` when None);
    D-RISE (``drise.DriseSettings``, its defaults when None) masks the input instead.

    The model is left as it was found: train/eval flags, ``requires_grad`` and no hooks.
    """
    check_image(model, image)
    if check_method(method) == "drise":
        from drise import explain_drise
        return explain_drise(model, image, target, drise)
    if layers is None:
        layers = [default_layer(model)]
    state = detector_pass(model, image, layers, target)
    maps = {layer: raw.detach().float().cpu()
            for layer, raw in zip(layers, gradcam_maps(state, method))}
    return DetectionResult(state.boxes.detach().cpu(), state.labels.cpu(), state.scores.cpu(),
                           state.explained.cpu(), maps,
                           (state.resized, state.padded, state.original), method,
                           registry.DET_TITLES[method],
                           None if state.ious is None else state.ious.cpu(),
                           None if state.winners is None else state.winners.cpu())


def explain_detections(model: nn.Module, image: torch.Tensor,
                       layers: Sequence[str] | None = None, score_thresh: float = 0.5,
                       max_explained: int = 20, allowed: Collection[int] | None = None,
                       method: str = "gradcam", drise: DriseSettings | None = None
                       ) -> DetectionResult:
    """Detect objects in ``image`` and explain each detection with ``score >= score_thresh``
    and a label in ``allowed`` (any when None), at most ``max_explained`` of them:
    :func:`explain` with a :class:`DetectionTarget`."""
    return explain(model, image, DetectionTarget(score_thresh, max_explained, allowed), layers,
                   method, drise)


# --------------------------------------------------------------------------------------------
# Images


def read_image(source: str | os.PathLike | io.BytesIO, name: str | None = None,
               fit: tuple[int, int] | None = None) -> np.ndarray:
    """An image file (or bytes) as an RGB uint8 array ``[H, W, 3]``; any PIL mode is converted
    (grayscale, RGBA, palette), and EXIF orientation is applied as a viewer would.

    With ``fit = (min_size, max_size)`` an image larger than the detector's input is shrunk to
    that input size (shorter side ``min_size``, longer side at most ``max_size``, as the
    detector would) while it is still 8-bit, so no float copy of a huge photo is ever made;
    boxes and heatmaps then refer to the shrunk image.
    """
    return image_array(open_image(source, name), fit)


def image_array(image: Image.Image, fit: tuple[int, int] | None = None) -> np.ndarray:
    """A PIL image as RGB uint8 ``[H, W, 3]``, shrunk to ``fit`` as :func:`read_image` says."""
    if fit is not None:
        w, h = image.size
        scale = min(fit[0] / min(w, h), fit[1] / max(w, h))
        if scale < 1:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.array(image.convert("RGB"))


def to_tensor(image_rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB uint8 ``[H, W, 3]`` -> float ``[3, H, W]`` in [0, 1] on ``device``."""
    return torch.from_numpy(image_rgb).to(device).permute(2, 0, 1).float().div(255)
