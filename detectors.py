"""The detectors this tool explains, built and loaded: torchvision's COCO detectors (``ARCHS``:
Faster R-CNN ResNet-50 FPN v1, the default, and v2, the MobileNet-v3 Faster R-CNNs, RetinaNet
v1 and v2, FCOS, SSD300 and SSDlite) laid out as their COCO models, and this tool's scene
detector (a small Faster R-CNN that a checkpoint describes), each with the label map that
scores it against VOC-style annotations. No download is attempted except of a COCO model's
weights into torch's hub cache (``hub.py``). The explanation pass is ``detection.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

import registry
from errors import ParamError, UserError, reason
from hub import hub_weights_file
from model import check_finite, check_metadata, load_state, read_checkpoint
from voc import POINTING_TOLERANCE, VOC_CLASSES

COCO_WEIGHTS = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
WEIGHTS_FILE = COCO_WEIGHTS.url.rsplit("/", 1)[-1]  # fasterrcnn_resnet50_fpn_coco-258fb6c6.pth
COCO_CLASSES: tuple[str, ...] = tuple(COCO_WEIGHTS.meta["categories"])
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 800, 1333  # torchvision's detector input size
DEFAULT_ARCH = registry.DEFAULT_DET_ARCH
ARCHS = tuple(registry.DET_ARCHS)
SCENE_ARCH = "fasterrcnn_resnet18_fpn"
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


def score_floor(thresh: float) -> float:
    """The detector's own score threshold: the AP floor, or lower when the user explains less
    confident detections."""
    return min(AP_SCORE_THRESH, thresh)


# --------------------------------------------------------------------------------------------
# Building


def build_detector(state_dict: dict[str, torch.Tensor] | None = None, *,
                   min_size: int = DEFAULT_MIN_SIZE, score_thresh: float = AP_SCORE_THRESH,
                   source: str = "the state dict") -> FasterRCNN:
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
        load_state(model, state_dict, source, "Faster R-CNN ResNet-50 FPN with 91 COCO classes")
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


def build_coco_detector(arch: str = DEFAULT_ARCH,
                        state_dict: dict[str, torch.Tensor] | None = None, *,
                        min_size: int | None = None, score_thresh: float = AP_SCORE_THRESH,
                        source: str = "the state dict") -> nn.Module:
    """torchvision's detector ``arch`` laid out as its COCO model (91 classes, frozen batch norm
    where torchvision freezes it), in eval mode, with ``state_dict`` loaded (random weights
    when None). No download is attempted.

    ``min_size`` is the input's shorter side (the arch's own when None; the longer side scales
    with it as torchvision's defaults do); the SSDs take a square input of that side, at least
    ``registry.DET_MIN_SIZES`` of the arch.
    """
    arch = registry.det_arch(arch)
    if arch == DEFAULT_ARCH:
        return build_detector(state_dict, min_size=min_size or DEFAULT_MIN_SIZE,
                              score_thresh=score_thresh, source=source)
    builder = getattr(torchvision.models.detection, arch)
    model = builder(weights=None, weights_backbone=None, num_classes=len(COCO_CLASSES))
    transform = model.transform
    if min_size is not None:
        check_min_size(arch, min_size)
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
        load_state(model, state_dict, source, f"{arch} with 91 COCO classes")
    return model.eval()


def check_min_size(arch: str, min_size: int | None) -> None:
    """``min_size`` (None: the arch's own) is one ``arch`` can take: at least
    ``registry.DET_MIN_SIZES`` of it. Checked before any weights are read or downloaded."""
    smallest = registry.DET_MIN_SIZES.get(arch, 0)
    if min_size is not None and min_size < smallest:
        raise ParamError("min_size", f"{{param}} {min_size}: {arch} needs an input of at "
                                     f"least {smallest} px (its last layers shrink the map "
                                     f"to 1x1)")


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


# --------------------------------------------------------------------------------------------
# Loading


def weights_file(arch: str = DEFAULT_ARCH) -> str:
    """The file name of ``arch``'s COCO weights in torch's hub cache."""
    return coco_weights(arch).url.rsplit("/", 1)[-1]


def coco_state_dict(arch: str = DEFAULT_ARCH) -> tuple[dict[str, torch.Tensor], str]:
    """``arch``'s COCO weights from torch's hub cache, downloaded there when missing; a failed
    download is a ParamError (``weights``: a file may be given instead)."""
    path = hub_weights_file(coco_weights(arch), f"the COCO weights of {registry.det_arch(arch)}",
                            "weights")
    return read_checkpoint(path)["model_state_dict"], f"weights file {path}"


@dataclass
class Detector:
    """A loaded detector and what the rest of the tool needs to know about it.

    ``names`` maps a detector label to its class name for the panels; ``classes`` are the
    class names of VOC-style annotations it is scored against, and ``label_map`` maps a
    detector label to an index in them (COCO labels to VOC's 20 classes; the scene detector's
    labels to its own class names). ``arch`` is the torchvision COCO layout (None for this
    tool's scene detector, which records its own), ``weights`` the file the weights came from
    (the hub cache's file name for torchvision's COCO weights).
    """

    model: nn.Module
    names: dict[int, str]
    classes: tuple[str, ...]
    label_map: dict[int, int]
    score_thresh: float
    input_fit: tuple[int, int]
    pointing_tolerance: float
    description: str
    arch: str | None = None
    weights: str | None = None


SCENE_META_KEYS = ("classes", "input_size", "mean", "std", "fpn_channels", "head_channels",
                   "anchor_sizes", "aspect_ratios")


def scene_detector(ckpt: dict, source: str) -> tuple[FasterRCNN, dict]:
    """The scene detector a checkpoint describes, with its weights; ``(model, meta)``."""
    missing = [k for k in SCENE_META_KEYS if k not in ckpt]
    if missing:
        raise UserError(f"{source} is a '{SCENE_ARCH}' checkpoint without "
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
        raise UserError(f"{source} describes no buildable detector ({reason(exc)})") from None
    load_state(model, ckpt["model_state_dict"], source, SCENE_ARCH)
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
    check_min_size(arch, min_size)
    if weights is None:
        state, source = coco_state_dict(arch)
        ckpt = {"model_state_dict": state}
    else:
        if not Path(weights).is_file():
            raise UserError(f"detector weights not found: {weights}")
        ckpt, source = read_checkpoint(weights), f"weights file {weights}"
    if ckpt.get("arch") == SCENE_ARCH:
        if arch != DEFAULT_ARCH:
            raise ParamError("arch", f"{{param}} {arch}: {source} is this tool's scene "
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
                        f"{SCENE_ARCH} ({weights}), {len(classes)} classes, {size} px input",
                        None, str(weights))
    model = build_coco_detector(arch, ckpt["model_state_dict"], min_size=min_size,
                                score_thresh=score_floor, source=source)
    return coco_detector(model.to(device), arch, weights or weights_file(arch))


def coco_detector(model: nn.Module, arch: str = DEFAULT_ARCH,
                  weights: str | None = None) -> Detector:
    """A detector in torchvision's COCO layout, scored against VOC's 20 classes."""
    what = ("COCO Faster R-CNN ResNet-50 FPN" if arch == DEFAULT_ARCH else f"COCO {arch}")
    return Detector(model, dict(enumerate(COCO_CLASSES)), VOC_CLASSES, coco_to_voc(), 0.5,
                    (model.transform.min_size[0], model.transform.max_size), POINTING_TOLERANCE,
                    f"{what} mapped to the VOC classes", arch, weights)
