"""PASCAL VOC reading: images, annotations and the list of a set's ids (the metrics are in
``detmetrics.py``).

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
from typing import Self

import numpy as np
import torch

import outputs
from data import open_image
from errors import ParamError, UserError, note, reason

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
            raise ParamError("path", f"{{param}} {self.path} is {kind}, not a VOC tar or folder")
        else:
            raise ParamError("path", f"VOC 2007 test not found at {self.path}: download {VOC_URL} "
                                     f"and pass it (no need to extract it) as {{param}}")

    def _folder_root(self) -> str:
        for root in (self.path, self.path / "VOC2007", self.path / "VOCdevkit" / "VOC2007"):
            if (root / "Annotations").is_dir():
                return str(root) + "/"
        raise ParamError("path", f"{self.path} holds no VOC2007/Annotations folder (pass the "
                                 f"VOCdevkit folder or the VOC tar as {{param}})")

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
