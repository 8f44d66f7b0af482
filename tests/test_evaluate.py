"""Deletion / insertion: exact answers on hand-built cases, batched == per-step reference,
bf16 within 0.005 AUC of fp32, and the CLI's files."""
from __future__ import annotations

import csv
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

import evaluate
import main
from cli import run_here
from data import (
    DATASETS,
    InputSpec,
    denormalize,
    load_fashion_mnist,
    normalize,
)
from errors import ParamError
from explain import EXPLAINERS, make_explainer
from model import build_resnet18
from sources import dataset_split
from tinydata import idx_bytes, random_checkpoint, write_fashion_mnist
from train import predict
from zoo import load_classifier

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "checkpoints" / "resnet18_fashion_mnist.pth"
INFO = InputSpec(name="toy", classes=("other", "evidence"), mean=(0.4, 0.5, 0.6),
                   std=(0.2, 0.25, 0.3), input_size=8)
REGION = (slice(1, 4), slice(2, 5))  # the 3x3 patch the hand-built model looks at


class RegionModel(nn.Module):
    """Logit of class 1 rises with the brightness of one 3x3 patch; nothing else matters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = denormalize(x, INFO)
        brightness = pixels[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))
        evidence = 12.0 * (brightness - 0.5)
        return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


def toy_images(n: int = 2, seed: int = 0) -> torch.Tensor:
    """Dim random images with a bright evidence patch."""
    g = torch.Generator().manual_seed(seed)
    pixels = 0.3 * torch.rand(n, 3, 8, 8, generator=g)
    pixels[:, :, REGION[0], REGION[1]] = 0.9 + 0.1 * torch.rand(n, 3, 3, 3, generator=g)
    return pixels


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Random low-frequency 32x32 images: masking them changes a network's output gradually."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=32, mode="bicubic", align_corners=False).clamp(0, 1)


def responsive_resnet(seed: int = 0, scale: float = 1.0) -> nn.Module:
    """A random ResNet-18 whose probabilities move with the input, unlike a fresh one's nearly
    uniform output: residual branches on (BN weights 1), logits centred and scaled to standard
    deviation ``scale`` over smooth probe images."""
    torch.manual_seed(seed)
    model = build_resnet18(10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    model.eval()
    with torch.no_grad():
        logits = model(normalize(smooth_images(16, seed + 1), DATASETS["cifar10"]))
        factor = scale / logits.std(0).mean()
        model.fc.bias.sub_(logits.mean(0)).mul_(factor)
        model.fc.weight.mul_(factor)
    return model


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A small convolutional network with BatchNorm: fast enough for per-step references."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                          nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    with torch.no_grad():
        model[-1].weight.mul_(20.0)
    return model.eval()


def probability(model: nn.Module, pixels: torch.Tensor, target: int, info: InputSpec) -> float:
    with torch.no_grad():
        return model(normalize(pixels[None], info)).softmax(1)[0, target].item()


# --------------------------------------------------------------------------------------------
# AUC, counts, ranks, spread


def test_auc_of_a_constant_curve_is_the_constant() -> None:
    curves = torch.full((3, 11), 0.37, dtype=torch.float64)
    assert torch.allclose(evaluate.auc(curves), torch.full((3,), 0.37, dtype=torch.float64))


def test_auc_of_a_linear_curve_is_one_half() -> None:
    rising = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert evaluate.auc(rising).item() == pytest.approx(0.5, abs=1e-12)
    assert evaluate.auc(rising.flip(0)).item() == pytest.approx(0.5, abs=1e-12)
    assert evaluate.auc(torch.tensor([0.2, 0.6, 0.4])).item() == pytest.approx(0.45)


def test_pixel_counts_are_exact_from_none_to_all() -> None:
    assert evaluate.pixel_counts(3, 10).tolist() == [0, 3, 6, 10]
    counts = evaluate.pixel_counts(100, 1024)
    assert len(counts) == 101 and counts[0] == 0 and counts[-1] == 1024
    assert (counts.diff() >= 0).all()


def test_pixel_ranks_are_stable_and_descending() -> None:
    constant = torch.zeros(1, 4, 4)
    assert evaluate.pixel_ranks(constant)[0].tolist() == list(range(16))
    heat = torch.tensor([[[0.2, 0.9], [0.2, 0.5]]])
    assert evaluate.pixel_ranks(heat)[0].tolist() == [2, 0, 3, 1]


# --------------------------------------------------------------------------------------------
# Hiding strategies


@pytest.mark.parametrize("strategy", evaluate.FILL_STRATEGIES)
def test_each_strategy_puts_the_right_pixel_values(strategy: str) -> None:
    pixels = toy_images(2)
    fills = evaluate.fill_pixels(pixels, strategy).expand_as(pixels)
    expected = {
        "zero": torch.zeros_like(pixels),
        "gray": torch.full_like(pixels, 0.5),
        "mean": pixels.mean(dim=(2, 3), keepdim=True).expand_as(pixels),
        "blur": TF.gaussian_blur(pixels, [11, 11], [1.1, 1.1]),
        "blur_rise": literal_rise_blur(pixels),
    }[strategy]
    assert torch.allclose(fills, expected, atol=1e-6)
    expected = fills

    heat = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(1))
    ranks = evaluate.pixel_ranks(heat).view(2, 1, 8, 8)
    image = torch.tensor([0, 1, 1])
    counts = torch.tensor([5, 20, 64])
    for insertion in (False, True):
        flags = torch.full((3,), insertion)
        batch = evaluate.masked_pixels(pixels, evaluate.fill_pixels(pixels, strategy), ranks,
                                       image, counts, flags)
        for p, (i, k) in enumerate(zip(image.tolist(), counts.tolist())):
            top = (ranks[i] < k).expand(3, 8, 8)
            hidden = ~top if insertion else top
            assert torch.equal(batch[p][hidden], expected[i][hidden])
            assert torch.equal(batch[p][~hidden], pixels[i][~hidden])


def literal_rise_blur(pixels: torch.Tensor) -> torch.Tensor:
    """RISE's 11x11 kernel slid over each pixel, borders mirrored (``c b | a b c | b a``),
    with the window cut to what an image this small can mirror."""
    kernel = evaluate.rise_kernel()
    n, c, h, w = pixels.shape
    pad = min(5, h - 1, w - 1)
    kernel = kernel[5 - pad:6 + pad, 5 - pad:6 + pad]

    def mirror(i: int, size: int) -> int:
        return -i if i < 0 else 2 * (size - 1) - i if i >= size else i

    out = torch.zeros(n, c, h, w, dtype=torch.float64)
    for y in range(h):
        for x in range(w):
            for dy in range(-pad, pad + 1):
                for dx in range(-pad, pad + 1):
                    out[:, :, y, x] += (kernel[dy + pad, dx + pad]
                                        * pixels[:, :, mirror(y + dy, h), mirror(x + dx, w)])
    return out.float()


def scipy_gaussian_filter_1d(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's default ("reflect" borders, d c b a | a b c d | d c b a),
    written out: weights ``exp(-t^2 / 2 sigma^2)`` for ``|t| <= int(truncate * sigma + 0.5)``,
    normalized to sum 1."""
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (taps / sigma) ** 2)
    weights /= weights.sum()
    n = len(x)

    def reflect(i: int) -> int:
        i %= 2 * n
        return i if i < n else 2 * n - 1 - i
    return np.array([sum(w * x[reflect(i + t)] for w, t in zip(weights, taps)) for i in range(n)])


def test_rise_kernel_is_what_rise_computes() -> None:
    """RISE's gkern(11, 5): scipy's gaussian_filter of an 11x11 impulse (separable, written
    out above), nearly flat."""
    kernel = evaluate.rise_kernel()
    assert kernel.shape == (11, 11) and kernel.sum().item() == pytest.approx(1.0)
    assert kernel[5, 5].item() == pytest.approx(0.0088, abs=5e-5)
    assert kernel[0, 0].item() == pytest.approx(0.0077, abs=5e-5)
    impulse = np.zeros(11)
    impulse[5] = 1
    line = scipy_gaussian_filter_1d(impulse, 5)
    np.testing.assert_allclose(kernel.numpy(), np.outer(line, line), atol=1e-12)


def test_confidence_change_is_torchcams_formula_in_pixel_space() -> None:
    model = tiny_cnn()
    info = DATASETS["cifar10"]
    pixels = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(10))
    heat = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(11))
    heat[3] = 1.0                          # the whole image kept: no drop, no increase
    targets = torch.tensor([1, 2, 3, 4])
    drop, increase = evaluate.confidence_change(model, pixels, heat, targets, info, batch_size=3)
    for i in range(4):
        y = probability(model, pixels[i], int(targets[i]), info)
        o = probability(model, pixels[i] * heat[i], int(targets[i]), info)
        assert drop[i].item() == pytest.approx(max(0.0, y - o) / y, abs=1e-5)
        assert bool(increase[i]) == (o > y) or abs(o - y) < 1e-6
    assert drop[3].item() == pytest.approx(0.0, abs=1e-5)


def test_mean_fill_is_the_original_mean_at_every_step() -> None:
    pixels = toy_images(1)
    heat = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(2))
    ranks = evaluate.pixel_ranks(heat).view(1, 1, 8, 8)
    counts = evaluate.pixel_counts(8, 64)
    batch = evaluate.masked_pixels(pixels, evaluate.fill_pixels(pixels, "mean"), ranks,
                                   torch.zeros(9, dtype=torch.long), counts,
                                   torch.zeros(9, dtype=torch.bool))
    mean = pixels[0].mean(dim=(1, 2))
    for step in range(1, 9):
        hidden = (ranks[0, 0] < counts[step])
        assert torch.allclose(batch[step][:, hidden], mean[:, None].expand(3, int(hidden.sum())))


def test_unknown_strategy_is_an_error_naming_the_parameter() -> None:
    with pytest.raises(ParamError, match="unknown strategy 'noise'") as caught:
        evaluate.fill_pixels(toy_images(1), "noise")
    assert caught.value.param == "strategy"


# --------------------------------------------------------------------------------------------
# Curves


@pytest.mark.parametrize("strategy", evaluate.FILL_STRATEGIES)
def test_first_and_last_points_are_the_whole_and_the_fully_hidden_image(strategy: str) -> None:
    model = RegionModel()
    pixels = toy_images(2)
    heat = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(3))
    targets = torch.tensor([1, 0])
    curves = evaluate.deletion_insertion(model, pixels, heat, targets, INFO, strategy, steps=7,
                                         batch_size=5)
    fills = evaluate.fill_pixels(pixels, strategy).expand_as(pixels)
    for i, t in enumerate(targets.tolist()):
        whole = probability(model, pixels[i], t, INFO)
        hidden = probability(model, fills[i], t, INFO)
        assert curves.deletion[i, 0].item() == pytest.approx(whole, abs=1e-6)
        assert curves.deletion[i, -1].item() == pytest.approx(hidden, abs=1e-6)
        assert curves.insertion[i, 0].item() == pytest.approx(hidden, abs=1e-6)
        assert curves.insertion[i, -1].item() == pytest.approx(whole, abs=1e-6)
    assert curves.deletion.shape == curves.insertion.shape == (2, 8)


@pytest.mark.parametrize("strategy", evaluate.FILL_STRATEGIES)
def test_ranking_the_evidence_first_beats_the_reverse(strategy: str) -> None:
    pixels = toy_images(3)
    good = torch.zeros(3, 8, 8)
    good[:, REGION[0], REGION[1]] = 1.0
    targets = torch.ones(3, dtype=torch.long)
    results = {name: evaluate.deletion_insertion(RegionModel(), pixels, heat, targets, INFO,
                                                 strategy, steps=16)
               for name, heat in (("good", good), ("reversed", 1 - good))}
    good_c, bad_c = results["good"], results["reversed"]
    assert (good_c.deletion_auc < bad_c.deletion_auc - 0.1).all()
    assert (good_c.insertion_auc > bad_c.insertion_auc + 0.1).all()


@pytest.mark.parametrize("strategy", evaluate.FILL_STRATEGIES)
def test_batched_equals_the_per_step_reference(strategy: str) -> None:
    model = tiny_cnn()
    info = DATASETS["cifar10"]
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    heat = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([3, 7])
    curves = evaluate.deletion_insertion(model, pixels, heat, targets, info, strategy, steps=6,
                                         batch_size=5)
    for i in range(2):
        deletion, insertion = evaluate.reference_curves(model, pixels[i], heat[i],
                                                        int(targets[i]), info, strategy, steps=6)
        assert torch.allclose(curves.deletion[i], deletion, atol=2e-5)
        assert torch.allclose(curves.insertion[i], insertion, atol=2e-5)
    assert curves.deletion.std() > 1e-3  # the model does react to the masking


def test_chunk_size_does_not_change_the_curves_and_inputs_stay_untouched() -> None:
    model = tiny_cnn()
    info = DATASETS["cifar10"]
    pixels = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    heat = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(7))
    targets = torch.tensor([0, 4, 9])
    copies = (pixels.clone(), heat.clone(), targets.clone())
    model.train()
    one = evaluate.deletion_insertion(model, pixels, heat, targets, info, "blur", steps=5,
                                      batch_size=1)
    many = evaluate.deletion_insertion(model, pixels, heat, targets, info, "blur", steps=5,
                                       batch_size=1000)
    assert torch.allclose(one.deletion, many.deletion, atol=2e-5)
    assert torch.allclose(one.insertion, many.insertion, atol=2e-5)
    for before, after in zip(copies, (pixels, heat, targets)):
        assert torch.equal(before, after)
    assert model.training  # the train/eval flag is restored


def test_bf16_aucs_stay_within_0005_of_fp32() -> None:
    model = responsive_resnet()
    info = DATASETS["cifar10"]
    pixels = smooth_images(3, seed=8)
    heat = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        targets = model(normalize(pixels, info)).argmax(1)
    for strategy in ("zero", "blur"):
        fp32, bf16 = (evaluate.deletion_insertion(model, pixels, heat, targets, info, strategy,
                                                  steps=10, batch_size=66, dtype=dtype)
                      for dtype in (None, torch.bfloat16))
        assert (fp32.deletion[:, 0] - fp32.deletion[:, -1]).abs().mean() > 0.01  # curves move
        assert abs(fp32.deletion_auc.mean() - bf16.deletion_auc.mean()) <= 0.005, strategy
        assert abs(fp32.insertion_auc.mean() - bf16.insertion_auc.mean()) <= 0.005, strategy


def test_bf16_aucs_stay_within_0005_of_fp32_on_the_shipped_model() -> None:
    loaded = load_classifier(weights=SHIPPED)
    model = loaded.module
    split = dataset_split(loaded, ROOT / "data")
    info = split.info
    selection = evaluate.select_correct(model, split, torch.device("cpu"), 6)
    pixels = split.images[selection.indices].float() / 255
    heat = make_explainer("gradcam", model)(normalize(pixels, info), selection.labels)
    for strategy in ("zero", "blur"):
        runs = [evaluate.deletion_insertion(model, pixels, heat, selection.labels, info,
                                            strategy, steps=10, dtype=dtype)
                for dtype in (None, torch.bfloat16)]
        for curve in ("deletion_auc", "insertion_auc"):
            fp32, bf16 = (getattr(r, curve).mean().item() for r in runs)
            assert abs(fp32 - bf16) <= 0.005, (strategy, curve, fp32, bf16)


# --------------------------------------------------------------------------------------------
# Baselines


def test_baselines_honour_the_explainer_contract_and_stay_out_of_the_registry() -> None:
    assert not set(evaluate.BASELINES) & set(EXPLAINERS)
    images = torch.zeros(2, 3, 9, 9)
    targets = torch.zeros(2, dtype=torch.long)
    for name, make in evaluate.BASELINES.items():
        heat = make(0)(images, targets)
        assert heat.shape == (2, 9, 9) and heat.min() >= 0 and heat.max() <= 1, name
    first = evaluate.BASELINES["random"](3)(images, targets)
    assert torch.equal(first, evaluate.BASELINES["random"](3)(images, targets))
    centre = evaluate.BASELINES["centre"](0)(images, targets)[0]
    assert centre[4, 4] == centre.max() and centre[0, 0] == centre.min()


def test_the_registry_names_every_baseline_in_order() -> None:
    """registry.BASELINE_TITLES is where the pages (which do not load torch) read the names."""
    from registry import BASELINE_TITLES
    assert list(evaluate.BASELINES) == list(BASELINE_TITLES)


# --------------------------------------------------------------------------------------------
# Through the command line


def labelled_data(tmp_path: Path, correct: int, n_test: int) -> tuple[Path, Path]:
    """A random checkpoint and Fashion-MNIST test files on which exactly the first
    ``correct`` images are classified correctly (labels rewritten from its predictions)."""
    ckpt = random_checkpoint(tmp_path / "random.pth")
    folder = write_fashion_mnist(tmp_path / "fm", n_test)
    model = load_classifier(weights=ckpt).module
    preds = predict(model, load_fashion_mnist(folder, train=False), torch.device("cpu"))
    preds = preds.argmax(1).numpy()
    labels = np.where(np.arange(n_test) < correct, preds, (preds + 1) % 10).astype(np.uint8)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(labels))
    return ckpt, folder


def test_cli_writes_figure_curves_and_summary(tmp_path: Path, capfd) -> None:
    ckpt, folder = labelled_data(tmp_path, correct=6, n_test=6)
    out = tmp_path / "out"
    proc = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", folder, "--vis",
                    "gradcam", "--hidden_strategy", "zero", "--num_eval", "5", "--steps", "10",
                    "--out_dir", out)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum(bool(re.fullmatch(r"Average Deletion AUC: \d\.\d{4}", x)) for x in lines) == 3
    assert sum(bool(re.fullmatch(r"Average Insertion AUC: \d\.\d{4}", x)) for x in lines) == 3
    assert any("95% CI" in x for x in lines)
    assert evaluate.BETTER_LINE in lines
    for name in ("results_gradcam_zero.png", "curves_gradcam_zero.npz",
                 "summary_gradcam_zero.json", "comparison_zero.png", "comparison_zero.md",
                 "comparison_zero.csv", "results_random_zero.png", "summary_centre_zero.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary_gradcam_zero.json").read_text())
    assert (summary["method"], summary["strategy"], summary["steps"], summary["n"]) == \
        ("gradcam", "zero", 10, 5)
    assert summary["dataset"] == "fashion_mnist" and summary["model"] == str(ckpt)
    for key in ("deletion_auc", "insertion_auc"):
        assert set(summary[key]) >= {"mean", "std", "ci95"}
    curves = np.load(out / "curves_gradcam_zero.npz")
    assert curves["deletion"].shape == curves["insertion"].shape == (5, 11)
    assert curves["indices"].tolist() == [0, 1, 2, 3, 4]
    assert summary["deletion_auc"]["mean"] == pytest.approx(curves["deletion_auc"].mean())


def test_fewer_correct_images_than_asked_uses_those(tmp_path: Path, capsys) -> None:
    ckpt, folder = labelled_data(tmp_path, correct=2, n_test=6)
    out = tmp_path / "out"
    code = main.main(["--mode", "test", "--save_path", str(ckpt), "--data_dir", str(folder),
                      "--vis", "cam,gradcampp", "--hidden_strategy", "gray", "--num_eval", "5",
                      "--steps", "2", "--out_dir", str(out), "--precision", "fp32"])
    assert code == 0
    assert "only 2 of the 6 test images are classified correctly" in capsys.readouterr().err
    with open(out / "comparison_gray.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["method"] for r in rows) == sorted(["cam", "gradcampp", *evaluate.BASELINES])
    assert {r["n"] for r in rows} == {"2"}
    assert "lower is better" in (out / "comparison_gray.md").read_text()


def test_no_correct_image_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    ckpt, folder = labelled_data(tmp_path, correct=0, n_test=4)
    code = main.main(["--mode", "test", "--save_path", str(ckpt), "--data_dir", str(folder),
                      "--vis", "cam", "--hidden_strategy", "mean", "--out_dir",
                      str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: the model classifies none of the 4 test images correctly")
    assert err.count("\n") == 1


def test_leaderboard_every_method_at_every_layer_on_the_same_images(tmp_path: Path,
                                                                   capsys) -> None:
    ckpt, folder = labelled_data(tmp_path, correct=3, n_test=3)
    out = tmp_path / "out"
    code = main.main(["--mode", "test", "--save_path", str(ckpt), "--data_dir", str(folder),
                      "--vis", "cam,gradcam,eigencam", "--target_layer", "layer3,layer4",
                      "--hidden_strategy", "zero", "--num_eval", "3", "--steps", "4",
                      "--out_dir", str(out), "--precision", "fp32"])
    assert code == 0
    captured = capsys.readouterr()
    assert "note: CAM left out at layer3" in captured.err
    assert sum(line.startswith("Average Drop: ") for line in captured.out.splitlines()) == 7
    with open(out / "comparison_zero.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["layer"]) for r in rows) == sorted(
        [("cam", "layer4"), ("gradcam", "layer3"), ("gradcam", "layer4"),
         ("eigencam", "layer3"), ("eigencam", "layer4"), ("random", ""), ("centre", "")])
    assert [int(r["rank"]) for r in rows] == list(range(1, 8))
    differences = [float(r["insertion_minus_deletion_mean"]) for r in rows]
    assert differences == sorted(differences, reverse=True)
    for r in rows:
        assert float(r["average_drop_pct_ci95_low"]) <= float(r["average_drop_pct_mean"]) \
            <= float(r["average_drop_pct_ci95_high"])
        assert 0 <= float(r["increase_in_confidence_pct_mean"]) <= 100
    board = json.loads((out / "comparison_zero.json").read_text())
    assert board["target_layers"] == ["layer3", "layer4"] and len(board["rows"]) == 7
    assert len(board["skipped"]) == 1 and "layer3" in board["skipped"][0]
    assert (out / "ranking_zero.png").is_file() and (out / "comparison_zero.png").is_file()
    indices = {tuple(np.load(p)["indices"]) for p in out.glob("curves_*_zero.npz")}
    assert indices == {(0, 1, 2)}                               # all on the same images
    for name in ("summary_gradcam_layer3_zero.json", "summary_gradcam_layer4_zero.json",
                 "results_eigencam_layer3_zero.png", "summary_centre_zero.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary_gradcam_layer3_zero.json").read_text())
    assert summary["layer"] == "layer3" and "average_drop_pct" in summary


def test_leaderboard_unknown_layer_is_a_one_line_error(tmp_path: Path, capfd) -> None:
    ckpt, folder = labelled_data(tmp_path, correct=2, n_test=2)
    proc = run_here(capfd, "--mode", "test", "--save_path", ckpt, "--data_dir", folder, "--vis", "all",
                    "--target_layer", "layer3,layer9", "--hidden_strategy", "zero")
    assert proc.returncode == 2 and "no layer 'layer9'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
