"""PASCAL VOC reading and the detection metrics: AP, pointing game, energy-in-box.

VOC images and annotations are read from ``VOCtest_06-Nov-2007.tar`` (nothing extracted) or
from a folder in the VOC layout, such as the Fashion-MNIST test scenes that ship in ``data/``.
Boxes are in continuous pixel coordinates (torchvision's): pixel column ``i`` (0-based) covers
``[i, i + 1)``. A VOC box ``xmin..xmax`` (1-based, inclusive) is therefore
``(xmin - 1, ymin - 1, xmax, ymax)``.
"""
from __future__ import annotations

import io
import math
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import torch
from torchvision.ops import box_iou

import outputs
from data import open_image
from errors import UserError, note, reason

if TYPE_CHECKING:
    from detection import DetectionResult

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar"
IOU_THRESH = 0.5
POINTING_TOLERANCE = 15.0  # pixels, as in the pointing game of Zhang et al. (2016)

# --------------------------------------------------------------------------------------------
# PASCAL VOC 2007


@dataclass
class VOCAnnotation:
    """Ground truth of one image: ``boxes`` ``[G, 4]`` (continuous pixel coordinates),
    ``labels`` ``[G]`` (VOC class indices), ``difficult`` ``[G]`` bool. ``left_out`` lists
    the objects that are not in it, as ``(reason, description)`` with a reason of
    ``LEFT_OUT``."""

    boxes: torch.Tensor
    labels: torch.Tensor
    difficult: torch.Tensor
    left_out: list[tuple[str, str]] = field(default_factory=list)


# Why an annotated object is left out of the ground truth (it would score as if valid, or
# vanish without a word): the reader counts each, notes the first few, and says how many in
# ``VOCReader.problems()`` for the run's summary.
LEFT_OUT = {
    "unknown_class": "of a class the detector does not know",
    "non_finite_box": "with a NaN or infinite coordinate",
    "box_without_area": "without area (xmax <= xmin or ymax <= ymin)",
    "box_outside_image": "outside the image",
}
EDGE_SLACK = 1.0   # pixels a box may overshoot the image edge (0-based coordinates in a VOC file)


def _box_problem(box: tuple[float, float, float, float],
                 image_size: tuple[int, int] | None) -> str | None:
    """Why a VOC box ``(xmin, ymin, xmax, ymax)`` (1-based, inclusive) is no box, or None."""
    xmin, ymin, xmax, ymax = box
    if not all(math.isfinite(v) for v in box):
        return "non_finite_box"
    if xmax <= xmin or ymax <= ymin:
        return "box_without_area"
    if image_size is not None:
        width, height = image_size
        if (xmin - 1 < -EDGE_SLACK or ymin - 1 < -EDGE_SLACK or xmax > width + EDGE_SLACK
                or ymax > height + EDGE_SLACK):
            return "box_outside_image"
    elif min(xmin, ymin) - 1 < -EDGE_SLACK:
        return "box_outside_image"
    return None


def _xml_size(root: ET.Element) -> tuple[int, int] | None:
    try:
        width, height = (int(root.findtext(f"size/{k}") or 0) for k in ("width", "height"))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def parse_voc_annotation(xml: bytes, name: str, classes: Sequence[str] = VOC_CLASSES,
                         image_size: tuple[int, int] | None = None) -> VOCAnnotation:
    """A VOC XML annotation, checked object by object: an object of a class outside
    ``classes`` (VOC's 20 by default), or whose box is not finite, has no area or lies outside
    the image (``image_size = (width, height)``, else the annotation's own ``<size>``), is left
    out of the ground truth and listed in ``left_out``."""
    boxes, labels, difficult, left_out = [], [], [], []
    try:
        root = ET.fromstring(xml)
        size = image_size or _xml_size(root)
        for number, obj in enumerate(root.iter("object"), 1):
            cls = (obj.findtext("name") or "").strip()
            if cls not in classes:
                left_out.append(("unknown_class", f"object {number} ('{cls}')"))
                continue
            bndbox = obj.find("bndbox")
            box = tuple(float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            problem = _box_problem(box, size)
            if problem:
                shown = ", ".join(f"{v:g}" for v in box)
                left_out.append((problem, f"object {number} ({cls}, box {shown})"))
                continue
            xmin, ymin, xmax, ymax = box
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
            labels.append(classes.index(cls))
            difficult.append(int((obj.findtext("difficult") or "0").strip() or 0) == 1)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise UserError(f"annotation {name} is not valid VOC XML ({exc})") from None
    return VOCAnnotation(torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                         torch.tensor(labels, dtype=torch.long),
                         torch.tensor(difficult, dtype=torch.bool), left_out)


TEST_LIST = "ImageSets/Main/test.txt"
NOTES_SHOWN = 5   # objects left out that get a note of their own; the rest are counted
# An image id names JPEGImages/<id>.jpg and Annotations/<id>.xml: a file name, not a path.
_IMAGE_ID = re.compile(r"[^/\\\x00-\x1f]+")


class VOCReader:
    """VOC 2007 images and annotations, read straight from ``VOCtest_06-Nov-2007.tar`` (random
    access by member name, nothing extracted) or from an extracted ``VOCdevkit`` folder.

    The image list is checked whole when first asked for (UTF-8, ids that name files inside
    the set, each with its annotation and image; an id listed twice is scored once, with a
    note). Annotation objects that are no valid ground truth are left out with a note and
    counted: ``problems()`` gives the counts for the run's summary (``voc_metrics.json``).
    """

    def __init__(self, path: str | os.PathLike, classes: Sequence[str] = VOC_CLASSES):
        self.path = Path(path)
        self.classes = tuple(classes)
        self._tar: tarfile.TarFile | None = None
        self._ids: list[str] | None = None
        self._sizes: dict[str, tuple[int, int]] = {}
        self.left_out: Counter[str] = Counter()
        self.unknown_classes: Counter[str] = Counter()
        self.duplicate_ids = 0
        if self.path.is_dir():
            self._root = self._folder_root()
        elif self.path.is_file():
            self._root = self._open_tar()
        elif (kind := outputs.path_kind(self.path)) != outputs.MISSING:
            raise UserError(f"--voc_path {self.path} is {kind}, not a VOC tar or folder")
        else:
            raise UserError(f"VOC 2007 test not found at {self.path}: download {VOC_URL} and "
                            f"pass it (no need to extract it) with --voc_path")

    def _folder_root(self) -> str:
        for root in (self.path, self.path / "VOC2007", self.path / "VOCdevkit" / "VOC2007"):
            if (root / "Annotations").is_dir():
                return str(root) + "/"
        raise UserError(f"{self.path} holds no VOC2007/Annotations folder (pass the VOCdevkit "
                        f"folder or the VOC tar with --voc_path)")

    def _open_tar(self) -> str:
        try:
            self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115 (closed by close())
            self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
        except tarfile.ReadError:
            raise UserError(f"cannot read the VOC tar {self.path}: not a tar file, or a "
                            f"damaged one") from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UserError(f"cannot read the VOC tar {self.path}: {reason(exc)}") from None
        for name in self._members:
            if "/Annotations/" in name and name.endswith(".xml"):
                return name[:name.index("Annotations/")]
        raise UserError(f"{self.path} holds no VOC annotations (*/Annotations/*.xml)")

    def _read(self, relative: str) -> bytes:
        name = self._root + relative
        if self._tar is None:
            try:
                return Path(name).read_bytes()
            except OSError:
                raise UserError(f"{name} is missing from the VOC folder") from None
        if name not in self._members:
            raise UserError(f"{self.path} has no member {name}")
        return self._tar.extractfile(self._members[name]).read()

    def _exists(self, relative: str) -> bool:
        name = self._root + relative
        return Path(name).is_file() if self._tar is None else name in self._members

    def ids(self) -> list[str]:
        """Image ids in ``ImageSets/Main/test.txt`` order (each once), else every annotation's,
        sorted."""
        if self._ids is None:
            self._ids = self._listed() if self._exists(TEST_LIST) else self._annotated()
        return list(self._ids)

    def _annotated(self) -> list[str]:
        if self._tar is None:
            return sorted(p.stem for p in Path(self._root, "Annotations").glob("*.xml"))
        prefix = self._root + "Annotations/"
        return sorted(Path(n).stem for n in self._members
                      if n.startswith(prefix) and n.endswith(".xml"))

    def _listed(self) -> list[str]:
        where = f"{self.path}:{TEST_LIST}"
        raw = self._read(TEST_LIST)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise UserError(f"{where} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
                            f"{exc.start})") from None
        ids: list[str] = []
        lines: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), 1):
            image_id = line.strip()
            if not image_id:
                continue
            if not _IMAGE_ID.fullmatch(image_id) or image_id in (".", ".."):
                raise UserError(f"{where} line {number}: {image_id!r} is not an image id (an id "
                                f"names JPEGImages/ID.jpg and Annotations/ID.xml inside the "
                                f"set: no folders, no '..')")
            if image_id in lines:
                self.duplicate_ids += 1
                continue
            lines[image_id] = number
            ids.append(image_id)
        missing = [i for i in ids if not (self._exists(f"Annotations/{i}.xml") and (
            self._exists(f"JPEGImages/{i}.jpg") or self._exists(f"JPEGImages/{i}.png")))]
        if missing:
            raise UserError(f"{where} lists {len(missing)} id{'s' * (len(missing) > 1)} without "
                            f"an annotation or an image in the set, e.g. {missing[0]} "
                            f"(line {lines[missing[0]]})")
        if self.duplicate_ids:
            note(f"{where} lists {self.duplicate_ids} id{'s' * (self.duplicate_ids > 1)} more "
                 f"than once; each image is scored once")
        return ids

    def image(self, image_id: str) -> np.ndarray:
        """The image as RGB uint8 ``[H, W, 3]``."""
        relative = f"JPEGImages/{image_id}.jpg"
        if not self._exists(relative) and self._exists(f"JPEGImages/{image_id}.png"):
            relative = f"JPEGImages/{image_id}.png"
        image = open_image(io.BytesIO(self._read(relative)), name=f"{self.path}:{relative}")
        self._sizes[image_id] = image.size
        return np.array(image.convert("RGB"))

    def annotation(self, image_id: str) -> VOCAnnotation:
        """The ground truth of ``image_id``, boxes checked against its image's size (once the
        image was read, else the annotation's own ``<size>``)."""
        relative = f"Annotations/{image_id}.xml"
        truth = parse_voc_annotation(self._read(relative), f"{self.path}:{relative}",
                                     self.classes, self._sizes.get(image_id))
        for problem, what in truth.left_out:
            shown = sum(self.left_out.values())
            if shown < NOTES_SHOWN:
                note(f"{image_id}: {what} {LEFT_OUT[problem]}; left out of the ground truth")
            elif shown == NOTES_SHOWN:
                note("more objects are left out of the ground truth; the summary counts them")
            self.left_out[problem] += 1
            if problem == "unknown_class":
                self.unknown_classes[what[what.index("('") + 2:what.rindex("')")]] += 1
        return truth

    def problems(self) -> dict:
        """What was left out of the ground truth and why, for the run's summary
        (``voc_metrics.json``): objects by reason, unknown class names, repeated ids."""
        return {"objects_left_out": sum(self.left_out.values()),
                "objects_left_out_by_reason": {k: self.left_out[k] for k in LEFT_OUT},
                "unknown_classes": dict(self.unknown_classes),
                "duplicate_ids_scored_once": self.duplicate_ids}

    def summary_note(self) -> str | None:
        """One line saying how many objects were left out and why, or None."""
        total = sum(self.left_out.values())
        if not total:
            return None
        parts = [f"{n} {LEFT_OUT[k]}" for k, n in self.left_out.items()]
        if self.unknown_classes:
            parts[list(self.left_out).index("unknown_class")] += " (" + ", ".join(
                f"{name or '(no name)'} x{n}" for name, n in self.unknown_classes.items()) + ")"
        return (f"{total} annotated object{'s' * (total > 1)} left out of the ground truth of "
                f"{self.path.name}: {'; '.join(parts)}")

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close()
        if kind is None and (line := self.summary_note()):
            note(line)


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


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion (None for ``n == 0``)."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(values: Sequence[float], z: float = 1.96) -> tuple[float, float] | None:
    """Normal-approximation 95% interval of a mean (None without values)."""
    n = len(values)
    if n == 0:
        return None
    mean = float(np.mean(values))
    half = z * float(np.std(values, ddof=1)) / math.sqrt(n) if n > 1 else 0.0
    return mean - half, mean + half


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
               "pointing_game_ci95": wilson_interval(sum(self.hits), n),
               "energy_in_box": float(np.mean(self.energy)) if n else None,
               "energy_in_box_ci95": mean_interval(self.energy), "detections": n,
               "discrimination": {}}
        for kind in self.KINDS:
            peaks, energies = self.peak_wins[kind], self.energy_wins[kind]
            m = len(peaks)
            out["discrimination"][kind] = {
                "detections": m,
                "peak_in_own_box": sum(peaks) / m if m else None,
                "peak_in_own_box_ci95": wilson_interval(sum(peaks), m),
                "energy_in_own_box": sum(energies) / m if m else None,
                "energy_in_own_box_ci95": wilson_interval(sum(energies), m)}
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
                "map_classes": len(defined), "explained_detections": self.explained,
                "matched_detections": self.matched,
                "layers": {layer: t.summary() for layer, t in self.layers.items()},
                "baselines": {**{name: t.summary() for name, t in self.baselines.items()},
                              "other_detection": {layer: t.summary() for layer, t in
                                                  self.other_detection.items()}}}


VOCScore = DetectionScore


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
