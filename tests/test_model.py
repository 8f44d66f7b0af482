"""model.py: the network's shape and the checkpoint contract."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from errors import UserError
from model import ARCH, build_resnet18, read_checkpoint, save_checkpoint
from tinydata import random_checkpoint
from zoo import load_classifier


def test_cifar_resnet18_shape_and_size():
    model = build_resnet18(10).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 11.1e6 < n_params < 11.2e6
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    features = {}
    model.layer4.register_forward_hook(lambda m, i, o: features.setdefault("layer4", o))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert features["layer4"].shape == (2, 512, 4, 4)


def load_model(path):
    """The network a checkpoint describes, through the one classifier loader, and the
    checkpoint's fields."""
    return load_classifier(weights=path).module, read_checkpoint(path)


def test_checkpoint_round_trip_records_what_it_holds(tmp_path):
    path = random_checkpoint(tmp_path / "ck.pth", "fashion_mnist")
    assert not list(tmp_path.glob("*.tmp"))
    model, meta = load_model(path)
    assert meta["arch"] == ARCH and meta["dataset"] == "fashion_mnist"
    assert meta["classes"][0] == "T-shirt/top" and len(meta["classes"]) == 10
    assert meta["input_size"] == 32 and len(meta["mean"]) == 3
    assert not model.training
    torch.manual_seed(0)
    reference = build_resnet18(10)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    import os
    mask = os.umask(0o022)
    try:
        path = random_checkpoint(tmp_path / "ck.pth")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_half_checkpoint_loads_as_fp32_close_to_original(tmp_path):
    full = random_checkpoint(tmp_path / "full.pth")
    half = random_checkpoint(tmp_path / "half.pth", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    a, _ = load_model(full)
    b, _ = load_model(half)
    assert all(p.dtype == torch.float32 for p in b.parameters())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=1e-2, atol=1e-2)


def test_bare_state_dict_is_accepted(tmp_path):
    torch.save(build_resnet18(10).state_dict(), tmp_path / "bare.pth")
    model, meta = load_model(tmp_path / "bare.pth")
    assert "arch" not in meta and "dataset" not in meta and model.fc.out_features == 10


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = random_checkpoint(tmp_path / "ck.pth")
    before = path.read_bytes()

    real_write = Path.write_bytes

    def disk_full_halfway(self, data):
        real_write(self, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full_halfway)
    with pytest.raises(UserError, match=r"cannot write .*ck\.pth: No space left on device"):
        save_checkpoint(path, build_resnet18(10), {"dataset": "cifar10"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]


@pytest.mark.parametrize("make, fragment", [
    (lambda p: None, "not found"),
    (lambda p: p.write_bytes(b"this is not a checkpoint"), "corrupt"),
    (lambda p: p.write_bytes(b""), "corrupt"),
    (lambda p: torch.save({"weights": [1, 2, 3]}, p), "holds no model weights"),
    (lambda p: torch.save({"arch": "vgg99", "model_state_dict": {"a": torch.zeros(1)}}, p),
     "arch vgg99, which this tool does not build"),
    (lambda p: torch.save({"model_state_dict": {"features.0.weight": torch.zeros(1)}}, p),
     "does not fit arch resnet18_cifar"),
])
def test_bad_checkpoints_are_one_line_user_errors(tmp_path, make, fragment):
    path = tmp_path / "ck.pth"
    make(path)
    with pytest.raises(UserError, match=fragment) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_checkpoint_of_another_class_count(tmp_path):
    path = random_checkpoint(tmp_path / "ck.pth", "cifar10", num_classes=100)
    assert read_checkpoint(path)["model_state_dict"]["fc.weight"].shape[0] == 100
    model, _ = load_model(path)
    assert model.fc.out_features == 100


def test_checkpoint_with_a_layer_of_the_wrong_shape(tmp_path):
    state = build_resnet18(10).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save({"model_state_dict": state}, tmp_path / "ck.pth")
    with pytest.raises(UserError, match="layer2.0.conv1.weight"):
        load_model(tmp_path / "ck.pth")


def test_save_half_keeps_what_fp16_cannot_hold_in_fp32(tmp_path, caplog):
    """A BatchNorm running_var beyond fp16's range stays fp32: the file loads, finite."""
    model = build_resnet18(10)
    model.bn1.running_var.fill_(1e6)
    path = tmp_path / "ck.pth"
    save_checkpoint(path, model, {"dataset": "fashion_mnist"}, half=True)
    save_checkpoint(path, model, {"dataset": "fashion_mnist"}, half=True)   # noted once
    state = read_checkpoint(path)["model_state_dict"]
    assert state["bn1.running_var"].dtype == torch.float32
    assert state["layer1.0.conv1.weight"].dtype == torch.float16
    loaded, _ = load_model(path)
    assert torch.equal(loaded.bn1.running_var, model.bn1.running_var)
    notes = [r.getMessage() for r in caplog.records if r.name == "notes"]
    assert len(notes) == 1 and "bn1.running_var" in notes[0] and "fp32" in notes[0]


def test_shipped_checkpoints_fit_the_field_table():
    from model import FIELDS, check_metadata
    root = Path(__file__).resolve().parent.parent / "checkpoints"
    for name in ("resnet18_fashion_mnist.pth", "fasterrcnn_fashion_scenes.pth"):
        ckpt = read_checkpoint(root / name)
        check_metadata(ckpt, name, len(ckpt["classes"]))
        assert set(ckpt) - {"model_state_dict"} <= set(FIELDS), set(ckpt) - set(FIELDS)


@pytest.mark.parametrize("key, value", [
    ("acc", torch.tensor(90.0)), ("epoch", True), ("epoch", -1), ("input_size", 32.0),
    ("std", [1e-300] * 3), ("mean", [0.1, 0.2]), ("fpn_channels", -8), ("head_channels", 0),
    ("anchor_sizes", []), ("anchor_sizes", [[16], [], [64], [128]]), ("aspect_ratios", []),
    ("score_thresh", "0.5"), ("score_thresh", float("nan")), ("seed", 2**40),
    ("history", {"epoch": 1}), ("optimizer_state_dict", [1, 2]), ("dataset", ""),
])
def test_every_field_is_checked_by_type_range_and_finiteness(key, value):
    from model import check_metadata
    with pytest.raises(UserError, match=f"'{key}'") as info:
        check_metadata({key: value}, "ck.pth", 10)
    assert "\n" not in str(info.value)


def test_integer_weights_are_refused(tmp_path):
    state = build_resnet18(10).state_dict()
    state["fc.weight"] = state["fc.weight"].long()
    torch.save({"model_state_dict": state}, tmp_path / "ck.pth")
    with pytest.raises(UserError, match="'fc.weight' is int64, not floating point"):
        load_model(tmp_path / "ck.pth")


@pytest.mark.parametrize("make, fragment", [
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: __import__("os").mkfifo(p), "FIFO"),
    (lambda p: p.symlink_to(p), "loop of symbolic links"),
])
def test_a_checkpoint_that_is_no_file_says_what_it_is(tmp_path, make, fragment):
    make(tmp_path / "ck.pth")
    with pytest.raises(UserError, match=fragment):
        read_checkpoint(tmp_path / "ck.pth")
