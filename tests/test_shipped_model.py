"""The trained Fashion-MNIST checkpoint and test split that ship with the repository."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import data
from data import ImageSplit, load_split
from model import read_checkpoint
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
