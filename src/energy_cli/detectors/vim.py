"""ViM (Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022).

Fit on the ID training features h_i (N, D) and the last layer W (K, D), b (K,):
    o     = -pinv(W) b                       (an origin where the logits vanish)
    P     = the eigenvectors of (1/N) sum_i (h_i - o)(h_i - o)^T beyond its `dim` largest eigenvalues
            (D x (D - dim): the directions the ID features hardly use)
    alpha = mean_i max_k f_k(h_i) / mean_i ||P^T (h_i - o)||   (puts the virtual logit on the logits' scale)
Score:
    score = logsumexp_k f_k(x) - alpha ||P^T (h(x) - o)||    (energy at T = 1 minus the virtual logit)

The paper uses dim = 1000 for 2048-d ResNet-50 features and 512 for 768-d ViT ones; `auto` here takes half
the feature dimension. Fit and score in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from energy_cli.data.batches import Normalizer
from energy_cli.detectors.base import Batch, FeatureFitDetector, fitted
from energy_cli.engine.runtime import Runtime
from energy_cli.errors import UserError
from energy_cli.models import Classifier


@dataclass(frozen=True)
class ViMFit:
    """origin (D,), null_space (D, D - dim), alpha (a 0-d tensor); float64."""

    origin: torch.Tensor
    null_space: torch.Tensor
    alpha: torch.Tensor

    def to(self, device: torch.device | str) -> "ViMFit":
        return ViMFit(self.origin.to(device), self.null_space.to(device), self.alpha.to(device))


def resolve_dim(dim: int | str, feature_dim: int) -> int:
    """The principal space's dimension: `auto` = feature_dim // 2; a number must lie in 1..feature_dim - 1."""
    value = feature_dim // 2 if str(dim) == "auto" else int(dim)
    if not 1 <= value < feature_dim:
        raise UserError(f"vim.dim={dim} must lie between 1 and {feature_dim - 1} (the features have {feature_dim} "
                         "dimensions), or be auto")
    return value


def fit_vim(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dim: int) -> ViMFit:
    """Origin, residual (null) space and alpha of ViM from ID training features (module docstring)."""
    h, w, b = features.double(), weight.to(features.device, torch.float64), bias.to(features.device, torch.float64)
    origin = -(torch.linalg.pinv(w) @ b)
    centred = h - origin
    covariance = centred.T @ centred / len(centred)
    _, vectors = torch.linalg.eigh((covariance + covariance.T) / 2)         # ascending eigenvalues
    null_space = vectors[:, : h.shape[1] - dim].contiguous()
    logits = h @ w.T + b
    alpha = logits.max(dim=1).values.mean() / (centred @ null_space).norm(dim=1).mean()
    return ViMFit(origin, null_space, alpha)


def vim_score(features: torch.Tensor, logits: torch.Tensor, fit: ViMFit) -> torch.Tensor:
    """logsumexp_k f_k - alpha ||P^T (h - o)||, float64 (N,)."""
    virtual = ((features.double() - fit.origin) @ fit.null_space).norm(dim=1)
    return torch.logsumexp(logits.double(), dim=1) - fit.alpha * virtual


class ViM(FeatureFitDetector):
    """score = energy minus the scaled norm of the features' residual outside the ID principal space
    (module docstring)."""

    name = "vim"
    temperature = 1.0

    def __init__(self, model: Classifier, normalizer: Normalizer, runtime: Runtime, dim: int | str = "auto",
                 batch_size: int = 1024):
        super().__init__(model, normalizer, runtime, batch_size)
        self.dim = resolve_dim(dim, int(model.fc.in_features))
        self.vim: ViMFit | None = None

    def fit_features(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        weight, bias = self.head()
        self.vim = fit_vim(features.to(weight.device), weight, bias, self.dim)

    def state_dict(self) -> dict[str, torch.Tensor]:
        fit = fitted(self.vim, self.name)
        return {"origin": fit.origin.cpu(), "null_space": fit.null_space.cpu(), "alpha": fit.alpha.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.vim = ViMFit(state["origin"].double(), state["null_space"].double(),
                          state["alpha"].double()).to(self.runtime.device)

    def score(self, batch: Batch) -> torch.Tensor:
        return vim_score(batch.features, batch.logits, fitted(self.vim, self.name))
