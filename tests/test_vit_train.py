"""The small vision transformer (``vit_small_cifar``): trained from scratch with ``--mode train``
on a built-in dataset by its own recipe (AdamW, warm-up + cosine), its checkpoint loaded back
and explained wherever a ``resnet18_cifar`` checkpoint is; the ResNet's recipe unchanged."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models import VisionTransformer

import jobs
import main
from cam import map_layouts
from cli import assert_one_line_error, run_here
from data import DATASETS
from errors import UserError
from gradcam import GradCAM
from model import BUILDERS, VIT_ARCH, build, build_resnet18, read_checkpoint
from recipes import (
    SHIPPED_CLASSIFIER,
    TRAIN_RECIPES,
    TrainConfig,
    ViTTrainConfig,
    train_recipe,
)
from tinydata import write_fashion_mnist
from train import decay_groups, optimizer_and_schedule
from zoo import BUILTIN_ARCHS, load_classifier

ROOT = Path(__file__).resolve().parent.parent
LAST_NORM = "encoder.layers.encoder_layer_5.ln_1"   # auto for a class-token ViT of 6 blocks


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_test=20, n_train=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fashion_dir):
    """One epoch of the ViT through the command line: the folder, the checkpoint, the status."""
    out = tmp_path_factory.mktemp("vit")
    code = main.main(["--mode", "train", "--arch", VIT_ARCH, "--dataset", "fashion_mnist",
                      "--data_dir", str(fashion_dir), "--num_epochs", "1", "--batch_size", "16",
                      "--save_path", str(out / "vit.pth"), "--log_dir", str(out / "logs")])
    return out, out / "vit.pth", code


def test_the_vit_trains_from_scratch_with_adamw_and_records_its_arch(trained):
    out, ckpt, code = trained
    assert code == 0
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1]
    assert (out / "logs" / "training_curves.png").stat().st_size > 1000
    payload = read_checkpoint(ckpt)
    assert payload["arch"] == VIT_ARCH and payload["dataset"] == "fashion_mnist"
    assert payload["epoch"] == 1
    decayed, plain = payload["optimizer_state_dict"]["param_groups"]
    assert tuple(decayed["betas"]) == (0.9, 0.999) and "momentum" not in decayed
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    # no decay on biases, norms, the position embedding and the class token
    model = build(VIT_ARCH)
    names = {id(p): n for n, p in model.named_parameters()}
    expected = [n for n, p in model.named_parameters()
                if p.ndim >= 2 and n not in ("class_token", "encoder.pos_embedding")]
    groups = decay_groups(model, 0.05)
    assert [names[id(p)] for p in groups[0]["params"]] == expected
    assert len(decayed["params"]) == len(expected)
    assert len(plain["params"]) == len(names) - len(expected)


def test_the_vit_checkpoint_loads_back_with_its_weights_inputs_and_token_layer(trained):
    _, ckpt, _ = trained
    state = read_checkpoint(ckpt)["model_state_dict"]
    loaded = load_classifier(weights=ckpt)
    assert isinstance(loaded.module, VisionTransformer) and loaded.arch == VIT_ARCH
    assert all(torch.equal(v, state[k]) for k, v in loaded.module.state_dict().items())
    assert loaded.dataset == "fashion_mnist"
    info = DATASETS["fashion_mnist"]
    assert (loaded.input_size, loaded.inputs.mean, loaded.inputs.std, loaded.classes) == (
        32, info.mean, info.std, info.classes)
    assert loaded.default_layer == loaded.layer("auto") == LAST_NORM
    layout = dict(map_layouts(loaded.module, 32))[LAST_NORM]
    assert (layout.kind, layout.grid, layout.extra) == ("tokens", (8, 8), 1)
    images = torch.rand(2, 3, 32, 32)
    raw, _ = GradCAM(loaded.module, LAST_NORM).raw_maps(images, torch.tensor([0, 1]))
    assert (raw.flatten(1).abs().amax(1) > 0).all()        # the map is not blank
    with pytest.raises(UserError, match=f"checkpoint of arch {VIT_ARCH}, not resnet18_cifar"):
        load_classifier("resnet18_cifar", weights=ckpt)


def test_gradcam_and_rollout_panels_of_the_vit_checkpoint(trained, fashion_dir, tmp_path,
                                                          capsys):
    _, ckpt, _ = trained
    result = run_here(capsys, "--mode", "test", "--save_path", ckpt, "--data_dir", fashion_dir,
                      "--vis", "gradcam,rollout", "--vis_num", "2", "--out_dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"layer {LAST_NORM}" in result.stdout
    for method in ("gradcam", "rollout"):
        assert len(list((tmp_path / method).glob(f"{method}_[0-9]_*.png"))) == 2
        assert (tmp_path / method / f"{method}_grid.png").stat().st_size > 1000


def test_a_vit_checkpoint_is_not_fine_tuned_on_a_folder(trained, tmp_path, capsys):
    """As a resnet18_cifar checkpoint: the built-in archs train on the built-in datasets."""
    from PIL import Image
    _, ckpt, _ = trained
    for name in ("a", "b"):
        (tmp_path / "tree" / name).mkdir(parents=True)
        for k in range(3):
            Image.new("RGB", (40, 30), (40 * k, 90, 200)).save(tmp_path / "tree" / name / f"{k}.png")
    result = run_here(capsys, "--mode", "train", "--arch", VIT_ARCH, "--weights", ckpt,
                      "--data_dir", tmp_path / "tree", "--save_path", tmp_path / "ft.pth",
                      "--log_dir", tmp_path / "logs")
    assert_one_line_error(result, f"--arch {VIT_ARCH} is trained on the built-in datasets")
    assert not (tmp_path / "ft.pth").exists()


def test_save_path_of_another_arch_names_both_built_in_archs(tmp_path, capsys):
    import torchvision
    torch.save({"arch": "resnet50", "model_state_dict": torchvision.models.resnet50().state_dict()},
               tmp_path / "r50.pth")
    assert_one_line_error(run_here(capsys, "--save_path", tmp_path / "r50.pth"),
                          "arch resnet50, not resnet18_cifar or vit_small_cifar")


def test_each_built_in_arch_has_a_recipe_and_a_builder():
    assert set(TRAIN_RECIPES) == set(BUILDERS) == set(BUILTIN_ARCHS)
    assert all(recipe.arch == arch for arch, recipe in TRAIN_RECIPES.items())
    assert train_recipe(None) is TrainConfig and train_recipe(VIT_ARCH) is ViTTrainConfig
    vit = build(VIT_ARCH)
    assert sum(p.numel() for p in vit.parameters()) == pytest.approx(2.7e6, rel=0.02)
    assert vit.heads.head.weight.abs().max() > 0         # not torchvision's zero head
    assert vit(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_the_resnet_recipe_is_one_cycle_sgd_with_nesterov():
    cfg = TrainConfig()
    optimizer, scheduler = optimizer_and_schedule(cfg, build_resnet18(), 100)
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
    assert optimizer.defaults["nesterov"] and optimizer.defaults["momentum"] == 0.9
    assert optimizer.param_groups[0]["weight_decay"] == cfg.weight_decay == 5e-4
    assert isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR)
    assert (cfg.optimizer, cfg.lr, cfg.num_epochs, cfg.batch_size) == ("sgd", 0.1, 30, 128)


def test_the_vit_recipe_warms_up_then_anneals_to_zero():
    cfg = ViTTrainConfig()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.label_smoothing, cfg.batch_size,
            cfg.num_epochs) == ("adamw", 1e-3, 0.05, 0.1, 128, 20)
    optimizer, scheduler = optimizer_and_schedule(cfg, build(VIT_ARCH), 100)
    assert type(optimizer) is torch.optim.AdamW
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = lrs.index(max(lrs))
    assert peak == 5 and lrs[peak] == pytest.approx(1e-3)      # 5% of the steps
    assert lrs[:peak] == sorted(lrs[:peak]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("argv, job, values", [
    (["--mode", "train", "--arch", VIT_ARCH],
     "train", {"lr": 1e-3, "weight_decay": 0.05, "num_epochs": 20, "batch_size": 128,
               "save_path": "./checkpoints/vit_best.pth"}),
    (["--mode", "train", "--arch", VIT_ARCH, "--lr", "5e-4", "--weight_decay", "0.1",
      "--batch_size", "64", "--num_epochs", "3"],
     "train", {"lr": 5e-4, "weight_decay": 0.1, "num_epochs": 3, "batch_size": 64}),
    (["--mode", "train", "--arch", "resnet18_cifar"],
     "train", {"lr": 0.1, "weight_decay": 5e-4, "num_epochs": 30,
               "save_path": "./checkpoints/resnet_best.pth"}),
    (["--mode", "train", "--arch", "vit_b_16"], "finetune", {"lr": 0.01}),
])
def test_the_built_in_archs_go_to_the_training_job_with_their_recipe(argv, job, values):
    args = main.build_parser().parse_args(argv)
    assert jobs.job_of(args).name == job
    assert {name: jobs.setting(args, name) for name in values} == values


def test_a_vit_without_a_checkpoint_is_looked_for_where_its_training_writes(tmp_path,
                                                                            monkeypatch, capsys):
    """Never the shipped classifier, a ResNet, which testing without --arch falls back to."""
    monkeypatch.chdir(ROOT)
    assert (ROOT / SHIPPED_CLASSIFIER).is_file()
    assert not (ROOT / ViTTrainConfig.save_path).exists()
    result = run_here(capsys, "--arch", VIT_ARCH, "--vis", "gradcam", "--out_dir", tmp_path)
    assert_one_line_error(result, "checkpoint not found", ViTTrainConfig.save_path)


def test_the_training_page_is_written_from_the_runs_own_files(trained, tmp_path):
    """``scripts/training_page.py``: every number of the page comes from ``metrics.csv`` and
    the checkpoint; the curves are copied beside it."""
    out, ckpt, _ = trained
    page = tmp_path / "page.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "training_page.py"), str(out / "logs"),
         str(ckpt), str(page), "--title", "A ViT", "--command", "python main.py ...",
         "--date", "2026-01-02", "--shared", "epoch 1 beside a test run"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    text = page.read_text()
    row = next(csv.DictReader((out / "logs" / "metrics.csv").read_text().splitlines()))
    assert f"**Test accuracy: {float(row['test_acc']):.2f}%**" in text
    assert f"| 1 | {float(row['train_loss']):.4f} |" in text
    assert "it records" in text and "2026-01-02" in text and "python main.py ..." in text
    assert "not alone on the machine: epoch 1 beside a test run" in text
    assert "nothing else running" not in text
    assert (tmp_path / "page_curves.png").read_bytes() == \
        (out / "logs" / "training_curves.png").read_bytes()
