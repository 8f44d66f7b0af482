"""Every picture the tool writes: heatmap overlays and grids, curves, confusion matrices.

Pictures are saved, never shown (matplotlib's Agg backend), so the tool runs on servers.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import outputs
from data import InputSpec
from errors import UserError
from folders import heatmap_on_photo

if TYPE_CHECKING:
    from detection import DetectionResult


SLUG_BYTES = 80   # a file name joins a few slugs; each stays far below the 255-byte limit


def slug(text: str) -> str:
    """A name made safe for a file name (``T-shirt/top`` -> ``T-shirt_top``); letters of any
    script stay (``日本`` stays ``日本``, not ``x``). A long name (a 250-character photo name)
    is cut to ``SLUG_BYTES`` bytes with a hash of the whole, so that the file names made of it
    can be written and two long names stay apart."""
    name = re.sub(r"[^\w.-]+", "_", text).strip("_.") or "x"
    if len(name.encode()) <= SLUG_BYTES:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    head = name.encode()[:SLUG_BYTES - 9].decode(errors="ignore")
    return f"{head}-{digest}"


def unique_slugs(names: Sequence[str]) -> list[str]:
    """``slug`` of each name, with ``_2``, ``_3``, ... added where two would be the same file
    (``a/cat.png`` and ``b/cat.png``), so that no output overwrites another."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        base = slug(name)
        seen[base] = seen.get(base, 0) + 1
        candidate = base if seen[base] == 1 else f"{base}_{seen[base]}"
        while candidate in seen and candidate != base:
            seen[base] += 1
            candidate = f"{base}_{seen[base]}"
        seen.setdefault(candidate, 1)
        result.append(candidate)
    return result


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        with outputs.atomic(path) as tmp:
            fig.savefig(tmp, dpi=fig.dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_training_curves(history: Sequence[dict], path: str | Path) -> None:
    """Loss and accuracy per epoch, train and test, side by side."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for split in ("train", "test"):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], marker="o", label=split)
        ax_acc.plot(epochs, [row[f"{split}_acc"] for row in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, Path(path))


def plot_detector_curves(history: Sequence[dict], path: str | Path) -> None:
    """The detector's training losses and its test mAP@0.5 per epoch, side by side."""
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for key in ("loss", "loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        ax_loss.plot(epochs, [row[key] for row in history], marker="o", label=key)
    ax_map.plot(epochs, [row["test_map"] for row in history], marker="o", label="test mAP@0.5")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training losses")
    ax_map.set(xlabel="epoch", ylabel="mAP@0.5 (VOC07 11-point)", title="Test mAP", ylim=(0, 1))
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, Path(path))


def plot_confusion_matrix(confusion: torch.Tensor, classes: Sequence[str], path: str | Path,
                          title: str = "") -> None:
    """Row-normalized confusion matrix (true class per row) with counts in the cells."""
    counts = confusion.cpu().numpy()
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.6 * k), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    _save(fig, Path(path))


# --------------------------------------------------------------------------------------------
# Heatmaps


def to_uint8_image(pixels: torch.Tensor | np.ndarray) -> np.ndarray:
    """Pixel tensor ``[3, H, W]`` in ``[0, 1]`` -> RGB uint8 array ``[H, W, 3]``; an RGB uint8
    array is one already."""
    if isinstance(pixels, np.ndarray):
        if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
            raise ValueError(f"an image array must be RGB uint8 [H, W, 3], not {pixels.dtype} "
                             f"{list(pixels.shape)}")
        return pixels
    return (pixels.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255
            ).round().astype(np.uint8)


def overlay(image_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """JET-coloured heatmap (``[H, W]`` in ``[0, 1]``) blended on an RGB uint8 image."""
    heat = np.clip(heatmap, 0.0, 1.0)
    if heat.shape != image_rgb.shape[:2]:
        heat = cv2.resize(heat, (image_rgb.shape[1], image_rgb.shape[0]),
                          interpolation=cv2.INTER_LINEAR)
    colored = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET),
                           cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(image_rgb, 1.0 - alpha, colored, alpha, 0.0)


def enlarge(image_rgb: np.ndarray, min_side: int = 224) -> np.ndarray:
    """Upscale a small image with nearest-neighbour pixels so that 32x32 stays legible."""
    h, w = image_rgb.shape[:2]
    scale = max(1, int(np.ceil(min_side / min(h, w))))
    if scale == 1:
        return image_rgb
    return cv2.resize(image_rgb, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)


JPEG_QUALITY = 95   # OpenCV's own default, named here so that it cannot change under us


def save_rgb(image_rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 array as PNG (OpenCV's default settings) or JPEG (by the suffix)."""
    path = Path(path)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    # Encoded in memory and written by Python: a failed write is an OSError with its reason
    # (libpng would print its own line to stderr).
    ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if jpeg else [])
    if not ok:
        raise UserError(f"cannot write {path}: OpenCV cannot encode a '{path.suffix}' image")
    with outputs.atomic(path) as tmp:
        tmp.write_bytes(encoded.tobytes())


def enlarged_overlay(pixels: torch.Tensor | np.ndarray, heatmap: torch.Tensor, min_side: int = 224
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The image enlarged to at least ``min_side`` pixels and the heatmap overlay on it."""
    big = enlarge(to_uint8_image(pixels), min_side)
    heat = heatmap.detach().float().cpu().numpy()
    heat = cv2.resize(heat, (big.shape[1], big.shape[0]), interpolation=cv2.INTER_LINEAR)
    return big, overlay(big, heat)


def heatmap_panel(pixels: torch.Tensor | np.ndarray, heatmap: torch.Tensor, min_side: int = 224,
                  gap: int = 4, title: str | None = None) -> np.ndarray:
    """``original | overlay`` side by side, enlarged, as one RGB uint8 array; under a
    ``title`` (the class explained and its probability) when one is given."""
    big, blended = enlarged_overlay(pixels, heatmap, min_side)
    spacer = np.full((big.shape[0], gap, 3), 255, dtype=np.uint8)
    panel = np.concatenate([big, spacer, blended], axis=1)
    return panel if title is None else _titled(panel, title)


def photo_panel(photo: torch.Tensor | np.ndarray, heatmap: torch.Tensor, inputs: InputSpec,
                original_size: tuple[int, int], title: str | None = None) -> np.ndarray:
    """``original | overlay`` of a photo (pixels ``[3, H, W]`` or RGB uint8 ``[H, W, 3]``) at
    its own aspect ratio (a copy of the ``original_size`` photo the model saw, scaled for
    display) with the model-resolution ``heatmap`` over the region the model saw, enlarged to
    224 px at least."""
    height, width = photo.shape[:2] if isinstance(photo, np.ndarray) else photo.shape[1:]
    on_photo, _ = heatmap_on_photo(heatmap, (width, height), inputs, original_size)
    return heatmap_panel(photo, on_photo, min_side=224, title=title)


def save_heatmap_grid(pixels: torch.Tensor, heatmaps: torch.Tensor, titles: Sequence[str],
                      path: str | Path, suptitle: str = "", columns: int = 5) -> None:
    """All images of a run as overlays in one figure, each titled."""
    n = len(pixels)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.6 * rows), dpi=100,
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(enlarged_overlay(pixels[i], heatmaps[i], 128)[1])
        ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    _save(fig, Path(path))


# --------------------------------------------------------------------------------------------
# Deletion and insertion curves


def plot_deletion_insertion(fractions: np.ndarray,
                            curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
                            aucs: Mapping[str, tuple[float, float]], path: str | Path,
                            title: str = "", band: bool = True,
                            dashed: Collection[str] = ()) -> None:
    """Deletion and insertion side by side: per label the mean curve over images, the AUC in
    the legend, and with ``band`` the min-max range over images (the original's figure).

    ``curves`` maps a label to its ``(deletion, insertion)`` arrays ``[N, steps + 1]``,
    ``aucs`` to its mean ``(deletion AUC, insertion AUC)``; labels in ``dashed`` (baselines)
    are drawn dashed.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    panels = (("Deletion", "pixels hidden", "lower is better"),
              ("Insertion", "pixels revealed", "higher is better"))
    for which, (ax, (name, xlabel, better)) in enumerate(zip(axes, panels)):
        for label, pair in curves.items():
            values = np.asarray(pair[which], dtype=np.float64)
            style = "--" if label in dashed else "-"
            line, = ax.plot(fractions, values.mean(0), style,
                            label=f"{label} (AUC {aucs[label][which]:.4f})")
            if band:
                ax.fill_between(fractions, values.min(0), values.max(0), alpha=0.2,
                                color=line.get_color(), linewidth=0)
        ax.set(xlabel=f"fraction of {xlabel}", ylabel="probability of the target class",
               title=f"{name} ({better})", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if which == 0 else "lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, Path(path))


# --------------------------------------------------------------------------------------------
# Detection panels

_PALETTE = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (0, 160, 160), (240, 50, 230), (128, 128, 0), (170, 110, 40), (0, 0, 128))
_FONT = cv2.FONT_HERSHEY_SIMPLEX
DETECTION_MIN_SIDE = 256  # smaller images (the 128 px scenes) are enlarged so labels stay legible


def _text_scale(image: np.ndarray) -> float:
    return max(0.4, min(image.shape[:2]) / 700)


def draw_box(image: np.ndarray, box: Sequence[float], text: str, color: tuple[int, int, int],
             thickness: int | None = None) -> None:
    """Draw ``box`` with a filled label ``text`` (none when empty) on ``image`` (RGB uint8),
    in place; the label stays inside the image."""
    draw_boxes(image, [box], [text], [color], thickness)


Rect = tuple[int, int, int, int]   # x1, y1, x2, y2 (exclusive)


def _overlap(a: Rect, b: Rect) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def place_labels(sizes: Sequence[tuple[int, int]], boxes: Sequence[Sequence[float]],
                 shape: tuple[int, int]) -> list[Rect]:
    """Where each box's label ``(width, height)`` goes: inside the image, never over a label
    placed before it (the first boxes, the most confident, choose first). Tried in order: above
    the box, inside its top, below it, inside its bottom; then further down or up in steps of
    one label until a free place is found; an image too small for all labels gets the place
    that overlaps least."""
    h, w = shape
    placed: list[Rect] = []
    for (tw, th), box in zip(sizes, boxes):
        x1, y1, _, y2 = (round(float(v)) for v in box)
        left = min(max(0, x1), max(0, w - tw))
        tops = [y1 - th, y1, y2, y2 - th]
        tops += [t + k * th * sign for t in (y2, y1 - th) for sign in (1, -1)
                 for k in range(1, max(1, h // max(th, 1)) + 1)]
        best, best_cost = None, None
        for top in tops:
            top = min(max(0, top), max(0, h - th))
            rect = (left, top, left + tw, top + th)
            cost = sum(_overlap(rect, other) for other in placed)
            if best_cost is None or cost < best_cost:
                best, best_cost = rect, cost
            if cost == 0:
                break
        placed.append(best)
    return placed


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], texts: Sequence[str],
               colors: Sequence[tuple[int, int, int]], thickness: int | None = None) -> None:
    """Draw every box, then every non-empty label at :func:`place_labels`'s place, in place:
    labels never cover one another or leave the image."""
    h, w = image.shape[:2]
    thickness = thickness or max(2, round(min(h, w) / 250))
    for box, color in zip(boxes, colors):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness)
    labelled = [(box, text, color) for box, text, color in zip(boxes, texts, colors) if text]
    if not labelled:
        return
    scale = _text_scale(image)
    sizes, fits = [], []
    for _, text, _ in labelled:
        fit = scale
        (tw, th), base = cv2.getTextSize(text, _FONT, fit, 1)
        while tw + 4 > w and fit > 0.2:           # a label wider than the image gets smaller
            fit *= 0.8
            (tw, th), base = cv2.getTextSize(text, _FONT, fit, 1)
        sizes.append((tw + 4, th + base + 2))
        fits.append((fit, th))
    rects = place_labels(sizes, [b for b, _, _ in labelled], (h, w))
    for (x1, y1, x2, y2), (_, text, color), (fit, th) in zip(rects, labelled, fits):
        cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), color, -1)
        bright = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 160
        cv2.putText(image, text, (x1 + 2, y1 + th + 1), _FONT, fit,
                    (0, 0, 0) if bright else (255, 255, 255), 1, cv2.LINE_AA)


def _titled(image: np.ndarray, title: str) -> np.ndarray:
    """``image`` under a white strip holding ``title``, its text shrunk until it fits."""
    scale = _text_scale(image)
    (_, th), base = cv2.getTextSize("Ag", _FONT, scale, 1)  # one height for every title
    (tw, _), _ = cv2.getTextSize(title, _FONT, scale, 1)
    if tw > image.shape[1] - 8:
        scale *= (image.shape[1] - 8) / tw
    strip = np.full((th + base + 10, image.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(strip, title, (4, th + 5), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def _side_by_side(panels: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    spacer = np.full((panels[0].shape[0], gap, 3), 255, dtype=np.uint8)
    parts = [p for panel in panels for p in (panel, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def _stacked(rows: Sequence[np.ndarray], gap: int = 8) -> np.ndarray:
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255)
              for r in rows]
    spacer = np.full((gap, width, 3), 255, dtype=np.uint8)
    return np.concatenate([p for r in padded for p in (r, spacer)][:-1], axis=0)


def caption(names: Mapping[int, str], label: int, score: float) -> str:
    return f"{names.get(label, str(label))} {score:.2f}"


def _scale_for(image_rgb: np.ndarray) -> int:
    return max(1, int(np.ceil(DETECTION_MIN_SIDE / min(image_rgb.shape[:2]))))


def _box(result: DetectionResult, index: int, scale: int) -> list[float]:
    return [float(v) * scale for v in result.boxes[index]]


def detection_panel(image_rgb: np.ndarray, result: DetectionResult, layer: str,
                    names: Mapping[int, str], truth_boxes: Sequence | None = None) -> np.ndarray:
    """``original | Grad-CAM overlay | boxes with class and score`` for the explained detections,
    and the ground truth (thin, white) where it is given.

    The overlay shows the pixel-wise maximum of the detections' own heatmaps, brought to the
    image one at a time.
    """
    heat = np.zeros(image_rgb.shape[:2], np.float32)
    for rank in range(len(result.explained)):
        np.maximum(heat, result.heatmap(layer, rank).numpy(), out=heat)
    scale = _scale_for(image_rgb)
    image_rgb = enlarge(image_rgb, DETECTION_MIN_SIDE)
    boxes = image_rgb.copy()
    _draw_truth(boxes, truth_boxes, scale)
    _draw_detections(boxes, result, names, scale)
    n = len(result.explained)
    return _side_by_side([_titled(image_rgb, "original"),
                          _titled(overlay(image_rgb, heat),
                                  f"{result.method_title} {layer}, max of {n}"),
                          _titled(boxes, f"{n} detection{'s' * (n != 1)}")])


def box_panel(image_rgb: np.ndarray, result: DetectionResult, rank: int, layer: str,
              names: Mapping[int, str], title: str | None = None) -> np.ndarray:
    """One explained detection: its own heatmap with its box."""
    index = int(result.explained[rank])
    label = int(result.labels[index])
    text = caption(names, label, float(result.scores[index]))
    scale = _scale_for(image_rgb)
    panel = overlay(enlarge(image_rgb, DETECTION_MIN_SIDE), result.heatmap(layer, rank).numpy())
    draw_box(panel, _box(result, index, scale), text, _PALETTE[label % len(_PALETTE)])
    return _titled(panel, title or f"#{rank + 1} {text}, {result.method_title} {layer}")


def boxes_by_layer_panel(image_rgb: np.ndarray, result: DetectionResult, names: Mapping[int, str]
                         ) -> np.ndarray:
    """One row per explained detection, one column per layer: each detection's own map."""
    rows = [_side_by_side([box_panel(image_rgb, result, rank, layer, names,
                                     title=f"#{rank + 1} {layer}") for layer in result.maps])
            for rank in range(len(result.explained))]
    return _stacked(rows)


def _draw_truth(panel: np.ndarray, truth_boxes: Sequence | None, scale: int) -> None:
    for box in truth_boxes if truth_boxes is not None else ():
        draw_box(panel, [float(v) * scale for v in box], "", (255, 255, 255), thickness=1)


def _draw_detections(panel: np.ndarray, result: DetectionResult, names: Mapping[int, str],
                     scale: int) -> None:
    """Every explained detection's box and label, the labels placed together."""
    indices = result.explained.tolist()
    labels = [int(result.labels[i]) for i in indices]
    draw_boxes(panel, [_box(result, i, scale) for i in indices],
               [caption(names, lab, float(result.scores[i])) for i, lab in zip(indices, labels)],
               [_PALETTE[lab % len(_PALETTE)] for lab in labels])


def ground_truth_panel(image_rgb: np.ndarray, result: DetectionResult, truth_boxes: Sequence,
                       truth_names: Sequence[str], names: Mapping[int, str]) -> np.ndarray:
    """The image with its ground-truth boxes (thin, white) and every explained detection."""
    scale = _scale_for(image_rgb)
    panel = enlarge(image_rgb, DETECTION_MIN_SIDE).copy()
    _draw_truth(panel, truth_boxes, scale)
    _draw_detections(panel, result, names, scale)
    return _titled(panel, f"truth: {', '.join(truth_names) or 'none'}"[:48])


def miss_panel(image_rgb: np.ndarray, heat: torch.Tensor, box: Sequence[float],
               proposal: Sequence[float], texts: tuple[str, str], title: str) -> np.ndarray:
    """A missed object: the map of its best proposal's score over the image, the object's box
    (white) and the proposal's box (yellow), each with its label."""
    scale = _scale_for(image_rgb)
    panel = overlay(enlarge(image_rgb, DETECTION_MIN_SIDE), heat.numpy())
    draw_boxes(panel, [[float(v) * scale for v in box], [float(v) * scale for v in proposal]],
               list(texts), [(255, 255, 255), (255, 210, 0)])
    return _titled(panel, title)


def save_panel_grid(panels: Sequence[np.ndarray], path: str | Path, columns: int = 4) -> None:
    """Panels in a grid of ``columns`` (each padded white to the largest), as one picture."""
    h = max(p.shape[0] for p in panels)
    w = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, h - p.shape[0]), (0, w - p.shape[1]), (0, 0)), constant_values=255)
              for p in panels]
    rows = [_side_by_side(list(panels[i:i + columns])) for i in range(0, len(panels), columns)]
    save_rgb(_stacked(rows), path)


def save_panels(image_rgb: np.ndarray, result: DetectionResult, stem: str, folder: Path,
                names: Mapping[int, str], per_box: bool,
                truth_boxes: Sequence | None = None) -> list[Path]:
    """``<stem>_<method>_<layer>.png`` per layer and, with ``per_box``,
    ``<stem>_<layer>_boxes/<rank>_<class>.png`` per detection and ``<stem>_boxes_by_layer.png``
    (every detection's own map at every layer); returns the main panels."""
    written = []
    for layer in result.maps:
        path = folder / f"{stem}_{result.method}_{layer}.png"
        save_rgb(detection_panel(image_rgb, result, layer, names, truth_boxes), path)
        written.append(path)
        if per_box:
            for rank, index in enumerate(result.explained.tolist()):
                name = slug(names.get(int(result.labels[index]), "x"))
                save_rgb(box_panel(image_rgb, result, rank, layer, names),
                         folder / f"{stem}_{layer}_boxes" / f"{rank + 1:02d}_{name}.png")
    if per_box and len(result.explained):
        save_rgb(boxes_by_layer_panel(image_rgb, result, names),
                 folder / f"{stem}_boxes_by_layer.png")
    return written


def plot_ranking(labels: Sequence[str], panels: Mapping[str, Sequence[tuple[float, float, float]]],
                 baseline: Sequence[bool], path: str | Path, title: str = "") -> None:
    """A leaderboard figure: one row per entry (best first, top), one panel per metric, each
    a dot at the mean with its 95% interval as a bar; baselines in grey."""
    n = len(labels)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.5, 0.32 * n + 1.4),
                             dpi=100, sharey=True, squeeze=False, layout="constrained")
    ys = np.arange(n)[::-1]
    for ax, (name, values) in zip(axes[0], panels.items()):
        for y, (mean, low, high), grey in zip(ys, values, baseline):
            color = "0.55" if grey else "C0"
            ax.errorbar(mean, y, xerr=[[max(0.0, mean - low)], [max(0.0, high - mean)]], fmt="o",
                        color=color, markersize=4, capsize=2, linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    axes[0, 0].set_yticks(ys, labels, fontsize=8)
    axes[0, 0].set_ylim(-0.7, n - 0.3)
    if title:
        fig.suptitle(f"{title}\n(mean and 95% interval over images; baselines grey; best first)",
                     fontsize=10)
    _save(fig, Path(path))


def plot_sanity_grid(pixels: torch.Tensor, maps: Sequence[Sequence[torch.Tensor]],
                     row_labels: Sequence[str], column_labels: Sequence[str],
                     notes: Sequence[Sequence[str]], path: str | Path, title: str = "") -> None:
    """The randomisation test as a grid: a row per method, the image then one overlay per
    stage (``maps[row][column]`` ``[H, W]``), each cell captioned with ``notes[row][column]``."""
    rows, columns = len(maps), len(column_labels) + 1
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns + 1.2, 1.55 * rows + 0.8),
                             dpi=100, squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    image = enlarge(to_uint8_image(pixels), 96)
    for r in range(rows):
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7, rotation=0, ha="right", va="center")
        for c, heat in enumerate(maps[r]):
            heat_np = cv2.resize(heat.float().numpy(), image.shape[1::-1],
                                 interpolation=cv2.INTER_LINEAR)
            axes[r, c + 1].imshow(overlay(image, heat_np))
            axes[r, c + 1].set_xlabel(notes[r][c], fontsize=6)
    for c, label in enumerate(column_labels):
        axes[0, c + 1].set_title(label, fontsize=8)
    axes[0, 0].set_title("image", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, Path(path))
