"""Detection scores computed from logits. Every score is oriented so that higher = more in-distribution.

Pure functions of a logits tensor (N, K); the caller passes fp32 logits.
"""

from __future__ import annotations

from typing import Callable

import torch


def free_energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """E(x; f) = -T * logsumexp_k(f_k(x) / T). Low energy = in-distribution."""
    return -temperature * torch.logsumexp(logits / temperature, dim=1)


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy: -E(x) = T * logsumexp_k(f_k(x) / T) (higher = more ID)."""
    return -free_energy(logits, temperature)


def msp_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum softmax probability (Hendrycks & Gimpel 2017): max_k softmax(f(x))_k.

    Computed as exp(max_k f_k - logsumexp_k f_k) at T = 1; the energy temperature does not apply.
    """
    return torch.exp(logits.max(dim=1).values - torch.logsumexp(logits, dim=1))


def maxlogit_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Maximum logit (Hendrycks et al. 2022): max_k f_k(x)."""
    return logits.max(dim=1).values


# Scores that need only the logits of one forward pass: name -> fn(logits, temperature) -> (N,)
LOGIT_SCORES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "msp": msp_score,
    "maxlogit": maxlogit_score,
    "energy": energy_score,
}
