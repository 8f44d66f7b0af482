"""Every picture the tool writes: heatmap overlays and grids, curves, confusion matrices.

Pictures are saved, never shown (matplotlib's Agg backend), so the tool runs on servers.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch


def slug(text: str) -> str:
    """A class name made safe for a file name (``T-shirt/top`` -> ``T-shirt_top``)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_") or "x"


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
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


def to_uint8_image(pixels: torch.Tensor) -> np.ndarray:
    """Pixel tensor ``[3, H, W]`` in ``[0, 1]`` -> RGB uint8 array ``[H, W, 3]``."""
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


def save_rgb(image_rgb: np.ndarray, path: str | Path) -> None:
    """Write an RGB uint8 array as PNG/JPEG with OpenCV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def enlarged_overlay(pixels: torch.Tensor, heatmap: torch.Tensor, min_side: int = 224
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The image enlarged to at least ``min_side`` pixels and the heatmap overlay on it."""
    big = enlarge(to_uint8_image(pixels), min_side)
    heat = heatmap.detach().float().cpu().numpy()
    heat = cv2.resize(heat, (big.shape[1], big.shape[0]), interpolation=cv2.INTER_LINEAR)
    return big, overlay(big, heat)


def heatmap_panel(pixels: torch.Tensor, heatmap: torch.Tensor, min_side: int = 224,
                  gap: int = 4) -> np.ndarray:
    """``original | overlay`` side by side, enlarged, as one RGB uint8 array."""
    big, blended = enlarged_overlay(pixels, heatmap, min_side)
    spacer = np.full((big.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([big, spacer, blended], axis=1)


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
