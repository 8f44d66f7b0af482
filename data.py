"""Datasets as in-memory uint8 tensors, their statistics, and batched augmentation.

CIFAR-10 and Fashion-MNIST are small enough to hold in memory (150 MB and 180 MB as uint8),
so batches are cut from one tensor and augmented on the device in one vectorised step instead
of per-image PIL transforms in data-loader workers, which on a 2-core machine cost more than
the network itself. Everything that knows a dataset's mean, std, class names or file layout
lives here; other modules work on normalized batches.
"""
from __future__ import annotations

import gzip
import io
import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms import InterpolationMode

from errors import UserError, note, reason

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SIDE = (28, 28)


# The one resize rule's bound: before the shorter side is resized, the longer side is cut to at
# most this many shorter sides around the centre. The model sees a centred square no larger
# than the shorter side, so nothing it sees is cut, ordinary photos (up to 2:1) are resized
# exactly as torchvision does it, and the resized image is at most ``resize_size`` x
# ``2 * resize_size`` whatever the photo's aspect ratio (a 1 x 20000 strip would otherwise
# become 256 x 5,120,000 pixels, gigabytes).
LONGEST_KEPT = 2


def _centre_within(photo: Image.Image | torch.Tensor, ratio: int) -> Image.Image | torch.Tensor:
    """``photo`` cut around its centre to at most ``ratio`` times its shorter side."""
    width, height = photo.size if isinstance(photo, Image.Image) else photo.shape[-1:-3:-1]
    keep = ratio * min(width, height)
    if max(width, height) <= keep:
        return photo
    w, h = min(width, keep), min(height, keep)
    left, top = (width - w) // 2, (height - h) // 2
    if isinstance(photo, Image.Image):
        return photo.crop((left, top, left + w, top + h))
    return photo[..., top:top + h, left:left + w]


@dataclass(frozen=True)
class InputSpec:
    """What a classifier's inputs are and what its outputs mean: one description for the
    built-in datasets and for every model :func:`zoo.load_classifier` loads.

    ``name`` (the dataset, or the model's arch) and ``classes`` name the outputs. A photo
    becomes an input as torchvision does it: with ``resize_size`` None the whole photo is
    resized to ``input_size`` x ``input_size`` (the CIFAR model's way, aspect ratio not kept);
    otherwise the shorter side is resized to ``resize_size`` and the centre ``input_size``
    square is kept (torchvision's ``ImageClassification``). Then ``(x - mean) / std`` on pixels
    in ``[0, 1]``. ``grayscale`` and ``pad`` are the built-in grayscale datasets' way
    (Fashion-MNIST: one luminance channel resized to 28, zero-padded to 32, repeated to three
    channels). ``crop_padding`` and ``hflip`` are the built-in datasets' training
    augmentation.
    """

    name: str
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int = 32
    grayscale: bool = False
    pad: int = 0              # border added around the source images (Fashion-MNIST 28 -> 32)
    crop_padding: int = 4     # random-crop padding for training augmentation
    hflip: bool = True
    resize_size: int | None = None
    interpolation: str = "bilinear"

    def as_meta(self) -> dict[str, Any]:
        """The fields a checkpoint records so that the description can be rebuilt."""
        return {"classes": list(self.classes), "mean": list(self.mean), "std": list(self.std),
                "input_size": self.input_size, "resize_size": self.resize_size,
                "interpolation": self.interpolation}

    @property
    def _mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)

    def pixels(self, photo: Image.Image | torch.Tensor) -> torch.Tensor:
        """A photo (PIL, any mode; or a ``[3, H, W]`` tensor in ``[0, 1]``) as the model's
        pixels ``[3, S, S]`` in ``[0, 1]`` (before normalization), as torchvision does it."""
        if isinstance(photo, Image.Image):      # resized as PIL, as torchvision does it
            if photo.mode in ("RGBA", "LA", "P"):
                rgba = photo.convert("RGBA")
                photo = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            photo = photo.convert("L" if self.grayscale else "RGB")
        elif self.grayscale:
            photo = TF.rgb_to_grayscale(photo)
        inner = self.input_size - 2 * self.pad
        if self.resize_size is not None:
            photo = _centre_within(photo, LONGEST_KEPT)
        size = [inner, inner] if self.resize_size is None else [self.resize_size]
        out = TF.resize(photo, size, interpolation=self._mode, antialias=True)
        if self.resize_size is not None:
            out = TF.center_crop(out, [inner, inner])
        out = (TF.pil_to_tensor(out).float().div(255) if isinstance(out, Image.Image)
               else out.clamp(0, 1))
        out = F.pad(out, (self.pad,) * 4)
        return out.expand(3, -1, -1).contiguous() if out.shape[0] == 1 else out

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel space ``[0, 1]`` (``[..., 3, H, W]``) -> the network's input space."""
        return normalize(pixels, self)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """The network's input space -> pixel space ``[0, 1]`` (clamped)."""
        return denormalize(images, self).clamp(0, 1)

    def __call__(self, photo: Image.Image | torch.Tensor) -> torch.Tensor:
        """A photo -> the normalized input ``[3, S, S]``."""
        return self.normalize(self.pixels(photo))

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """``(left, top, right, bottom)`` of the region of a ``width`` x ``height`` photo that
        the model sees, in the photo's pixel coordinates (the whole photo when it is squashed
        rather than cropped)."""
        if self.resize_size is None:
            return 0.0, 0.0, float(width), float(height)
        side = min(width, height) * (self.input_size - 2 * self.pad) / self.resize_size
        side_w, side_h = min(side, width), min(side, height)
        left, top = (width - side_w) / 2, (height - side_h) / 2
        return left, top, left + side_w, top + side_h



CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
# Fashion-MNIST's statistics are those of the 28x28 images zero-padded to 32x32, measured on
# the 60k training images.
DATASETS: dict[str, InputSpec] = {spec.name: spec for spec in (
    InputSpec("cifar10", CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    InputSpec("fashion_mnist", FASHION_MNIST_CLASSES, (0.2190,) * 3, (0.3318,) * 3,
              grayscale=True, pad=2, crop_padding=2),
)}


def dataset_info(name: str) -> InputSpec:
    """The registered dataset called ``name``."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})") from None


# --------------------------------------------------------------------------------------------
# Normalization


def _stats(info: InputSpec, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(info.mean, dtype=like.dtype, device=like.device).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=like.dtype, device=like.device).view(-1, 1, 1)
    return mean, std


def normalize(pixels: torch.Tensor, info: InputSpec) -> torch.Tensor:
    """Pixel space ``[0, 1]`` -> the network's input space."""
    mean, std = _stats(info, pixels)
    return (pixels - mean) / std


def denormalize(images: torch.Tensor, info: InputSpec) -> torch.Tensor:
    """The network's input space -> pixel space ``[0, 1]`` (not clamped)."""
    mean, std = _stats(info, images)
    return images * std + mean


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class ImageSplit:
    """One split of a dataset: ``images`` uint8 ``[N, 3, S, S]``, ``labels`` long ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor
    info: InputSpec

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int) -> ImageSplit:
        """The first ``n`` samples (all of them when ``n`` is larger)."""
        return ImageSplit(self.images[:n], self.labels[:n], self.info)

    def to(self, device: torch.device) -> ImageSplit:
        """The split on ``device`` (a GPU holds all of CIFAR-10 as uint8 in 150 MB)."""
        return ImageSplit(self.images.to(device), self.labels.to(device), self.info)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one uint8 array in the MNIST idx format, gzipped or plain."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"cannot read {path}: {reason(exc)}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise UserError(f"{path} is not a uint8 idx file (bad header)")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise UserError(f"{path} is truncated: {len(raw)} bytes, less than its own header "
                        f"({offset} bytes for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    if len(raw) - offset != math.prod(dims):   # Python integers: a header cannot overflow
        raise UserError(f"{path} is truncated or corrupt: header says {dims}, "
                        f"{len(raw) - offset} bytes of data")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _download(fetch: Callable[[], object], what: str, url: str, folder: Path) -> None:
    """Run a torchvision download; turn a network failure into one line that says what to do."""
    try:
        fetch()
    except (URLError, RuntimeError, OSError) as exc:
        raise UserError(f"{what} is not in {folder} and downloading it from {url} failed "
                        f"({reason(exc, 100)}); download it on a machine with network and put the "
                        f"extracted files in {folder}") from None


def _fashion_mnist_folders(data_dir: Path) -> list[Path]:
    return [data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist", data_dir,
            DEBIAN_FASHION_MNIST]


def load_fashion_mnist(data_dir: str | os.PathLike, train: bool) -> ImageSplit:
    """Fashion-MNIST from raw idx files (gzipped or not), downloading through torchvision.

    Looked for, in order: ``DATA_DIR/FashionMNIST/raw`` (torchvision's layout),
    ``DATA_DIR/fashion-mnist``, ``DATA_DIR`` itself, and the Debian package's folder
    ``/usr/share/datasets/fashion-mnist``.
    """
    data_dir = Path(data_dir)
    prefix = "train" if train else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")

    def locate() -> tuple[Path, Path] | None:
        for folder in _fashion_mnist_folders(data_dir):
            found = [_find_idx(folder, s) for s in stems]
            if all(found):
                return found[0], found[1]
        return None

    paths = locate()
    if paths is None:
        target = data_dir / "FashionMNIST" / "raw"
        _download(lambda: torchvision.datasets.FashionMNIST(data_dir, train=train, download=True),
                  "Fashion-MNIST", torchvision.datasets.FashionMNIST.mirrors[0], target)
        paths = locate()
        assert paths is not None, "torchvision reported a download but left no files"
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"{paths[0].parent}: images {images.shape} and labels {labels.shape} "
                        f"do not belong together")
    if images.shape[1:] != FASHION_MNIST_SIDE:
        raise UserError(f"{paths[0]} holds {images.shape[1]}x{images.shape[2]} images; "
                        f"Fashion-MNIST's are 28x28 (is it another dataset?)")
    info = DATASETS["fashion_mnist"]
    tensor = torch.from_numpy(images.copy()).unsqueeze(1)
    tensor = F.pad(tensor, (info.pad,) * 4).expand(-1, 3, -1, -1).contiguous()
    return ImageSplit(tensor, torch.from_numpy(labels.astype(np.int64)), info)


def load_cifar10(data_dir: str | os.PathLike, train: bool) -> ImageSplit:
    """CIFAR-10 through ``torchvision.datasets.CIFAR10`` (pickled batches, MD5-checked)."""
    data_dir = Path(data_dir)
    cls = torchvision.datasets.CIFAR10
    try:
        dataset = cls(data_dir, train=train, download=False)
    except RuntimeError:
        _download(lambda: cls(data_dir, train=train, download=True), "CIFAR-10 (or a complete, "
                  "uncorrupted copy of it)", cls.url, data_dir / cls.base_folder)
        dataset = cls(data_dir, train=train, download=False)
    images = torch.from_numpy(np.ascontiguousarray(dataset.data)).permute(0, 3, 1, 2).contiguous()
    return ImageSplit(images, torch.tensor(dataset.targets, dtype=torch.long), DATASETS["cifar10"])


LOADERS: dict[str, Callable[[str | os.PathLike, bool], ImageSplit]] = {
    "cifar10": load_cifar10,
    "fashion_mnist": load_fashion_mnist,
}


def load_split(name: str, data_dir: str | os.PathLike, train: bool) -> ImageSplit:
    """The training (``train=True``) or test split of dataset ``name`` from ``data_dir``."""
    dataset_info(name)
    split = LOADERS[name](data_dir, train)
    check_labels(split, f"{name} {'training' if train else 'test'} split in {data_dir}")
    return split


def check_labels(split: ImageSplit, where: str) -> None:
    """One label per image and every label a class index: a bad label file fails here, at
    load time, in one line, instead of later and differently in training, testing and
    drawing (or not at all in evaluation)."""
    n, k = len(split.images), len(split.info.classes)
    if len(split.labels) != n:
        raise UserError(f"{where}: {n} images but {len(split.labels)} labels")
    if n == 0:
        raise UserError(f"{where} holds no images")
    bad = ((split.labels < 0) | (split.labels >= k)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise UserError(f"{where}: image {i} has label {int(split.labels[i])}, but the classes "
                        f"are 0..{k - 1} ({len(bad)} bad labels in all)")


# --------------------------------------------------------------------------------------------
# Batches


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool,
                     generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, per image, in one step.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``
    applied to each image; the random numbers come from ``generator`` (on the CPU) so a seeded
    run is repeatable whatever the device.
    """
    b, _, h, w = images.shape
    out = images
    if padding > 0:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(images.device)
        rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
        batch = torch.arange(b, device=images.device)[:, None, None, None]
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        out = padded[batch, chans, rows, cols]
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


def batches(split: ImageSplit, batch_size: int, device: torch.device, *, shuffle: bool = False,
            augment: bool = False, generator: torch.Generator | None = None,
            channels_last: bool = False, shard: tuple[int, int] = (0, 1),
            augment_generator: torch.Generator | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield normalized float batches ``(images, labels)`` on ``device``.

    ``shard = (rank, ranks)``: this rank's share of the (shuffled) order, every ``ranks``-th
    item from ``rank``, cut to ``len(split) // ranks`` items so that all ranks take the same
    number of equal batches; batch ``k`` of all ranks together is then batch ``k`` of a single
    process with a ``ranks`` times larger batch. ``generator`` draws the order (the same on
    every rank), ``augment_generator`` (default: ``generator``) the augmentation.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    augment_generator = augment_generator if augment_generator is not None else generator
    rank, ranks = shard
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if ranks > 1:
        order = order[rank::ranks][:n // ranks]
    info = split.info
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size].to(split.images.device)
        images = split.images[idx].to(device, non_blocking=True)
        if augment:
            images = random_crop_flip(images, info.crop_padding, info.hflip, augment_generator)
        images = normalize(images.float().div_(255), info)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        yield images, split.labels[idx].to(device, non_blocking=True)


# --------------------------------------------------------------------------------------------
# A user's own image


def open_image(source: str | os.PathLike | io.BytesIO, name: str | None = None) -> Image.Image:
    """An image file (or its bytes), fully decoded and turned upright by its EXIF orientation,
    as a viewer shows it. A missing file, or one PIL cannot decode, is one ``UserError`` line
    naming ``name`` (default: the path)."""
    name = name or str(source)
    if isinstance(source, (str, os.PathLike)) and not Path(source).is_file():
        raise UserError(f"image not found: {source}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if img.mode not in READABLE_MODES:
                    raise UserError(f"image {name} has colour mode {img.mode}"
                                    f"{MODE_NAMES.get(img.mode, '')}, which cannot be turned "
                                    f"into RGB without a colour profile; save it as RGB")
                large = any(issubclass(w.category, Image.DecompressionBombWarning)
                            for w in caught)
                original = img.size
                if large:
                    img.draft(img.mode, _shrunk_size(img.size))   # JPEG: decode smaller
                upright = ImageOps.exif_transpose(img)
                bits = _integer_bits(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
            Image.DecompressionBombError) as exc:
        raise UserError(f"cannot read image {name}: {reason(exc)}") from None
    if large:
        upright = _shrink(upright, original, name)
    return to_8bit(upright, bits, name)


# Colour modes whose conversion to RGB (or grey) PIL knows; others, such as CIE L*a*b* or HSV,
# need a colour profile and are refused rather than shown in false colours.
READABLE_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX",
                            "CMYK", "YCbCr", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
MODE_NAMES = {"LAB": " (CIE L*a*b*)", "HSV": " (hue, saturation, value)"}
LARGEST_SIDE = 4096   # a very large image is shrunk to this (the models see far less)


def _shrunk_size(size: tuple[int, int]) -> tuple[int, int]:
    scale = LARGEST_SIDE / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _shrink(img: Image.Image, original: tuple[int, int], name: str) -> Image.Image:
    """An image beyond PIL's decompression-bomb warning (89 megapixels), shrunk to
    ``LARGEST_SIDE`` pixels on its longer side, with one note instead of PIL's warning."""
    if max(img.size) > LARGEST_SIDE:
        img = img.resize(_shrunk_size(img.size), Image.Resampling.BOX)
    note(f"image {name} has {original[0] * original[1] / 1e6:.0f} megapixels ({original[0]}x"
         f"{original[1]}); shrunk to {img.size[0]}x{img.size[1]} to be read")
    return img


def _integer_bits(img: Image.Image) -> int | None:
    """Bits per sample of a one-channel integer image, from the file itself: 16 for PIL's
    ``I;16`` modes and 16-bit PNGs, a TIFF's BitsPerSample tag, else None (unknown)."""
    if img.mode.startswith("I;16"):
        return 16
    if img.mode != "I":
        return None
    if img.format == "PNG":
        return 16
    tags = getattr(img, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    bits = bits[0] if isinstance(bits, tuple) else bits
    return bits if isinstance(bits, int) and bits <= 16 else None


def to_8bit(img: Image.Image, bits: int | None, name: str) -> Image.Image:
    """An 8-bit image with the same brightness as ``img``: 16-bit samples are divided by
    65535 (not clipped at 255, which turns mid-grey white), float samples must already lie in
    ``[0, 1]`` (not cut to 0 or 1, which turns them black). Anything whose range cannot be
    known from the file is refused rather than guessed."""
    if img.mode not in ("F", "I") and not img.mode.startswith("I;16"):
        return img
    values = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        if not np.isfinite(values).all():
            raise UserError(f"image {name} is a float image with NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if lo < 0 or hi > 1:
            raise UserError(f"image {name} is a float image with values in [{lo:g}, {hi:g}]; "
                            f"only [0, 1] is understood (save it as an 8- or 16-bit image)")
        scale = 1.0
    else:
        if bits is None:
            raise UserError(f"image {name} has {img.mode}-mode integer samples of unknown bit "
                            f"depth; save it as an 8- or 16-bit image")
        scale = float(2 ** bits - 1)
        if values.min() < 0 or values.max() > scale:
            raise UserError(f"image {name} has values outside its {bits}-bit range")
    return Image.fromarray(np.rint(values * (255.0 / scale)).astype(np.uint8))
