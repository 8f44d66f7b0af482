"""The Python API checks its inputs at its entry points, once: a bad argument is a
``ParamError`` naming the parameter, what it got and what it takes, never an error from deep
inside PyTorch, and never a silent result (a NaN map, a map of the wrong class)."""
from __future__ import annotations

import pickle
import sys

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18

import data
import detection
import detectors
import folders
import model as cifar
import outputs
import visualize
import zoo
from data import DATASETS, ImageSplit
from errors import ParamError, UserError
from explain import make_explainer
from finetune import _check_batches
from leaderboard import leaderboard
from recipes import FineTuneConfig
from registry import LAYER_METHODS, METHODS, names_of
from sanity import sanity_check

GRADIENT_METHODS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam",
                    "guidedgradcam")


@pytest.fixture(scope="module")
def net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return resnet18(num_classes=5).eval()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)), \
        torch.tensor([1, 4])


def _refused(call, param: str, *fragments: str) -> ParamError:
    with pytest.raises(ParamError) as info:
        call()
    assert info.value.param == param, str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return info.value


# ---- one check of images and targets for every method


@pytest.mark.parametrize("method", LAYER_METHODS)   # rollout: tests/test_rollout.py
def test_every_method_names_a_bad_target(net, batch, method):
    images, _ = batch
    explainer = make_explainer(method, net, batch_size=64)
    _refused(lambda: explainer(images, torch.tensor([-1, 0])), "targets", "-1", "0..4")
    _refused(lambda: explainer(images, torch.tensor([0, 5])), "targets", "5", "0..4")
    _refused(lambda: explainer(images, torch.tensor([0.0, 1.0])), "targets", "float32",
             "integer")
    _refused(lambda: explainer(images, torch.tensor([0, 1, 2])), "targets", "3 entries")


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_every_method_names_bad_images(net, batch, method):
    images, targets = batch
    explainer = make_explainer(method, net, batch_size=64)
    nan = images.clone()
    nan[1, 2, 10, 10] = float("nan")
    _refused(lambda: explainer(nan, targets), "images", "NaN")
    _refused(lambda: explainer(images.mul(60).add(128).clamp(0, 255).to(torch.uint8), targets),
             "images", "uint8")
    _refused(lambda: explainer(images.double(), targets), "images", "float64", "float32")
    _refused(lambda: explainer(images[:, :1], targets), "images", "1 channel", "takes 3")
    _refused(lambda: explainer(images[0], targets[:1]), "images", "(3, 64, 64)")
    assert torch.isfinite(explainer(images, targets)).all()   # the good batch still works


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_gradient_methods_under_inference_mode_say_what_to_do(net, batch, method):
    images, targets = batch
    explainer = make_explainer(method, net)
    with torch.inference_mode(), pytest.raises(UserError, match=r"inference_mode\(\)"):
        explainer(images, targets)
    with torch.no_grad():   # what the message offers instead works
        assert explainer(images, targets).shape == (2, 64, 64)


def test_gradient_free_methods_work_under_inference_mode(net, batch):
    images, targets = batch
    with torch.inference_mode():
        assert make_explainer("eigencam", net)(images, targets).shape == (2, 64, 64)


@pytest.mark.parametrize("method", ["cam", "gradcam", "eigencam"])
def test_a_module_called_twice_per_pass_is_refused(net, batch, method):
    """torchvision's ResNet block applies its one ReLU module twice: a hook on it sees two
    maps, so no method can say which it explains."""
    images, targets = batch
    _refused(lambda: make_explainer(method, net, "layer4.1.relu")(images, targets), "layer",
             "layer4.1.relu", "" if method == "cam" else "more than once")
    assert not net.layer4[1].relu._forward_hooks   # the hook went with the error


# ---- detectors


@pytest.fixture(scope="module")
def scene_detector() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return detectors.build_detector(None, min_size=64)


def test_a_detector_image_out_of_0_1_is_refused(scene_detector):
    image = torch.rand(3, 64, 64)
    _refused(lambda: detection.explain_detections(scene_detector, image * 255), "image",
             "from", "[0, 1]")
    _refused(lambda: detection.explain_detections(scene_detector, image[None]), "image",
             "[3, H, W]")
    _refused(lambda: detection.explain_detections(scene_detector, (image * 255).byte()),
             "image", "uint8")
    nan = image.clone()
    nan[0, 0, 0] = float("nan")
    _refused(lambda: detection.explain_detections(scene_detector, nan), "image", "NaN")


def test_detection_numbers_and_methods_are_checked(scene_detector):
    image = torch.rand(3, 64, 64)
    _refused(lambda: detection.explain_detections(scene_detector, image, score_thresh=2.0),
             "score_thresh", "2.0", "between 0 and 1")
    _refused(lambda: detection.DetectionTarget(float("nan")), "score_thresh", "nan")
    _refused(lambda: detection.DetectionTarget(0.5, 0), "max_explained", "0")
    _refused(lambda: detection.explain_detections(scene_detector, image, method="gradcum"),
             "method", "gradcum")


# ---- leaderboard and sanity check


def test_method_lists_take_names_never_letters():
    assert names_of("gradcam", "methods", "heatmap method", list(METHODS)) == ["gradcam"]
    assert names_of(["cam", "gradcam"], "methods", "m", list(METHODS)) == ["cam", "gradcam"]
    _refused(lambda: names_of(["gradcum"], "methods", "heatmap method", list(METHODS)),
             "methods", "gradcum")
    _refused(lambda: names_of([3], "methods", "heatmap method", list(METHODS)), "methods")


def _split(n: int = 6) -> ImageSplit:
    info = DATASETS["cifar10"]
    return ImageSplit(torch.zeros(n, 3, 32, 32, dtype=torch.uint8),
                      torch.zeros(n, dtype=torch.long), info)


def test_leaderboard_checks_its_arguments_before_any_work(net):
    cpu = torch.device("cpu")
    _refused(lambda: leaderboard(net, _split(), cpu, ["gradcum"], ["layer4"], ["zero"]),
             "methods", "gradcum")
    _refused(lambda: leaderboard(net, _split(), cpu, ["gradcam"], ["layer4"], ["smudge"]),
             "strategies", "smudge")
    _refused(lambda: leaderboard(net, _split(), cpu, "gradcam", ["layer4"], ["zero"],
                                 num_images=0), "num_images", "0", ">= 1")
    _refused(lambda: leaderboard(net, _split(0), cpu, "gradcam", ["layer4"], ["zero"]),
             "split", "no image")


def test_sanity_check_on_no_images_names_them(net, batch):
    images, targets = batch
    _refused(lambda: sanity_check(net, images[:0], targets[:0], ["gradcam"], ["layer4"]),
             "images", "empty")
    _refused(lambda: sanity_check(net, images, targets, "gradcum", ["layer4"]), "methods")
    _refused(lambda: sanity_check(net, images, torch.tensor([0, 9]), ["gradcam"], ["layer4"]),
             "targets", "9")


# ---- weights: read with weights_only=True, whatever reads them


@pytest.fixture
def hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


class _Plant:
    def __reduce__(self):
        return (open, (str(sys.modules[__name__].__file__) + ".planted", "w"))


def test_a_pickle_in_the_hub_cache_never_runs(hub, tmp_path):
    hub.write_bytes(pickle.dumps({"fc.weight": _Plant()}))
    planted = sys.modules[__name__].__file__ + ".planted"
    _refused(lambda: zoo.load_classifier(arch="resnet18", weights="DEFAULT"), "weights",
             "is not the file of")
    assert not __import__("os").path.exists(planted)


def test_torchvision_weights_from_the_hub_cache_load_as_torchvision_builds_them(hub):
    reference = resnet18(num_classes=1000)
    torch.save(reference.state_dict(), hub)
    loaded = zoo.load_classifier(arch="resnet18", weights="DEFAULT")
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key], value), key
    assert len(loaded.classes) == 1000


def test_a_meta_tensor_in_a_checkpoint_is_one_line():
    with pytest.raises(UserError, match="meta tensor"):
        cifar.check_finite({"w": torch.empty(3, device="meta")}, "weights x.pth")


# ---- the user's factory


def _factory(tmp_path, body: str) -> str:
    path = tmp_path / "factory.py"
    path.write_text("import sys\nimport torch\n\ndef net():\n    return torch.nn.Sequential("
                    "torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), "
                    "torch.nn.Flatten(), torch.nn.Linear(4, 3))\n\ndef build():\n" + body)
    return f"{path}:build"


def test_a_half_factory_model_runs_in_float32(tmp_path, capfd):
    loaded = zoo.load_classifier(model_spec=_factory(tmp_path, "    return net().half()\n"),
                                 input_size=32)
    assert all(p.dtype == torch.float32 for p in loaded.module.parameters())
    assert "float16" in capfd.readouterr().err
    heat = make_explainer("gradcam", loaded.module)(torch.randn(1, 3, 32, 32),
                                                    torch.tensor([2]))
    assert torch.isfinite(heat).all()


@pytest.mark.parametrize("body, fragment", [
    ("    sys.exit(0)\n", "sys.exit(0)"),
    ("    sys.exit(3)\n", "sys.exit(3)"),
    ("    return torch.jit.script(net())\n", "TorchScript"),
    ("    m = net()\n    m[0].bias.data[0] = float('nan')\n    return m\n", "not finite"),
])
def test_factory_problems_are_one_line(tmp_path, body, fragment):
    _refused(lambda: zoo.load_classifier(model_spec=_factory(tmp_path, body), input_size=32),
             "model_spec", fragment)


@pytest.mark.parametrize("arch, size", [("vit_b_16", 64), ("inception_v3", 32)])
def test_an_input_size_the_arch_cannot_take_is_named(arch, size):
    _refused(lambda: zoo.load_classifier(arch=arch, input_size=size), "input_size", str(size))


# ---- one resize rule: memory bounded by the model's input


@pytest.mark.parametrize("size", [(20000, 1), (1, 20000), (5000, 3)])
def test_a_thin_photo_is_resized_within_the_models_input(size):
    spec = zoo.inputs_of(zoo.torchvision.models.ResNet18_Weights.DEFAULT, "resnet18")
    photo = Image.new("RGB", size, (120, 40, 200))
    kept = data._centre_within(photo, data.LONGEST_KEPT)
    assert max(kept.size) <= data.LONGEST_KEPT * min(size)
    pixels = spec.pixels(photo)
    assert pixels.shape == (3, 224, 224)
    torch.testing.assert_close(pixels[:, 100, 100], torch.tensor([120, 40, 200]) / 255,
                               atol=2e-2, rtol=0)
    tensor = spec.pixels(torch.rand(3, size[1], size[0]))
    assert tensor.shape == (3, 224, 224)


# ---- fine-tuning folders


def _tree(root, splits, classes=("a", "b"), per_class=2):
    for split in splits:
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                Image.new("RGB", (20, 20), (50 * k, 9, 9)).save(root / split / name / f"{k}.png")


def test_train_and_test_folders_are_splits_not_classes(tmp_path):
    _tree(tmp_path, ("train", "test"))
    found = folders.training_data(tmp_path)
    assert found.classes == ("a", "b")
    assert all("test" in p.parts for p in found.val_paths)
    assert all("train" in p.parts for p in found.train_paths)


def test_split_folders_without_train_are_refused(tmp_path):
    _tree(tmp_path, ("val", "test"))
    _refused(lambda: folders.training_data(tmp_path), "data_dir", "no train/")


def test_a_val_fraction_that_a_val_folder_would_ignore_is_refused(tmp_path):
    _tree(tmp_path, ("train", "val"))
    _refused(lambda: folders.training_data(tmp_path, val_fraction=0.5), "val_fraction", "val/")
    assert len(folders.training_data(tmp_path).val_paths) == 4


def test_train_alone_is_split_by_val_fraction(tmp_path):
    _tree(tmp_path, ("train",), per_class=4)
    found = folders.training_data(tmp_path, val_fraction=0.5)
    assert found.classes == ("a", "b") and len(found.val_paths) == 4


def test_batch_norm_needs_two_images_per_batch(tmp_path):
    class One:
        size = 1
    cfg = FineTuneConfig(batch_size=1, data_dir=str(tmp_path))
    _refused(lambda: _check_batches(resnet18(num_classes=2), cfg, 10, One()), "batch_size", "1")
    _check_batches(nn.Sequential(nn.Conv2d(3, 2, 1)), cfg, 10, One())   # no batch norm: fine


# ---- outputs: long names, and a clean-up that cannot hide the real error


def test_a_250_character_name_is_written(tmp_path):
    target = tmp_path / ("x" * 246 + ".png")
    outputs.write_text(target, "ok")
    assert target.read_text() == "ok"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_failed_clean_up_leaves_the_real_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[0]))
    monkeypatch.setattr(outputs.os, "replace", refuse)
    monkeypatch.setattr(type(tmp_path), "unlink", refuse)
    with pytest.raises(UserError, match=r"cannot write .*target\.txt: Permission denied"):
        outputs.write_text(tmp_path / "target.txt", "x")


def test_long_photo_names_give_short_distinct_slugs():
    a, b = visualize.unique_slugs(["p" * 250 + "1", "p" * 250 + "2"])
    assert a != b and len(a.encode()) <= visualize.SLUG_BYTES >= len(b.encode())
