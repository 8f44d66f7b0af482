"""Fine-tuning on an image folder (finetune.py): the schedule, the new head, the split, and the
command line end to end: the checkpoint it keeps is rebuilt by ``--mode test`` and scores what
training reported."""
from __future__ import annotations

import csv
import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main
from errors import UserError
from finetune import warmup_cosine
from folders import training_data
from model import read_checkpoint
from zoo import load_classifier, replace_head

FACTORY = '''import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 1000))
'''
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200), "green": (30, 200, 30)}


def write_tree(root: Path, per_class: int, seed: int = 0) -> Path:
    """Noisy photos of three colours, of varied sizes, one subfolder per colour."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            h, w = rng.integers(28, 60, size=2)
            pixels = np.clip(rng.normal(colour, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("finetune")
    (w / "tiny.py").write_text(FACTORY)
    write_tree(w / "split" / "train", 6)
    write_tree(w / "split" / "val", 3, seed=1)
    write_tree(w / "one", 5, seed=2)
    return w


def test_warmup_then_cosine_to_zero():
    total, warm = 100, 10
    factors = [warmup_cosine(s, total, warm) for s in range(total + 1)]
    assert factors[0] == pytest.approx(0.01) and factors[warm] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(factors[:warm + 1]))
    assert all(a >= b for a, b in itertools.pairwise(factors[warm:]))
    assert factors[total] == pytest.approx(0.0, abs=1e-12)
    assert factors[55] == pytest.approx(0.5)       # half-way through the cosine
    assert warmup_cosine(5, 10, 0) == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


@pytest.mark.parametrize("arch, head", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier.3"),
                                        ("squeezenet1_1", "classifier.1")])
def test_replace_head_gives_the_new_class_count(arch, head):
    loaded = load_classifier(arch, input_size=64)
    before = {k: v.clone() for k, v in loaded.module.state_dict().items()}
    assert replace_head(loaded.module, 5, 64) == head
    with torch.no_grad():
        assert loaded.module.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    after = loaded.module.state_dict()
    kept = [k for k in before if not k.startswith(head + ".")]
    assert all(torch.equal(before[k], after[k]) for k in kept)   # only the head is new


def test_replace_head_refuses_a_model_without_a_linear_or_conv_head():
    with pytest.raises(UserError, match="no Linear or Conv2d"):
        replace_head(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Bilinear(3, 3, 4)), 2, 8)


def test_training_data_uses_train_and_val_or_a_seeded_split(world):
    pair = training_data(world / "split")
    assert pair.classes == ("blue", "green", "red")
    assert len(pair.train_paths) == 18 and len(pair.val_paths) == 9
    assert all("/val/" in str(p) for p in pair.val_paths)
    one = training_data(world / "one", val_fraction=0.2, seed=3)
    assert len(one.val_paths) == 3 and len(one.train_paths) == 12   # one of five per class
    assert not set(one.val_paths) & set(one.train_paths)
    assert training_data(world / "one", val_fraction=0.2, seed=3).val_paths == one.val_paths
    assert training_data(world / "one", val_fraction=0.2, seed=4).val_paths != one.val_paths
    assert sorted(one.val_labels) == [0, 1, 2]


def test_training_data_needs_every_class_in_training(world, tmp_path):
    root = write_tree(tmp_path / "t", 2)
    (root / "empty_class").mkdir()
    with pytest.raises(UserError, match="no training image of class empty_class"):
        training_data(root)


def _accuracy(out: str) -> float:
    line = next(x for x in out.splitlines() if x.startswith("Test Accuracy"))
    return float(line.split()[-1].rstrip("%"))


def test_fine_tune_a_factory_then_test_its_checkpoint(world, tmp_path, capsys, caplog):
    """The best epoch's validation accuracy is what ``--mode test`` of the kept checkpoint
    measures on the same validation folder; the checkpoint records arch, classes and
    preprocessing, and the factory's 1000-class head was replaced for the folder's three."""
    caplog.set_level(logging.INFO)
    ck, logs = tmp_path / "ft.pth", tmp_path / "logs"
    common = ["--model", f"{world}/tiny.py:build", "--input_size", "32", "--precision", "fp32"]
    code = main.main(["--mode", "train", *common, "--data_dir", str(world / "split"),
                      "--num_epochs", "3", "--batch_size", "6", "--lr", "0.05",
                      "--save_path", str(ck), "--log_dir", str(logs)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "last layer 7 replaced for 3 classes" in caplog.text
    best = float(out.split("Best validation accuracy: ")[1].split("%")[0])
    with open(logs / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert max(float(r["test_acc"]) for r in rows) == pytest.approx(best, abs=0.005)
    assert (logs / "training_curves.png").is_file()
    saved = read_checkpoint(ck)
    assert saved["arch"] == f"{world}/tiny.py:build"
    assert saved["classes"] == ["blue", "green", "red"]
    assert saved["input_size"] == 32 and saved["resize_size"] == round(32 * 256 / 224)
    assert saved["model_state_dict"]["7.weight"].shape == (3, 8)

    code = main.main(["--mode", "test", *common, "--weights", str(ck), "--data_dir",
                      str(world / "split"), "--out_dir", str(tmp_path / "res")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "testing on" in out and "Testing on 9 images" in out
    assert _accuracy(out) == pytest.approx(best, abs=0.005)   # both printed to 0.01


def test_fine_tune_a_torchvision_arch_and_reload_it_by_its_checkpoint_alone(world, tmp_path,
                                                                             capsys, caplog):
    caplog.set_level(logging.INFO)
    ck = tmp_path / "r18.pth"
    code = main.main(["--mode", "train", "--arch", "resnet18", "--input_size", "32",
                      "--data_dir", str(world / "one"), "--val_fraction", "0.2",
                      "--num_epochs", "1", "--batch_size", "4", "--precision", "fp32",
                      "--save_path", str(ck), "--log_dir", str(tmp_path / "logs")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert "from random weights" in caplog.text
    assert "last layer fc replaced for 3 classes" in caplog.text
    loaded = load_classifier(weights=str(ck))      # the arch comes from the checkpoint
    assert loaded.arch == "resnet18" and loaded.classes == ("blue", "green", "red")
    assert loaded.module.fc.out_features == 3 and loaded.input_size == 32



def test_fine_tune_under_torchrun_scores_every_validation_image_once(world, tmp_path, capsys):
    """Two ranks train on their shares and score their blocks of the validation images; rank
    0's best accuracy is the kept checkpoint's accuracy on the whole validation folder."""
    from ranks import run_torchrun
    ck = tmp_path / "ddp.pth"
    result = run_torchrun(2, "--mode", "train", "--model", f"{world}/tiny.py:build",
                          "--input_size", "32", "--data_dir", str(world / "split"),
                          "--num_epochs", "2", "--batch_size", "3", "--lr", "0.05",
                          "--precision", "fp32", "--device", "cpu", "--save_path", str(ck),
                          "--log_dir", str(tmp_path / "logs"), timeout=240)
    assert result.returncode == 0, result.stderr
    best = float(result.stdout.split("Best validation accuracy: ")[1].split("%")[0])
    assert result.stdout.count("Best validation accuracy") == 1     # rank 0 alone reports
    code = main.main(["--mode", "test", "--model", f"{world}/tiny.py:build", "--input_size",
                      "32", "--precision", "fp32", "--weights", str(ck), "--data_dir",
                      str(world / "split"), "--out_dir", str(tmp_path / "res")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Testing on 9 images" in out and _accuracy(out) == pytest.approx(best, abs=0.005)
