"""A multi-layer perceptron on the flattened image (configs/model/mlp.yaml)."""

from collections.abc import Sequence

import torch
from torch import nn

from .checks import PROBABILITY, WHOLE_NUMBERS, require


class MLP(nn.Module):
    """Flatten the image, then Linear -> ReLU -> Dropout blocks and a linear head that outputs logits."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.1,
    ) -> None:
        require("hidden", hidden, WHOLE_NUMBERS)
        require("dropout", dropout, PROBABILITY)
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * image_size * image_size
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
