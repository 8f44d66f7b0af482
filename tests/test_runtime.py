"""runtime.py: device choice and the folded inference copy."""
from __future__ import annotations

import pytest
import torch
from conftest import random_resnet
from torch import nn

from errors import UserError
from runtime import inference_copy, precision_label, resolve_device


def test_inference_copy_folds_batchnorm_and_computes_the_same():
    model = random_resnet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    model.train()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_inference_copy_keeps_an_untraceable_model_and_its_mode():
    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x   # data-dependent control flow: fx cannot trace

    model = Branchy().train()
    assert inference_copy(model) is model and model.training


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(UserError, match="unknown device") as caught:   # named by its parameter
        resolve_device("tpu9")
    assert caught.value.worded({"device": "--device"}).startswith("unknown --device 'tpu9'")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda")


def test_precision_label_is_one_wording_for_every_job():
    assert [precision_label(d) for d in (None, torch.float32, torch.bfloat16, torch.float16)] \
        == ["fp32", "fp32", "bfloat16", "float16"]
