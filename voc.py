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
import os
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import torch

from data import open_image
from errors import UserError, reason

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
    ``labels`` ``[G]`` (VOC class indices), ``difficult`` ``[G]`` bool."""

    boxes: torch.Tensor
    labels: torch.Tensor
    difficult: torch.Tensor


def parse_voc_annotation(xml: bytes, name: str, classes: Sequence[str] = VOC_CLASSES
                         ) -> VOCAnnotation:
    """A VOC XML annotation; objects of classes outside ``classes`` (VOC's 20 by default) are
    left out."""
    boxes, labels, difficult = [], [], []
    try:
        for obj in ET.fromstring(xml).iter("object"):
            cls = (obj.findtext("name") or "").strip()
            if cls not in classes:
                continue
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in
                                      ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
            labels.append(classes.index(cls))
            difficult.append(int((obj.findtext("difficult") or "0").strip() or 0) == 1)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise UserError(f"annotation {name} is not valid VOC XML ({exc})") from None
    return VOCAnnotation(torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                         torch.tensor(labels, dtype=torch.long),
                         torch.tensor(difficult, dtype=torch.bool))


class VOCReader:
    """VOC 2007 images and annotations, read straight from ``VOCtest_06-Nov-2007.tar`` (random
    access by member name, nothing extracted) or from an extracted ``VOCdevkit`` folder."""

    def __init__(self, path: str | os.PathLike, classes: Sequence[str] = VOC_CLASSES):
        self.path = Path(path)
        self.classes = tuple(classes)
        self._tar: tarfile.TarFile | None = None
        if self.path.is_dir():
            self._root = self._folder_root()
        elif self.path.is_file():
            self._root = self._open_tar()
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
        """Image ids in ``ImageSets/Main/test.txt`` order, else every annotation's, sorted."""
        if self._exists("ImageSets/Main/test.txt"):
            text = self._read("ImageSets/Main/test.txt").decode()
            return [line.strip() for line in text.splitlines() if line.strip()]
        if self._tar is None:
            return sorted(p.stem for p in Path(self._root, "Annotations").glob("*.xml"))
        prefix = self._root + "Annotations/"
        return sorted(Path(n).stem for n in self._members
                      if n.startswith(prefix) and n.endswith(".xml"))

    def image(self, image_id: str) -> np.ndarray:
        """The image as RGB uint8 ``[H, W, 3]``."""
        relative = f"JPEGImages/{image_id}.jpg"
        if not self._exists(relative) and self._exists(f"JPEGImages/{image_id}.png"):
            relative = f"JPEGImages/{image_id}.png"
        image = open_image(io.BytesIO(self._read(relative)), name=f"{self.path}:{relative}")
        return np.array(image.convert("RGB"))

    def annotation(self, image_id: str) -> VOCAnnotation:
        relative = f"Annotations/{image_id}.xml"
        return parse_voc_annotation(self._read(relative), f"{self.path}:{relative}", self.classes)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
