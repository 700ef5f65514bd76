"""The detector interface: a `Batch` (normalised inputs, fp32 logits and penultimate features of one forward
pass) and `Detector` (name, applied temperature, optional fit, score(batch) -> scores, higher = more ID)."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch

from energy_cli.data.images import ImageSet


@dataclass
class Batch:
    """One batch as every detector sees it: normalised inputs on the device, and the fp32 logits (N, K)
    and penultimate features (N, D) of one forward pass over them."""

    x: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor | None   # None when no detector of the pass asked for them (needs_features)


class Detector(abc.ABC):
    """The interface: name, the temperature it applies (None if none), score(batch); detectors with
    needs_fit also have fit(train) and state_dict() / load_state_dict() (the fit as tensors, for caching);
    needs_features says whether score() reads batch.features."""

    name: str = ""
    temperature: float | None = None
    needs_fit: bool = False
    needs_features: bool = False

    @property
    def needs_input_grad(self) -> bool:
        """Whether score() differentiates through the model w.r.t. its inputs (perturbing detectors)."""
        return False

    def fit(self, train: ImageSet) -> None:
        """Fit statistics on the labelled ID training set (only detectors with needs_fit)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore a fit saved with state_dict()."""

    @abc.abstractmethod
    def score(self, batch: Batch) -> torch.Tensor:
        """(N,) float64 scores of the batch, higher = more in-distribution."""
