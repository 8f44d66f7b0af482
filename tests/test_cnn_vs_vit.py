"""scripts/cnn_vs_vit.py: the CNN-against-ViT comparison runs both models on the same images
(those both classify correctly) and writes its page from the runs' JSON alone."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data import DATASETS
from model import VIT_ARCH, build_resnet18, build_vit_small, save_checkpoint
from tinydata import write_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "cnn_vs_vit.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cnn_vs_vit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module      # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def sure_of_class_0(path: Path, model: torch.nn.Module, head: torch.nn.Linear, arch: str
                    ) -> Path:
    """A random-weight checkpoint whose head favours class 0 strongly: it classifies exactly
    the test images of class 0 correctly."""
    with torch.no_grad():
        head.bias.zero_()
        head.bias[0] = 50.0
    info = DATASETS["fashion_mnist"]
    save_checkpoint(path, model, {"arch": arch, "dataset": info.name, **info.as_meta(),
                                  "epoch": 1, "acc": 10.0})
    return path


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cnn_vs_vit")
    data = write_fashion_mnist(folder / "data", n_test=40)      # labels 0..9 in turn
    torch.manual_seed(0)
    cnn = build_resnet18(10)
    vit = build_vit_small(10)
    cnn_path = sure_of_class_0(folder / "cnn.pth", cnn, cnn.fc, "resnet18_cifar")
    vit_path = sure_of_class_0(folder / "vit.pth", vit, vit.heads.head, VIT_ARCH)
    script = load_script()
    code = script.main([str(folder / "out"), "--cnn", str(cnn_path), "--vit", str(vit_path),
                        "--data_dir", str(data), "--num_eval", "3", "--steps", "2",
                        "--sanity_images", "2", "--precision", "fp32",
                        "--methods", "gradcam,eigencam,rollout",
                        "--page", str(folder / "page" / "cnn_vs_vit.md")])
    return folder, code


def test_both_models_are_scored_on_the_same_images(compared):
    folder, code = compared
    assert code == 0
    record = json.loads((folder / "out" / "run.json").read_text())
    assert record["images"] == [0, 10, 20]        # the first three both get right (class 0)
    assert record["models"]["resnet18"]["test_accuracy"] == pytest.approx(10.0)
    for key in ("resnet18", "vit"):
        board = json.loads((folder / "out" / key / "leaderboard" / "comparison_zero.json")
                           .read_text())
        assert {r["n"] for r in board["rows"]} == {3}
    vit_methods = {r["method"] for r in json.loads(
        (folder / "out" / "vit" / "leaderboard" / "comparison_zero.json").read_text())["rows"]}
    cnn_methods = {r["method"] for r in json.loads(
        (folder / "out" / "resnet18" / "leaderboard" / "comparison_zero.json").read_text())["rows"]}
    assert "rollout" in vit_methods and "rollout" not in cnn_methods
    assert {"gradcam", "eigencam"} <= cnn_methods & vit_methods
    assert set(record["seconds"]) == {"test accuracy", "maps figure", "resnet18 leaderboard",
                                      "resnet18 sanity check", "vit leaderboard",
                                      "vit sanity check"}


def test_the_page_carries_the_runs_numbers_and_figures(compared):
    folder, _ = compared
    text = (folder / "page" / "cnn_vs_vit.md").read_text()
    record = json.loads((folder / "out" / "run.json").read_text())
    assert record["machine"]["cpu"] in text and record["date"] in text
    assert record["command"].startswith("python scripts/cnn_vs_vit.py ") and "--num_eval 3" in text
    for key in ("resnet18", "vit"):
        assert f"{record['models'][key]['test_accuracy']:.2f}%" in text
        for strategy in ("zero", "blur"):
            board = json.loads((folder / "out" / key / "leaderboard"
                                / f"comparison_{strategy}.json").read_text())
            for row in board["rows"]:
                assert f"{row['insertion_minus_deletion_mean']:.4f}" in text, (key, row)
            assert (folder / "page" / "cnn_vs_vit" / f"{key}_ranking_{strategy}.png").is_file()
        sanity = json.loads((folder / "out" / key / "sanity" / "sanity.json").read_text())
        for row in sanity["rows"]:
            assert f"{row['spearman_mean']:.2f} / {row['ssim_mean']:.2f}" in text
        assert (folder / "page" / "cnn_vs_vit" / f"{key}_sanity.png").is_file()
    assert "block 6 ln_1" in text and "block 4 ln_1" in text
    assert (folder / "page" / "cnn_vs_vit" / "maps.png").stat().st_size > 1000


def test_the_page_rebuilds_from_the_files_alone_from_any_folder(compared):
    folder, _ = compared
    page = folder / "page" / "cnn_vs_vit.md"
    before = page.read_text()
    page.unlink()
    result = subprocess.run([sys.executable, SCRIPT.name, str(folder / "out"), "--page_only",
                             "--page", str(page)], cwd=SCRIPT.parent, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert page.read_text() == before


def test_the_page_rebuilds_from_its_record_alone(compared):
    """--rebuild reads only the page's own folder (what is committed), not the runs."""
    folder, _ = compared
    page = folder / "page" / "cnn_vs_vit.md"
    before = page.read_text()
    runs = folder / "out"
    moved = runs.rename(folder / "runs_elsewhere")
    try:
        page.unlink()
        result = subprocess.run([sys.executable, SCRIPT.name, "--rebuild", "--page", str(page)],
                                cwd=SCRIPT.parent, capture_output=True, text=True, timeout=120,
                                check=False)
    finally:
        moved.rename(runs)
    assert result.returncode == 0, result.stderr
    assert page.read_text() == before


def test_a_missing_checkpoint_is_one_line(tmp_path, capsys):
    script = load_script()
    assert script.main([str(tmp_path / "out"), "--cnn", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: checkpoint not found"), err
    assert not (tmp_path / "out").exists()
