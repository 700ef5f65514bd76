"""The interface every backbone shares: penultimate features, then one linear layer to the logits."""

from __future__ import annotations

import abc

import torch
from torch import nn


class Classifier(nn.Module, abc.ABC):
    """logits = fc(features(x)); `features` gives the penultimate representation (N, feature_dim).
    The convolutional body may run in bf16 under autocast; the head always runs in fp32."""

    feature_dim: int
    fc: nn.Linear

    @abc.abstractmethod
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, feature_dim)."""

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """The linear layer, always in fp32 (also under bf16 autocast): bf16 logits keep only 8 bits of
        mantissa, which would round energies and softmax scores into ties."""
        with torch.autocast(device_type=feats.device.type, enabled=False):
            return self.fc(feats.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.head(feats), feats
