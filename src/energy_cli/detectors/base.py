"""The detector interface: a `Batch` (normalised inputs, fp32 logits and penultimate features of one forward
pass) and `Detector` (name, applied temperature, optional fit, score(batch) -> scores, higher = more ID)."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

from energy_cli.data.batches import Normalizer
from energy_cli.data.images import ImageSet
from energy_cli.engine.inference import predict
from energy_cli.engine.runtime import Runtime
from energy_cli.models import Classifier


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


class FeatureFitDetector(Detector):
    """A detector fitted on the penultimate features of the ID training set (react, dice, knn, vim).

    fit(train) extracts those features (one eval-mode pass, no augmentation) and hands them to
    fit_features(features, labels); `eval` instead extracts them once for every such detector of the run and
    caches them next to the checkpoint (train_features.pt), so a sweep over a detector's setting refits from
    the cache in a moment. head() gives the classifier's last linear layer as fp32 (W, b), the same layer
    model.head applies, for detectors that recompute logits from modified features or weights."""

    needs_fit = True
    needs_features = True

    def __init__(self, model: Classifier, normalizer: Normalizer, runtime: Runtime, batch_size: int = 1024):
        self.model, self.normalizer, self.runtime, self.batch_size = model, normalizer, runtime, int(batch_size)

    def fit(self, train: ImageSet) -> None:
        _, feats = predict(self.model, train.images, self.normalizer, self.runtime, self.batch_size, features=True)
        self.fit_features(feats, train.labels)

    @abc.abstractmethod
    def fit_features(self, features: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Fit on the ID training features (N, D) (labels (N,) where the detector uses them)."""

    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (K, D), b (K,)) of the model's final linear layer, fp32, detached (b = 0 when it has no bias)."""
        fc = self.model.fc
        weight = fc.weight.detach().float()
        bias = fc.bias.detach().float() if fc.bias is not None else torch.zeros(len(weight), device=weight.device)
        return weight, bias


def fitted(value: Any, name: str) -> Any:
    """`value`, or a RuntimeError that says the detector was not fitted."""
    if value is None:
        raise RuntimeError(f"{name}.score before fit")
    return value
