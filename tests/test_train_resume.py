"""Training a built-in arch from scratch, stopped and resumed: the resumed run ends where the
uninterrupted one ends, bit for bit, and a training state that does not continue this run is
refused in one line before anything is trained or written."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import main
import train
from cli import assert_one_line_error, run_main
from model import VIT_ARCH, read_checkpoint, resume_path
from tinydata import write_fashion_mnist

TINY = ("--mode", "train", "--dataset", "fashion_mnist", "--batch_size", 16,
        "--precision", "fp32")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fm"), n_test=16, n_train=32)


def argv(data_dir: Path, folder: Path, arch: str, *extra: object, epochs: int = 3) -> list[str]:
    return [str(a) for a in (*TINY, "--arch", arch, "--num_epochs", epochs, "--data_dir", data_dir,
                             "--save_path", folder / "net.pth", "--log_dir", folder / "logs",
                             *extra)]


@pytest.mark.parametrize("arch", ["resnet18_cifar", VIT_ARCH])
def test_a_stopped_run_resumed_ends_where_the_uninterrupted_run_ends(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    """Both schedules (SGD one-cycle, AdamW warm-up + cosine): the weights, the training state
    and every row of metrics.csv but its seconds are those of the run that never stopped."""
    assert main.main(argv(data_dir, tmp_path / "a", arch)) == 0
    # The same run, stopped by Ctrl-C as its third epoch begins ...
    one_epoch = train.train_one_epoch

    def interrupted(*args: object, **kwargs: object) -> object:
        if kwargs["desc"].startswith("epoch 3"):
            raise KeyboardInterrupt
        return one_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", interrupted)
    assert main.main(argv(data_dir, tmp_path / "b", arch)) == 130
    assert read_checkpoint(resume_path(tmp_path / "b" / "net.pth"))["epoch"] == 2
    monkeypatch.setattr(train, "train_one_epoch", one_epoch)
    # ... and resumed.
    resumed = run_main(*argv(data_dir, tmp_path / "b", arch, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "epochs 3..3 (resumed from" in resumed.stdout + resumed.stderr
    for name in ("net.pth", "net.resume.pth"):
        a, b = read_checkpoint(tmp_path / "a" / name), read_checkpoint(tmp_path / "b" / name)
        assert a["epoch"] == b["epoch"] and a["acc"] == b["acc"], name
        for key, value in a["model_state_dict"].items():
            assert torch.equal(value, b["model_state_dict"][key]), (name, key)
    rows = {}
    for run in "ab":
        with open(tmp_path / run / "logs" / "metrics.csv") as f:
            rows[run] = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    assert [int(r["epoch"]) for r in rows["b"]] == [1, 2, 3]
    assert rows["a"] == rows["b"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A finished one-epoch ResNet run of 3 planned epochs: its training state, and copies with
    a part missing or a field of the wrong type."""
    folder = tmp_path_factory.mktemp("stopped")
    assert main.main(argv(data_dir, folder, "resnet18_cifar", epochs=1)) == 0
    state = torch.load(folder / "net.resume.pth", weights_only=True)
    state["training"]["num_epochs"] = 3     # as if the run had been asked for 3 and stopped
    torch.save(state, folder / "net.resume.pth")
    for name, broken in (("no_optimizer", {k: v for k, v in state.items()
                                           if k != "optimizer_state_dict"}),
                         ("text_best", {**state, "best_epoch": "one"})):
        (folder / name).mkdir()
        torch.save(broken, folder / name / "net.resume.pth")
    return folder


@pytest.mark.parametrize("where, extra, fragments", [
    ("no_optimizer", (), ("not a complete classifier training state", "optimizer_state_dict")),
    ("text_best", (), ("history do not fit", "one")),
    (".", ("--seed", 1), ("--seed 0", "this run has --seed 1")),
    (".", ("--lr", 0.05), ("--lr 0.1", "this run has --lr 0.05")),
    (".", ("--arch", VIT_ARCH), ("--arch resnet18_cifar", f"this run has --arch {VIT_ARCH}")),
])
def test_resume_refuses_a_state_that_does_not_continue_this_run(
        data_dir: Path, stopped: Path, tmp_path: Path, capfd: pytest.CaptureFixture,
        where: str, extra: tuple, fragments: tuple) -> None:
    folder = stopped / where
    before = {p.name: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    args = argv(data_dir, folder, "resnet18_cifar", "--resume", *extra)
    args[args.index("--log_dir") + 1] = str(tmp_path / "logs")
    code = main.main(args)
    err = capfd.readouterr().err
    lines = [line for line in err.split("\n") if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "net.resume.pth" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert {p.name: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "logs").exists()


def test_resume_without_a_state_gives_one_line(data_dir: Path, tmp_path: Path) -> None:
    result = run_main(*argv(data_dir, tmp_path, "resnet18_cifar", "--resume"))
    assert_one_line_error(result, "--resume", "net.resume.pth")
    assert not (tmp_path / "net.pth").exists()


def test_fine_tuning_refuses_resume(tmp_path: Path) -> None:
    """Only training from scratch resumes; fine-tuning says the flag is not for it."""
    result = run_main("--mode", "train", "--arch", "resnet18", "--data_dir", tmp_path,
                      "--resume")
    assert_one_line_error(result, "--resume")
