"""A small convolutional network (configs/model/cnn.yaml)."""

from collections.abc import Sequence

import torch
from torch import nn

from .checks import NONEMPTY_WHOLE_NUMBERS, PROBABILITY, require


class CNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> MaxPool blocks, global average pooling and a linear head.

    Global pooling makes the same network fit 8x8 digits, 28x28 MNIST and 32x32 CIFAR-10.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: Sequence[int] = (32, 64), dropout: float = 0.1
    ) -> None:
        require("channels", channels, NONEMPTY_WHOLE_NUMBERS)
        require("dropout", dropout, PROBABILITY)
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for size in channels:
            blocks += [
                nn.Conv2d(width, size, kernel_size=3, padding=1),
                nn.BatchNorm2d(size),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            width = size
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
