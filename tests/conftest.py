"""Shared test models and fixtures: small networks with random weights, made once."""
from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import fasterrcnn_resnet50_fpn


@pytest.fixture(scope="module")
def detector() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0,
                                        min_size=96, max_size=160, rpn_pre_nms_top_n_test=100,
                                        rpn_post_nms_top_n_test=100)
    return model.eval()


def random_image(h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))
