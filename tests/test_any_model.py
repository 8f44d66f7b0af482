"""The command line on a model from anywhere: the user's own factory (a tiny CNN written here),
photos, image folders and an ImageFolder tree, end to end through ``main.main``."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import main

FACTORY = '''import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("anymodel")
    (w / "tiny.py").write_text(FACTORY)
    (w / "classes.txt").write_text("red\ngreen\nblue\n")
    rng = np.random.default_rng(0)
    (w / "photos" / "sub").mkdir(parents=True)
    for i, (h, wd) in enumerate([(40, 60), (50, 30), (32, 32)]):
        pixels = (rng.random((h, wd, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(w / "photos" / ("sub" if i else ".") / f"p{i}.png")
    for name in ("red", "green", "blue"):
        (w / "tree" / name).mkdir(parents=True)
        for k in range(2):
            colour = {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}[name]
            Image.new("RGB", (36, 28), colour).save(w / "tree" / name / f"{k}.png")
    return w


def run(world: Path, capsys, *argv: str) -> tuple[int, str, str]:
    code = main.main(["--model", f"{world}/tiny.py:build", "--input_size", "32", "--classes",
                      f"{world}/classes.txt", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_layers_names_the_auto_layer_and_where_cam_is_defined(world, capsys) -> None:
    code, out, _ = run(world, capsys, "--list_layers")
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("2 ") and "8 x 16 x 16" in line and "<- auto" not in line
               for line in lines)
    assert any(line.startswith("3 ") and "8 x 16 x 16" in line and "<- auto" in line
               for line in lines)
    assert "CAM: defined at 3" in out


def test_image_dir_panels_at_the_photos_own_aspect_ratio(world, capsys, tmp_path) -> None:
    code, out, err = run(world, capsys, "--image_dir", f"{world}/photos", "--vis", "gradcam,cam",
                         "--out_dir", str(tmp_path))
    assert code == 0, err
    assert "target layer: 3 (auto" in out
    for method in ("gradcam", "cam"):
        panels = sorted((tmp_path / method).glob("*.png"))
        assert len(panels) == 3
    panel = np.asarray(Image.open(next((tmp_path / "gradcam").glob("gradcam_p0_*.png"))))
    # the 60x40 photo at its own aspect ratio, enlarged 6x (224 px at least), twice with a gap,
    # under a strip with the class explained and its probability
    assert panel.shape[1] == 2 * 360 + 4 and 240 < panel.shape[0] < 300
    strip = panel[:panel.shape[0] - 240]
    assert strip.max() == 255 and strip.min() < 128       # white, with dark text on it
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["explained"] in ("red", "green", "blue") for r in rows)


def test_target_class_by_name(world, capsys, tmp_path) -> None:
    code, _, err = run(world, capsys, "--image", f"{world}/photos/p0.png", "--vis", "gradcam",
                       "--target", "blue", "--out_dir", str(tmp_path))
    assert code == 0, err
    assert [p.name for p in (tmp_path / "gradcam").iterdir()] == ["gradcam_p0_class_blue.png"]


def test_image_folder_accuracy_streams_every_image(world, capsys) -> None:
    code, out, err = run(world, capsys, "--data_dir", f"{world}/tree")
    assert code == 0, err
    assert "Testing on 6 images" in out
    acc = float(next(x for x in out.splitlines() if x.startswith("Test Accuracy")).split()[-1]
                .rstrip("%"))
    # every image is one flat colour, so any resize and crop gives the same input: the
    # expected accuracy follows from three forward passes here
    from zoo import load_factory
    model = load_factory(f"{world}/tiny.py:build")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    right = 0
    for label, colour in enumerate([(200, 20, 20), (20, 200, 20), (20, 20, 200)]):
        pixels = torch.tensor(colour, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 32, 32)
        with torch.no_grad():
            right += int(model(((pixels - mean) / std)[None]).argmax()) == label
    assert acc == pytest.approx(100 * right / 3, abs=0.01)


def test_leaderboard_and_sanity_on_photos(world, capsys, tmp_path) -> None:
    code, out, err = run(world, capsys, "--image_dir", f"{world}/photos", "--vis",
                         "gradcam,cam", "--target_layer", "1,3", "--hidden_strategy", "zero",
                         "--steps", "4", "--out_dir", str(tmp_path / "board"))
    assert code == 0, err
    assert "note: CAM left out at 1" in err
    assert (tmp_path / "board" / "comparison_zero.csv").is_file()
    code, out, err = run(world, capsys, "--image_dir", f"{world}/photos", "--sanity", "--vis",
                         "gradcam", "--out_dir", str(tmp_path / "sanity"))
    assert code == 0, err
    assert "3 of your images" in out
    assert (tmp_path / "sanity" / "sanity" / "sanity.json").is_file()


def test_the_cifar_checkpoint_ranks_methods_on_a_photo(world, capsys, tmp_path) -> None:
    """A photo with --hidden_strategy used to be refused; it is now the leaderboard of the
    photo, with this tool's own checkpoint (the default model)."""
    from tinydata import random_checkpoint
    ckpt = random_checkpoint(tmp_path / "ck.pth")
    code = main.main(["--save_path", str(ckpt), "--image", f"{world}/photos/p0.png", "--vis",
                      "gradcam", "--hidden_strategy", "zero", "--steps", "4", "--out_dir",
                      str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "target layer: layer4" in out and (tmp_path / "out" / "comparison_zero.csv").is_file()


def test_image_folder_heatmaps_for_the_true_class(world, capsys, tmp_path) -> None:
    code, _, err = run(world, capsys, "--data_dir", f"{world}/tree", "--vis", "gradcam",
                       "--target", "gt", "--vis_num", "6", "--out_dir", str(tmp_path))
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "gradcam").iterdir())
    # the tree's folders in sorted order: blue, green, red, two images each
    assert [n.rsplit("_", 1)[1] for n in names].count("blue.png") == 2
    assert {n.rsplit("_", 1)[1] for n in names} == {"blue.png", "green.png", "red.png"}
