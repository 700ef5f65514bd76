"""Detectors that are pure functions of the logits: msp, maxlogit, energy (formulas in ood/scores.py)."""

from __future__ import annotations

from typing import Callable

import torch

from energy_cli.detectors.base import Batch, Detector
from energy_cli.ood.scores import (
    LOGIT_SCORES,
)


class LogitDetector(Detector):
    """A score that is a pure function of the logits (scores.LOGIT_SCORES). `temperature` (the key) is
    passed to the function; the temperature the score applies is 1 for msp (the softmax at T = 1), none for
    maxlogit, and the key for energy."""

    def __init__(self, name: str, temperature: float):
        self.name = name
        self.fn: Callable[[torch.Tensor, float], torch.Tensor] = LOGIT_SCORES[name]
        self.energy_temperature = float(temperature)
        self.temperature = {"msp": 1.0, "maxlogit": None}.get(name, self.energy_temperature)

    def score(self, batch: Batch) -> torch.Tensor:
        return self.fn(batch.logits, self.energy_temperature)
