"""ResNet-9 for small images (configs/model/resnet.yaml)."""

from collections.abc import Sequence

import torch
from torch import nn

from .checks import NONEMPTY_WHOLE_NUMBERS, PROBABILITY, require


def conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias: BatchNorm has one) -> BatchNorm -> ReLU, the size kept."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class Residual(nn.Module):
    """x + two conv_bn blocks of x: the shortcut of a residual network."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet(nn.Module):
    """ResNet-9 for small images (D. Page's DAWNBench CIFAR-10 network, which airbench builds on): a prep conv_bn
    at full size, then per stage conv_bn -> MaxPool(2), with a Residual block after the first and the last stage;
    global max pooling and a linear head whose logits are scaled by `logit_scale`.

    channels: [prep, stage 1, stage 2, ...]; [64, 128, 256, 512] is ResNet-9 (6.6 M parameters): its three stages
    halve 32x32 to 4x4 (28x28 to 3x3, 8x8 digits to 1x1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (64, 128, 256, 512),
        dropout: float = 0.0,
        logit_scale: float = 0.125,
    ) -> None:
        require("channels", channels, NONEMPTY_WHOLE_NUMBERS)
        require("dropout", dropout, PROBABILITY)
        super().__init__()
        layers: list[nn.Module] = [conv_bn(in_channels, channels[0])]
        stages = list(zip(channels[:-1], channels[1:], strict=True))
        for stage, (width, size) in enumerate(stages, start=1):
            layers += [conv_bn(width, size), nn.MaxPool2d(2)]
            if stage in (1, len(stages)):
                layers.append(Residual(size))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1], num_classes, bias=False)
        )
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)) * self.logit_scale
