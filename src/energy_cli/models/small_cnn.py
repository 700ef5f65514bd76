"""A small VGG-style CNN for tiny images (the default backbone; trains on digits in seconds on a CPU)."""

from __future__ import annotations

import torch
from torch import nn

from energy_cli.models.base import Classifier


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(Classifier):
    """conv-bn-relu x2, max-pool, conv-bn-relu x2, global average pool, (dropout), linear."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            _block(in_channels, width), _block(width, width), nn.MaxPool2d(2),
            _block(width, 2 * width), _block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.feature_dim = 2 * width
        self.fc = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.body(x))
