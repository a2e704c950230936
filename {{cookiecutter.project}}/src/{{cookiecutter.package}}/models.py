"""Plain `nn.Module` models, and `build_model` for configs/model/. No engine code here: both engines train these
exact classes."""

from collections.abc import Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn


class MLP(nn.Module):
    """Flatten the image, then Linear -> ReLU -> Dropout blocks and a linear head that outputs logits."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, hidden: Sequence[int] = (256, 128),
                 dropout: float = 0.1) -> None:
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

    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int] = (32, 64),
                 dropout: float = 0.1) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_channels
        for size in channels:
            blocks += [nn.Conv2d(width, size, kernel_size=3, padding=1), nn.BatchNorm2d(size), nn.ReLU(),
                       nn.MaxPool2d(2)]
            width = size
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(cfg: DictConfig) -> nn.Module:
    """The model of configs/model/; `compile: true` compiles it in place (state_dict keys stay the same)."""
    model = instantiate({k: v for k, v in cfg.items() if k != "compile"})
    if cfg.get("compile"):
        model.compile()
    return model
