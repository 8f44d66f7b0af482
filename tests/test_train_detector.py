"""Training the scene detector: a tiny run end to end, a stopped run resumed, checkpoints."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import detection as det
import detectors
import main
import scenes
import train_detector
from cli import assert_one_line_error, run_main
from model import read_checkpoint
from tinydata import write_fashion_mnist

TINY = ("--mode", "train", "--det_vis", "--det_scenes", 4, "--batch_size", 2, "--det_num", 2,
        "--lr", 0.01, "--weight_decay", 1e-4, "--precision", "fp32", "--save_half")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_test=20, n_train=20)


def train(data_dir: Path, folder: Path, epochs: int, *extra: object) -> object:
    return run_main(*TINY, "--num_epochs", epochs, "--data_dir", data_dir,
                    "--save_path", folder / "det.pth", "--log_dir", folder / "logs", *extra)


def test_tiny_run_stopped_and_resumed_equals_one_run(data_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    straight = train(data_dir, tmp_path / "a", 2)
    assert straight.returncode == 0, straight.stderr
    # The same run, stopped by Ctrl-C as its second epoch begins ...
    one_epoch = train_detector.train_one_epoch

    def interrupted(*args: object, **kwargs: object) -> object:
        if kwargs["desc"].startswith("epoch 2"):
            raise KeyboardInterrupt
        return one_epoch(*args, **kwargs)

    monkeypatch.setattr(train_detector, "train_one_epoch", interrupted)
    argv = [str(a) for a in (*TINY, "--num_epochs", 2, "--data_dir", data_dir, "--save_path",
                             tmp_path / "b" / "det.pth", "--log_dir", tmp_path / "b" / "logs")]
    assert main.main(argv) == 130
    assert read_checkpoint(tmp_path / "b" / "det.pth")["epoch"] == 1
    # ... and resumed: it ends where the uninterrupted run ended, bit for bit.
    resumed = train(data_dir, tmp_path / "b", 2, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs 2..2" in resumed.stdout
    a = read_checkpoint(tmp_path / "a" / "det.pth")
    b = read_checkpoint(tmp_path / "b" / "det.pth")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model_state_dict"].items():
        assert torch.equal(value, b["model_state_dict"][key]), key
    with open(tmp_path / "b" / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(train_detector.FIELDS) <= set(rows[0])
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert (tmp_path / "b" / "logs" / "training_curves.png").is_file()


def test_checkpoint_describes_itself_and_loads_back(data_dir: Path, tmp_path: Path) -> None:
    result = train(data_dir, tmp_path, 1)
    assert result.returncode == 0, result.stderr
    ckpt = read_checkpoint(tmp_path / "det.pth")
    assert ckpt["arch"] == detectors.SCENE_ARCH and "optimizer_state_dict" not in ckpt
    assert ckpt["classes"] == ["__background__", *scenes.CLASSES]
    assert ckpt["input_size"] == scenes.CANVAS and ckpt["score_thresh"] == 0.5
    assert all(v.dtype == torch.float16 for v in ckpt["model_state_dict"].values()
               if v.is_floating_point())
    detector = detectors.load_detector(str(tmp_path / "det.pth"), torch.device("cpu"))
    assert detector.names[1] == "T-shirt/top" and detector.classes == scenes.CLASSES
    assert detector.score_thresh == 0.5 and detector.input_fit == (128, 128)
    # the loaded weights are the saved ones (fp16 -> fp32), BatchNorm is trainable
    state = detector.model.state_dict()
    for key, value in ckpt["model_state_dict"].items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key
    assert isinstance(detector.model.backbone.body.layer2[0].bn1, torch.nn.BatchNorm2d)
    assert det.resolve_layer(detector.model, "backbone.body.layer4") is not None


def test_resume_without_state_gives_one_line(data_dir: Path, tmp_path: Path) -> None:
    result = train(data_dir, tmp_path, 1, "--resume")
    assert_one_line_error(result, "--resume", "det.resume.pth")
    assert not (tmp_path / "det.pth").exists()


@pytest.fixture(scope="module")
def resume_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete training state of a run with --seed 0 --det_scenes 4 (untrained weights),
    and copies with a part missing."""
    from model import save_checkpoint
    folder = tmp_path_factory.mktemp("resume")
    meta = train_detector.detector_meta()
    model = detectors.build_scene_detector(meta)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    extra = {"epoch": 1, "map": 0.0, "seed": 0, "scenes_per_epoch": 4, "batch_size": 2,
             "step": 2, "history": [{"epoch": 1, "test_map": 0.0}],
             "torch_rng": torch.get_rng_state()}
    save_checkpoint(folder / "det.resume.pth", model, {**meta, **extra}, optimizer=optimizer,
                    half=True)
    full = torch.load(folder / "det.resume.pth", weights_only=True)
    (folder / "no_optimizer").mkdir()
    torch.save({k: v for k, v in full.items() if k != "optimizer_state_dict"},
               folder / "no_optimizer" / "det.resume.pth")
    (folder / "text_step").mkdir()
    torch.save({**full, "step": "2"}, folder / "text_step" / "det.resume.pth")
    return folder


@pytest.mark.parametrize("where, extra, fragments", [
    ("no_optimizer", (), ("not a complete training state", "optimizer_state_dict")),
    ("text_step", (), ("'step'",)),
    (".", ("--seed", 1), ("--seed 0", "this run has --seed 1")),
    (".", ("--det_scenes", 8), ("--det_scenes 4", "this run has --det_scenes 8")),
])
def test_resume_refuses_a_state_that_does_not_continue_this_run(
        data_dir: Path, resume_folder: Path, tmp_path: Path, capfd: pytest.CaptureFixture,
        where: str, extra: tuple, fragments: tuple) -> None:
    """One line before any training: a state without a part, a field of the wrong type, or
    written with another --seed or --det_scenes (the run would be neither the old nor a new
    one); nothing is written."""
    folder = resume_folder / where
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    argv = [str(a) for a in (*TINY, "--num_epochs", 2, "--data_dir", data_dir, "--save_path",
                             folder / "det.pth", "--log_dir", tmp_path / "logs", "--resume",
                             *extra)]
    code = main.main(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.split("\n") if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "det.resume.pth" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert not (tmp_path / "logs").exists()


def test_training_can_start_from_the_shipped_checkpoint(data_dir: Path, tmp_path: Path,
                                                        capfd) -> None:
    """``--det_weights`` with ``--mode train --det_vis`` starts from a checkpoint's weights: at
    a learning rate of 1e-9 one step leaves them as they were (fp16-rounded as saved)."""
    from cli import run_here
    shipped = Path(__file__).resolve().parent.parent / "checkpoints" / "fasterrcnn_fashion_scenes.pth"
    if not shipped.is_file():
        pytest.skip("the shipped detector is missing")
    result = run_here(capfd, "--mode", "train", "--det_vis", "--det_scenes", 2, "--batch_size",
                      2, "--det_num", 2, "--lr", 1e-9, "--precision", "fp32", "--num_epochs", 1,
                      "--data_dir", data_dir, "--det_weights", shipped, "--save_path",
                      tmp_path / "det.pth", "--log_dir", tmp_path / "logs")
    assert result.returncode == 0, result.stderr
    start = read_checkpoint(shipped)["model_state_dict"]
    saved = read_checkpoint(tmp_path / "det.pth")["model_state_dict"]
    for key in ("backbone.body.conv1.weight", "roi_heads.box_predictor.cls_score.weight"):
        assert torch.allclose(saved[key].float(), start[key].float(), atol=1e-6), key
