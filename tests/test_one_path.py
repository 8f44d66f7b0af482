"""One path for every classifier: the shipped checkpoint, a torchvision arch and a factory load
through one loader, every classifier flag applies to each of them or is refused in one line,
and the built-in test split, photos and image folders are sources of the same jobs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sources
from cli import assert_one_line_error, run_here
from recipes import SHIPPED_CLASSIFIER
from tinydata import write_fashion_mnist
from zoo import load_classifier

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = str(ROOT / SHIPPED_CLASSIFIER)
SAMPLE = str(ROOT / "data" / "samples" / "chelsea.jpg")


@pytest.fixture(scope="module")
def small_split(tmp_path_factory) -> Path:
    """A Fashion-MNIST test split of 20 random images in the real idx format."""
    root = tmp_path_factory.mktemp("fm")
    write_fashion_mnist(root, n_test=20)
    return root


def test_no_flags_tests_the_shipped_classifier_and_says_so(capsys, small_split, tmp_path,
                                                            monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert not (ROOT / "checkpoints" / "resnet_best.pth").exists()
    result = run_here(capsys, "--data_dir", str(small_split), "--out_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert "No --save_path" in first and SHIPPED_CLASSIFIER in first
    assert "Test Accuracy:" in result.stdout


def test_training_never_defaults_to_a_shipped_checkpoint() -> None:
    import jobs
    import main
    parser = main.build_parser()
    shipped = {p.name for p in (ROOT / "checkpoints").glob("*.pth")}
    for argv in (["--mode", "train"], ["--mode", "train", "--det_vis"],
                 ["--mode", "train", "--arch", "resnet18"]):
        assert Path(str(jobs.setting(parser.parse_args(argv), "save_path"))).name not in shipped


def test_std_applies_to_the_shipped_checkpoint_and_its_test_split(small_split) -> None:
    plain = load_classifier(weights=SHIPPED)
    other = load_classifier(weights=SHIPPED, std=(0.5, 0.5, 0.5))
    assert plain.dataset == other.dataset == "fashion_mnist"
    assert other.inputs.std == (0.5, 0.5, 0.5) != plain.inputs.std
    assert sources.dataset_split(other, small_split).info.std == (0.5, 0.5, 0.5)


@pytest.mark.parametrize("argv, fragments", [
    (["--vis", "gradcam", "--input_size", "64"], ("--input_size 64", "32 px")),
    (["--vis", "gradcam", "--classes", "THREE"], ("--classes", "3 classes", "10 outputs")),
    (["--model", "x.py:build", "--arch", "resnet50"], ("--model", "--arch")),
    (["--list_layers", "--batch_size", "7"], ("--batch_size", "list_layers")),
    (["--dataset", "cifar10"], ("--dataset cifar10", "fashion_mnist")),
])
def test_a_classifier_flag_that_cannot_apply_is_refused(capsys, small_split, tmp_path, argv,
                                                        fragments) -> None:
    classes = tmp_path / "three.txt"
    classes.write_text("a\nb\nc\n")
    (tmp_path / "x.py").write_text("def build():\n    raise SystemExit\n")
    argv = [str(classes) if a == "THREE" else str(tmp_path / a) if a == "x.py:build" else a
            for a in argv]
    result = run_here(capsys, "--save_path", SHIPPED, "--data_dir", str(small_split),
                      "--out_dir", str(tmp_path / "out"), *argv)
    assert_one_line_error(result, *fragments)


def test_input_size_applies_to_photos_of_the_shipped_checkpoint(capsys, tmp_path) -> None:
    result = run_here(capsys, "--save_path", SHIPPED, "--image", SAMPLE, "--input_size", "64",
                      "--out_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "64 px" in result.stdout


def test_image_panels_are_named_and_sized_alike_whatever_the_target(capsys, tmp_path) -> None:
    sizes = {}
    for target in ("pred", "Shirt"):
        out = tmp_path / target
        extra = [] if target == "pred" else ["--target", target]
        result = run_here(capsys, "--save_path", SHIPPED, "--image", SAMPLE, "--vis", "gradcam",
                          "--out_dir", str(out), *extra)
        assert result.returncode == 0, result.stderr
        (panel,) = (out / "gradcam").glob("*.png")
        kind = "pred" if target == "pred" else "class"
        assert panel.name.startswith(f"gradcam_chelsea_{kind}_"), panel.name
        sizes[target] = Image.open(panel).size
    assert sizes["pred"] == sizes["Shirt"]


def test_a_folder_is_a_source_of_the_same_jobs(capsys, tmp_path) -> None:
    """A torchvision model on an image folder: accuracy through the same report as the test
    split (with its confusion matrix), heatmaps of the first --vis_num images."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        os.makedirs(tmp_path / "tree" / name)
        for k in range(3):
            Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(
                tmp_path / "tree" / name / f"{k}.png")
    (tmp_path / "two.txt").write_text("a\nb\n")
    model = ["--arch", "resnet18", "--classes", str(tmp_path / "two.txt"), "--input_size", "32",
             "--data_dir", str(tmp_path / "tree")]
    result = run_here(capsys, *model, "--out_dir", str(tmp_path / "acc"))
    assert result.returncode == 0, result.stderr
    assert "Test Accuracy:" in result.stdout
    assert (tmp_path / "acc" / "confusion_matrix.png").is_file()
    result = run_here(capsys, *model, "--vis", "gradcam", "--vis_num", "2",
                      "--out_dir", str(tmp_path / "vis"))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "vis" / "gradcam").glob("*.png"))) == 2
