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

Everything goes through ``detection.explain`` with a :class:`detection.MissTarget`: one
detector pass per image and one gradient call per missed object, as for the detections
themselves; D-RISE explains a miss with the ground-truth box as its target. The summary and the
table of a set's misses (:func:`miss_summary`, :func:`miss_table`) are strings and dicts, for
the command line and ``voc_metrics.json`` alike.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torchvision.ops import box_iou

from detection import DetectionResult, MissTarget, explain
from voc import IOU_THRESH

if TYPE_CHECKING:
    from drise import DriseSettings

KINDS = ("localisation", "classification", "suppressed")
MISS_FIELDS = ("image", "class", "kind", "best_iou", "score", "won_by", "detected_as")


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


def explain_misses(model: nn.Module, image: torch.Tensor, result: DetectionResult,
                   truth_boxes: torch.Tensor, truth_labels: torch.Tensor, score_thresh: float,
                   layers: Sequence[str] | None = None, method: str = "gradcam",
                   drise: DriseSettings | None = None) -> list[Miss]:
    """Every missed object of ``image`` (``[3, H, W]`` in [0, 1]; ``result`` the detector's
    answer on it, ``truth_labels`` in the detector's labels), classified and explained with
    ``method`` at ``layers`` (the detector's default layer when None; D-RISE with ``drise``,
    a ``drise.DriseSettings``). The best "proposal" of a one-stage detector (RetinaNet, FCOS,
    SSD) is the anchor whose decoded box overlaps the object most, and its explained score the
    class logit there. The model is left as found."""
    truth_boxes, truth_labels = truth_boxes.float(), truth_labels.long()
    missed = missed_objects(result, truth_boxes, truth_labels, score_thresh)
    if not missed:
        return []
    image = image.to(next(model.parameters()).device)
    target = MissTarget(truth_boxes[missed], truth_labels[missed], score_thresh)
    found = explain(model, image, target, layers, method, drise)
    maps = {layer: found.heatmaps(layer) for layer in found.maps}
    others = result.scores >= score_thresh
    out = []
    for k, i in enumerate(missed):
        label = int(truth_labels[i])
        iou, p = float(found.ious[k]), float(found.scores[k])
        kind = ("localisation" if iou < IOU_THRESH else
                "classification" if p < score_thresh else "suppressed")
        overlap = (box_iou(truth_boxes[i][None], result.boxes.float())[0] >= IOU_THRESH) & others
        other_labels = [int(lab) for lab in result.labels[overlap] if int(lab) != label]
        out.append(Miss(i, truth_boxes[i].cpu(), label, found.boxes[k], iou, p, kind,
                        int(found.winners[k]), other_labels[0] if other_labels else None,
                        {layer: m[k] for layer, m in maps.items()}))
    return out


def miss_row(image_id: str, miss: Miss, names: dict[int, str]) -> dict:
    """One row of the misses table (:data:`MISS_FIELDS`): the image, the object's class, the
    kind of miss, the best IoU and score, the class that won the proposal and the class the
    object was detected as (``names`` maps detector labels to class names)."""
    name = names.get(miss.label, str(miss.label))
    winner = ("background" if miss.winner == 0 else
              "its own class, under the threshold" if miss.winner == miss.label else
              names.get(miss.winner, "?"))
    other = None if miss.detected_as is None else names.get(miss.detected_as, "?")
    return {"image": image_id, "class": name, "kind": miss.kind,
            "best_iou": round(miss.iou, 4), "score": round(miss.score, 4),
            "won_by": winner, "detected_as": other or ""}


def miss_summary(rows: list[dict]) -> dict:
    """Misses (rows of :func:`miss_row`) counted by class and kind, and which classes won the
    classification misses."""
    by_class: dict[str, dict] = {}
    for row in rows:
        entry = by_class.setdefault(row["class"], {k: 0 for k in KINDS} | {"won_by": Counter()})
        entry[row["kind"]] += 1
        if row["kind"] == "classification":
            entry["won_by"][row["won_by"]] += 1
    return {"total": len(rows), "by_kind": dict(Counter(r["kind"] for r in rows)),
            "by_class": {c: {**{k: v for k, v in e.items() if k != "won_by"},
                             "won_by": dict(e["won_by"].most_common())}
                         for c, e in sorted(by_class.items())}}


def miss_table(summary: dict) -> str:
    """The misses of :func:`miss_summary` as a text table: one row per class."""
    head = (f"Missed objects: {summary['total']} (no detection of their class at IoU >= "
            f"{IOU_THRESH} and the score threshold)")
    lines = [head,
             f"{'class':<12} " + " ".join(f"{k:>14}" for k in KINDS) + "  classification won by"]
    for name, e in summary["by_class"].items():
        won = ", ".join(f"{c} {n}" for c, n in e["won_by"].items())
        lines.append(f"{name:<12} " + " ".join(f"{e[k]:>14}" for k in KINDS) + f"  {won}")
    return "\n".join(lines)
