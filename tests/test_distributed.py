"""distributed.py and training under torchrun: 2 gloo processes on the CPU, started by the tests.

The processes are started as ``torchrun`` starts them (environment variables), by
``tests/ranks.py``; one test goes through ``torchrun`` itself.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import distributed
import main
from cli import ROOT
from data import DATASETS, ImageSplit, batches
from errors import UserError
from model import read_checkpoint
from ranks import run_ranks, run_torchrun
from tinydata import write_fashion_mnist
from zoo import load_classifier

# -- one process: everything is the identity, no process group ---------------------------------


def test_one_process_has_no_process_group_and_identity_collectives():
    with distributed.session("cpu") as here:
        assert here == distributed.World() and not here.distributed and here.is_main
        assert not torch.distributed.is_initialized()
        t = torch.arange(5)
        assert distributed.gather(t) == [t]
        assert distributed.gather_concat(t) is t
        assert distributed.sum_across([1.0, 2.0]) == [1.0, 2.0]
        assert distributed.shard(7) == slice(0, 7)
        model = torch.nn.Linear(2, 2)
        assert distributed.wrap_model(model) is model


@pytest.mark.parametrize("n", [0, 1, 5, 10, 101])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shards_cover_the_work_once_in_order(n, size):
    blocks = [distributed.shard(n, distributed.World(r, size, r)) for r in range(size)]
    covered = [i for b in blocks for i in range(n)[b]]
    assert covered == list(range(n))
    lengths = [len(range(n)[b]) for b in blocks]
    assert max(lengths) - min(lengths) <= 1


def test_rank_shards_of_an_epoch_are_the_global_batches():
    """Batch k of every rank together is batch k of one process with a 2x larger batch."""
    n, per_rank = 40, 4
    split = ImageSplit(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2),
                       torch.arange(n), DATASETS["cifar10"])
    one = [lab for _, lab in batches(split, 2 * per_rank, torch.device("cpu"), shuffle=True,
                                     generator=torch.Generator().manual_seed(3))]
    ranks = [[lab for _, lab in batches(split, per_rank, torch.device("cpu"), shuffle=True,
                                        generator=torch.Generator().manual_seed(3),
                                        shard=(r, 2))] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one)
    for k, whole in enumerate(one):
        together = torch.cat([ranks[0][k], ranks[1][k]])
        assert sorted(together.tolist()) == sorted(whole.tolist())
    assert set(torch.cat(ranks[0]).tolist()).isdisjoint(torch.cat(ranks[1]).tolist())


def test_a_shard_of_an_odd_split_drops_the_remainder_so_ranks_step_together():
    split = ImageSplit(torch.zeros(9, 3, 2, 2, dtype=torch.uint8), torch.arange(9),
                       DATASETS["cifar10"])
    sizes = [[len(lab) for _, lab in batches(split, 3, torch.device("cpu"), shard=(r, 2))]
             for r in range(2)]
    assert sizes == [[3, 1], [3, 1]]


# -- training with 2 gloo processes ------------------------------------------------------------

# A ResNet-18 whose normalization does not depend on the batch (GroupNorm), without
# augmentation: then 2 ranks x batch B must train exactly as 1 process x batch 2B, up to the
# order of floating-point sums. (With BatchNorm each rank normalizes by its own batch's
# statistics, as DistributedDataParallel does without SyncBatchNorm, so the two differ.)
_TRAIN_WITHOUT_BATCH_STATISTICS = """
import sys
sys.path.insert(0, {root!r})
import torch
from torch import nn
from torchvision.models import resnet18
import data, main, model

def groupnorm_resnet18(num_classes):
    model = resnet18(weights=None, num_classes=num_classes, zero_init_residual=True,
                     norm_layer=lambda c: nn.GroupNorm(8, c))
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model

torch.set_num_threads(1)
model.BUILDERS[model.ARCH] = groupnorm_resnet18   # the one arch -> builder table
data.random_crop_flip = lambda images, *args: images
main._exit(main.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    return write_fashion_mnist(tmp_path_factory.mktemp("fmnist"), n_test=20, n_train=64)


def _train_args(data_dir, out, batch):
    return ["--mode", "train", "--dataset", "fashion_mnist", "--data_dir", data_dir,
            "--num_epochs", "3", "--batch_size", str(batch), "--precision", "fp32",
            "--lr", "0.2", "--device", "cpu", "--save_path", out / "ck.pth", "--log_dir", out / "logs"]


@pytest.fixture(scope="module")
def ddp_and_single(tmp_path_factory, fashion_dir):
    code = _TRAIN_WITHOUT_BATCH_STATISTICS.format(root=str(ROOT))
    ddp, single = tmp_path_factory.mktemp("ddp"), tmp_path_factory.mktemp("single")
    ranks = run_ranks([_train_args(fashion_dir, ddp, 16)] * 2, code=code)
    one = run_ranks([_train_args(fashion_dir, single, 32)], code=code)[0]
    return ddp, single, ranks, one


def test_ddp_training_matches_one_process_on_the_same_global_batch(ddp_and_single):
    """3 epochs x 2 steps: the same weights to 1e-5 (float sums in another order), the same
    learning-rate schedule and the same reported training numbers."""
    ddp, single, ranks, one = ddp_and_single
    assert [r.returncode for r in ranks] == [0, 0], [r.stderr for r in ranks]
    assert one.returncode == 0, one.stderr
    a = read_checkpoint(ddp / "ck.pth")
    b = read_checkpoint(single / "ck.pth")
    assert a["epoch"] == b["epoch"]
    for key, value in b["model_state_dict"].items():
        torch.testing.assert_close(a["model_state_dict"][key], value, rtol=0, atol=1e-5)
    rows = [(ddp / "logs" / "metrics.csv").read_text().splitlines(),
            (single / "logs" / "metrics.csv").read_text().splitlines()]
    for row_ddp, row_one in zip(*rows[:2]):
        cells = zip(row_ddp.split(",")[:-1], row_one.split(",")[:-1])  # all but seconds
        for x, y in cells:
            assert x == y or float(x) == pytest.approx(float(y), rel=1e-4, abs=1e-6)


def test_only_rank_0_reports_and_its_checkpoint_loads_without_distributed(ddp_and_single):
    ddp, _, ranks, _ = ddp_and_single
    assert "batch 16 per process x 2 processes = 32" in ranks[0].stdout
    assert "Best test accuracy" in ranks[0].stdout
    assert ranks[1].stdout == ""
    state = read_checkpoint(ddp / "ck.pth")["model_state_dict"]
    assert not any(k.startswith("module.") for k in state)
    assert "optimizer_state_dict" in read_checkpoint(ddp / "ck.pth")


def test_torchrun_trains_the_real_model_and_its_checkpoint_loads(tmp_path, fashion_dir):
    result = run_torchrun(2, *_train_args(fashion_dir, tmp_path, 16))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Best test accuracy") == 1
    loaded = load_classifier(weights=tmp_path / "ck.pth")
    assert loaded.dataset == "fashion_mnist" and loaded.module.fc.out_features == 10
    assert len((tmp_path / "logs" / "metrics.csv").read_text().splitlines()) == 4


# -- a failing rank ----------------------------------------------------------------------------


def test_a_failing_rank_ends_the_job_with_one_clear_line(tmp_path, fashion_dir):
    """Rank 1 cannot find its checkpoint (say, missing on its machine); rank 0 has one. Without
    an agent to kill it, rank 0 must notice the lost peer and stop too, each with one line."""
    from tinydata import random_checkpoint
    ckpt = random_checkpoint(tmp_path / "ck.pth")
    common = ["--mode", "test", "--vis", "none", "--data_dir", fashion_dir,
              "--out_dir", tmp_path / "out", "--precision", "fp32", "--device", "cpu"]
    ranks = run_ranks([common + ["--save_path", ckpt],
                       common + ["--save_path", tmp_path / "missing.pth"]], timeout=120)
    for rank, result in enumerate(ranks):
        assert result.returncode == 2, (rank, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        lines = [line for line in result.stderr.splitlines() if "img/s" not in line]  # tqdm
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: rank {rank} of 2: "), lines
        assert lines[-1] == errors[0], lines
    assert "checkpoint not found" in ranks[1].stderr
    assert "lost contact with another rank" in ranks[0].stderr
    assert not (tmp_path / "out" / "confusion_matrix.png").exists()


# -- heatmaps and evaluation split across 2 gloo processes -------------------------------------

SHIPPED = ROOT / "checkpoints" / "resnet18_fashion_mnist.pth"


def _without_manifest(stdout):
    return "".join(line for line in stdout.splitlines(keepends=True)
                   if not line.startswith("Files of this run:"))


def _pictures(folder):
    return {p.relative_to(folder): np.asarray(Image.open(p).convert("RGB"), dtype=np.int16)
            for p in sorted(folder.rglob("*.png"))}


def test_sharded_heatmaps_write_what_one_process_writes(tmp_path):
    """5 images on 2 ranks (blocks of 3 and 2): the same panels and grids, written by rank 0
    alone; pixels may differ by one level where a float lands on a rounding edge."""
    common = ["--mode", "test", "--save_path", SHIPPED, "--data_dir", ROOT / "data",
              "--vis", "gradcam,cam", "--vis_num", "5", "--device", "cpu"]
    ranks = run_ranks([common + ["--out_dir", tmp_path / "ranks"]] * 2)
    one = run_ranks([common + ["--out_dir", tmp_path / "one"]])[0]
    assert [r.returncode for r in ranks] == [0, 0] and one.returncode == 0, ranks[0].stderr
    report = [_without_manifest(r.stdout) for r in (*ranks, one)]   # its name has time and pid
    assert report[0].replace("ranks", "one") == report[2] and ranks[1].stdout == ""
    sharded, single = _pictures(tmp_path / "ranks"), _pictures(tmp_path / "one")
    assert sharded.keys() == single.keys() and len(single) == 2 * (5 + 1)
    for name, picture in single.items():
        assert np.abs(sharded[name] - picture).max() <= 1, name


def _numbers(folder):
    """Every per-image array of the NPZ files and every number of the summary JSON files."""
    found = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as npz:
            found.update({f"{path.name}:{k}": npz[k] for k in npz.files})
    for path in sorted(folder.glob("summary_*.json")):
        flat = flatten(json.loads(path.read_text()))
        found.update({f"{path.name}:{k}": v for k, v in flat.items()})
    return found


def flatten(value, prefix=""):
    """The numbers of a JSON document by path (``a.b.0``)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def test_sharded_evaluation_writes_what_one_process_writes(tmp_path):
    """5 images on 2 ranks, two methods and both baselines, fp32: the same files,
    per-image AUCs and curves to 1e-6, every summary number to 1e-6, written by rank 0 alone."""
    common = ["--mode", "test", "--save_path", SHIPPED, "--data_dir", ROOT / "data",
              "--vis", "gradcam,cam", "--hidden_strategy", "mean", "--num_eval", "5",
              "--steps", "10", "--precision", "fp32", "--device", "cpu"]
    ranks = run_ranks([common + ["--out_dir", tmp_path / "ranks"]] * 2)
    one = run_ranks([common + ["--out_dir", tmp_path / "one"]])[0]
    assert [r.returncode for r in ranks] == [0, 0] and one.returncode == 0, ranks[0].stderr
    assert ranks[1].stdout == ""
    files = {p.name for p in (tmp_path / "one").iterdir()}
    assert {p.name for p in (tmp_path / "ranks").iterdir()} == files
    assert "curves_gradcam_mean.npz" in files
    for table in ("comparison_mean.md",):
        assert (tmp_path / "ranks" / table).read_text() == (tmp_path / "one" / table).read_text()
    sharded, single = _numbers(tmp_path / "ranks"), _numbers(tmp_path / "one")
    assert sharded.keys() == single.keys()
    for key, value in single.items():
        if value is None or isinstance(value, (str, bool)):
            assert sharded[key] == value, key
        else:
            np.testing.assert_allclose(sharded[key], value, rtol=0, atol=1e-6, err_msg=key)


def test_more_ranks_than_images(tmp_path):
    """One image on 2 ranks: rank 1 has nothing to evaluate and still takes part."""
    args = ["--mode", "test", "--save_path", SHIPPED, "--data_dir", ROOT / "data", "--vis",
            "gradcam", "--hidden_strategy", "zero", "--num_eval", "1", "--steps", "5",
            "--precision", "fp32", "--device", "cpu", "--out_dir", tmp_path]
    ranks = run_ranks([args] * 2)
    assert [r.returncode for r in ranks] == [0, 0], ranks[1].stderr
    with np.load(tmp_path / "curves_gradcam_zero.npz") as npz:
        assert npz["deletion"].shape == (1, 6)


# -- the environment, and errors printed once ------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "0", "-5", "1e9", "soon", ""])
def test_a_bad_dist_timeout_is_one_line(monkeypatch, value):
    monkeypatch.setenv("DIST_TIMEOUT_S", value)
    with pytest.raises(UserError, match="DIST_TIMEOUT_S must be a finite number of seconds"):
        distributed._timeout()


def test_a_good_dist_timeout_is_taken(monkeypatch):
    monkeypatch.setenv("DIST_TIMEOUT_S", "90")
    assert distributed._timeout().total_seconds() == 90


@pytest.mark.parametrize("rank, local_rank, joined, printed, code", [
    (0, 0, False, True, 2), (1, 1, False, False, 0), (3, 0, False, True, 2),  # 2nd machine
    (1, 1, True, True, 2),   # after joining, every rank's error is its own
])
def test_an_error_before_joining_is_printed_once_per_machine(monkeypatch, capsys, rank,
                                                              local_rank, joined, printed, code):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setattr(distributed, "_joined", joined)
    assert main.report_error("error: argument --lr: ...", 2) == code
    assert (capsys.readouterr().err == "error: argument --lr: ...\n") == printed


def test_a_bad_flag_under_two_ranks_is_printed_by_rank_0_only(tmp_path):
    ranks = run_ranks([["--mode", "train", "--lr", "nan"]] * 2, timeout=120)
    assert [r.returncode for r in ranks] == [2, 0]
    assert ranks[0].stderr.count("error:") == 1 and "--lr" in ranks[0].stderr
    assert ranks[1].stderr == "" and "Traceback" not in ranks[0].stderr
