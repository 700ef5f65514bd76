"""ReAct (Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021).

    c     = the p-th percentile of every penultimate activation of the ID training set (all samples, all units)
    h'(x) = min(h(x), c)                      (elementwise: unusually large activations are clipped)
    score = T * logsumexp_k((W h'(x) + b)_k / T)   (the energy score of the recomputed logits)

h(x) is the penultimate feature vector (after the final pooling), W, b the last linear layer; the paper uses
p = 90 and T = 1. With p = 100, c is the largest training activation: inputs without a larger one score
exactly their energy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from energy_cli.data.batches import Normalizer
from energy_cli.detectors.base import Batch, FeatureFitDetector, fitted
from energy_cli.engine.runtime import Runtime
from energy_cli.models import Classifier
from energy_cli.ood.scores import energy_score


def react_threshold(features: torch.Tensor, percentile: float) -> float:
    """c = the `percentile`-th percentile (0-100, linear interpolation, as numpy.percentile) of all entries
    of the ID training features (N, D), in float64."""
    values = features.detach().to("cpu", torch.float64).numpy().ravel()
    if values.size == 0:
        raise ValueError("ReAct needs at least one training feature vector")
    return float(np.percentile(values, percentile))


def react_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, threshold: float) -> torch.Tensor:
    """W min(h, c) + b: the logits of the clipped features (the dtype of `features`)."""
    return F.linear(features.clamp(max=threshold), weight, bias)


class ReAct(FeatureFitDetector):
    """score = energy of the logits recomputed from penultimate features clipped at the `percentile`-th
    percentile of the ID training activations (module docstring)."""

    name = "react"

    def __init__(self, model: Classifier, normalizer: Normalizer, runtime: Runtime, percentile: float = 90.0,
                 temperature: float = 1.0, batch_size: int = 1024):
        super().__init__(model, normalizer, runtime, batch_size)
        self.percentile, self.temperature = float(percentile), float(temperature)
        self.threshold: float | None = None

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.threshold = react_threshold(features, self.percentile)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"threshold": torch.tensor(fitted(self.threshold, self.name), dtype=torch.float64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.threshold = float(state["threshold"])

    def score(self, batch: Batch) -> torch.Tensor:
        weight, bias = self.head()
        return energy_score(react_logits(batch.features, weight, bias, fitted(self.threshold, self.name)),
                            self.temperature)
