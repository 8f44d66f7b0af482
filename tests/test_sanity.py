"""sanity.py: rank correlation and SSIM against known answers, the cascade on a small network,
and ``--sanity`` through the command line on test images and on a user's image."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import IMAGES, TARGETS, TinyNet
from PIL import Image

import sanity
from cli import assert_one_line_error, run_here
from tinydata import random_checkpoint, write_fashion_mnist


def test_average_ranks_share_ties():
    ranks = sanity.average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0, 3.0]))
    assert ranks.tolist() == [3.0, 0.0, 3.0, 1.0, 3.0]


def test_spearman_known_answers():
    a = torch.rand(6, 6, generator=torch.Generator().manual_seed(0))
    assert sanity.spearman(a, a) == pytest.approx(1.0)
    assert sanity.spearman(a, a ** 3) == pytest.approx(1.0)          # monotone: same ranks
    assert sanity.spearman(a, 1 - a) == pytest.approx(-1.0)
    assert sanity.spearman(a, torch.zeros(6, 6)) == 0.0               # a constant map ranks nothing
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), torch.tensor([2.0, 1.0, 4.0, 3.0, 5.0])
    # 1 - 6 sum d^2 / (n (n^2 - 1)) without ties: d = (1, 1, 1, 1, 0)
    assert sanity.spearman(x, y) == pytest.approx(1 - 6 * 4 / (5 * 24))


def test_ssim_known_answers():
    a = torch.rand(16, 16, generator=torch.Generator().manual_seed(1))
    b = torch.rand(16, 16, generator=torch.Generator().manual_seed(2))
    assert sanity.ssim(a, a) == pytest.approx(1.0)
    assert sanity.ssim(a, b) == pytest.approx(sanity.ssim(b, a))
    assert abs(sanity.ssim(a, b)) < 0.2                                # independent noise
    assert sanity.ssim(a, 1 - a) < -0.5                                # inverted structure
    flat = torch.full((16, 16), 0.5)
    assert sanity.ssim(flat, flat) == pytest.approx(1.0)


def test_cascade_leaves_the_model_alone_and_separates_methods_from_the_centre_prior():
    model = TinyNet().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stages, maps, notes = sanity.run_cascade(model, IMAGES, TARGETS, ["cam", "gradcam",
                                                                      "eigencam"],
                                             ["block1"], 8, 64, None)
    assert stages == ["fc", "block2", "block1", "stem"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.training
    assert len(notes) == 1 and "CAM left out at block1" in notes[0]
    assert set(maps) == {("gradcam", "block1"), ("eigencam", "block1"), ("random", None),
                         ("centre", None)}
    assert all(len(series) == 5 for series in maps.values())
    rows = sanity.similarity_rows(stages, maps)
    cell = {(r.method, r.stage): r for r in rows}
    # fc and block2 come after block1: Eigen-CAM (which ignores the class) cannot change yet
    assert cell[("eigencam", "fc")].spearman.mean == pytest.approx(1.0)
    assert cell[("eigencam", "block2")].spearman.mean == pytest.approx(1.0)
    assert cell[("gradcam", "stem")].spearman.mean < 0.9
    failed = sanity.verdicts(rows, stages[-1])
    assert failed[("centre", None)] and not failed[("random", None)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sanity")
    return (random_checkpoint(root / "ck.pth", "fashion_mnist"),
            write_fashion_mnist(root / "data", n_test=4))


def test_cli_sanity_on_test_images_writes_figure_and_table(setup, tmp_path, capfd):
    ckpt, data_dir = setup
    result = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", data_dir, "--sanity",
                      "--vis", "gradcam,eigencam", "--target_layer", "layer3,layer4",
                      "--vis_num", "2", "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "sanity"
    for name in ("sanity.png", "sanity.md", "sanity.csv", "sanity.json"):
        assert (folder / name).is_file(), name
    board = json.loads((folder / "sanity.json").read_text())
    assert board["stages"] == ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"]
    assert {(r["method"], r["layer"]) for r in board["rows"]} == {
        ("gradcam", "layer3"), ("gradcam", "layer4"), ("eigencam", "layer3"),
        ("eigencam", "layer4"), ("random", ""), ("centre", "")}
    assert all(r["n"] == 2 for r in board["rows"])
    assert "Centre prior (baseline): FAILS" in result.stdout
    assert "Grad-CAM (layer4): " in result.stdout


def test_cli_sanity_on_a_user_image(setup, tmp_path, capfd):
    ckpt, _ = setup
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 30, 3), np.uint8)).save(
        tmp_path / "photo.png")
    result = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--sanity", "--vis", "hirescam",
                      "--image", tmp_path / "photo.png", "--out_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "1 image(s) from --image" in (tmp_path / "out" / "sanity" / "sanity.md").read_text()


def test_cli_sanity_with_hidden_strategy_is_a_one_line_error(setup, tmp_path, capfd):
    ckpt, data_dir = setup
    assert_one_line_error(run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", data_dir,
                                   "--sanity", "--vis", "gradcam", "--hidden_strategy", "zero"),
                          "--sanity and --hidden_strategy")
