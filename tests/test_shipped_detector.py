"""The shipped scene detector on the shipped test scenes, offline: a VOC-style run over three
scenes finds the garments and writes its numbers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import ROOT, run_here

CHECKPOINT = ROOT / "checkpoints" / "fasterrcnn_fashion_scenes.pth"
SCENES = ROOT / "data" / "fashion_scenes"

pytestmark = pytest.mark.skipif(not CHECKPOINT.is_file() or not SCENES.is_dir(),
                                reason="the shipped detector or its test scenes are missing")


def test_voc_style_run_over_three_shipped_scenes(tmp_path: Path, capfd) -> None:
    result = run_here(capfd, "--det_vis", "--det_weights", CHECKPOINT, "--voc_path", SCENES,
                      "--det_num", 3, "--det_layer", "layer2,layer4", "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "detection"
    report = json.loads((folder / "voc_metrics.json").read_text())
    assert report["images"] == 3 and report["images_without_detections"] == []
    assert list(report["ap"])[:2] == ["T-shirt/top", "Trouser"]   # the checkpoint's classes
    assert report["explained_detections"] >= 3 and report["matched_detections"] >= 3
    assert report["map"] > 0.5
    for layer in ("layer2", "layer4"):
        assert report["layers"][layer]["pointing_game"] is not None
        assert (folder / f"000000_gradcam_{layer}.png").is_file()
    assert set(report["baselines"]) == {"centre", "uniform", "other_detection"}
    assert (folder / "detections_grid.png").is_file()


def test_one_scene_image_explained_with_the_checkpoint_class_names(tmp_path: Path, capfd) -> None:
    result = run_here(capfd, "--det_img", SCENES / "JPEGImages" / "000001.png", "--det_weights",
                      CHECKPOINT, "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "detections explained" in result.stdout
    names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot")
    assert any(name in result.stdout for name in names)
    assert (tmp_path / "detection" / "000001_gradcam_layer4.png").is_file()


def _three_scenes(tmp_path: Path) -> Path:
    import shutil
    voc = tmp_path / "scenes"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    for i in ("000000", "000001", "000002"):
        shutil.copy(SCENES / "JPEGImages" / f"{i}.png", voc / "JPEGImages")
        shutil.copy(SCENES / "Annotations" / f"{i}.xml", voc / "Annotations")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("000000\n000001\n000002\n")
    return voc


def test_a_corrupt_image_is_skipped_with_a_note_and_the_run_goes_on(tmp_path: Path, capfd) -> None:
    voc = _three_scenes(tmp_path)
    png = voc / "JPEGImages" / "000001.png"
    png.write_bytes(png.read_bytes()[:80])           # a truncated PNG, second in the list
    result = run_here(capfd, "--det_vis", "--det_weights", CHECKPOINT, "--voc_path", voc,
                      "--det_num", 3, "--det_layer", "layer2", "--out_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: 000001")]
    assert len(notes) == 1 and "skipped" in notes[0]
    report = json.loads((tmp_path / "out" / "detection" / "voc_metrics.json").read_text())
    assert report["unreadable_images"] == ["000001"] and report["images"] == 2
    assert list((tmp_path / "out" / "runs").glob("*.txt"))   # the run's manifest was written


def test_drise_and_the_miss_analysis_on_shipped_scenes(tmp_path: Path, capfd) -> None:
    voc = _three_scenes(tmp_path)
    result = run_here(capfd, "--det_vis", "--det_weights", CHECKPOINT, "--voc_path", voc,
                      "--det_num", 2, "--det_method", "drise", "--det_masks", 32,
                      "--det_explain_missed", "--out_dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "detection" / "voc_metrics.json").read_text())
    assert list(report["layers"]) == ["input"] and report["drise"]["masks"] == 32
    assert report["layers"]["input"]["detections"] >= 1
    assert report["misses"]["total"] == sum(report["misses"]["by_kind"].values())
    assert (tmp_path / "out" / "detection" / "misses.csv").is_file()
    assert "Missed objects:" in result.stdout
