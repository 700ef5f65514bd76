"""DICE (Sun & Li, "DICE: Leveraging Sparsification for Out-of-Distribution Detection", ECCV 2022).

    m        = mean penultimate feature vector of the ID training set            (D,)
    V_kd     = W_kd * m_d      the contribution of unit d to class k's logit, on average over ID data
    M_kd     = 1 for the round((1 - s) * K * D) largest V_kd, else 0   (s = sparsity: the share dropped)
    score    = T * logsumexp_k((h(x) (W * M)^T + b)_k / T)   (the energy score of the sparsified logits)

The paper uses s = 0.9 (keep the top 10% of contributions) and T = 1. With s = 0 nothing is dropped and the
score is exactly the energy score. The paper's code keeps the contributions above the s-quantile; both rules
keep the same set whenever the contributions are distinct and round((1 - s) K D) = K D - 1 - floor(s (K D - 1)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from energy_cli.data.batches import Normalizer
from energy_cli.detectors.base import Batch, FeatureFitDetector, fitted
from energy_cli.engine.runtime import Runtime
from energy_cli.models import Classifier
from energy_cli.ood.scores import energy_score


def dice_mask(weight: torch.Tensor, mean_activation: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The (K, D) boolean mask of the round((1 - sparsity) * K * D) largest contributions W_kd * m_d
    (ties: the first in row-major order)."""
    contrib = (weight.double() * mean_activation.to(weight.device, torch.float64)[None, :]).flatten()
    keep = int(round((1.0 - float(sparsity)) * contrib.numel()))
    order = torch.sort(contrib, descending=True, stable=True).indices[:keep]
    mask = torch.zeros(contrib.numel(), dtype=torch.bool, device=weight.device)
    mask[order] = True
    return mask.view_as(weight)


def dice_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (W * M)^T + b: the logits of the sparsified last layer."""
    return F.linear(features, weight * mask, bias)


class DICE(FeatureFitDetector):
    """score = energy of the logits of the last layer with only the top (1 - sparsity) share of its
    weight x mean-activation contributions kept (module docstring)."""

    name = "dice"

    def __init__(self, model: Classifier, normalizer: Normalizer, runtime: Runtime, sparsity: float = 0.9,
                 temperature: float = 1.0, batch_size: int = 1024):
        super().__init__(model, normalizer, runtime, batch_size)
        self.sparsity, self.temperature = float(sparsity), float(temperature)
        self.mean_activation: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.load_state_dict({"mean_activation": features.double().mean(dim=0)})

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean_activation": fitted(self.mean_activation, self.name).cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        weight, _ = self.head()
        self.mean_activation = state["mean_activation"].to(weight.device, torch.float64)
        self.mask = dice_mask(weight, self.mean_activation, self.sparsity)

    def score(self, batch: Batch) -> torch.Tensor:
        weight, bias = self.head()
        return energy_score(dice_logits(batch.features, weight, bias, fitted(self.mask, self.name)), self.temperature)
