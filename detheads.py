"""Where a detection came from: Faster R-CNN's second stage run again on chosen proposals and
the proposal each detection was kept from, and the one-stage detectors' (RetinaNet, FCOS, SSD)
head outputs, scores and boxes at every anchor and the anchor each detection was kept from.

torchvision's post-processing keeps no index, so a detection is traced back by recomputing what
post-processing computed on every proposal or anchor and taking the one that matches; the same
operations on the same tensors match bit for bit. ``detection.py``'s explanation pass and
``drise.py`` build on these.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.retinanet import RetinaNet
from torchvision.models.detection.ssd import SSD
from torchvision.ops import clip_boxes_to_image

from errors import ParamError


def family(model: nn.Module) -> str:
    """``fasterrcnn`` (two-stage), ``retinanet``, ``fcos`` or ``ssd``: how the detector's
    scores come about, and so what a detection's explained logit is."""
    for cls, name in ((FasterRCNN, "fasterrcnn"), (RetinaNet, "retinanet"), (FCOS, "fcos"),
                      (SSD, "ssd")):
        if isinstance(model, cls):
            return name
    raise ParamError("model", f"{{param}}: a {type(model).__name__} is none of the detectors "
                              f"this tool explains (Faster R-CNN, RetinaNet, FCOS, SSD)")


def second_stage(roi_heads: nn.Module, features: dict[str, torch.Tensor],
                 proposals: list[torch.Tensor], sizes: list[tuple[int, int]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class logits and box regression for ``proposals``, as ``RoIHeads`` computes them."""
    pooled = roi_heads.box_roi_pool(features, proposals, sizes)
    return roi_heads.box_predictor(roi_heads.box_head(pooled))


def source_rows(roi_heads: nn.Module, logits: torch.Tensor, regression: torch.Tensor,
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
