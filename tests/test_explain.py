"""explain.py and visualize.py through the CLI: panels, grids, a user's own images."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import random_resnet
from PIL import Image

import cli_classify
import explain
import main
from cli import assert_one_line_error, run_here
from errors import UserError
from explain import EXPLAINERS, explain_batched, make_explainer, parse_methods
from tinydata import random_checkpoint, write_fashion_mnist
from visualize import heatmap_panel, overlay, slug, unique_slugs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    return (random_checkpoint(root / "ck.pth", "fashion_mnist"),
            write_fashion_mnist(root / "data", n_test=8))


def test_vis_num_writes_that_many_panels_and_one_grid(setup, tmp_path, capfd):
    ckpt, data_dir = setup
    result = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", data_dir,
                      "--vis", "gradcam", "--vis_num", "3", "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    panels = sorted(p.name for p in (tmp_path / "gradcam").glob("gradcam_*_pred_*_gt_*.png"))
    assert len(panels) == 3
    assert [int(re.match(r"gradcam_(\d+)_", p).group(1)) for p in panels] == [0, 1, 2]
    assert "gradcam_0_pred_" in panels[0] and panels[0].endswith("_gt_T-shirt_top.png")
    assert (tmp_path / "gradcam" / "gradcam_grid.png").is_file()
    panel = np.asarray(Image.open(tmp_path / "gradcam" / panels[0]))
    assert panel.shape[0] >= 224 and panel.shape[1] > 2 * panel.shape[0]   # original | overlay


def test_panels_as_jpeg_are_the_png_panels_up_to_compression(setup, tmp_path, capfd):
    """``--panel_format jpg``: the same panels, named the same but for the suffix, of the same
    size and within JPEG's loss of the lossless PNG (test images and photos alike)."""
    ckpt, data_dir = setup
    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 16, 3), np.uint8)).resize(
        (160, 120), Image.Resampling.BICUBIC).save(photo)
    for fmt in ("png", "jpg"):
        for source in (["--data_dir", data_dir, "--vis_num", "2"], ["--image", photo]):
            result = run_here(capfd, "--mode", "test", "--save_path", ckpt, *source, "--vis",
                              "gradcam", "--panel_format", fmt, "--out_dir", tmp_path / fmt)
            assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "png" / "gradcam").glob("gradcam_*.png"))
    jpgs = sorted((tmp_path / "jpg" / "gradcam").glob("gradcam_*.jpg"))
    assert [p.stem for p in pngs if p.stem != "gradcam_grid"] == [p.stem for p in jpgs]
    assert len(jpgs) == 3
    for path in jpgs:
        assert path.read_bytes()[:3] == b"\xff\xd8\xff"              # a JPEG file
        lossless = np.asarray(Image.open(tmp_path / "png" / "gradcam" / f"{path.stem}.png"),
                              dtype=np.float32)
        lossy = np.asarray(Image.open(path), dtype=np.float32)
        assert lossy.shape == lossless.shape
        assert np.abs(lossy - lossless).mean() < 4.0, path.name
    assert (tmp_path / "jpg" / "gradcam" / "gradcam_grid.png").is_file()   # figures stay PNG


def test_several_methods_and_true_class_targets(setup, tmp_path, capfd):
    ckpt, data_dir = setup
    result = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", data_dir,
                      "--vis", "cam,gradcampp", "--vis_num", "2", "--target", "gt",
                      "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    for method in ("cam", "gradcampp"):
        assert len(list((tmp_path / method).glob(f"{method}_*_pred_*.png"))) == 2


def test_own_images_grayscale_and_rgba(setup, tmp_path, capfd):
    ckpt, _ = setup
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30), np.uint8), "L").save(
        tmp_path / "gray.png")
    Image.new("RGBA", (64, 48), (200, 30, 30, 128)).save(tmp_path / "rgba.png")
    result = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--vis", "gradcam",
                      "--image", tmp_path / "gray.png", "--image", tmp_path / "rgba.png",
                      "--out_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    top5 = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(top5) == 2 and all(line.count(",") == 4 for line in top5)
    assert sorted(p.name.split("_pred_")[0] for p in (tmp_path / "out" / "gradcam").iterdir()) \
        == ["gradcam_gray", "gradcam_rgba"]


def test_own_image_missing(setup, tmp_path, capfd):
    ckpt, _ = setup
    result = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--vis", "gradcam",
                      "--image", tmp_path / "missing.png")
    assert_one_line_error(result, "image not found", "missing.png")


def test_unknown_method_and_layer(setup, tmp_path, capfd):
    ckpt, data_dir = setup
    assert_one_line_error(run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", data_dir,
                                   "--vis", "lime"), "unknown heatmap method 'lime'")
    assert_one_line_error(run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", data_dir,
                                   "--vis", "gradcam", "--target_layer", "layer7"),
                          "no layer 'layer7'")


def test_registry_and_method_lists():
    assert parse_methods("all") == list(EXPLAINERS)
    assert parse_methods("cam, gradcam") == ["cam", "gradcam"]
    with pytest.raises(UserError):
        parse_methods("cam,nope")
    model = random_resnet()
    with pytest.raises(UserError, match="layer4"):   # CAM finds its head on the first call
        make_explainer("cam", model, "layer3")(torch.rand(1, 3, 32, 32), torch.tensor([0]))


def test_chunked_explanations_equal_one_batch():
    model = random_resnet()
    images = torch.randn(7, 3, 32, 32)
    targets = torch.randint(0, 10, (7,))
    explainer = make_explainer("gradcam", model)
    torch.testing.assert_close(explain_batched(explainer, images, targets, 3),
                               explainer(images, targets), rtol=0, atol=1e-5)


def test_overlay_and_panel_pixels():
    image = np.zeros((4, 4, 3), np.uint8)
    hot = overlay(image, np.ones((4, 4), np.float32), alpha=1.0)
    cold = overlay(image, np.zeros((4, 4), np.float32), alpha=1.0)
    assert tuple(hot[0, 0]) == (128, 0, 0) and tuple(cold[0, 0]) == (0, 0, 128)  # JET ends
    panel = heatmap_panel(torch.ones(3, 32, 32), torch.zeros(32, 32), min_side=64, gap=2)
    assert panel.shape == (64, 130, 3) and (panel[:, :64] == 255).all()


def test_slug_makes_class_names_file_safe():
    assert slug("T-shirt/top") == "T-shirt_top" and slug("Ankle boot") == "Ankle_boot"


def test_many_panels_are_written_chunk_by_chunk_and_the_grid_is_capped(setup, tmp_path,
                                                                        monkeypatch, capsys):
    """--vis_num N: heatmaps of one --batch_size chunk at a time, each panel written before
    the next chunk is explained, and a grid of the first GRID_MAX images only."""
    ckpt, data_dir = setup
    chunks, panels_before = [], []
    block = explain._explain_block

    def counting_block(model, explainers, pixels, *args):
        chunks.append(len(pixels))
        panels_before.append(len(list((tmp_path / "gradcam").glob("gradcam_*_pred_*.png"))))
        return block(model, explainers, pixels, *args)

    monkeypatch.setattr(explain, "_explain_block", counting_block)
    monkeypatch.setattr(cli_classify, "GRID_MAX", 3)
    assert main.main(["--save_path", str(ckpt), "--data_dir", str(data_dir), "--vis", "gradcam",
                      "--vis_num", "7", "--batch_size", "3", "--out_dir", str(tmp_path)]) == 0
    assert chunks == [3, 3, 1] and panels_before == [0, 3, 6]
    assert len(list((tmp_path / "gradcam").glob("gradcam_*_pred_*.png"))) == 7
    assert "7 panels" in capsys.readouterr().out.replace("\n", " ").split("the grid shows")[0]
    grid = np.asarray(Image.open(tmp_path / "gradcam" / "gradcam_grid.png"))
    assert grid.shape[0] < 300 and grid.shape[1] < 700   # one row of 3 images, not 2 rows of 5


def test_images_whose_names_reduce_to_the_same_slug_get_their_own_files(setup, tmp_path):
    ckpt, _ = setup
    paths = [tmp_path / "日本.png", tmp_path / "中文.png", tmp_path / "a" / "cat.png",
             tmp_path / "b" / "cat.png"]
    for i, path in enumerate(paths):
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (30, 30), (60 * i, 20, 200)).save(path)
    args = [a for p in paths for a in ("--image", str(p))]
    assert main.main(["--save_path", str(ckpt), "--vis", "gradcam", "--out_dir",
                      str(tmp_path / "out"), *args]) == 0
    names = sorted(p.name.split("_pred_")[0] for p in (tmp_path / "out" / "gradcam").iterdir())
    assert names == sorted(["gradcam_日本", "gradcam_中文", "gradcam_cat", "gradcam_cat_2"])
    assert len(set(unique_slugs(["x", "x", "x_2", "??", "x"]))) == 5


@pytest.mark.parametrize("methods", [("gradcam", "layercam"), ("gradcampp",), ("cam", "gradcam"),
                                     ("guidedgradcam", "gradcam")])
def test_predicting_from_the_first_methods_own_pass_changes_nothing(methods):
    """``predict_and_explain`` reads the prediction from a plain fp32 Grad-CAM-family pass
    instead of a separate forward: the probabilities and every map are exactly those of
    ``probabilities`` followed by each method for its argmax (other first methods take the
    separate forward, and give the same too)."""
    torch.manual_seed(0)
    model = random_resnet(num_classes=10)
    images = torch.randn(5, 3, 32, 32)
    explainers = {m: make_explainer(m, model, "layer4") for m in methods}
    probs, maps = explain.predict_and_explain(model, images, explainers, batch_size=2)
    expected = explain.probabilities(model, images, 2)
    assert torch.equal(probs, expected)
    assert list(maps) == list(methods)
    for m in methods:
        assert torch.equal(maps[m], explain_batched(explainers[m], images, expected.argmax(1), 2)), m


def test_raw_maps_of_the_predicted_class_read_the_pass_own_logits():
    from gradcam import GradCAM
    torch.manual_seed(1)
    model = random_resnet(num_classes=10)
    images = torch.randn(3, 3, 32, 32)
    cam = GradCAM(model, "layer4")
    maps, logits = cam.raw_maps(images, None)
    again, _ = cam.raw_maps(images, logits.argmax(1))
    assert torch.equal(maps, again)
