"""train.py and the CLI's train/test modes, end to end on tiny data in the real formats."""
from __future__ import annotations

import csv

import pytest
import torch

import main
from cli import assert_one_line_error, run_here, run_main
from data import DATASETS
from errors import TrainingStopped
from model import build_resnet18, read_checkpoint, save_checkpoint
from tinydata import random_checkpoint, write_fashion_mnist
from train import TrainConfig, accuracy_report, fit, warmup_fraction
from zoo import load_classifier


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_test=40, n_train=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_dir):
    """One epoch through the real CLI, then ``--mode test --vis none`` on the checkpoint."""
    out = tmp_path_factory.mktemp("run")
    ckpt = out / "ck.pth"
    train = run_main("--mode", "train", "--dataset", "fashion_mnist", "--data_dir", fashion_dir,
                     "--num_epochs", "1", "--batch_size", "32", "--save_path", ckpt,
                     "--log_dir", out / "logs")
    test = run_main("--mode", "test", "--save_path", ckpt, "--data_dir", fashion_dir,
                    "--vis", "none", "--out_dir", out / "results")
    return out, ckpt, train, test


def test_train_cli_writes_checkpoint_metrics_and_curves(trained):
    out, ckpt, train, _ = trained
    assert train.returncode == 0, train.stderr
    assert "Best test accuracy:" in train.stdout
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"} <= rows[0].keys()
    assert (out / "logs" / "training_curves.png").stat().st_size > 1000
    payload = read_checkpoint(ckpt)
    assert "optimizer_state_dict" in payload and payload["epoch"] == 1
    assert payload["acc"] == pytest.approx(float(rows[0]["test_acc"]))


def test_checkpoint_loads_back_with_its_dataset_and_classes(trained):
    _, ckpt, _, _ = trained
    meta = read_checkpoint(ckpt)
    assert load_classifier(weights=ckpt).dataset == meta["dataset"] == "fashion_mnist"
    assert tuple(meta["classes"]) == DATASETS["fashion_mnist"].classes
    assert meta["mean"] == list(DATASETS["fashion_mnist"].mean)


def test_test_cli_prints_accuracy_per_class_and_confusion_matrix(trained):
    out, ckpt, _, test = trained
    assert test.returncode == 0, test.stderr
    line = next(s for s in test.stdout.splitlines() if s.startswith("Test Accuracy:"))
    accuracy = float(line.split()[-1].rstrip("%"))
    assert accuracy == pytest.approx(read_checkpoint(ckpt)["acc"], abs=0.01)
    assert "Ankle boot" in test.stdout and "Trouser" in test.stdout
    assert (out / "results" / "confusion_matrix.png").stat().st_size > 1000


def _config(tmp_path, data_dir, name):
    return TrainConfig(dataset="fashion_mnist", data_dir=str(data_dir), num_epochs=1,
                       batch_size=32, save_path=str(tmp_path / f"{name}.pth"),
                       log_dir=str(tmp_path / name))


def test_seeded_training_is_repeatable_on_cpu(tmp_path, fashion_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same reduction order in every run
    try:
        for name in ("a", "b"):
            fit(_config(tmp_path, fashion_dir, name))
    finally:
        torch.set_num_threads(threads)
    a = read_checkpoint(tmp_path / "a.pth")["model_state_dict"]
    b = read_checkpoint(tmp_path / "b.pth")["model_state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accuracy_report_counts():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    acc, per_class, confusion = accuracy_report(logits, labels, ("a", "b"))
    assert acc == 50.0 and per_class == [50.0, 50.0]
    assert confusion.tolist() == [[1, 1], [1, 1]]


# -- bad input through the CLI: one line on stderr, exit status 2 ------------------------------

def test_missing_checkpoint(tmp_path, capfd):
    assert_one_line_error(run_here(capfd, "--mode", "test", "--save_path", tmp_path / "none.pth"),
                          "checkpoint not found")


def test_corrupt_checkpoint(tmp_path, capfd):
    (tmp_path / "bad.pth").write_bytes(b"\x80\x04 truncated pickle")
    assert_one_line_error(run_here(capfd, "--mode", "test", "--save_path", tmp_path / "bad.pth"),
                          "corrupt")


def test_checkpoint_of_another_architecture(tmp_path, capfd):
    import torchvision
    torch.save({"arch": "resnet50", "model_state_dict": torchvision.models.resnet50().state_dict()},
               tmp_path / "r50.pth")
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "bare_r50.pth")
    assert_one_line_error(run_here(capfd, "--mode", "test", "--save_path", tmp_path / "r50.pth"),
                          "arch resnet50, not resnet18_cifar")
    assert_one_line_error(run_here(capfd, "--mode", "test", "--save_path", tmp_path / "bare_r50.pth"),
                          "does not fit arch resnet18_cifar")


def test_checkpoint_of_another_class_count(tmp_path, fashion_dir, capfd):
    torch.save(read_checkpoint(random_checkpoint(tmp_path / "ck.pth", num_classes=100))
               ["model_state_dict"], tmp_path / "bare100.pth")
    result = run_here(capfd, "--mode", "test", "--save_path", tmp_path / "bare100.pth", "--dataset",
                      "fashion_mnist", "--data_dir", fashion_dir)
    assert_one_line_error(result, "100 outputs", "10 classes")


def test_dataset_flag_that_contradicts_the_checkpoint(tmp_path, fashion_dir, capfd):
    ckpt = random_checkpoint(tmp_path / "ck.pth", "cifar10")
    result = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--dataset", "fashion_mnist",
                      "--data_dir", fashion_dir)
    assert_one_line_error(result, "trained on cifar10")


def test_empty_data_dir_without_network(tmp_path, capfd):
    ckpt = random_checkpoint(tmp_path / "ck.pth", "cifar10")
    result = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", tmp_path / "empty")
    assert_one_line_error(result, "CIFAR-10", "download")


def test_training_with_empty_data_dir_without_network(tmp_path, capfd):
    result = run_here(capfd, "--mode", "train", "--data_dir", tmp_path / "empty", "--num_epochs", "1",
                      "--save_path", tmp_path / "ck.pth", "--log_dir", tmp_path / "logs")
    assert_one_line_error(result, "CIFAR-10", "download")
    assert not (tmp_path / "ck.pth").exists()


@pytest.mark.parametrize("total", range(1, 41))
def test_the_one_cycle_schedule_runs_for_any_number_of_steps(total):
    """4 steps in all (500 images, batch 128, 1 epoch) divided by a zero-length warm-up."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.1, total_steps=total, pct_start=warmup_fraction(total))
    for _ in range(total):
        optimizer.step()
        scheduler.step()
    assert total < 8 or warmup_fraction(total) == 0.25


def test_a_model_with_non_finite_weights_is_never_saved(tmp_path):
    good = random_checkpoint(tmp_path / "ck.pth")
    before = good.read_bytes()
    model = build_resnet18(10)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("inf")
    with pytest.raises(TrainingStopped, match="fc.weight"):
        save_checkpoint(good, model, {})
    assert good.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


def test_a_loss_that_turns_nan_after_a_saved_epoch_keeps_that_epoch(tmp_path, fashion_dir,
                                                                    monkeypatch):
    """Epoch 1 is saved; epoch 2's loss turns NaN: the run stops with exit 3 and the
    checkpoint on disk is epoch 1's, finite."""
    real = torch.nn.CrossEntropyLoss

    class NaNInEpochTwo(real):
        calls = 0

        def forward(self, logits, labels):
            NaNInEpochTwo.calls += 1
            loss = super().forward(logits, labels)
            return loss * float("nan") if NaNInEpochTwo.calls > 2 else loss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", NaNInEpochTwo)
    code = main.main(["--mode", "train", "--dataset", "fashion_mnist", "--data_dir",
                      str(fashion_dir), "--num_epochs", "2", "--batch_size", "32",
                      "--precision", "fp32", "--save_path", str(tmp_path / "ck.pth"),
                      "--log_dir", str(tmp_path / "logs")])
    assert code == 3
    payload = read_checkpoint(tmp_path / "ck.pth")
    assert payload["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in payload["model_state_dict"].values()
               if v.is_floating_point())
