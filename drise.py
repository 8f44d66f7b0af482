"""D-RISE (Petsiuk et al., CVPR 2021, "Black-box explanation of object detectors via saliency
maps"): a map for every detection of an image from the detector's answers on randomly masked
copies of it, with no gradient and no layer.

* ``N`` masks as in RISE: a ``grid x grid`` binary grid (each cell kept with probability ``p``),
  upsampled bilinearly to ``(grid + 1)`` cells and cropped with a random shift of less than a
  cell, so that the kept regions have soft edges at every position.
* Each masked image (the image times its mask, black where hidden) goes through the detector.
  A mask's weight for a target detection ``t`` is the best similarity between ``t`` and the
  masked image's detections ``j``: ``IoU(L_t, L_j) * cos(P_t, P_j)``, with ``P_t`` the one-hot
  vector of ``t``'s class and ``P_j`` the class probabilities of ``j`` (background included),
  as the paper's Eq. 2 defines it; torchvision's two-stage detectors have no objectness score
  per detection, so its third factor is left out, as the paper does for Faster R-CNN. For the
  one-stage detectors ``P_j`` is the vector of scores at the anchor ``j`` came from: the
  softmax for SSD (background included), the per-class sigmoids for RetinaNet and FCOS; FCOS's
  centerness (its sigmoid) is the objectness factor, RetinaNet and SSD have none.
* The map of ``t`` is the weighted sum of the masks. One pass over the masks serves every
  detection of the image at once.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.fcos import FCOS
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou

import detheads
from cam import normalize_heatmaps
from detection import DetectionResult, DetectionTarget, MissTarget, explain
from errors import ParamError
from runtime import eval_mode

TITLE = "D-RISE"
LAYER = "input"     # the key of D-RISE's maps in a DetectionResult: it explains the input pixels
DEFAULT_MASKS = 1000
DEFAULT_GRID = 16    # cells per side of a mask
DEFAULT_KEEP = 0.5   # the share of cells a mask keeps
DEFAULT_BATCH = 16   # masked images per detector pass


@dataclass(frozen=True)
class DriseSettings:
    """D-RISE's settings: ``masks`` masked copies of the image, each a ``grid x grid`` grid of
    cells kept with probability ``keep``, sent through the detector ``batch_size`` at a time;
    the same ``seed`` draws the same masks."""

    masks: int = DEFAULT_MASKS
    grid: int = DEFAULT_GRID
    keep: float = DEFAULT_KEEP
    batch_size: int = DEFAULT_BATCH
    seed: int = 0

    def as_dict(self) -> dict:
        """The settings that decide the maps, as a run's summary records them."""
        return {"masks": self.masks, "grid": self.grid, "keep": self.keep, "seed": self.seed}


def rise_masks(n: int, size: tuple[int, int], grid: int = DEFAULT_GRID, keep: float = DEFAULT_KEEP,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` RISE masks ``[n, H, W]`` in ``[0, 1]`` for an image of ``size = (H, W)``."""
    if n < 1 or grid < 1 or not 0 < keep <= 1:
        raise ParamError("masks", "{param}: need n >= 1, grid >= 1 and 0 < keep <= 1")
    h, w = size
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    cells = (torch.rand(n, 1, grid, grid, generator=generator) < keep).float()
    up = F.interpolate(cells, size=((grid + 1) * cell_h, (grid + 1) * cell_w), mode="bilinear",
                       align_corners=False)[:, 0]
    dy = torch.randint(cell_h, (n,), generator=generator)
    dx = torch.randint(cell_w, (n,), generator=generator)
    rows = dy[:, None] + torch.arange(h)[None]                       # [n, H]
    cols = dx[:, None] + torch.arange(w)[None]                       # [n, W]
    return up[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]].clamp(0, 1)


@torch.no_grad()
def detections_with_probabilities(model: nn.Module, images: list[torch.Tensor]
                                  ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Each image's final detections: boxes ``[M, 4]`` in its own pixels, the class
    probability vector ``[M, K]`` of the proposal or anchor each came from, and its objectness
    ``[M]`` where the detector has one (FCOS's centerness), else None.

    Faster R-CNN: the softmax of the proposal's class logits (background first); SSD: the
    softmax at the anchor (background first); RetinaNet and FCOS: the sigmoids of the class
    logits at the anchor (one per class, no background)."""
    with eval_mode(model):
        batch, _ = model.transform(images)
        sizes = batch.image_sizes
        if detheads.family(model) != "fasterrcnn":
            return _one_stage_probabilities(model, images, batch)
        features = model.backbone(batch.tensors)
        proposals, _ = model.rpn(batch, features)
        logits, regression = detheads.second_stage(model.roi_heads, features, proposals, sizes)
        boxes, scores, labels = model.roi_heads.postprocess_detections(logits, regression,
                                                                       proposals, sizes)
        counts = [len(p) for p in proposals]
        out = []
        for i, (own_logits, own_regression) in enumerate(zip(logits.split(counts),
                                                             regression.split(counts))):
            rows = detheads.source_rows(model.roi_heads, own_logits, own_regression,
                                        proposals[i], sizes[i], boxes[i], scores[i], labels[i])
            original = model.transform.postprocess([{"boxes": boxes[i]}], [sizes[i]],
                                                   [tuple(images[i].shape[-2:])])[0]["boxes"]
            out.append((original.float(), F.softmax(own_logits[rows].float(), -1), None))
        return out


def _one_stage_probabilities(model: nn.Module, images: list[torch.Tensor], batch
                             ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """:func:`detections_with_probabilities` for RetinaNet, FCOS and SSD."""
    sizes = batch.image_sizes
    outputs = detheads.one_stage_outputs(model, batch)
    found = detheads.one_stage_detections(model, outputs, sizes)
    out = []
    for i, det in enumerate(found):
        head = {k: v[i] for k, v in outputs.head.items()}
        rows = detheads.source_anchors(model, head, outputs.anchors[i], sizes[i],
                                       det["boxes"], det["scores"], det["labels"])
        logits = head["cls_logits"][rows].float()
        probs = F.softmax(logits, -1) if isinstance(model, SSD) else torch.sigmoid(logits)
        objectness = (torch.sigmoid(head["bbox_ctrness"][rows, 0].float())
                      if isinstance(model, FCOS) else None)
        original = model.transform.postprocess([{"boxes": det["boxes"]}], [sizes[i]],
                                               [tuple(images[i].shape[-2:])])[0]["boxes"]
        out.append((original.float(), probs, objectness))
    return out


def mask_weights(target_boxes: torch.Tensor, target_labels: torch.Tensor, boxes: torch.Tensor,
                 probabilities: torch.Tensor, objectness: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """Weight ``[T]`` of one masked image for each target: ``max_j IoU(L_t, L_j) cos(P_t, P_j)``
    times ``O_j`` where the detector gives an objectness (0 when the masked image has no
    detection)."""
    if len(boxes) == 0:
        return target_boxes.new_zeros(len(target_boxes))
    iou = box_iou(target_boxes, boxes)                                        # [T, M]
    cosine = probabilities[:, target_labels].T / probabilities.norm(dim=1).clamp(min=1e-12)
    similarity = iou * cosine
    if objectness is not None:
        similarity = similarity * objectness
    return similarity.amax(dim=1)


def drise_maps(model: nn.Module, image: torch.Tensor, target_boxes: torch.Tensor,
               target_labels: torch.Tensor, masks: int = DEFAULT_MASKS, grid: int = DEFAULT_GRID,
               keep: float = DEFAULT_KEEP, batch_size: int = DEFAULT_BATCH, seed: int = 0
               ) -> torch.Tensor:
    """D-RISE maps ``[T, H, W]`` in ``[0, 1]`` (CPU) of the targets (boxes in ``image``'s pixels,
    detector labels) for ``image`` ``[3, H, W]`` in [0, 1], from ``masks`` masked copies sent
    through ``model`` ``batch_size`` at a time. The same ``seed`` draws the same masks."""
    size = tuple(image.shape[-2:])
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(target_boxes), *size)
    target_boxes, target_labels = target_boxes.float().cpu(), target_labels.cpu()
    for start in range(0, masks, batch_size):
        chunk = rise_masks(min(batch_size, masks - start), size, grid, keep, generator)
        masked = image[None] * chunk[:, None].to(image)
        found = detections_with_probabilities(model, list(masked))
        weights = torch.stack([mask_weights(target_boxes, target_labels, b.cpu(), p.cpu(),
                                            None if o is None else o.cpu())
                               for b, p, o in found], dim=1)                # [T, chunk]
        total += torch.einsum("tn,nhw->thw", weights, chunk)
    return normalize_heatmaps(total / masks)


def explain_drise(model: nn.Module, image: torch.Tensor, target: DetectionTarget | MissTarget,
                  settings: DriseSettings | None = None) -> DetectionResult:
    """:func:`detection.explain` with D-RISE maps (key ``"input"``, final heatmaps at the
    image size). For a :class:`DetectionTarget`: the detector's detections of ``image`` and a
    map for each explained one, from one pass over the masks. For a :class:`MissTarget`: the
    missed objects' best proposals as the gradient methods find them, each explained with the
    object's box and class as the D-RISE target."""
    settings = settings or DriseSettings()
    if isinstance(target, MissTarget):
        found = explain(model, image, target, layers=(), method="gradcam")
        boxes, labels = target.boxes, target.labels
    else:
        with torch.no_grad(), eval_mode(model):
            (detected,) = model([image])
        boxes, labels, scores = (detected[k].detach().float().cpu() if k != "labels" else
                                 detected[k].cpu() for k in ("boxes", "labels", "scores"))
        found = DetectionResult(boxes, labels, scores, target.select(scores, labels), {})
        boxes, labels = boxes[found.explained], labels[found.explained]
    if len(found.explained) == 0:   # nothing to explain: no masked pass at all
        maps = torch.zeros(0, *image.shape[-2:])
    else:
        maps = drise_maps(model, image, boxes, labels, settings.masks, settings.grid,
                          settings.keep, settings.batch_size, settings.seed)
    return replace(found, maps={LAYER: maps}, geometry=None, method="drise", method_title=TITLE)


def explain_detections_drise(model: nn.Module, image: torch.Tensor, score_thresh: float = 0.5,
                             max_explained: int = 20, allowed: Collection[int] | None = None,
                             **settings) -> DetectionResult:
    """:func:`explain_drise` of the detections with ``score >= score_thresh`` and a label in
    ``allowed``, at most ``max_explained`` (``settings``: those of :class:`DriseSettings`)."""
    return explain_drise(model, image, DetectionTarget(score_thresh, max_explained, allowed),
                         DriseSettings(**settings))
