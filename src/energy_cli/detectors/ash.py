"""ASH (Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution
Detection", ICLR 2023): shape each sample's penultimate activations, then take the energy score.

For one feature vector h (D,) and a percentile p (0-100), keep its k = D - round(D p / 100) largest entries
(the set S) and
    ASH-P:  h'_d = h_d for d in S, else 0                       (prune)
    ASH-B:  h'_d = (sum_j h_j) / k for d in S, else 0           (prune, binarise to the same total)
    ASH-S:  h'_d = h_d exp(sum_j h_j / sum_{j in S} h_j) for d in S, else 0   (prune, sharpen)
    score = T * logsumexp_k((W h' + b)_k / T)

No statistics of the training data are needed. Applied here to the pooled penultimate features (the paper's
code shapes the last block's output; on a globally pooled network that is the same layer pooled first).
p = 0 keeps everything: ASH-P is then exactly the energy score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from energy_cli.detectors.base import Batch, Detector
from energy_cli.errors import UserError
from energy_cli.models import Classifier
from energy_cli.ood.scores import energy_score

VARIANTS = ("p", "b", "s")


def ash_features(features: torch.Tensor, variant: str, percentile: float) -> torch.Tensor:
    """ASH-P/B/S of features (N, D) at `percentile` (module docstring); same dtype and shape."""
    if variant not in VARIANTS:
        raise ValueError(f"ASH variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    dim = features.shape[1]
    k = dim - int(round(dim * float(percentile) / 100.0))
    if k < 1:
        raise ValueError(f"ASH at percentile {percentile} keeps no activation of {dim}")
    values, index = torch.topk(features, k, dim=1)
    total = features.sum(dim=1)
    if variant == "b":
        values = (total / k)[:, None].expand_as(values)
    shaped = torch.zeros_like(features).scatter_(1, index, values)
    if variant == "s":
        kept = shaped.sum(dim=1)
        scale = torch.where(kept != 0, total / torch.where(kept != 0, kept, 1), torch.zeros_like(total))
        shaped = shaped * torch.exp(scale)[:, None]
    return shaped


class ASH(Detector):
    """score = energy of the logits of ASH-shaped penultimate features (module docstring)."""

    name = "ash"
    needs_features = True

    def __init__(self, model: Classifier, variant: str = "s", percentile: float = 90.0, temperature: float = 1.0):
        if str(variant) not in VARIANTS:
            raise ValueError(f"ASH variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.model, self.variant = model, str(variant)
        self.percentile, self.temperature = float(percentile), float(temperature)
        dim = int(model.fc.in_features)
        if dim - int(round(dim * self.percentile / 100.0)) < 1:
            raise UserError(f"ash.percentile={percentile:g} prunes all {dim} penultimate activations; choose a "
                            "smaller percentile")

    def score(self, batch: Batch) -> torch.Tensor:
        fc = self.model.fc
        logits = F.linear(ash_features(batch.features, self.variant, self.percentile), fc.weight.detach().float(),
                          None if fc.bias is None else fc.bias.detach().float())
        return energy_score(logits, self.temperature)
