"""Why the detector missed an object: for every ground-truth object that no detection found,
the proposal that overlaps it most, that proposal's score for the object's class, a map of that
score, and which of three kinds of miss it is.

* ``localisation``: no proposal's box for the object's class reached IoU 0.5 with the object;
* ``classification``: one did, but its probability for the object's class stayed under the
  threshold (``winner`` says which class, or the background, took the proposal instead);
* ``suppressed``: one did with a score over the threshold, but the detector's post-processing
  (non-maximum suppression against an overlapping detection of the same class, or the cap on
  detections per image) removed it.

For the one-stage detectors (RetinaNet, FCOS, SSD) the "proposal" is the anchor whose decoded
box overlaps the object most (their boxes do not depend on the class) and its score is the
one post-processing thresholds; the map explains the class logit at that anchor.

Everything comes from one detector pass per image and one gradient call per missed object, as
for the detections themselves (``detection.py``); D-RISE explains a miss with the ground-truth
box as its target.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou, clip_boxes_to_image

from cam import capture_activation
from detection import (
    DET_METHODS,
    DetectionResult,
    _frozen,
    _second_stage,
    anchor_boxes,
    anchor_scores,
    default_layer,
    family,
    fit_to_image,
    layer_modules,
    one_stage_outputs,
)
from runtime import eval_mode

IOU_THRESH = 0.5
KINDS = ("localisation", "classification", "suppressed")


@dataclass
class Miss:
    """One missed object: its index in the ground truth, box (image pixels) and detector label;
    the best proposal's box for that class, IoU and probability; the kind of miss; the class
    that won the proposal (0: background); a detection of another class on the object, if any;
    and the maps of the proposal's class logit per layer (``[H, W]`` in [0, 1])."""

    truth_index: int
    box: torch.Tensor
    label: int
    proposal_box: torch.Tensor
    iou: float
    score: float
    kind: str
    winner: int
    detected_as: int | None
    maps: dict[str, torch.Tensor] = field(default_factory=dict)


def missed_objects(result: DetectionResult, truth_boxes: torch.Tensor,
                   truth_labels: torch.Tensor, score_thresh: float) -> list[int]:
    """Indices of the ground-truth objects (detector labels) that no detection with
    ``score >= score_thresh`` of their class overlaps with IoU >= 0.5."""
    keep = result.scores >= score_thresh
    boxes, labels = result.boxes[keep], result.labels[keep]
    missed = []
    for i, (box, label) in enumerate(zip(truth_boxes, truth_labels.tolist())):
        mine = boxes[labels == label]
        if len(mine) == 0 or box_iou(box[None].float(), mine.float()).max() < IOU_THRESH:
            missed.append(i)
    return missed


def _to_resized(boxes: torch.Tensor, original: tuple[int, int], resized: tuple[int, int]
                ) -> torch.Tensor:
    ry, rx = resized[0] / original[0], resized[1] / original[1]
    return boxes * boxes.new_tensor([rx, ry, rx, ry])


def _two_stage_candidates(model: nn.Module, batch, features, targets: torch.Tensor,
                          wanted: torch.Tensor, score_thresh: float):
    """Per missed object (boxes in resized pixels): the proposal whose box for the object's
    class overlaps it most, that box, the IoU, the class probability, the winning class, and
    the proposals' class logits in the graph."""
    size = batch.image_sizes[0]
    with torch.no_grad():
        (proposals,), _ = model.rpn(batch, features)
        logits, regression = _second_stage(model.roi_heads, features, [proposals], [size])
        decoded = clip_boxes_to_image(model.roi_heads.box_coder.decode(
            regression, [proposals]), size)                                # [R, C, 4]
        probs = F.softmax(logits.float(), -1)
        rows, ious = [], []
        for box, label in zip(targets, wanted):
            iou = box_iou(box[None], decoded[:, label])[0]
            r = int(iou.argmax())
            rows.append(r)
            ious.append(float(iou[r]))
        rows_t = torch.tensor(rows, device=proposals.device)
        boxes = decoded[rows_t, wanted]
        scores = probs[rows_t, wanted]
        winners = probs[rows_t].argmax(1)
    own, _ = _second_stage(model.roi_heads, features, [proposals[rows_t]], [size])
    return boxes, ious, scores, winners, own.gather(1, wanted[:, None])[:, 0]


def _one_stage_candidates(model: nn.Module, batch, targets: torch.Tensor, wanted: torch.Tensor,
                          score_thresh: float):
    """:func:`_two_stage_candidates` for RetinaNet, FCOS and SSD: the anchor whose decoded box
    overlaps the object most, its score for the object's class (as post-processing computes
    it), the winning class (SSD: the softmax's argmax, 0 the background; RetinaNet and FCOS:
    the best class if its score reaches ``score_thresh``, else 0, for no class), and the class
    logits at those anchors in the graph."""
    size = batch.image_sizes[0]
    out = one_stage_outputs(model, batch)
    with torch.no_grad():
        head = {k: v[0].detach() for k, v in out.head.items()}
        decoded = anchor_boxes(model, head, out.anchors[0], size)            # [A, 4]
        iou = box_iou(targets, decoded)                                      # [T, A]
        best, rows = iou.max(dim=1)
        probs = anchor_scores(model, head)[rows].float()                     # [T, K]
        scores = probs.gather(1, wanted[:, None])[:, 0]
        if family(model) == "ssd":
            winners = probs.argmax(1)
        else:
            top, cls = probs[:, 1:].max(1)
            winners = torch.where(top >= score_thresh, cls + 1, 0)
    logits = out.head["cls_logits"][0, rows, wanted]
    return decoded[rows], best.tolist(), scores, winners, logits


def explain_misses(model: nn.Module, image: torch.Tensor, result: DetectionResult,
                   truth_boxes: torch.Tensor, truth_labels: torch.Tensor, score_thresh: float,
                   layers: Sequence[str] | None = None, method: str = "gradcam") -> list[Miss]:
    """Every missed object of ``image`` (``[3, H, W]`` in [0, 1]; ``result`` the detector's
    answer on it, ``truth_labels`` in the detector's labels), classified and explained with
    ``method`` at ``layers`` (the detector's default layer when None). The best "proposal" of
    a one-stage detector (RetinaNet, FCOS, SSD) is the anchor whose decoded box overlaps the
    object most, and its explained score the class logit there. The model is left as found."""
    truth_boxes, truth_labels = truth_boxes.float(), truth_labels.long()
    missed = missed_objects(result, truth_boxes, truth_labels, score_thresh)
    if not missed:
        return []
    if layers is None:
        layers = [default_layer(model)]
    modules = layer_modules(model, layers)
    two_stage = family(model) == "fasterrcnn"
    with eval_mode(model), _frozen(model), contextlib.ExitStack() as stack, torch.enable_grad():
        captures = [stack.enter_context(capture_activation(m)) for m in modules]
        batch, _ = model.transform([image.to(next(model.parameters()).device)])
        size = batch.image_sizes[0]
        original = tuple(image.shape[-2:])
        wanted = truth_labels[missed].to(batch.tensors.device)
        targets = _to_resized(truth_boxes[missed], original, size).to(batch.tensors)
        if two_stage:
            found = _two_stage_candidates(model, batch, model.backbone(batch.tensors), targets,
                                          wanted, score_thresh)
        else:
            found = _one_stage_candidates(model, batch, targets, wanted, score_thresh)
        boxes, ious, probs, winners, logits = found
        activations = [c.activation for c in captures]
        raw: list[list[torch.Tensor]] = [[] for _ in activations]
        if activations:   # the class logits, in the graph, one gradient call each
            combine = DET_METHODS[method][0].combine
            for i in range(len(logits)):
                grads = torch.autograd.grad(logits[i], activations,
                                            retain_graph=i < len(logits) - 1)
                for per_layer, act, grad in zip(raw, activations, grads):
                    per_layer.append(combine(act.detach(), grad)[0])
        padded = tuple(batch.tensors.shape[-2:])
        maps = [fit_to_image(torch.stack(m).detach(), tuple(size), padded, original)
                for m in raw]
    scale = boxes.new_tensor([original[1] / size[1], original[0] / size[0]] * 2)
    out = []
    for k, i in enumerate(missed):
        label = int(truth_labels[i])
        p = float(probs[k])
        kind = ("localisation" if ious[k] < IOU_THRESH else
                "classification" if p < score_thresh else "suppressed")
        others = result.scores >= score_thresh
        overlap = (box_iou(truth_boxes[i][None], result.boxes.float())[0] >= IOU_THRESH) & others
        other_labels = [int(lab) for lab in result.labels[overlap] if int(lab) != label]
        out.append(Miss(i, truth_boxes[i].cpu(), label, (boxes[k].detach() * scale).cpu(),
                        ious[k], p, kind, int(winners[k]),
                        other_labels[0] if other_labels else None,
                        {layer: m[k].cpu() for layer, m in zip(layers, maps)}))
    return out


def explain_misses_drise(model: nn.Module, image: torch.Tensor, result: DetectionResult,
                         truth_boxes: torch.Tensor, truth_labels: torch.Tensor,
                         score_thresh: float, **drise_options) -> list[Miss]:
    """:func:`explain_misses` classified as for the gradient methods, each explained by D-RISE
    with the ground-truth box and class as its target (key ``input``)."""
    from drise import LAYER, drise_maps
    misses = explain_misses(model, image, result, truth_boxes, truth_labels, score_thresh,
                            layers=(), method="gradcam")
    if misses:
        maps = drise_maps(model, image, torch.stack([m.box for m in misses]),
                          torch.tensor([m.label for m in misses]), **drise_options)
        for miss, heat in zip(misses, maps):
            miss.maps = {LAYER: heat}
    return misses
