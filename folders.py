"""Photos and image folders, streamed from disk: a ``Dataset`` over a file list, the ImageFolder
layout (one subfolder per class), a ``DataLoader`` with workers, and the way back from a map at
the model's resolution to the photo it came from.

Only paths are held in memory; each image is decoded when its batch is made (in a worker
process when ``workers > 0``), so memory stays that of a few batches whatever the folder's
size. A file that cannot be decoded does not raise inside a worker (where PyTorch would turn a
one-line ``UserError`` into a multi-line traceback text): the item carries the reason, and
:func:`photo_batches` raises it as one line in the main process.
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from data import InputSpec, open_image
from errors import ParamError, UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                            ".ppm", ".pgm"})
NO_LABEL = -1


def is_image(path: Path) -> bool:
    """Whether a file's name says it is an image (hidden files, such as macOS's ``._x.jpg``,
    are not)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Every image file in a folder tree, sorted by path (the same order on every machine)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ParamError("image_dir", f"{{param}} {folder}: no such folder")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
    if not paths:
        raise ParamError("image_dir", f"{{param}} {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}"
                        f" files, in any subfolder)")
    return paths


def _folder_key(name: str) -> str:
    """A class name as a folder can spell it: case, spaces, underscores and slashes aside."""
    return " ".join(name.lower().replace("_", " ").replace("/", " ").split())


def image_folder(root: str | os.PathLike, classes: Sequence[str]
                 ) -> tuple[list[Path], list[int]]:
    """An ImageFolder tree (``root/CLASS/**/image``) -> image paths and their class indices in
    ``classes`` (the model's, or a classes file's).

    Subfolders are matched to class names exactly, else ignoring case, spaces, underscores
    and slashes (``tiger_cat`` is ``tiger cat``). A subfolder that names no class is one line
    naming it; an empty class folder is skipped (a test set may lack a class); no image at
    all is one line.
    """
    root = Path(root)
    if not root.is_dir():
        raise ParamError("data_dir", f"{{param}} {root}: no such folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ParamError("data_dir", f"{{param}} {root} has no class subfolders (the ImageFolder layout is "
                        f"data_dir/CLASS/image.jpg)")
    exact = {name: i for i, name in enumerate(classes)}
    loose = {_folder_key(name): i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        index = exact.get(folder.name, loose.get(_folder_key(folder.name)))
        if index is None:
            close = difflib.get_close_matches(folder.name, list(classes), n=3, cutoff=0.6)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise ParamError("data_dir", f"{{param}} {root}: class folder '{folder.name}' is not among the "
                            f"model's {len(classes)} classes{hint}; rename it or give "
                            f"classes_file")
        found = sorted(p for p in folder.rglob("*") if p.is_file() and is_image(p))
        paths += found
        labels += [index] * len(found)
    if not paths:
        raise ParamError("data_dir", f"{{param}} {root}: its class folders hold no images")
    return paths, labels


@dataclass(frozen=True)
class PhotoItem:
    """One decoded image: the model's pixels ``[3, S, S]`` in ``[0, 1]`` (before
    normalization), its label (``NO_LABEL`` for a plain photo), its index in the dataset, the
    photo's own size ``(width, height)``, why it could not be read ("" when it could), and,
    where asked for, the photo itself for a panel (:func:`photo_rgb`: uint8, as a panel draws
    it), from the same decode."""

    pixels: torch.Tensor
    label: int
    index: int
    size: tuple[int, int]
    error: str = ""
    panel: np.ndarray | None = None


class PhotoDataset(Dataset):
    """Images read from disk as they are asked for, through a model's preprocessing (or
    ``transform``, a PIL image -> pixels ``[3, S, S]`` in ``[0, 1]``, such as
    :func:`training_pixels`)."""

    def __init__(self, paths: Sequence[str | os.PathLike], preprocessing: InputSpec,
                 labels: Sequence[int] | None = None,
                 transform: Callable[[Image.Image], torch.Tensor] | None = None,
                 panel_side: int | None = None):
        self.panel_side = panel_side   # also give each photo for a panel, at most this side
        self.paths = [Path(p) for p in paths]
        if labels is not None and len(labels) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(labels)} labels")
        self.labels = list(labels) if labels is not None else [NO_LABEL] * len(self.paths)
        self.inputs = preprocessing
        self.transform = transform or preprocessing.pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> PhotoItem:
        try:
            photo = open_image(self.paths[index])
            pixels = self.transform(photo)
            panel = None if self.panel_side is None else photo_rgb(photo, self.panel_side)
            return PhotoItem(pixels, self.labels[index], index, photo.size, panel=panel)
        except UserError as exc:
            side = self.inputs.input_size
            return PhotoItem(torch.zeros(3, side, side), self.labels[index], index, (0, 0),
                             str(exc))


@dataclass(frozen=True)
class PhotoBatch:
    """A batch of :class:`PhotoItem` s: ``pixels [B, 3, S, S]``, ``labels [B]``, ``indices
    [B]``, the photos' sizes, and their errors."""

    pixels: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    sizes: tuple[tuple[int, int], ...]
    errors: tuple[str, ...]
    panels: tuple[np.ndarray | None, ...] = ()

    def pin_memory(self) -> PhotoBatch:
        """Called by a ``DataLoader`` with ``pin_memory=True`` (CUDA)."""
        return PhotoBatch(self.pixels.pin_memory(), self.labels.pin_memory(),
                          self.indices.pin_memory(), self.sizes, self.errors, self.panels)


def collate_photos(items: list[PhotoItem]) -> PhotoBatch:
    """Stack :class:`PhotoItem` s into a :class:`PhotoBatch` (module-level, so that worker
    processes can pickle it)."""
    return PhotoBatch(torch.stack([i.pixels for i in items]),
                      torch.tensor([i.label for i in items], dtype=torch.long),
                      torch.tensor([i.index for i in items], dtype=torch.long),
                      tuple(i.size for i in items), tuple(i.error for i in items),
                      tuple(i.panel for i in items))


def loader_workers(device: torch.device | str, wanted: int = 2) -> int:
    """How many worker processes should decode photos for a model on ``device``: ``wanted``
    for a GPU, whose host cores are otherwise idle; on the CPU only the cores that PyTorch's
    threads leave free. A worker that shares a core with those threads stalls each of the
    model's parallel regions for longer than its decoding takes: on the 2-core test machine
    Grad-CAM over 128 JPEG photos with ResNet-50 took 1.52x the time of the same work on
    decoded images with 2 workers, 1.14x with the decoding in the main process
    (``bench/bench_photos.py``)."""
    if torch.device(device).type != "cpu":
        return wanted
    spare = (os.cpu_count() or 1) - torch.get_num_threads()
    return max(0, min(wanted, spare))


def photo_loader(dataset: PhotoDataset, batch_size: int, workers: int = 2,
                 pin_memory: bool = False) -> DataLoader:
    """Batches in the dataset's order, decoded by ``workers`` processes (0: in this one) while
    the model works on the previous batch; each worker keeps two batches ready."""
    workers = max(0, min(workers, len(dataset)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=collate_photos, pin_memory=pin_memory,
                      prefetch_factor=2 if workers else None, persistent_workers=False,
                      worker_init_fn=limit_worker_heap if workers else None)


def limit_worker_heap(worker_id: int) -> None:
    """A data-loader worker's ``worker_init_fn``: allocations of 64 kB and more (decoded
    photos, pixel tensors) are mapped and unmapped by themselves (glibc ``M_MMAP_THRESHOLD``).
    By default glibc raises that threshold to the size of the largest block freed, so a
    worker then serves each photo from the heap it inherited from the main process, and
    fragments it: its memory grew with the number of photos decoded, towards the main
    process's size (a 2,000-photo folder 1.29x the peak memory of a 200-photo one; flat with
    this, ``bench/bench_photos.py``)."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)
    except (OSError, AttributeError):
        pass


def photo_batches(loader: DataLoader) -> Iterator[PhotoBatch]:
    """The loader's batches; an image that could not be decoded is one ``UserError`` line here,
    in the main process."""
    for batch in loader:
        for error in batch.errors:
            if error:
                raise UserError(error)
        yield batch


# --------------------------------------------------------------------------------------------
# Training on a folder


class _TrainingPixels:
    """RandomResizedCrop to the model's size and a horizontal flip, as torchvision's reference
    classification recipe trains; a class (not a lambda) so worker processes can pickle it."""

    def __init__(self, preprocessing: InputSpec):
        mode = TF.InterpolationMode(preprocessing.interpolation)
        self.augment = transforms.Compose([
            transforms.RandomResizedCrop(preprocessing.input_size, interpolation=mode,
                                         antialias=True),
            transforms.RandomHorizontalFlip()])

    def __call__(self, photo: Image.Image) -> torch.Tensor:
        if photo.mode in ("RGBA", "LA", "P"):
            rgba = photo.convert("RGBA")
            photo = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
        return TF.pil_to_tensor(self.augment(photo.convert("RGB"))).float().div(255)


def training_pixels(preprocessing: InputSpec) -> Callable[[Image.Image], torch.Tensor]:
    """The augmenting transform for fine-tuning at ``preprocessing``'s size (random in each
    worker: PyTorch seeds every worker's generator differently)."""
    return _TrainingPixels(preprocessing)


# Subfolders that name a split, not a class; the validation ones in order of preference.
VAL_FOLDERS = ("val", "valid", "validation", "test")
DEFAULT_VAL_FRACTION = 0.1


def train_val_folders(root: str | os.PathLike) -> tuple[Path, Path | None] | None:
    """A split layout: ``root/train`` and its validation folder (the first of
    :data:`VAL_FOLDERS` that exists; None when there is none, then ``train/`` is split with
    :func:`seeded_split`), or None when no subfolder names a split (one ImageFolder tree).
    Split folders without ``train/`` are an error, never classes called ``val`` or ``test``."""
    root = Path(root)
    subfolders = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    splits = sorted(subfolders & {"train", *VAL_FOLDERS})
    if not splits:
        return None
    if "train" not in subfolders:
        raise ParamError("data_dir", f"{{param}} {root} holds the split folder(s) "
                                     f"{', '.join(s + '/' for s in splits)} but no train/; put "
                                     f"the training images in {root / 'train'}")
    val = next((root / name for name in VAL_FOLDERS if name in subfolders), None)
    return root / "train", val


def seeded_split(labels: Sequence[int], val_fraction: float, seed: int
                 ) -> tuple[list[int], list[int]]:
    """Indices of a train / validation split, stratified by class and the same for a seed:
    each class keeps ``round(val_fraction * n)`` of its images for validation, at least one
    when it has two or more."""
    if not 0 < val_fraction < 1:
        raise ParamError("val_fraction", f"{{param}} {val_fraction}: must lie between 0 and 1")
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
        n_val = round(val_fraction * len(order))
        n_val = max(n_val, 1) if len(order) >= 2 else 0
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)


@dataclass(frozen=True)
class TrainingData:
    """The images of a fine-tuning run: paths and labels of the training and validation
    images, the class names (index order), and a phrase saying where the split came from."""

    train_paths: list[Path]
    train_labels: list[int]
    val_paths: list[Path]
    val_labels: list[int]
    classes: tuple[str, ...]
    origin: str


def class_folders(root: str | os.PathLike) -> tuple[str, ...]:
    """The class names an ImageFolder tree defines: its subfolders' names, sorted (as
    torchvision's ``ImageFolder`` orders them)."""
    root = Path(root)
    if not root.is_dir():
        raise ParamError("data_dir", f"{{param}} {root}: no such folder")
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()
                         and not p.name.startswith(".")))
    if len(names) < 2:
        raise ParamError("data_dir", f"{{param}} {root} has {len(names)} class subfolder(s); training needs "
                        f"at least two (the ImageFolder layout is data_dir/CLASS/image.jpg)")
    return names


def training_data(root: str | os.PathLike, classes: Sequence[str] | None = None,
                  val_fraction: float | None = None, seed: int = 0) -> TrainingData:
    """The training and validation images of ``root``: ``root/train`` and its validation
    folder (``val/``, ``valid/``, ``validation/`` or ``test/``) when both exist, else one
    ImageFolder tree (or ``root/train`` alone) split by :func:`seeded_split`, holding out
    ``val_fraction`` (None: 0.1). A ``val_fraction`` given where a validation folder exists
    is refused: it would be ignored. The classes are ``classes`` (a classes file's) or
    the training folder's subfolder names. Every class needs a training image, and there must
    be validation images; otherwise one line."""
    split = train_val_folders(root)
    pair = split if split and split[1] is not None else None
    if pair and val_fraction is not None:
        raise ParamError("val_fraction", f"{{param}} {val_fraction}: {root} has its own "
                                         f"validation folder {pair[1].name}/, so nothing is "
                                         f"held out of train/; leave {{param}} out, or remove "
                                         f"{pair[1].name}/ to split train/")
    val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    train_root = split[0] if split else Path(root)
    names = tuple(classes) if classes is not None else class_folders(train_root)
    paths, labels = image_folder(train_root, names)
    if pair:
        val_paths, val_labels = image_folder(pair[1], names)
        origin = f"{pair[0]} / {pair[1]}"
    else:
        train_idx, val_idx = seeded_split(labels, val_fraction, seed)
        val_paths, val_labels = [paths[i] for i in val_idx], [labels[i] for i in val_idx]
        paths, labels = [paths[i] for i in train_idx], [labels[i] for i in train_idx]
        origin = f"{root}, split {1 - val_fraction:.0%} / {val_fraction:.0%} by seed {seed}"
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ParamError("data_dir", f"{{param}} {root}: no training image of class {', '.join(empty[:5])}"
                        f"{' ...' if len(empty) > 5 else ''}; every class needs some")
    if not val_paths:
        raise ParamError("data_dir", f"{{param}} {root}: no validation images (give each class two images "
                        f"or more, or a val/ folder beside train/)")
    return TrainingData(paths, labels, val_paths, val_labels, names, origin)


# --------------------------------------------------------------------------------------------
# Back to the photo


def load_photo(path: str | os.PathLike, max_side: int | None = None) -> torch.Tensor:
    """A photo as pixels ``[3, h, w]`` in ``[0, 1]``, upright, at its own aspect ratio, scaled
    down so that its longer side is at most ``max_side`` (for panels)."""
    return photo_pixels(open_image(path), max_side)


def photo_pixels(photo: Image.Image, max_side: int | None = None) -> torch.Tensor:
    """:func:`load_photo` of an image already opened (alpha composited on black)."""
    rgb = photo_rgb(photo, max_side)
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()


def photo_rgb(photo: Image.Image, max_side: int | None = None) -> np.ndarray:
    """An image already opened as an RGB uint8 array ``[h, w, 3]`` (alpha composited on
    black), its longer side scaled down to ``max_side``: what a panel draws, without the
    round trip through floats (:func:`photo_pixels` gives the same values in ``[0, 1]``)."""
    if photo.mode in ("RGBA", "LA", "P"):
        rgba = photo.convert("RGBA")
        photo = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    photo = photo.convert("RGB")
    if max_side is not None and max(photo.size) > max_side:
        scale = max_side / max(photo.size)
        photo = photo.resize((max(1, round(photo.width * scale)),
                              max(1, round(photo.height * scale))), Image.Resampling.BILINEAR)
    return np.asarray(photo)


def heatmap_on_photo(heatmap: torch.Tensor, photo_size: tuple[int, int],
                     preprocessing: InputSpec, original_size: tuple[int, int] | None = None
                     ) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """A map at the model's resolution ``[S, S]`` -> the same map over a photo of
    ``photo_size`` ``(width, height)``: ``[height, width]``, bilinearly resized into the region
    the model saw (the centre crop) and 0 outside it, plus that region as integer
    ``(left, top, right, bottom)``.

    ``original_size`` is the size of the photo the model saw when ``photo_size`` is a scaled
    copy of it for display (as :func:`load_photo` with ``max_side`` makes): the region is
    found in the original and scaled with the photo.
    """
    width, height = photo_size
    ow, oh = original_size or photo_size
    if preprocessing.pad:          # the border the model's input got around the photo
        cut = round(preprocessing.pad * heatmap.shape[-1] / preprocessing.input_size)
        heatmap = heatmap[cut:heatmap.shape[-2] - cut, cut:heatmap.shape[-1] - cut]
    left, top, right, bottom = preprocessing.crop_box(ow, oh)
    sx, sy = width / ow, height / oh
    box = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
    box = (max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3]))
    out = heatmap.new_zeros(height, width)
    h, w = box[3] - box[1], box[2] - box[0]
    if h > 0 and w > 0:
        region = F.interpolate(heatmap[None, None].float(), size=(h, w), mode="bilinear",
                               align_corners=False)[0, 0].clamp(0, 1)
        out[box[1]:box[3], box[0]:box[2]] = region.to(out.dtype)
    return out, box
