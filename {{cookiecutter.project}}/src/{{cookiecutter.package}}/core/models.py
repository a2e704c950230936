"""Plain `nn.Module` models, and `build_model` for configs/model/. No engine code here: both engines train these
exact classes."""

from collections.abc import Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn


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


class CNN(nn.Module):
    """Conv -> BatchNorm -> ReLU -> MaxPool blocks, global average pooling and a linear head.

    Global pooling makes the same network fit 8x8 digits, 28x28 MNIST and 32x32 CIFAR-10.
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: Sequence[int] = (32, 64), dropout: float = 0.1
    ) -> None:
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


def build_model(cfg: DictConfig) -> nn.Module:
    """The model of configs/model/; `compile: true` compiles it in place (state_dict keys stay the same, so weights
    load into it as into the plain module)."""
    # label_smoothing belongs to the training loss (task.training_step), not to the network.
    model = instantiate({k: v for k, v in cfg.items() if k not in ("compile", "label_smoothing")})
    if cfg.get("compile"):
        model.compile()
    return model
