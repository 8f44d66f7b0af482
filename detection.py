"""Faster R-CNN detections explained with Grad-CAM, on one image or on PASCAL VOC 2007 test.

The detector is torchvision's ``fasterrcnn_resnet50_fpn`` with its COCO weights. Every
detection with a score of at least ``--det_score_thresh`` (at most ``--det_max`` per image,
highest scores first) gets its own Grad-CAM heatmap, all of them from one forward pass:

* the explained score is the class logit of the proposal the detection came from (Grad-CAM's
  pre-softmax score). The softmax probability that torchvision reports saturates for confident
  detections (it is exactly 1.0 in float32 beyond a logit margin of about 17), and its gradient
  then loses the class's own evidence;
* the second stage (RoI pooling, box head, classifier) is run again on the explained proposals
  only, from the features of the one forward pass, so each backward pass goes through a few
  rows instead of all 1000 proposals. Gradients are taken with ``torch.autograd.grad`` with
  respect to the captured activations only; the parameters are frozen while the graph is
  built, so no weight gradient exists to compute;
* the detector resizes its input and pads it at the bottom and right to a multiple of 32; a
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
import json
import math
import os
import tarfile
import xml.etree.ElementTree as ET
from argparse import Namespace
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self
from urllib.error import URLError

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import box_iou, clip_boxes_to_image
from tqdm import tqdm

from cam import capture_activation, normalize_heatmaps, resolve_layer
from data import open_image
from errors import UserError, reason
from gradcam import GradCAM
from model import read_checkpoint
from runtime import eval_mode
from visualize import overlay, save_rgb, slug

COCO_WEIGHTS = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
WEIGHTS_FILE = COCO_WEIGHTS.url.rsplit("/", 1)[-1]  # fasterrcnn_resnet50_fpn_coco-258fb6c6.pth
COCO_CLASSES: tuple[str, ...] = tuple(COCO_WEIGHTS.meta["categories"])
LAYERS = ("layer2", "layer3", "layer4")
DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE = 800, 1333  # torchvision's detector input size

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
COCO_TO_VOC_NAMES = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa",
                     "potted plant": "pottedplant", "dining table": "diningtable",
                     "tv": "tvmonitor"}
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar"

AP_SCORE_THRESH = 0.05  # detections kept for AP: torchvision's (and the usual) evaluation floor
IOU_THRESH = 0.5
POINTING_TOLERANCE = 15.0  # pixels, as in the pointing game of Zhang et al. (2016)


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


def _load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning a mismatch into one line that says what does not fit."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches are raised even when strict=False
        lines = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        detail = lines[0][:160] if lines else reason(exc, 160)
        raise UserError(f"{source} do not fit Faster R-CNN ResNet-50 FPN with 91 COCO classes "
                        f"({detail})") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        example = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise UserError(f"{source} do not fit Faster R-CNN ResNet-50 FPN ({len(missing)} missing "
                        f"and {len(unexpected)} unexpected weights, e.g. {example})")


def coco_state_dict() -> tuple[dict[str, torch.Tensor], str]:
    """The COCO weights from torch's hub cache, downloaded there when missing."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        hash_prefix = torch.hub.HASH_REGEX.search(WEIGHTS_FILE).group(1)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(COCO_WEIGHTS.url, str(path), hash_prefix)
        except (URLError, OSError, RuntimeError) as exc:
            raise UserError(f"the COCO detector weights {WEIGHTS_FILE} are not in {folder} and "
                            f"downloading them from {COCO_WEIGHTS.url} failed ({reason(exc, 100)}); "
                            f"put the file in {folder} or pass --det_weights PATH") from None
    return read_checkpoint(path)["model_state_dict"], f"weights {path}"


def load_detector(weights: str | None, device: torch.device, min_size: int = DEFAULT_MIN_SIZE,
                  score_thresh: float = AP_SCORE_THRESH) -> FasterRCNN:
    """The detector with ``weights`` (a state-dict file) or the COCO weights, on ``device``."""
    if weights is None:
        state, source = coco_state_dict()
    else:
        if not Path(weights).is_file():
            raise UserError(f"detector weights not found: {weights}")
        state, source = read_checkpoint(weights)["model_state_dict"], f"weights {weights}"
    return build_detector(state, min_size=min_size, score_thresh=score_thresh,
                          source=source).to(device)


def parse_layers(spec: str) -> list[str]:
    """``layer4`` or ``layer2,layer4`` -> checked layer names, in order, without repeats."""
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    unknown = [n for n in names if n not in LAYERS]
    if unknown or not names:
        raise UserError(f"--det_layer: unknown layer '{','.join(unknown) or spec}' (choose from "
                        f"{', '.join(LAYERS)}, or a comma list)")
    return names


# --------------------------------------------------------------------------------------------
# Grad-CAM for every detection


@dataclass
class DetectionResult:
    """One image's detections and the heatmaps of those that were explained.

    ``boxes`` ``[M, 4]`` (original pixel coordinates), ``labels`` ``[M]`` (COCO) and ``scores``
    ``[M]`` hold every detection the detector returned, highest score first; ``explained``
    ``[N]`` indexes the explained ones, and ``heatmaps[layer]`` is ``[N, H, W]`` in ``[0, 1]``
    at the original image size. All on the CPU.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    explained: torch.Tensor
    heatmaps: dict[str, torch.Tensor]


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


def detector_pass(model: FasterRCNN, image: torch.Tensor, layers: Sequence[str],
                  score_thresh: float, max_explained: int,
                  allowed: Collection[int] | None) -> DetectorPass:
    """One detector pass that keeps the activations and the explained detections' logits.

    Hooks, train/eval flags and ``requires_grad`` are restored when it returns or raises; the
    graph from the activations to the logits stays alive in the result.
    """
    modules = [resolve_layer(model, f"backbone.body.{name}") for name in layers]
    with eval_mode(model), _frozen(model), contextlib.ExitStack() as stack, torch.enable_grad():
        captures = [stack.enter_context(capture_activation(m)) for m in modules]
        batch, _ = model.transform([image])
        sizes = batch.image_sizes
        features = model.backbone(batch.tensors)
        with torch.no_grad():
            proposals, _ = model.rpn(batch, features)
            logits, regression = _second_stage(model.roi_heads, features, proposals, sizes)
            (boxes,), (scores,), (labels,) = model.roi_heads.postprocess_detections(
                logits, regression, proposals, sizes)
            explained = _select(scores, labels, score_thresh, max_explained, allowed)
            rows = _source_rows(model.roi_heads, logits, regression, proposals[0], sizes[0],
                                boxes[explained], scores[explained], labels[explained])
        targets = boxes.new_zeros(0)
        if len(explained):
            own_logits, _ = _second_stage(model.roi_heads, features, [proposals[0][rows]], sizes)
            targets = own_logits.gather(1, labels[explained][:, None])[:, 0]
        original = tuple(image.shape[-2:])
        boxes = model.transform.postprocess([{"boxes": boxes}], sizes, [original])[0]["boxes"]
    return DetectorPass([c.activation for c in captures], targets, boxes, labels, scores,
                        explained, tuple(sizes[0]), tuple(batch.tensors.shape[-2:]), original)


def gradcam_maps(state: DetectorPass) -> list[torch.Tensor]:
    """Raw Grad-CAM maps per layer, ``[N, h, w]``: one backward pass per detection.

    A loop of ``autograd.grad(..., retain_graph=True)`` rather than ``is_grads_batched``: the
    benchmark finds them equally fast on a CPU, and the loop never holds N gradients at once.
    The graph is freed by the last one.
    """
    n = len(state.targets)
    maps: list[list[torch.Tensor]] = [[] for _ in state.activations]
    for i in range(n):
        grads = torch.autograd.grad(state.targets[i], state.activations, retain_graph=i < n - 1)
        for per_layer, activation, grad in zip(maps, state.activations, grads):
            weights = GradCAM.channel_weights(activation, grad)
            per_layer.append(torch.einsum("bk,bkhw->hw", weights, activation.detach()))
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


def explain_detections(model: FasterRCNN, image: torch.Tensor, layers: Sequence[str] = ("layer4",),
                       score_thresh: float = 0.5, max_explained: int = 20,
                       allowed: Collection[int] | None = None) -> DetectionResult:
    """Detect objects in ``image`` (``[3, H, W]`` in [0, 1], on the model's device) and give each
    detection with ``score >= score_thresh`` and a label in ``allowed`` (any when None) its own
    Grad-CAM heatmap per layer, at most ``max_explained`` of them, from one forward pass.

    The model is left as it was found: train/eval flags, ``requires_grad`` and no hooks.
    """
    state = detector_pass(model, image, layers, score_thresh, max_explained, allowed)
    heatmaps = {layer: fit_to_image(raw, state.resized, state.padded, state.original).cpu()
                for layer, raw in zip(layers, gradcam_maps(state))}
    return DetectionResult(state.boxes.detach().cpu(), state.labels.cpu(), state.scores.cpu(),
                           state.explained.cpu(), heatmaps)


# --------------------------------------------------------------------------------------------
# Images


def read_image(source: str | os.PathLike | io.BytesIO, name: str | None = None) -> np.ndarray:
    """An image file (or bytes) as an RGB uint8 array ``[H, W, 3]``; any PIL mode is converted
    (grayscale, RGBA, palette), and EXIF orientation is applied as a viewer would."""
    return np.array(open_image(source, name).convert("RGB"))


def to_tensor(image_rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """RGB uint8 ``[H, W, 3]`` -> float ``[3, H, W]`` in [0, 1] on ``device``."""
    return torch.from_numpy(image_rgb).to(device).permute(2, 0, 1).float().div(255)


# --------------------------------------------------------------------------------------------
# Panels

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (0, 160, 160), (240, 50, 230), (128, 128, 0), (170, 110, 40), (0, 0, 128))
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _text_scale(image: np.ndarray) -> float:
    return max(0.4, min(image.shape[:2]) / 700)


def draw_box(image: np.ndarray, box: Sequence[float], text: str, color: tuple[int, int, int]
             ) -> None:
    """Draw ``box`` with a filled label ``text`` on ``image`` (RGB uint8), in place."""
    h, w = image.shape[:2]
    thickness = max(2, round(min(h, w) / 250))
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
    scale = _text_scale(image)
    (tw, th), base = cv2.getTextSize(text, _FONT, scale, 1)
    top = y1 - th - base - 2 if y1 - th - base - 2 >= 0 else y1 + thickness
    cv2.rectangle(image, (x1, top), (x1 + tw + 4, top + th + base + 2), color, -1)
    cv2.putText(image, text, (x1 + 2, top + th + 1), _FONT, scale, (255, 255, 255), 1,
                cv2.LINE_AA)


def _titled(image: np.ndarray, title: str) -> np.ndarray:
    scale = _text_scale(image)
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, 1)  # one height for every title
    strip = np.full((th + base + 10, image.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, title, (4, th + 5), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def _side_by_side(panels: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    spacer = np.full((panels[0].shape[0], gap, 3), 255, dtype=np.uint8)
    parts = [p for panel in panels for p in (panel, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def _caption(names: dict[int, str], label: int, score: float) -> str:
    return f"{names.get(label, str(label))} {score:.2f}"


def detection_panel(image_rgb: np.ndarray, result: DetectionResult, layer: str,
                    names: dict[int, str]) -> np.ndarray:
    """``original | Grad-CAM overlay | boxes with class and score`` for the explained detections.

    The overlay shows the pixel-wise maximum of the detections' own heatmaps.
    """
    heat = result.heatmaps[layer].amax(0).numpy()
    boxes = image_rgb.copy()
    for index in result.explained.tolist():
        label = int(result.labels[index])
        draw_box(boxes, result.boxes[index].tolist(),
                 _caption(names, label, float(result.scores[index])),
                 _PALETTE[label % len(_PALETTE)])
    n = len(result.explained)
    return _side_by_side([_titled(image_rgb, "original"),
                          _titled(overlay(image_rgb, heat), f"Grad-CAM {layer}, max of {n}"),
                          _titled(boxes, f"{n} detection{'s' * (n != 1)}")])


def box_panel(image_rgb: np.ndarray, result: DetectionResult, rank: int, layer: str,
              names: dict[int, str]) -> np.ndarray:
    """One explained detection: its own heatmap with its box."""
    index = int(result.explained[rank])
    label = int(result.labels[index])
    caption = _caption(names, label, float(result.scores[index]))
    panel = overlay(image_rgb, result.heatmaps[layer][rank].numpy())
    draw_box(panel, result.boxes[index].tolist(), caption, _PALETTE[label % len(_PALETTE)])
    return _titled(panel, f"#{rank + 1} {caption}, Grad-CAM {layer}")


def save_panels(image_rgb: np.ndarray, result: DetectionResult, stem: str, folder: Path,
                names: dict[int, str], per_box: bool) -> list[Path]:
    """``<stem>_gradcam_<layer>.png`` per layer and, with ``per_box``,
    ``<stem>_<layer>_boxes/<rank>_<class>.png`` per detection; returns the main panels."""
    written = []
    for layer in result.heatmaps:
        path = folder / f"{stem}_gradcam_{layer}.png"
        save_rgb(detection_panel(image_rgb, result, layer, names), path)
        written.append(path)
        if per_box:
            for rank, index in enumerate(result.explained.tolist()):
                name = slug(names.get(int(result.labels[index]), "x"))
                save_rgb(box_panel(image_rgb, result, rank, layer, names),
                         folder / f"{stem}_{layer}_boxes" / f"{rank + 1:02d}_{name}.png")
    return written


# --------------------------------------------------------------------------------------------
# PASCAL VOC 2007


@dataclass
class VOCAnnotation:
    """Ground truth of one image: ``boxes`` ``[G, 4]`` (continuous pixel coordinates),
    ``labels`` ``[G]`` (VOC class indices), ``difficult`` ``[G]`` bool."""

    boxes: torch.Tensor
    labels: torch.Tensor
    difficult: torch.Tensor


def parse_voc_annotation(xml: bytes, name: str) -> VOCAnnotation:
    """A VOC XML annotation; objects of classes outside VOC's 20 are left out."""
    boxes, labels, difficult = [], [], []
    try:
        for obj in ET.fromstring(xml).iter("object"):
            cls = (obj.findtext("name") or "").strip()
            if cls not in VOC_CLASSES:
                continue
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in
                                      ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
            labels.append(VOC_CLASSES.index(cls))
            difficult.append(int((obj.findtext("difficult") or "0").strip() or 0) == 1)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as exc:
        raise UserError(f"annotation {name} is not valid VOC XML ({exc})") from None
    return VOCAnnotation(torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
                         torch.tensor(labels, dtype=torch.long),
                         torch.tensor(difficult, dtype=torch.bool))


class VOCReader:
    """VOC 2007 images and annotations, read straight from ``VOCtest_06-Nov-2007.tar`` (random
    access by member name, nothing extracted) or from an extracted ``VOCdevkit`` folder."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
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
        return read_image(io.BytesIO(self._read(relative)), name=f"{self.path}:{relative}")

    def annotation(self, image_id: str) -> VOCAnnotation:
        relative = f"Annotations/{image_id}.xml"
        return parse_voc_annotation(self._read(relative), f"{self.path}:{relative}")

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


def pointing_hit(heatmap: torch.Tensor, box: Sequence[float],
                 tolerance: float = POINTING_TOLERANCE) -> bool:
    """Pointing game: the heatmap's maximum (the first, at the pixel's centre) lies in ``box``
    or within ``tolerance`` pixels of it. An all-zero heatmap points nowhere: a miss."""
    if float(heatmap.max()) <= 0:
        return False
    row, col = divmod(int(heatmap.argmax()), heatmap.shape[1])
    x, y = col + 0.5, row + 0.5
    x1, y1, x2, y2 = (float(v) for v in box)
    dx, dy = max(x1 - x, 0.0, x - x2), max(y1 - y, 0.0, y - y2)
    return math.hypot(dx, dy) <= tolerance


def energy_in_box(heatmap: torch.Tensor, box: Sequence[float]) -> float:
    """Share of the heatmap's mass on pixels whose centres lie in ``box`` (0 for a zero map)."""
    total = float(heatmap.sum())
    if total <= 0:
        return 0.0
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = heatmap.shape
    rows = slice(max(0, math.ceil(y1 - 0.5)), min(h, math.floor(y2 - 0.5) + 1))
    cols = slice(max(0, math.ceil(x1 - 0.5)), min(w, math.floor(x2 - 0.5) + 1))
    return float(heatmap[rows, cols].sum()) / total


class VOCScore:
    """Gathers detections and explanation scores over images, then AP and per-layer means."""

    def __init__(self, layers: Sequence[str]):
        self.detections: list[list[tuple[str, float, torch.Tensor]]] = [[] for _ in VOC_CLASSES]
        self.ground_truth: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = [
            {} for _ in VOC_CLASSES]
        self.explained = 0
        self.matched = 0
        self.hits = {layer: 0 for layer in layers}
        self.energy = {layer: 0.0 for layer in layers}

    def add(self, image_id: str, truth: VOCAnnotation, result: DetectionResult,
            to_voc: dict[int, int]) -> None:
        """One image: its ground truth, all its (VOC-mapped) detections, its explanations."""
        for c in range(len(VOC_CLASSES)):
            mine = truth.labels == c
            if mine.any():
                self.ground_truth[c][image_id] = (truth.boxes[mine], truth.difficult[mine])
        for box, label, score in zip(result.boxes, result.labels.tolist(), result.scores.tolist()):
            if label in to_voc:
                self.detections[to_voc[label]].append((image_id, score, box))
        for rank, index in enumerate(result.explained.tolist()):
            self.explained += 1
            c = to_voc[int(result.labels[index])]
            gt_boxes = truth.boxes[truth.labels == c]
            j, iou = best_match(result.boxes[index], gt_boxes)
            if j < 0 or iou < IOU_THRESH:
                continue
            self.matched += 1
            for layer, maps in result.heatmaps.items():
                self.hits[layer] += pointing_hit(maps[rank], gt_boxes[j].tolist())
                self.energy[layer] += energy_in_box(maps[rank], gt_boxes[j].tolist())

    def summary(self) -> dict:
        """AP per class (None without ground truth), their mean, and per-layer means."""
        ap = {name: average_precision(self.detections[c], self.ground_truth[c])
              for c, name in enumerate(VOC_CLASSES)}
        defined = [v for v in ap.values() if v is not None]
        n = self.matched
        layers = {layer: {"pointing_game": self.hits[layer] / n if n else None,
                          "energy_in_box": self.energy[layer] / n if n else None}
                  for layer in self.hits}
        return {"ap": ap, "map": sum(defined) / len(defined) if defined else None,
                "map_classes": len(defined), "explained_detections": self.explained,
                "matched_detections": n, "layers": layers}


def _fmt(value: float | None) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def format_table(summary: dict) -> str:
    """The numbers as a text table."""
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
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def explain_image(model: FasterRCNN, image: np.ndarray, path: str, layers: Sequence[str],
                  args: Namespace, device: torch.device) -> int:
    """``--det_img PATH``: panels for one image (RGB ``image``, read from ``path``) with COCO
    class names.

    An image without detections is not an error (the detector's answer is "nothing here"):
    one line says so and the exit status is 0.
    """
    result = explain_detections(model, to_tensor(image, device), layers, args.det_score_thresh,
                                args.det_max)
    names = dict(enumerate(COCO_CLASSES))
    if len(result.explained) == 0:
        best = (f"; best score {float(result.scores[0]):.2f} "
                f"({names[int(result.labels[0])]})" if len(result.scores) else "")
        print(f"{path}: no detection with score >= {args.det_score_thresh:.2f}{best}; "
              f"nothing to explain")
        return 0
    found = ", ".join(_caption(names, int(result.labels[i]), float(result.scores[i]))
                      for i in result.explained.tolist())
    n = len(result.explained)
    print(f"{path}: {n} detection{'s' * (n != 1)} explained: {found}")
    folder = Path(args.out_dir) / "detection"
    for written in save_panels(image, result, slug(Path(path).stem), folder, names,
                               args.det_per_box):
        print(f"wrote {written}")
    return 0


def run_voc(model: FasterRCNN, reader: VOCReader, layers: Sequence[str], args: Namespace,
            device: torch.device) -> int:
    """VOC 2007 test: panels for the first ``--det_num`` images, then AP and explanation scores,
    printed and saved as ``voc_metrics.json``."""
    to_voc = coco_to_voc()
    names = {label: VOC_CLASSES[c] for label, c in to_voc.items()}
    folder = Path(args.out_dir) / "detection"
    ids = reader.ids()[:args.det_num]
    score = VOCScore(layers)
    skipped = []
    for image_id in tqdm(ids, desc="VOC 2007 test", unit="image"):
        image, truth = reader.image(image_id), reader.annotation(image_id)
        result = explain_detections(model, to_tensor(image, device), layers,
                                    args.det_score_thresh, args.det_max, allowed=to_voc)
        score.add(image_id, truth, result, to_voc)
        if len(result.explained) == 0:
            tqdm.write(f"{image_id}: no VOC-class detection with score >= "
                       f"{args.det_score_thresh:.2f}; skipped")
            skipped.append(image_id)
            continue
        save_panels(image, result, slug(image_id), folder, names, args.det_per_box)
    summary = score.summary()
    print(f"VOC 2007 test, {len(ids)} images ({len(skipped)} without detections), "
          f"COCO Faster R-CNN mapped to the VOC classes")
    print(format_table(summary))
    report = {"voc_path": str(reader.path), "images": len(ids),
              "images_without_detections": skipped,
              "score_thresh": args.det_score_thresh, "max_explained_per_image": args.det_max,
              "detector_min_size": args.det_min_size, "weights": args.det_weights or WEIGHTS_FILE,
              "ap_iou": IOU_THRESH, "ap_method": "VOC2007 11-point, difficult objects ignored, "
                                                 f"detections with score > {_score_floor(args)}",
              "pointing_tolerance_px": POINTING_TOLERANCE,
              "higher_is_better": {"ap": True, "pointing_game": True, "energy_in_box": True},
              **summary}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "voc_metrics.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


def _score_floor(args: Namespace) -> float:
    """The detector's own score threshold: the AP floor, or lower when the user explains less
    confident detections."""
    return min(AP_SCORE_THRESH, args.det_score_thresh)


def _check_flags(args: Namespace) -> None:
    if not 0.0 <= args.det_score_thresh <= 1.0:
        raise UserError("--det_score_thresh must be between 0 and 1")
    if args.det_min_size < 32:
        raise UserError("--det_min_size must be at least 32")


def run(args: Namespace, device: torch.device) -> int:
    """``--det_vis``: explain one image (``--det_img``) or VOC 2007 test (``--voc_path``)."""
    layers = parse_layers(args.det_layer)
    _check_flags(args)
    score_floor = _score_floor(args)
    if args.det_img:
        image = read_image(args.det_img)  # a bad image fails before the weights are loaded
        model = load_detector(args.det_weights, device, args.det_min_size, score_floor)
        return explain_image(model, image, args.det_img, layers, args, device)
    with VOCReader(args.voc_path) as reader:
        model = load_detector(args.det_weights, device, args.det_min_size, score_floor)
        return run_voc(model, reader, layers, args, device)
