"""Multi-object scenes made of Fashion-MNIST garments, for training and testing the detector.

A scene is a black square canvas with 1 to 5 garments, each scaled, optionally mirrored and
pasted where it overlaps the garments already there only a little; some scenes hold two or more
garments of the same class on purpose, so that explanations must tell them apart. Each
ground-truth box is tight around the pixels of its garment that stay visible (a later garment
covers an earlier one where its own pixels are not black).

Everything is a pure function of a seed, so the same seed gives the same scenes bit for bit.
Training scenes are drawn from the train split only, test scenes from the test split only
(the one that ships in ``data/``); the test scenes are written in the PASCAL VOC layout that
``voc.py`` reads.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

import outputs
from data import DATASETS, load_fashion_mnist

CLASSES: tuple[str, ...] = DATASETS["fashion_mnist"].classes
CANVAS = 128
MAX_GARMENTS = 5
SCALE_RANGE = (0.8, 2.0)
MAX_IOU = 0.2          # a new garment's box may overlap an earlier one's at most this much
SAME_CLASS_SHARE = 0.3  # scenes that hold at least two garments of one class on purpose
VISIBLE = 8            # pixel values below this (resampling fringe) count as background
PLACEMENT_TRIES = 30
# Pixel statistics of the scenes (mostly black canvas), measured on 1000 training scenes with
# seed 0; the detector normalizes its input with them.
PIXEL_MEAN, PIXEL_STD = 0.0710, 0.2099


@dataclass
class Scene:
    """One scene: ``image`` grey uint8 ``[S, S]``; ``boxes`` float ``[G, 4]`` in continuous
    pixel coordinates ``(x1, y1, x2, y2)`` (pixel column ``i`` covers ``[i, i + 1)``);
    ``labels`` ``[G]`` Fashion-MNIST class indices; ``sources`` ``[G]`` indices of the
    garments in their split."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    sources: np.ndarray


def garment_pool(data_dir: str | os.PathLike, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """The 28x28 uint8 images and labels of one Fashion-MNIST split (without the padding that
    the classifier's loader adds)."""
    split = load_fashion_mnist(data_dir, train=train)
    pad = split.info.pad
    images = split.images[:, 0, pad:split.images.shape[2] - pad, pad:split.images.shape[3] - pad]
    return images.numpy(), split.labels.numpy()


def _garment(image: np.ndarray, scale: float, mirror: bool) -> np.ndarray:
    """The garment resized by ``scale``, mirrored, fringe zeroed, cropped to its pixels."""
    side = max(4, round(image.shape[0] * scale))
    patch = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
    if mirror:
        patch = patch[:, ::-1]
    patch = np.where(patch >= VISIBLE, patch, 0).astype(np.uint8)
    rows, cols = np.nonzero(patch)
    if len(rows) == 0:
        return patch[:0, :0]
    return patch[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area(box) + area(boxes) - inter)


def make_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray,
               canvas: int = CANVAS) -> Scene:
    """One scene drawn with ``rng`` from the garments ``images`` / ``labels``."""
    count = int(rng.integers(1, MAX_GARMENTS + 1))
    if count >= 2 and rng.random() < SAME_CLASS_SHARE:
        same = int(rng.integers(len(CLASSES)))
        pool = np.flatnonzero(labels == same)
        picks = list(rng.choice(pool, size=2, replace=False))
        picks += list(rng.integers(len(labels), size=count - 2))
    else:
        picks = list(rng.integers(len(labels), size=count))
    image = np.zeros((canvas, canvas), np.uint8)
    owner = np.full((canvas, canvas), -1, np.int64)
    placed_boxes: list[np.ndarray] = []
    placed: list[int] = []
    for source in picks:
        scale = float(np.exp(rng.uniform(*np.log(SCALE_RANGE))))
        patch = _garment(images[source], scale, bool(rng.random() < 0.5))
        h, w = patch.shape
        if h == 0 or h > canvas or w > canvas:
            continue
        for _ in range(PLACEMENT_TRIES):
            y, x = int(rng.integers(canvas - h + 1)), int(rng.integers(canvas - w + 1))
            box = np.array([x, y, x + w, y + h], np.float64)
            if not placed_boxes or _iou(box, np.stack(placed_boxes)).max() <= MAX_IOU:
                break
        else:
            continue
        mask = patch > 0
        image[y:y + h, x:x + w][mask] = patch[mask]
        owner[y:y + h, x:x + w][mask] = len(placed)
        placed_boxes.append(box)
        placed.append(int(source))
    boxes, keep = [], []
    for i in range(len(placed)):
        rows, cols = np.nonzero(owner == i)
        if len(rows) == 0:
            continue
        boxes.append((cols.min(), rows.min(), cols.max() + 1, rows.max() + 1))
        keep.append(placed[i])
    sources = np.array(keep, np.int64)
    return Scene(image, np.array(boxes, np.float32).reshape(-1, 4), labels[sources].astype(np.int64),
                 sources)


def scene_stream(images: np.ndarray, labels: np.ndarray, key: tuple[int, ...], count: int,
                 canvas: int = CANVAS) -> Iterator[Scene]:
    """``count`` scenes, the ``i``-th drawn from its own generator seeded by ``(*key, i)``, so
    any scene can be remade alone and the stream is the same however it is consumed."""
    for i in range(count):
        yield make_scene(np.random.default_rng((*key, i)), images, labels, canvas)


def scene_batch(scenes: list[Scene], device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    """Scenes as the detector's inputs: ``[3, S, S]`` float images in [0, 1] and targets with
    ``boxes`` and ``labels`` (class index + 1, since 0 is the background)."""
    images = [torch.from_numpy(s.image).to(device).float().div(255).expand(3, -1, -1)
              for s in scenes]
    targets = [{"boxes": torch.from_numpy(s.boxes).to(device),
                "labels": torch.from_numpy(s.labels + 1).to(device)} for s in scenes]
    return images, targets


# --------------------------------------------------------------------------------------------
# PASCAL VOC layout


def annotation_xml(image_id: str, scene: Scene) -> bytes:
    """The scene's VOC annotation: 1-based inclusive pixel boxes, ``difficult`` 0."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "FashionScenes"
    ET.SubElement(root, "filename").text = f"{image_id}.png"
    size = ET.SubElement(root, "size")
    for key, value in (("width", scene.image.shape[1]), ("height", scene.image.shape[0]),
                       ("depth", 1)):
        ET.SubElement(size, key).text = str(value)
    for box, label in zip(scene.boxes, scene.labels):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASSES[int(label)]
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        x1, y1, x2, y2 = (int(v) for v in box)
        for key, value in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
            ET.SubElement(bndbox, key).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8")


def write_voc(folder: str | os.PathLike, scenes: list[Scene]) -> Path:
    """Write ``scenes`` as ``JPEGImages/<id>.png`` (lossless grey PNG), ``Annotations/<id>.xml``
    and ``ImageSets/Main/test.txt`` under ``folder``; ids are ``000000``, ``000001``, ...

    Every file goes through ``outputs.atomic`` (whole or not at all, listed for the run), and
    the image list comes last: a full disk or a kill leaves no half file, and no list naming
    a scene that is not there."""
    folder = Path(folder)
    ids = [f"{i:06d}" for i in range(len(scenes))]
    for image_id, scene in zip(ids, scenes):
        ok, png = cv2.imencode(".png", scene.image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        assert ok, "OpenCV failed to encode a PNG"
        with outputs.atomic(folder / "JPEGImages" / f"{image_id}.png", fresh=True) as tmp:
            tmp.write_bytes(png.tobytes())
        with outputs.atomic(folder / "Annotations" / f"{image_id}.xml", fresh=True) as tmp:
            tmp.write_bytes(annotation_xml(image_id, scene))
    outputs.write_text(folder / "ImageSets" / "Main" / "test.txt", "".join(f"{i}\n" for i in ids))
    return folder
