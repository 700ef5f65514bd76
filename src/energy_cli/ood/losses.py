"""Training objectives: cross-entropy, the energy-bounded fine-tuning loss, and outlier exposure (OE).

Pure functions of logits; the training loop adds `weight * regulariser` to the cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from energy_cli.ood.scores import free_energy


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """mean_i -log softmax(f(x_i))_{y_i}"""
    return F.cross_entropy(logits, labels)


def energy_bounded_loss(logits_in: torch.Tensor, logits_out: torch.Tensor, m_in: float, m_out: float,
                        temperature: float = 1.0) -> torch.Tensor:
    """L_energy = mean_in max(0, E(x_in) - m_in)^2 + mean_out max(0, m_out - E(x_out))^2

    with E(x) = -T * logsumexp(f(x) / T). Each mean runs over its own part of the batch: ID energies
    are pushed below m_in, outlier energies above m_out.
    """
    e_in = free_energy(logits_in, temperature)
    e_out = free_energy(logits_out, temperature)
    return F.relu(e_in - m_in).pow(2).mean() + F.relu(m_out - e_out).pow(2).mean()


def outlier_exposure_loss(logits_out: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the outliers to the uniform distribution over the K classes:

        mean_out -(1/K) sum_k log softmax(f(x))_k = mean_out [ logsumexp_k f_k(x) - mean_k f_k(x) ]
    """
    return (torch.logsumexp(logits_out, dim=1) - logits_out.mean(dim=1)).mean()


def finetune_regulariser(name: str, logits_in: torch.Tensor, logits_out: torch.Tensor, *, m_in: float = 0.0,
                         m_out: float = 0.0, temperature: float = 1.0) -> torch.Tensor:
    """The fine-tuning term selected by `loss=`: "energy" or "oe"."""
    if name == "energy":
        return energy_bounded_loss(logits_in, logits_out, m_in, m_out, temperature)
    if name == "oe":
        return outlier_exposure_loss(logits_out)
    raise ValueError(f"unknown fine-tuning loss {name!r}")
