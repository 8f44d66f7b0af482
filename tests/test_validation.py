"""validation.py: checks that need the loaded model, before any work."""
from __future__ import annotations

import pytest

from errors import UserError
from model import build_resnet18
from validation import check_target_layers


@pytest.fixture(scope="module")
def model():
    return build_resnet18(10)


@pytest.mark.parametrize("names, fragment", [
    (["layer3", "fc"], "--target_layer fc gives shape [1, 10]"),
    (["avgpool"], "--target_layer avgpool gives a single location"),
    (["layer9"], "no layer 'layer9'"),
])
def test_every_named_layer_is_checked_before_any_work(model, names, fragment):
    with pytest.raises(UserError, match=fragment.replace("[", r"\[")) as info:
        check_target_layers(model, names, 32)
    assert "\n" not in str(info.value)
    if "layer9" not in fragment:
        assert "layers that work: " in str(info.value) and "layer4" in str(info.value)


def test_good_layers_pass_and_the_model_is_left_as_found(model):
    model.train()
    check_target_layers(model, ["layer3", "layer4", "layer4.1.conv2"], 32)
    assert model.training
    assert not any(m._forward_hooks for m in model.modules())
    model.eval()
