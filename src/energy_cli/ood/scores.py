"""Detection scores. Every score is oriented so that higher = more in-distribution.

Pure math, no model and no I/O: the logit scores are functions of a logits tensor (N, K) (the caller passes
fp32 logits) and are computed and returned in float64: in fp32, exp(max - logsumexp) rounds a maximum softmax
probability within ~6e-8 of 1 to exactly 1.0, which ties confident ID images and moves AUPR; float64 keeps
them apart down to ~1e-16. The Mahalanobis score is a function of penultimate features (N, D) and a `GaussianFit` (class
means and one shared precision matrix) fitted on ID training features by `fit_class_gaussians`. The parts
that run the model (ODIN's and Mahalanobis's input perturbation, feature extraction) live in detectors.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def free_energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """E(x; f) = -T * logsumexp_k(f_k(x) / T), in the logits' dtype (the fine-tuning loss keeps fp32).
    Low energy = in-distribution."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy: -E(x) = T * logsumexp_k(f_k(x) / T) (higher = more ID), float64."""
    return -free_energy(logits.double(), temperature)


def max_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Temperature-scaled maximum softmax probability: max_k softmax(f(x) / T)_k,
    computed in float64 as exp(max_k f_k/T - logsumexp_k f_k/T)."""
    scaled = logits.double() / temperature
    return torch.exp(scaled.max(dim=1).values - torch.logsumexp(scaled, dim=1))


def msp_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017): max_k softmax(f(x))_k = max_softmax at T = 1;
    the energy temperature does not apply."""
    return max_softmax(logits, 1.0)


def odin_score(logits: torch.Tensor, temperature: float = 1000.0) -> torch.Tensor:
    """ODIN (Liang et al. 2018) given the logits of the (perturbed) input x': max_k softmax(f(x') / T)_k.

    With T = 1 and no perturbation it is exactly the MSP. The perturbation x -> x' needs the model and is
    done in detectors.py.
    """
    return max_softmax(logits, temperature)


def maxlogit_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum logit (Hendrycks et al. 2022): max_k f_k(x), as float64."""
    return logits.max(dim=1).values.double()


# Scores that need only the logits of one forward pass: name -> fn(logits, temperature) -> (N,)
LOGIT_SCORES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "msp": msp_score,
    "maxlogit": maxlogit_score,
    "energy": energy_score,
}


# --------------------------------------------------------------------------- Mahalanobis


@dataclass(frozen=True)
class GaussianFit:
    """Class-conditional Gaussians with one shared covariance, fitted on ID training features.

    classes: (C,) the labels that had training samples; means: (C, D) their feature means;
    precision: (D, D) the pseudo-inverse of the shared covariance. float64 tensors.
    """

    classes: torch.Tensor
    means: torch.Tensor
    precision: torch.Tensor

    def to(self, device: torch.device | str) -> "GaussianFit":
        return GaussianFit(self.classes.to(device), self.means.to(device), self.precision.to(device))


def fit_class_gaussians(features: torch.Tensor, labels: torch.Tensor) -> GaussianFit:
    """Class means and one shared covariance (Lee et al. 2018), in float64:

        mu_c  = mean of the features of class c           (classes without samples are left out)
        Sigma = (1/N) sum_c sum_{i: y_i = c} (f_i - mu_c)(f_i - mu_c)^T
        precision = pinv(Sigma)                           (the Moore-Penrose pseudo-inverse, symmetric)
    """
    feats = features.double()
    labels = labels.to(feats.device).long()
    if feats.dim() != 2 or len(feats) != len(labels) or len(feats) == 0:
        raise ValueError(f"need (N, D) features and N labels with N > 0, got {tuple(feats.shape)} and {len(labels)}")
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(classes), feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, inverse, feats)
    means = sums / counts[:, None].to(feats.dtype)
    centred = feats - means[inverse]
    covariance = centred.T @ centred / len(feats)
    precision = torch.linalg.pinv(covariance, hermitian=True)
    return GaussianFit(classes, means, (precision + precision.T) / 2)


def mahalanobis_distances(features: torch.Tensor, fit: GaussianFit) -> torch.Tensor:
    """Squared Mahalanobis distance of every feature vector to every class mean, (N, C), float64:

        d_c(x) = (f(x) - mu_c)^T precision (f(x) - mu_c)
    """
    f = features.double()
    fp = f @ fit.precision
    own = (fp * f).sum(dim=1, keepdim=True)                                    # f^T P f
    means_term = ((fit.means @ fit.precision) * fit.means).sum(dim=1)          # mu^T P mu
    return (own - 2 * fp @ fit.means.T + means_term[None, :]).clamp_min(0)


def mahalanobis_score(features: torch.Tensor, fit: GaussianFit) -> torch.Tensor:
    """Mahalanobis score (Lee et al. 2018) of penultimate features: -min_c d_c(x), the negated squared
    distance to the closest class mean (higher = more ID), float64. Ranking the unsquared distance gives
    identical metrics."""
    return -mahalanobis_distances(features, fit).min(dim=1).values


def distance_to_class(features: torch.Tensor, fit: GaussianFit, index: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distance of each feature vector to the mean of its own class `index` (positions
    in fit.classes), (N,), float64, in the direct form (f - mu)^T precision (f - mu) (differentiable)."""
    diff = features.double() - fit.means[index]
    return ((diff @ fit.precision) * diff).sum(dim=1)
