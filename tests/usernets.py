"""Users' own models for the tests of `backbone._target_=usernets.NAME` (importable with PYTHONPATH=tests)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv-bn-relu, global average pool, one linear layer (named `out`): a plain module, not a Classifier."""

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class TwoHeads(nn.Module):
    """The logits come from `classifier`, but the last nn.Linear registered is `aux` (used for nothing here):
    the rule picks `aux`, so this net needs backbone.head=classifier."""

    def __init__(self, num_classes: int, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(width, num_classes)
        self.aux = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class SevenClasses(TinyNet):
    """Ignores num_classes: always 7 logits."""

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__(7, in_channels)


def tiny_net(num_classes: int, width: int = 4) -> nn.Module:
    """A function as `_target_` (1-channel input, no in_channels argument)."""
    return TinyNet(num_classes, 1, width)
