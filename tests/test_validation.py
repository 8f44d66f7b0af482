"""explain.probe_layers: the named layers are checked against the loaded model before any work."""
from __future__ import annotations

import pytest
import torch

from errors import UserError
from explain import probe_layers
from model import build_resnet18


@pytest.fixture(scope="module")
def model():
    return build_resnet18(10)


@pytest.mark.parametrize("names, fragment", [
    (["layer3", "fc"], "layers fc gives shape [1, 10]"),
    (["avgpool"], "layers avgpool gives a single location"),
    (["layer9"], "no layer 'layer9'"),
])
def test_every_named_layer_is_checked_before_any_work(model, names, fragment):
    with pytest.raises(UserError, match=fragment.replace("[", r"\[")) as info:
        probe_layers(model, names, torch.zeros(1, 3, 32, 32))
    assert "\n" not in str(info.value)
    if "layer9" not in fragment:
        assert "layers that work: " in str(info.value) and "layer4" in str(info.value)


def test_good_layers_pass_and_the_model_is_left_as_found(model):
    model.train()
    probe_layers(model, ["layer3", "layer4", "layer4.1.conv2"], torch.zeros(1, 3, 32, 32))
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())
    model.eval()
