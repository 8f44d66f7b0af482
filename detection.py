"""Detections of torchvision's detectors explained with Grad-CAM (and its relatives), on one
image or on PASCAL VOC 2007 test.

The detector is one of torchvision's COCO detectors (``ARCHS``: Faster R-CNN ResNet-50 FPN v1,
the default, and v2, the MobileNet-v3 Faster R-CNNs, RetinaNet v1 and v2, FCOS, SSD300 and
SSDlite; not Keypoint or Mask R-CNN) or this tool's scene detector. Every
detection with a score of at least ``--det_score_thresh`` (at most ``--det_max`` per image,
highest scores first) gets its own Grad-CAM heatmap, all of them from one forward pass:

* the explained score is the class logit of the proposal (Faster R-CNN) or anchor (RetinaNet,
  FCOS, SSD: traced back through post-processing by :func:`source_anchors`) the detection
  came from (Grad-CAM's pre-softmax / pre-sigmoid score). The softmax probability that
  torchvision reports saturates for confident detections (it is exactly 1.0 in float32 beyond
  a logit margin of about 17), and its gradient then loses the class's own evidence;
* Faster R-CNN's second stage (RoI pooling, box head, classifier) is run again on the
  explained proposals only, from the features of the one forward pass, so each backward pass goes through a few
  rows instead of all 1000 proposals. Gradients are taken with ``torch.autograd.grad`` with
  respect to the captured activations only; the parameters are frozen while the graph is
  built, so no weight gradient exists to compute;
* the detector resizes its input and pads it at the bottom and right to a multiple of 32 (the
  SSDs resize it to a square and do not pad); a
  map is cropped to the part that covers the resized image before it is resized to the
  original image, so that heatmaps and boxes line up.

On VOC, COCO detections are mapped to the 20 VOC classes and scored with the VOC annotations:
detection AP (VOC2007 11-point) and, for explained detections that match a ground-truth box,
the pointing game and the energy-in-box share of their heatmaps.

Boxes are in continuous pixel coordinates (torchvision's): pixel column ``i`` (0-based) covers
``[i, i + 1)``. A VOC box ``xmin..xmax`` (1-based, inclusive) is therefore
``(xmin - 1, ymin - 1, xmax, ymax)``. The detector runs in float32 (``--precision`` does not
apply here).
"""
from __future__ import annotations

import contextlib
import io
import os
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign, clip_boxes_to_image

import registry
from cam import capture_activation, normalize_heatmaps, resolve_layer
from data import open_image
from errors import ParamError, UserError, reason
from gradcam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from model import check_finite, check_metadata, check_weight_types, read_checkpoint
from runtime import eval_mode
from voc import POINTING_TOLERANCE, VOC_CLASSES

COCO_WEIGHTS = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
WEIGHTS_FILE = COCO_WEIGHTS.url.rsplit("/", 1)[-1]  # fasterrcnn_resnet50_fpn_coco-258fb6c6.pth
COCO_CLASSES: tuple[str, ...] = tuple(COCO_WEIGHTS.meta["categories"])
LAYERS = registry.DET_LAYERS
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 800, 1333  # torchvision's detector input size
DEFAULT_ARCH = registry.DEFAULT_DET_ARCH
ARCHS = tuple(registry.DET_ARCHS)
# The detectors whose COCO model torchvision builds with frozen batch norm in the backbone
# (the v2 models and SSDlite keep nn.BatchNorm2d, SSD300's VGG has none).
_FROZEN_BN = frozenset({"fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
                        "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn",
                        "fcos_resnet50_fpn"})

COCO_TO_VOC_NAMES = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa",
                     "potted plant": "pottedplant", "dining table": "diningtable",
                     "tv": "tvmonitor"}

AP_SCORE_THRESH = 0.05  # detections kept for AP: torchvision's (and the usual) evaluation floor


def coco_to_voc() -> dict[int, int]:
    """COCO label -> VOC class index, for the 20 COCO classes that VOC has."""
    mapping = {}
    for label, name in enumerate(COCO_CLASSES):
        voc_name = COCO_TO_VOC_NAMES.get(name, name)
        if voc_name in VOC_CLASSES:
            mapping[label] = VOC_CLASSES.index(voc_name)
    return mapping


# --------------------------------------------------------------------------------------------
# The detector


def build_detector(state_dict: dict[str, torch.Tensor] | None = None, *,
                   min_size: int = DEFAULT_MIN_SIZE, score_thresh: float = AP_SCORE_THRESH,
                   source: str = "the weights") -> FasterRCNN:
    """Faster R-CNN ResNet-50 FPN laid out as torchvision's COCO model, in eval mode.

    The layout (frozen batch norm, 91 classes) is built here rather than by
    ``fasterrcnn_resnet50_fpn`` so that no download is attempted; without ``state_dict`` the
    weights are random. ``min_size`` scales the input as torchvision does (longer side at
    most ``min_size * 1333 / 800``).
    """
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
    max_size = max(min_size, round(min_size * DEFAULT_MAX_SIZE / DEFAULT_MIN_SIZE))
    model = FasterRCNN(backbone, num_classes=len(COCO_CLASSES), min_size=min_size,
                       max_size=max_size, box_score_thresh=score_thresh)
    if state_dict is not None:
        _load_state(model, state_dict, source)
    return model.eval()


def coco_weights(arch: str = DEFAULT_ARCH) -> torchvision.models.Weights:
    """torchvision's COCO weights entry of ``arch`` (one of :data:`ARCHS`): its ``url`` and
    ``meta``; nothing is downloaded."""
    return torchvision.models.get_model_weights(registry.det_arch(arch)).COCO_V1


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every ``nn.BatchNorm2d`` under ``module`` by ``FrozenBatchNorm2d`` (same eps),
    as torchvision does in the backbones of its pretrained detectors."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def set_score_floor(model: nn.Module, floor: float) -> None:
    """The score under which the detector drops a detection, for every supported family."""
    if isinstance(model, FasterRCNN):
        model.roi_heads.score_thresh = floor
    else:
        model.score_thresh = floor


MIN_SIZES = registry.DET_MIN_SIZES


def build_coco_detector(arch: str = DEFAULT_ARCH,
                        state_dict: dict[str, torch.Tensor] | None = None, *,
                        min_size: int | None = None, score_thresh: float = AP_SCORE_THRESH,
                        source: str = "the weights") -> nn.Module:
    """torchvision's detector ``arch`` laid out as its COCO model (91 classes, frozen batch norm
    where torchvision freezes it), in eval mode, with ``state_dict`` loaded (random weights
    when None). No download is attempted.

    ``min_size`` is the input's shorter side (the arch's own when None; the longer side scales
    with it as torchvision's defaults do); the SSDs take a square input of that side.
    """
    arch = registry.det_arch(arch)
    if arch == DEFAULT_ARCH:
        return build_detector(state_dict, min_size=min_size or DEFAULT_MIN_SIZE,
                              score_thresh=score_thresh, source=source)
    builder = getattr(torchvision.models.detection, arch)
    model = builder(weights=None, weights_backbone=None, num_classes=len(COCO_CLASSES))
    transform = model.transform
    if min_size is not None:
        if min_size < MIN_SIZES.get(arch, 0):
            raise ParamError("min_size", f"{{param}} {min_size}: {arch} needs an input of at "
                                         f"least {MIN_SIZES[arch]} px (its last layers shrink "
                                         f"the map to 1x1)")
        if transform.fixed_size is not None:      # SSD, SSDlite: a square of that side
            transform.fixed_size = (min_size, min_size)
            transform.min_size, transform.max_size = (min_size,), min_size
        else:
            ratio = transform.max_size / transform.min_size[0]
            transform.min_size, transform.max_size = (min_size,), max(min_size,
                                                                      round(min_size * ratio))
    if arch in _FROZEN_BN:
        _freeze_batchnorm(model.backbone)
    set_score_floor(model, score_thresh)
    if state_dict is not None:
        _load_state(model, state_dict, source, f"{arch} with 91 COCO classes")
    return model.eval()


SCENE_ARCH = "fasterrcnn_resnet18_fpn"
COCO_ARCH = "fasterrcnn_resnet50_fpn_coco"


def build_scene_detector(meta: dict) -> FasterRCNN:
    """The small Faster R-CNN that a detector checkpoint describes, random weights, eval mode.

    A ResNet-18 (trainable BatchNorm, since it is trained from scratch, unlike torchvision's
    frozen BatchNorm for pretrained backbones) whose ``layer2``..``layer4`` feed an FPN of
    ``fpn_channels``; anchors sized for the garments; the input is used at its own size
    (``min_size = max_size = input_size``), so nothing is resized.
    """
    body = resnet18(weights=None)
    backbone = BackboneWithFPN(body, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                               in_channels_list=[128, 256, 512],
                               out_channels=int(meta["fpn_channels"]))
    sizes = tuple(tuple(int(s) for s in level) for level in meta["anchor_sizes"])
    ratios = (tuple(float(r) for r in meta["aspect_ratios"]),) * len(sizes)
    anchors = AnchorGenerator(sizes, ratios)
    roi_pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    head = int(meta["head_channels"])
    size = int(meta["input_size"])
    model = FasterRCNN(
        backbone, num_classes=None, min_size=size, max_size=size,
        image_mean=list(meta["mean"]), image_std=list(meta["std"]),
        rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, head),
        box_predictor=FastRCNNPredictor(head, len(meta["classes"])),
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128, box_batch_size_per_image=128,
        box_score_thresh=float(meta.get("score_floor", AP_SCORE_THRESH)),
        box_detections_per_img=50)
    return model.eval()


def _load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
                layout: str = "Faster R-CNN ResNet-50 FPN with 91 COCO classes") -> None:
    """Load weights, turning a mismatch into one line that says what does not fit."""
    check_weight_types(state_dict, model.state_dict(), source)
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even when strict=False
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        detail = lines[0][:160] if lines else reason(exc, 160)
        raise UserError(f"{source} do not fit {layout} ({detail})") from None
    # a batch-norm step counter is unused in eval mode, and state dicts saved without it fit
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = result.unexpected_keys
    if missing or unexpected:
        example = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise UserError(f"{source} do not fit {layout.split(' with ')[0]} ({len(missing)} "
                        f"missing and {len(unexpected)} unexpected weights, e.g. {example})")


def weights_file(arch: str = DEFAULT_ARCH) -> str:
    """The file name of ``arch``'s COCO weights in torch's hub cache."""
    return coco_weights(arch).url.rsplit("/", 1)[-1]


def coco_state_dict(arch: str = DEFAULT_ARCH) -> tuple[dict[str, torch.Tensor], str]:
    """``arch``'s COCO weights from torch's hub cache, downloaded there when missing."""
    weights, file = coco_weights(arch), weights_file(arch)
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / file
    if not path.is_file():
        match = torch.hub.HASH_REGEX.search(file)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(weights.url, str(path),
                                           match.group(1) if match else None)
        except (URLError, OSError, RuntimeError) as exc:
            raise UserError(f"the COCO detector weights {file} are not in {folder} and "
                            f"downloading them from {weights.url} failed ({reason(exc, 100)}); "
                            f"put the file in {folder} or pass --det_weights PATH") from None
    return read_checkpoint(path)["model_state_dict"], f"weights {path}"


@dataclass
class Detector:
    """A loaded detector and what the rest of the tool needs to know about it.

    ``names`` maps a detector label to its class name for the panels; ``classes`` are the
    class names of VOC-style annotations it is scored against, and ``label_map`` maps a
    detector label to an index in them (COCO labels to VOC's 20 classes; the scene detector's
    labels to its own class names).
    """

    model: nn.Module
    names: dict[int, str]
    classes: tuple[str, ...]
    label_map: dict[int, int]
    score_thresh: float
    input_fit: tuple[int, int]
    pointing_tolerance: float
    description: str


SCENE_META_KEYS = ("classes", "input_size", "mean", "std", "fpn_channels", "head_channels",
                   "anchor_sizes", "aspect_ratios")


def scene_detector(ckpt: dict, source: str) -> tuple[FasterRCNN, dict]:
    """The scene detector a checkpoint describes, with its weights; ``(model, meta)``."""
    missing = [k for k in SCENE_META_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{source} are a '{SCENE_ARCH}' checkpoint without "
                        f"{', '.join(missing)}; it cannot be rebuilt")
    scores = ckpt["model_state_dict"].get("roi_heads.box_predictor.cls_score.weight")
    classes = ckpt["classes"]
    check_metadata(ckpt, source, len(scores) if scores is not None else
                   len(classes) if isinstance(classes, (list, tuple)) else 0)
    check_finite(ckpt["model_state_dict"], source)
    try:
        model = build_scene_detector(ckpt)
        classes = [str(c) for c in ckpt["classes"]]
    except (TypeError, ValueError, KeyError) as exc:
        raise UserError(f"{source} describe no buildable detector ({reason(exc)})") from None
    _load_state(model, ckpt["model_state_dict"], source, SCENE_ARCH)
    return model, {k: v for k, v in ckpt.items() if k not in ("model_state_dict",
                                                              "optimizer_state_dict")} | {
        "classes": classes}


def load_detector(weights: str | None, device: torch.device, min_size: int | None = None,
                  score_floor: float = AP_SCORE_THRESH, arch: str = DEFAULT_ARCH) -> Detector:
    """The detector in ``weights`` (this tool's scene-detector checkpoint, or a state dict for
    torchvision's COCO layout of ``arch``) or ``arch``'s COCO weights from torchvision, on
    ``device``.

    ``min_size`` (the arch's own when None) applies to the COCO layouts only; the scene
    detector records its input size and is a ``fasterrcnn_resnet50_fpn``-family model, so any
    other ``arch`` with it is an error.
    """
    arch = registry.det_arch(arch)
    if weights is None:
        state, source = coco_state_dict(arch)
        ckpt = {"model_state_dict": state}
    else:
        if not Path(weights).is_file():
            raise UserError(f"detector weights not found: {weights}")
        ckpt, source = read_checkpoint(weights), f"weights {weights}"
    if ckpt.get("arch") == SCENE_ARCH:
        if arch != DEFAULT_ARCH:
            where = source.replace("{", "{{").replace("}", "}}")
            raise ParamError("arch", f"{{param}} {arch}: {where} are this tool's scene "
                                     f"detector ({SCENE_ARCH}), which records its own layout; "
                                     f"leave {{param}} out")
        model, meta = scene_detector(ckpt, source)
        set_score_floor(model, score_floor)
        classes = tuple(meta["classes"][1:])
        size = int(meta["input_size"])
        return Detector(model.to(device), dict(enumerate(meta["classes"])) | {0: "background"},
                        classes, {label: label - 1 for label in range(1, len(classes) + 1)},
                        float(meta.get("score_thresh", 0.5)), (size, size),
                        float(meta.get("pointing_tolerance", POINTING_TOLERANCE)),
                        f"{SCENE_ARCH} ({weights}), {len(classes)} classes, {size} px input")
    return coco_detector(build_coco_detector(arch, ckpt["model_state_dict"], min_size=min_size,
                                             score_thresh=score_floor, source=source).to(device),
                         arch)


def coco_detector(model: nn.Module, arch: str = DEFAULT_ARCH) -> Detector:
    """A detector in torchvision's COCO layout, scored against VOC's 20 classes."""
    what = ("COCO Faster R-CNN ResNet-50 FPN" if arch == DEFAULT_ARCH else f"COCO {arch}")
    return Detector(model, dict(enumerate(COCO_CLASSES)), VOC_CLASSES, coco_to_voc(), 0.5,
                    (model.transform.min_size[0], model.transform.max_size), POINTING_TOLERANCE,
                    f"{what} mapped to the VOC classes")


def parse_layers(spec: str, arch: str = DEFAULT_ARCH) -> list[str]:
    """``layer4`` or ``layer2,layer4`` -> checked backbone layers of ``arch``, in order,
    without repeats."""
    return registry.parse_det_layers(spec, arch)


def family(model: nn.Module) -> str:
    """``fasterrcnn`` (two-stage), ``retinanet``, ``fcos`` or ``ssd``: how the detector's
    scores come about, and so what a detection's explained logit is."""
    for cls, name in ((FasterRCNN, "fasterrcnn"), (RetinaNet, "retinanet"), (FCOS, "fcos"),
                      (SSD, "ssd")):
        if isinstance(model, cls):
            return name
    raise ParamError("model", f"{{param}}: a {type(model).__name__} is none of the detectors "
                              f"this tool explains (Faster R-CNN, RetinaNet, FCOS, SSD)")


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
# Grad-CAM for every detection


@dataclass
class DetectionResult:
    """One image's detections and the heatmaps of those that were explained.

    ``boxes`` ``[M, 4]`` (original pixel coordinates), ``labels`` ``[M]`` (the detector's) and
    ``scores`` ``[M]`` hold every detection the detector returned, highest score first;
    ``explained`` ``[N]`` indexes the explained ones. ``maps[layer]`` ``[N, h, w]`` holds their
    raw Grad-CAM maps at the detector's resolution, so memory does not grow with the image;
    :meth:`heatmap` brings one to the image, in ``[0, 1]``, when it is drawn or scored. With
    ``geometry`` None the maps are final heatmaps at the image size already. All on the CPU.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    explained: torch.Tensor
    maps: dict[str, torch.Tensor]
    geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None
    method: str = "gradcam"
    method_title: str = "Grad-CAM"

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image the boxes and heatmaps refer to."""
        if self.geometry is not None:
            return self.geometry[2]
        return tuple(next(iter(self.maps.values())).shape[-2:])

    def heatmap(self, layer: str, rank: int) -> torch.Tensor:
        """The ``rank``-th explained detection's heatmap ``[H, W]`` in ``[0, 1]``."""
        maps = self.maps[layer]
        if self.geometry is None:
            return maps[rank]
        return fit_to_image(maps[rank:rank + 1], *self.geometry)[0]


@dataclass
class DetectorPass:
    """What one forward pass leaves for the backward passes of its detections
    (:func:`detector_pass` makes it, :func:`gradcam_maps` uses it up)."""

    activations: list[torch.Tensor]  # per layer [1, K, h, w], in the graph
    targets: torch.Tensor            # [N] class logits of the explained detections, in the graph
    boxes: torch.Tensor              # [M, 4] original coordinates
    labels: torch.Tensor
    scores: torch.Tensor
    explained: torch.Tensor          # [N] indices into the detections
    resized: tuple[int, int]         # the image inside the detector's padded input
    padded: tuple[int, int]
    original: tuple[int, int]
    sources: torch.Tensor | None = None  # [N] the proposal (row) or anchor each came from


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad inside the block, so autograd records no weight gradients."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _second_stage(roi_heads: nn.Module, features: dict[str, torch.Tensor],
                  proposals: list[torch.Tensor], sizes: list[tuple[int, int]]
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits and box regression for ``proposals``, as ``RoIHeads`` computes them."""
    pooled = roi_heads.box_roi_pool(features, proposals, sizes)
    return roi_heads.box_predictor(roi_heads.box_head(pooled))


def _source_rows(roi_heads: nn.Module, logits: torch.Tensor, regression: torch.Tensor,
                 proposals: torch.Tensor, size: tuple[int, int], boxes: torch.Tensor,
                 scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The proposal that each detection came from.

    torchvision's post-processing keeps no index, so a detection is traced back to the
    proposal whose probability and decoded, clipped box for the detection's class are closest
    to the detection's. The same operations on the same tensors make them equal bit for bit;
    the box tells apart proposals that tie on the score.
    """
    probs = F.softmax(logits, -1)[:, labels]                                   # [R, N]
    decoded = clip_boxes_to_image(roi_heads.box_coder.decode(regression, [proposals]), size)
    distance = (probs - scores).abs() + (decoded[:, labels] - boxes).abs().sum(-1)
    return distance.argmin(0)


def _select(scores: torch.Tensor, labels: torch.Tensor, score_thresh: float, max_explained: int,
            allowed: Collection[int] | None) -> torch.Tensor:
    """Indices of the detections to explain: score at least the threshold, best first."""
    keep = scores >= score_thresh
    if allowed is not None:
        keep &= torch.isin(labels, torch.tensor(sorted(allowed), device=labels.device))
    return keep.nonzero()[:, 0][:max_explained]


# One-stage detectors (RetinaNet, FCOS, SSD): the head runs on every anchor, post-processing
# keeps the best (anchor, class) pairs. torchvision keeps no index either, so a detection is
# traced back to its anchor as a Faster R-CNN detection is to its proposal.


@dataclass
class OneStageOutputs:
    """One-stage head outputs for a batch: ``head`` maps ``cls_logits`` ``[B, A, K]``,
    ``bbox_regression`` ``[B, A, 4]`` (and FCOS's ``bbox_ctrness`` ``[B, A, 1]``) over all
    ``A`` anchors of all levels; ``anchors`` ``[A, 4]`` per image; ``levels`` the locations per
    feature level."""

    head: dict[str, torch.Tensor]
    anchors: list[torch.Tensor]
    levels: list[int]


def one_stage_outputs(model: nn.Module, batch) -> OneStageOutputs:
    """The head outputs of ``batch`` (the model's transform's output), as the model's own
    forward computes them; in the autograd graph when grad is enabled."""
    features = model.backbone(batch.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    features = list(features.values())
    return OneStageOutputs(model.head(features), model.anchor_generator(batch, features),
                           [f.shape[-2] * f.shape[-1] for f in features])


def one_stage_detections(model: nn.Module, out: OneStageOutputs,
                         sizes: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
    """The model's own post-processing of ``out`` (boxes in the resized image), no grad."""
    with torch.no_grad():
        head = {k: v.detach() for k, v in out.head.items()}
        if isinstance(model, SSD):
            return model.postprocess_detections(head, out.anchors, sizes)
        per_location = head["cls_logits"].shape[1] // sum(out.levels)
        counts = [n * per_location for n in out.levels]
        split = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
        anchors = [list(a.split(counts)) for a in out.anchors]
        return model.postprocess_detections(split, anchors, sizes)


def anchor_scores(model: nn.Module, head: dict[str, torch.Tensor],
                  labels: torch.Tensor | None = None) -> torch.Tensor:
    """One image's per-anchor scores as post-processing computes them, ``[A, K]`` (or the
    columns of ``labels``): sigmoid of the class logits (RetinaNet), the softmax over classes
    with the background at 0 (SSD), ``sqrt(sigmoid(class) * sigmoid(centerness))`` (FCOS)."""
    logits = head["cls_logits"]
    if isinstance(model, SSD):
        probs = F.softmax(logits, dim=-1)
        return probs if labels is None else probs[:, labels]
    logits = logits if labels is None else logits[:, labels]
    if isinstance(model, FCOS):
        return torch.sqrt(torch.sigmoid(logits) * torch.sigmoid(head["bbox_ctrness"]))
    return torch.sigmoid(logits)


def anchor_boxes(model: nn.Module, head: dict[str, torch.Tensor], anchors: torch.Tensor,
                 size: tuple[int, int]) -> torch.Tensor:
    """One image's decoded, clipped box ``[A, 4]`` at every anchor (resized-image pixels)."""
    regression = head["bbox_regression"]
    if isinstance(model, FCOS):
        boxes = model.box_coder.decode(regression, anchors)
    else:
        boxes = model.box_coder.decode_single(regression, anchors)
    return clip_boxes_to_image(boxes, size)


def source_anchors(model: nn.Module, head: dict[str, torch.Tensor], anchors: torch.Tensor,
                   size: tuple[int, int], boxes: torch.Tensor, scores: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """The anchor ``[N]`` each detection of one image (``head`` the image's ``[A, ...]``
    outputs) was kept from: the one whose score for the detection's class and decoded box are
    closest to the detection's. Post-processing applies the same operations to the same
    tensors, so the right anchor matches bit for bit; the box tells apart anchors that tie on
    the score."""
    if len(labels) == 0:
        return labels.new_zeros(0)
    distance = (anchor_scores(model, head, labels) - scores).abs()            # [A, N]
    distance += torch.cdist(anchor_boxes(model, head, anchors, size), boxes, p=1)
    return distance.argmin(0)


Selector = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _two_stage(model: FasterRCNN, batch, select: Selector):
    """Detections, the explained ones, their proposals' class logits (in the graph) and the
    proposals' rows."""
    sizes = batch.image_sizes
    features = model.backbone(batch.tensors)
    with torch.no_grad():
        proposals, _ = model.rpn(batch, features)
        logits, regression = _second_stage(model.roi_heads, features, proposals, sizes)
        (boxes,), (scores,), (labels,) = model.roi_heads.postprocess_detections(
            logits, regression, proposals, sizes)
        explained = select(scores, labels)
        rows = _source_rows(model.roi_heads, logits, regression, proposals[0], sizes[0],
                            boxes[explained], scores[explained], labels[explained])
    targets = boxes.new_zeros(0)
    if len(explained):
        own_logits, _ = _second_stage(model.roi_heads, features, [proposals[0][rows]], sizes)
        targets = own_logits.gather(1, labels[explained][:, None])[:, 0]
    return boxes, scores, labels, explained, targets, rows


def _one_stage(model: nn.Module, batch, select: Selector):
    """Detections, the explained ones, the class logits at their anchors (in the graph) and
    the anchors' indices (over all levels). The logit is pre-sigmoid for RetinaNet and FCOS,
    pre-softmax for SSD. FCOS's score is ``sqrt(sigmoid(class) * sigmoid(centerness))``: the
    class logit is explained, the centerness (a property of the location, not of the class)
    is not."""
    sizes = batch.image_sizes
    out = one_stage_outputs(model, batch)
    (found,) = one_stage_detections(model, out, sizes)
    boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
    with torch.no_grad():
        explained = select(scores, labels)
        own = {k: v[0].detach() for k, v in out.head.items()}
        rows = source_anchors(model, own, out.anchors[0], sizes[0], boxes[explained],
                              scores[explained], labels[explained])
    targets = out.head["cls_logits"][0, rows, labels[explained]]
    return boxes, scores, labels, explained, targets, rows


def detector_pass(model: nn.Module, image: torch.Tensor, layers: Sequence[str],
                  score_thresh: float, max_explained: int,
                  allowed: Collection[int] | None) -> DetectorPass:
    """One detector pass that keeps the activations and the explained detections' logits:
    the class logit of the proposal (Faster R-CNN) or anchor (RetinaNet, FCOS, SSD) each
    explained detection came from.

    Hooks, train/eval flags and ``requires_grad`` are restored when it returns or raises; the
    graph from the activations to the logits stays alive in the result.
    """
    modules = layer_modules(model, layers)
    detect = _two_stage if family(model) == "fasterrcnn" else _one_stage
    with eval_mode(model), _frozen(model), contextlib.ExitStack() as stack, torch.enable_grad():
        captures = [stack.enter_context(capture_activation(m)) for m in modules]
        batch, _ = model.transform([image])
        sizes = batch.image_sizes
        boxes, scores, labels, explained, targets, sources = detect(
            model, batch, lambda s, lab: _select(s, lab, score_thresh, max_explained, allowed))
        original = tuple(image.shape[-2:])
        boxes = model.transform.postprocess([{"boxes": boxes}], sizes, [original])[0]["boxes"]
    return DetectorPass([c.activation for c in captures], targets, boxes, labels, scores,
                        explained, tuple(sizes[0]), tuple(batch.tensors.shape[-2:]), original,
                        sources)


# The gradient-based methods, by --det_method name: each combines a layer's activation and the
# detection score's gradient in its own way (gradcam.py), from the same backward pass.
DET_METHODS: dict[str, tuple[type[GradCAM], str]] = {
    name: (cls, registry.DET_TITLES[name]) for name, cls in (
        ("gradcam", GradCAM), ("gradcampp", GradCAMPlusPlus), ("xgradcam", XGradCAM),
        ("hirescam", HiResCAM), ("layercam", LayerCAM))}


def gradcam_maps(state: DetectorPass, method: str = "gradcam") -> list[torch.Tensor]:
    """Raw maps per layer, ``[N, h, w]``, of ``method`` (Grad-CAM by default): one backward
    pass per detection.

    A loop of ``autograd.grad(..., retain_graph=True)`` rather than ``is_grads_batched``: the
    benchmark finds them equally fast on a CPU, and the loop never holds N gradients at once.
    The graph is freed by the last one.
    """
    combine = DET_METHODS[method][0].combine
    n = len(state.targets)
    maps: list[list[torch.Tensor]] = [[] for _ in state.activations]
    for i in range(n):
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


def explain_detections(model: nn.Module, image: torch.Tensor,
                       layers: Sequence[str] | None = None, score_thresh: float = 0.5,
                       max_explained: int = 20, allowed: Collection[int] | None = None,
                       method: str = "gradcam") -> DetectionResult:
    """Detect objects in ``image`` (``[3, H, W]`` in [0, 1], on the model's device) and give each
    detection with ``score >= score_thresh`` and a label in ``allowed`` (any when None) its own
    heatmap per layer (``method``, Grad-CAM by default), at most ``max_explained`` of them,
    from one forward pass.

    ``layers`` are names of :func:`backbone_layers` (:func:`default_layer` when None). The
    model is left as it was found: train/eval flags, ``requires_grad`` and no hooks.
    """
    if layers is None:
        layers = [default_layer(model)]
    state = detector_pass(model, image, layers, score_thresh, max_explained, allowed)
    maps = {layer: raw.detach().float().cpu()
            for layer, raw in zip(layers, gradcam_maps(state, method))}
    return DetectionResult(state.boxes.detach().cpu(), state.labels.cpu(), state.scores.cpu(),
                           state.explained.cpu(), maps,
                           (state.resized, state.padded, state.original), method,
                           DET_METHODS[method][1])


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


def score_floor(thresh: float) -> float:
    """The detector's own score threshold: the AP floor, or lower when the user explains less
    confident detections."""
    return min(AP_SCORE_THRESH, thresh)
