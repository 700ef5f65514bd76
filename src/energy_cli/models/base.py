"""The interface every backbone shares: penultimate features, then one linear layer to the logits."""

from __future__ import annotations

import abc

import torch
from torch import nn


class Classifier(nn.Module, abc.ABC):
    """logits = fc(features(x)); `features` gives the penultimate representation (N, feature_dim)."""

    feature_dim: int
    fc: nn.Linear

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.fc(feats), feats
