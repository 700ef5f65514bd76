"""GEN (Liu, Lochman & Zach, "GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection",
CVPR 2023): the generalised entropy of the largest softmax probabilities.

    p      = softmax(f(x))                          (float64)
    score  = -sum_{j in top-M(p)} p_j^gamma (1 - p_j)^gamma     (M = min(m, K); higher = more ID)

A confident prediction (one p_j near 1, the rest near 0) makes every term small; a flat one makes them
large. The paper uses gamma = 0.1 and M = 100 (ImageNet, 1,000 classes). No fit, logits only.
"""

from __future__ import annotations

import torch

from energy_cli.detectors.base import Batch, Detector


def gen_score(logits: torch.Tensor, gamma: float = 0.1, m: int = 100) -> torch.Tensor:
    """-sum over the min(m, K) largest softmax probabilities of p^gamma (1 - p)^gamma, float64 (N,)."""
    p = torch.softmax(logits.double(), dim=1)
    top = torch.topk(p, min(int(m), p.shape[1]), dim=1).values
    return -(top.pow(gamma) * (1 - top).pow(gamma)).sum(dim=1)


class GEN(Detector):
    """score = minus the generalised entropy of the top-m softmax probabilities (module docstring)."""

    name = "gen"

    def __init__(self, gamma: float = 0.1, m: int = 100):
        self.gamma, self.m = float(gamma), int(m)

    def score(self, batch: Batch) -> torch.Tensor:
        return gen_score(batch.logits, self.gamma, self.m)
