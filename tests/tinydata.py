"""Small datasets and checkpoints in the real on-disk formats, written by the tests.

Shared by the test modules (imported by ``conftest.py`` fixtures): Fashion-MNIST as gzipped
idx files (Debian's layout), CIFAR-10 as ``cifar-10-batches-py`` pickles, random-weight
checkpoints written by the project's own ``save_checkpoint``.
"""
from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import torch

from data import DATASETS
from model import build_resnet18, save_checkpoint


def idx_bytes(array: np.ndarray) -> bytes:
    """A uint8 array in the MNIST idx format."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fashion_mnist(folder: Path, n_test: int = 32, n_train: int = 0, seed: int = 0,
                        gz: bool = True) -> Path:
    """Random 28x28 images with labels 0..9 as the four (or two) raw idx files in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("t10k", n_test), ("train", n_train)):
        if n == 0:
            continue
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for stem, array in ((f"{prefix}-images-idx3-ubyte", images),
                            (f"{prefix}-labels-idx1-ubyte", labels)):
            if gz:
                with gzip.open(folder / f"{stem}.gz", "wb") as f:
                    f.write(idx_bytes(array))
            else:
                (folder / stem).write_bytes(idx_bytes(array))
    return folder


def write_cifar10(root: Path, per_batch: int = 8, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five training batches, a test batch and batches.meta,
    pickled as the real archive is (uint8 rows of 3072 values, channel-major)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"batch_label": name, "labels": [int(i % 10) for i in range(per_batch)],
                 "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    meta = {"label_names": list(DATASETS["cifar10"].classes), "num_cases_per_batch": per_batch,
            "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return folder


def random_checkpoint(path: Path, dataset: str = "fashion_mnist", num_classes: int | None = None,
                      seed: int = 0, half: bool = False) -> Path:
    """A random-weight ResNet-18 checkpoint that describes ``dataset``."""
    torch.manual_seed(seed)
    info = DATASETS[dataset]
    model = build_resnet18(num_classes or len(info.classes))
    meta = {"dataset": info.name, **info.as_meta(), "epoch": 0, "acc": 0.0}
    if num_classes is not None:
        meta["classes"] = [f"class{i}" for i in range(num_classes)]
    save_checkpoint(path, model, meta, half=half)
    return Path(path)
