"""Detection metrics: VOC2007 AP, and how well each detection's map points at its own object
(pointing game, energy in the box, discrimination against the other boxes), next to maps that
use no explanation. Reads :class:`detection.DetectionResult`; VOC reading is ``voc.py``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from detection import DetectionResult, DetectionTarget, explain, to_tensor
from detectors import DEFAULT_ARCH, Detector, score_floor
from drise import DriseSettings
from errors import UserError, note
from misses import Miss, explain_misses, miss_row, miss_summary
from stats import MEAN_INTERVAL, PROPORTION_INTERVAL, mean_spread, wilson
from voc import IOU_THRESH, POINTING_TOLERANCE, VOC_CLASSES, VOCAnnotation, VOCReader

# --------------------------------------------------------------------------------------------
# Numbers


def best_match(box: torch.Tensor, gt_boxes: torch.Tensor) -> tuple[int, float]:
    """Index and IoU of the ground-truth box that overlaps ``box`` most; ``(-1, 0.0)`` if none."""
    if len(gt_boxes) == 0:
        return -1, 0.0
    ious = box_iou(box.view(1, 4).float(), gt_boxes.float())[0]
    j = int(ious.argmax())
    return j, float(ious[j])


def voc07_ap(is_tp: Sequence[bool], npos: int) -> float:
    """VOC2007 11-point interpolated AP from TP/FP flags in descending score order.

    Precision is interpolated at recall 0, 0.1, ..., 1 (the best precision at that recall or
    more). Recall thresholds are compared in integers (``10 * tp >= i * npos``), so a recall of
    exactly 0.3 reaches the 0.3 point, which ``np.arange(0, 1.1, 0.1)`` would miss.
    """
    tp = np.cumsum(np.asarray(is_tp, dtype=np.int64))
    precision = tp / np.arange(1, len(tp) + 1)
    total = 0.0
    for i in range(11):
        reached = 10 * tp >= i * npos
        total += float(precision[reached].max()) if reached.any() else 0.0
    return total / 11


def average_precision(detections: Sequence[tuple[str, float, torch.Tensor]],
                      ground_truth: dict[str, tuple[torch.Tensor, torch.Tensor]],
                      iou_thresh: float = IOU_THRESH) -> float | None:
    """AP of one class, the VOC way: detections ``(image, score, box)`` sorted by score over
    the class; one matches the ground-truth box (``ground_truth[image] = (boxes, difficult)``)
    it overlaps most, a true positive if IoU >= ``iou_thresh`` and the box is not yet taken, a
    false positive otherwise; a match with a difficult box counts as neither. None without
    non-difficult ground truth (AP is undefined)."""
    npos = sum(int((~difficult).sum()) for _, difficult in ground_truth.values())
    if npos == 0:
        return None
    taken = {image: torch.zeros(len(boxes), dtype=torch.bool)
             for image, (boxes, _) in ground_truth.items()}
    is_tp = []
    for image, _, box in sorted(detections, key=lambda d: -d[1]):
        boxes, difficult = ground_truth.get(image, (torch.zeros(0, 4), torch.zeros(0, dtype=bool)))
        j, iou = best_match(box, boxes)
        if j >= 0 and iou >= iou_thresh and difficult[j]:
            continue
        hit = j >= 0 and iou >= iou_thresh and not taken[image][j]
        if hit:
            taken[image][j] = True
        is_tp.append(hit)
    return voc07_ap(is_tp, npos)


def _pixel_centres(heatmap: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = mask.nonzero(as_tuple=True)
    return cols.double() + 0.5, rows.double() + 0.5


def pointing_hit(heatmap: torch.Tensor, box: Sequence[float],
                 tolerance: float = POINTING_TOLERANCE) -> float:
    """Pointing game: 1.0 when the heatmap's maximum (at the pixel's centre) lies in ``box`` or
    within ``tolerance`` pixels of it, else 0.0. A maximum shared by several pixels (a flat map)
    scores the share of them that hit: the expected hit of one picked at random. An all-zero
    heatmap points nowhere: a miss."""
    peak = float(heatmap.max())
    if peak <= 0:
        return 0.0
    x, y = _pixel_centres(heatmap, heatmap == peak)
    x1, y1, x2, y2 = (float(v) for v in box)
    dx = (x1 - x).clamp(min=0).maximum((x - x2).clamp(min=0))
    dy = (y1 - y).clamp(min=0).maximum((y - y2).clamp(min=0))
    return float((dx.hypot(dy) <= tolerance).double().mean())


def _box_slices(box: Sequence[float], shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the pixels whose centres lie in ``box``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = shape
    rows = slice(max(0, math.ceil(y1 - 0.5)), min(h, math.floor(y2 - 0.5) + 1))
    cols = slice(max(0, math.ceil(x1 - 0.5)), min(w, math.floor(x2 - 0.5) + 1))
    return rows, cols


def energy_in_box(heatmap: torch.Tensor, box: Sequence[float]) -> float:
    """Share of the heatmap's mass on pixels whose centres lie in ``box`` (0 for a zero map)."""
    total = float(heatmap.sum())
    if total <= 0:
        return 0.0
    rows, cols = _box_slices(box, heatmap.shape)
    return float(heatmap[rows, cols].sum()) / total


def peak_in_box(heatmap: torch.Tensor, box: Sequence[float]) -> float:
    """The heatmap's largest value on pixels whose centres lie in ``box`` (0 for none)."""
    rows, cols = _box_slices(box, heatmap.shape)
    inside = heatmap[rows, cols]
    return float(inside.max()) if inside.numel() else 0.0


def centre_map(height: int, width: int) -> torch.Tensor:
    """Baseline without explanation: a Gaussian centred on the image (sigma a quarter of each
    side), whose maximum is the image centre."""
    y = (torch.arange(height, dtype=torch.float32) + 0.5 - height / 2) / (height / 4)
    x = (torch.arange(width, dtype=torch.float32) + 0.5 - width / 2) / (width / 4)
    return torch.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


class ExplanationTally:
    """Scores of one kind of map (a layer's Grad-CAM, or a baseline) over matched detections.

    * pointing game and energy-in-box on the detection's own ground-truth box;
    * discrimination, for detections in images with two or more objects: whether the map's
      peak, and separately its energy, is larger in the own box than in every other object's
      box (``any``), and than in every other box of the same class (``same_class``). Ties are
      not wins, so a flat map never wins.
    """

    KINDS = ("any", "same_class")

    def __init__(self, tolerance: float):
        self.tolerance = tolerance
        self.hits: list[float] = []
        self.energy: list[float] = []
        self.peak_wins = {kind: [] for kind in self.KINDS}
        self.energy_wins = {kind: [] for kind in self.KINDS}

    def add(self, heatmap: torch.Tensor, own: torch.Tensor, others: dict[str, torch.Tensor]
            ) -> None:
        """``own`` box ``[4]``; ``others[kind]`` the other boxes ``[K, 4]`` of each kind."""
        self.hits.append(pointing_hit(heatmap, own.tolist(), self.tolerance))
        own_energy = energy_in_box(heatmap, own.tolist())
        self.energy.append(own_energy)
        own_peak = peak_in_box(heatmap, own.tolist())
        for kind, boxes in others.items():
            if len(boxes) == 0:
                continue
            boxes = boxes.tolist()
            self.peak_wins[kind].append(own_peak > max(peak_in_box(heatmap, b) for b in boxes))
            self.energy_wins[kind].append(
                own_energy > max(energy_in_box(heatmap, b) for b in boxes))

    def summary(self) -> dict:
        n = len(self.hits)
        out = {"pointing_game": float(np.mean(self.hits)) if n else None,
               "pointing_game_ci95": wilson(sum(self.hits), n),
               "energy_in_box": float(np.mean(self.energy)) if n else None,
               "energy_in_box_ci95": mean_spread(self.energy).ci if n else None,
               "detections": n,
               "discrimination": {}}
        for kind in self.KINDS:
            peaks, energies = self.peak_wins[kind], self.energy_wins[kind]
            m = len(peaks)
            out["discrimination"][kind] = {
                "detections": m,
                "peak_in_own_box": sum(peaks) / m if m else None,
                "peak_in_own_box_ci95": wilson(sum(peaks), m),
                "energy_in_own_box": sum(energies) / m if m else None,
                "energy_in_own_box_ci95": wilson(sum(energies), m)}
        return out


BASELINES = ("centre", "uniform", "other_detection")


class DetectionScore:
    """Gathers detections and explanation scores over images, then AP, per-layer scores and
    the baselines that use no explanation.

    ``classes`` are the annotation's class names; ``label_map`` maps a detector label to an
    index in them (detections of other labels are left out).
    """

    def __init__(self, layers: Sequence[str], classes: Sequence[str] = VOC_CLASSES,
                 tolerance: float = POINTING_TOLERANCE):
        self.classes = tuple(classes)
        self.detections: list[list[tuple[str, float, torch.Tensor]]] = [[] for _ in classes]
        self.ground_truth: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = [
            {} for _ in classes]
        self.explained = 0
        self.matched = 0
        self.tolerance = tolerance
        self.layers = {layer: ExplanationTally(tolerance) for layer in layers}
        self.baselines = {name: ExplanationTally(tolerance) for name in ("centre", "uniform")}
        self.other_detection = {layer: ExplanationTally(tolerance) for layer in layers}

    def add(self, image_id: str, truth: VOCAnnotation, result: DetectionResult,
            label_map: dict[int, int]) -> None:
        """One image: its ground truth, all its (mapped) detections, its explanations."""
        for c in range(len(self.classes)):
            mine = truth.labels == c
            if mine.any():
                self.ground_truth[c][image_id] = (truth.boxes[mine], truth.difficult[mine])
        for box, label, score in zip(result.boxes, result.labels.tolist(), result.scores.tolist()):
            if label in label_map:
                self.detections[label_map[label]].append((image_id, score, box))
        explained = result.explained.tolist()
        for rank, index in enumerate(explained):
            self.explained += 1
            c = label_map[int(result.labels[index])]
            candidates = (truth.labels == c).nonzero()[:, 0]
            j, iou = best_match(result.boxes[index], truth.boxes[candidates])
            if j < 0 or iou < IOU_THRESH:
                continue
            self.matched += 1
            own = int(candidates[j])
            rest = torch.ones(len(truth.boxes), dtype=torch.bool)
            rest[own] = False
            others = {"any": truth.boxes[rest],
                      "same_class": truth.boxes[rest & (truth.labels == c)]}
            size = result.image_size
            self.baselines["centre"].add(centre_map(*size), truth.boxes[own], others)
            self.baselines["uniform"].add(torch.ones(size), truth.boxes[own], others)
            for layer in self.layers:
                self.layers[layer].add(result.heatmap(layer, rank), truth.boxes[own], others)
                if len(explained) > 1:
                    other_rank = (rank + 1) % len(explained)
                    self.other_detection[layer].add(result.heatmap(layer, other_rank),
                                                    truth.boxes[own], others)

    def summary(self) -> dict:
        """AP per class (None without ground truth), their mean, per-layer scores, baselines."""
        ap = {name: average_precision(self.detections[c], self.ground_truth[c])
              for c, name in enumerate(self.classes)}
        defined = [v for v in ap.values() if v is not None]
        return {"ap": ap, "map": sum(defined) / len(defined) if defined else None,
                "interval": {"proportions": PROPORTION_INTERVAL, "means": MEAN_INTERVAL},
                "map_classes": len(defined), "explained_detections": self.explained,
                "matched_detections": self.matched,
                "layers": {layer: t.summary() for layer, t in self.layers.items()},
                "baselines": {**{name: t.summary() for name, t in self.baselines.items()},
                              "other_detection": {layer: t.summary() for layer, t in
                                                  self.other_detection.items()}}}


def _fmt(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{100 * value:4.0f}%"


def _row(name: str, tally: dict) -> str:
    ci = tally["pointing_game_ci95"]
    interval = f"[{100 * ci[0]:3.0f}-{100 * ci[1]:3.0f}]" if ci else "         "
    d = tally["discrimination"]
    return (f"{name:<22} {_pct(tally['pointing_game'])} {interval}  "
            f"{_fmt(tally['energy_in_box'])}   "
            f"{_pct(d['any']['peak_in_own_box'])} {_pct(d['any']['energy_in_own_box'])}   "
            f"{_pct(d['same_class']['peak_in_own_box'])} "
            f"{_pct(d['same_class']['energy_in_own_box'])}")


def format_table(summary: dict, method: str = "Grad-CAM") -> str:
    """The numbers as a text table; ``method`` names the maps' method."""
    lines = [f"{'class':<12} {'AP@0.5':>6}"]
    lines += [f"{name:<12} {_fmt(v)}" for name, v in summary["ap"].items()]
    lines.append(f"{'mAP':<12} {_fmt(summary['map'])}  (VOC2007 11-point, over "
                 f"{summary['map_classes']} classes with ground truth)")
    lines.append("")
    lines.append(f"Explained detections: {summary['explained_detections']}, matched to a "
                 f"ground-truth box of their class (IoU >= {IOU_THRESH}): "
                 f"{summary['matched_detections']}")
    lines.append(f"{'layer':<8} {'pointing game':>14} {'energy in box':>14}   (higher is better)")
    for layer, values in summary["layers"].items():
        lines.append(f"{layer:<8} {_fmt(values['pointing_game']):>14} "
                     f"{_fmt(values['energy_in_box']):>14}")
    lines.append("")
    lines.append("Own box beats the other objects' boxes (images with 2+ objects; peak / energy;"
                 " higher is better), next to maps that use no explanation:")
    lines.append(f"{'map':<22} {'pointing [95% CI]':<17}  {'energy':>6}   "
                 f"{'vs any other':<11}   {'vs same class':<13}")
    for layer, values in summary["layers"].items():
        lines.append(_row(f"{method} {layer}", values))
    baselines = summary.get("baselines", {})
    for name in ("centre", "uniform"):
        if name in baselines:
            lines.append(_row(f"baseline {name}", baselines[name]))
    for layer, values in baselines.get("other_detection", {}).items():
        lines.append(_row(f"other detection {layer}", values))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# A VOC-style test set, scored


@dataclass
class DetectionReport:
    """What :func:`score_voc` returns: the images scored, those without a detection to explain,
    the summary (AP per class, mAP, per-layer explanation scores, baselines), the settings of
    the run, and the missed objects (``miss_rows``, one :func:`misses.miss_row` each, and
    their ``misses`` summary) when they were explained."""

    voc_path: str
    ids: list[str]
    without_detections: list[str]
    method: str
    score_thresh: float
    max_explained: int
    summary: dict
    unreadable_images: list[str] = field(default_factory=list)
    detector: str = ""
    pointing_tolerance_px: float = POINTING_TOLERANCE
    detector_min_size: int | None = None
    arch: str | None = None          # the COCO layout, when not the default one
    weights: str | None = None
    annotation_problems: dict = field(default_factory=dict)
    drise: dict | None = None        # D-RISE's settings, for a D-RISE run
    ap_method: str = ""
    misses: dict | None = None       # the summary of the missed objects, when explained
    miss_rows: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        """The report as ``voc_metrics.json`` holds it."""
        return {"voc_path": self.voc_path, "images": len(self.ids),
                "images_without_detections": self.without_detections, "method": self.method,
                "score_thresh": self.score_thresh, "max_explained_per_image": self.max_explained,
                "unreadable_images": self.unreadable_images, "detector": self.detector,
                "pointing_tolerance_px": self.pointing_tolerance_px,
                "detector_min_size": self.detector_min_size,
                **({"arch": self.arch} if self.arch is not None else {}),
                "weights": self.weights, "annotation_problems": self.annotation_problems,
                **({"drise": self.drise} if self.drise is not None else {}),
                "ap_method": self.ap_method,
                **({"misses": self.misses} if self.misses is not None else {}),
                "ap_iou": IOU_THRESH,
                "higher_is_better": {"ap": True, "pointing_game": True, "energy_in_box": True,
                                     "peak_in_own_box": True, "energy_in_own_box": True},
                "baseline_maps": BASELINE_MAPS, **self.summary}


BASELINE_MAPS = {"centre": "a Gaussian centred on the image, sigma a quarter of each side",
                 "uniform": "a constant map (a tied maximum scores the share of pixels that hit)",
                 "other_detection": "the map of the next explained detection in the same image, "
                                    "scored on this one's box"}

# on_image(image_id, image, truth, result, misses): misses are (Miss, row) pairs
ImageCallback = Callable[[str, np.ndarray, VOCAnnotation, DetectionResult,
                          list[tuple[Miss, dict]]], None]


def image_misses(detector: Detector, image_id: str, image: torch.Tensor, truth: VOCAnnotation,
                 result: DetectionResult, score_thresh: float, layers: Sequence[str] | None,
                 method: str, names: dict[int, str], drise: DriseSettings | None = None
                 ) -> list[tuple[Miss, dict]]:
    """The missed objects of one image (ground truth of classes the detector knows), each
    explained with ``method`` and with its row of the misses table."""
    to_label = {c: label for label, c in detector.label_map.items()}
    known = [i for i, c in enumerate(truth.labels.tolist()) if c in to_label]
    labels = torch.tensor([to_label[c] for c in truth.labels[known].tolist()], dtype=torch.long)
    found = explain_misses(detector.model, image, result, truth.boxes[known], labels,
                           score_thresh, layers, method, drise)
    return [(miss, miss_row(image_id, miss, names)) for miss in found]


def score_voc(detector: Detector, reader: VOCReader, layers: Sequence[str],
              method: str = "gradcam", score_thresh: float = 0.5, max_explained: int = 20,
              limit: int | None = None, device: torch.device | str = "cpu",
              on_image: ImageCallback | None = None, drise: DriseSettings | None = None,
              explain_missed: bool = False) -> DetectionReport:
    """Explain every detection of the first ``limit`` images of ``reader`` with ``method`` (at
    ``layers``; D-RISE with ``drise``, a ``drise.DriseSettings``) and score the detector (AP)
    and the maps (pointing game, energy, discrimination, with baselines); with
    ``explain_missed`` also classify and explain the objects it missed.

    ``on_image(image_id, image, truth, result, misses)`` sees each image as it is done (to draw
    its panels), so that no image is kept once it has been scored.
    """
    if method == "drise":
        drise = drise or DriseSettings()
    ids = reader.ids()[:limit]
    score = DetectionScore(layers, reader.classes, detector.pointing_tolerance)
    names = {label: reader.classes[c] for label, c in detector.label_map.items()}
    target = DetectionTarget(score_thresh, max_explained, detector.label_map)
    without = []
    desc = "VOC 2007 test" if reader.classes == VOC_CLASSES else f"test set {reader.path.name}"
    unreadable: list[str] = []
    rows: list[dict] = []
    for image_id in tqdm(ids, desc=desc, unit="image"):
        try:
            image = reader.image(image_id)
        except UserError as exc:   # one bad file does not void the set: skipped, said, counted
            note(f"{image_id} skipped: {exc}")
            unreadable.append(image_id)
            continue
        truth = reader.annotation(image_id)
        tensor = to_tensor(image, torch.device(device))
        result = explain(detector.model, tensor, target, layers, method, drise)
        score.add(image_id, truth, result, detector.label_map)
        if len(result.explained) == 0:
            without.append(image_id)
        missed = (image_misses(detector, image_id, tensor, truth, result, score_thresh, layers,
                               method, names, drise) if explain_missed else [])
        rows += [row for _, row in missed]
        if on_image is not None:
            on_image(image_id, image, truth, result, missed)
    scored = [i for i in ids if i not in set(unreadable)]
    return DetectionReport(
        str(reader.path), scored, without, method, score_thresh, max_explained, score.summary(),
        unreadable, detector.description, detector.pointing_tolerance, detector.input_fit[0],
        detector.arch if detector.arch not in (None, DEFAULT_ARCH) else None, detector.weights,
        reader.problems(), drise.as_dict() if method == "drise" else None,
        "VOC2007 11-point, difficult objects ignored, detections with score > "
        f"{score_floor(score_thresh)}", miss_summary(rows) if explain_missed else None, rows)
