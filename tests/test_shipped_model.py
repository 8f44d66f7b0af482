"""The trained Fashion-MNIST checkpoint and test split that ship with the repository."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import data
from data import ImageSplit, load_split
from explain import heatmaps
from model import VIT_ARCH, read_checkpoint
from train import accuracy_report, predict
from zoo import load_classifier

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "checkpoints" / "resnet18_fashion_mnist.pth"


@pytest.fixture
def committed_split_only(monkeypatch):
    """Read the test split from the repository's data/ folder, never from the system or network."""
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", Path("/nonexistent"))
    monkeypatch.setattr(data, "_download", lambda *a, **k: pytest.fail("tried to download"))


def test_shipped_checkpoint_is_small_and_describes_itself():
    assert CHECKPOINT.stat().st_size <= 25 * 2**20
    meta = read_checkpoint(CHECKPOINT)
    assert meta["dataset"] == "fashion_mnist" and len(meta["classes"]) == 10
    assert meta["acc"] >= 94.0


def test_shipped_checkpoint_accuracy_on_the_committed_test_split(committed_split_only):
    loaded = load_classifier(weights=CHECKPOINT)
    model, info = loaded.module, loaded.inputs
    split = load_split("fashion_mnist", ROOT / "data", train=False)
    assert len(split) == 10_000
    part = ImageSplit(split.images[:500], split.labels[:500], info)
    logits = predict(model, part, torch.device("cpu"), dtype=None)
    accuracy, _, _ = accuracy_report(logits, part.labels, info.classes)
    assert accuracy > 90.0


VIT = ROOT / "checkpoints" / "vit_fashion_mnist.pth"
VIT_FIRST_500 = 89.0     # fp32 on the first 500 test images: 91.6% when it was trained


def test_shipped_vit_is_small_and_describes_itself():
    assert VIT.stat().st_size <= 10 * 2**20
    meta = read_checkpoint(VIT)
    assert meta["arch"] == VIT_ARCH and meta["dataset"] == "fashion_mnist"
    assert meta["acc"] >= 90.0


def test_shipped_vit_accuracy_and_its_auto_layer_map(committed_split_only):
    """The first 500 committed test images, and Grad-CAM at ``auto`` (the last block's first
    norm) on the first correctly classified ones: not blank, in [0, 1]."""
    loaded = load_classifier(weights=VIT)
    assert loaded.layer() == "encoder.layers.encoder_layer_5.ln_1"
    split = load_split("fashion_mnist", ROOT / "data", train=False)
    part = ImageSplit(split.images[:500], split.labels[:500], loaded.inputs)
    logits = predict(loaded.module, part, torch.device("cpu"), dtype=None)
    accuracy, _, _ = accuracy_report(logits, part.labels, loaded.inputs.classes)
    assert accuracy > VIT_FIRST_500
    right = (logits.argmax(1) == part.labels).nonzero().flatten()[:8]
    images = loaded.inputs.normalize(part.images[right].float().div(255))
    maps = heatmaps(loaded.module, images, part.labels[right], "gradcam")
    assert maps.shape == (len(right), 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1
    assert all(m.max() - m.min() > 0.5 for m in maps)     # no blank map
