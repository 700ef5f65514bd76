"""Detectors by name: every detection score behind one small interface (base.py), one module per detector,
and `score_images` (scoring.py), the batched pass that feeds them all from one forward pass per batch."""

from __future__ import annotations

from typing import Any, Sequence

from energy_cli.config.overrides import as_list
from energy_cli.data.batches import Normalizer
from energy_cli.detectors.base import Detector
from energy_cli.detectors.logit import LogitDetector
from energy_cli.detectors.mahalanobis import Mahalanobis
from energy_cli.detectors.odin import ODIN
from energy_cli.engine.runtime import Runtime
from energy_cli.errors import UserError
from energy_cli.models import Classifier
from energy_cli.ood.scores import LOGIT_SCORES

# every score eval knows, in the contract's order (`score=all`)
DETECTOR_NAMES = (*LOGIT_SCORES, "odin", "mahalanobis")


def build_detectors(names: Sequence[str], model: Classifier, normalizer: Normalizer, runtime: Runtime, *,
                    temperature: float = 1.0, odin_temperature: float = 1000.0, odin_noise: float = 0.0014,
                    mahalanobis_noise: float = 0.0, batch_size: int = 1024) -> list[Detector]:
    """One detector per score name (DETECTOR_NAMES), in the given order."""
    out: list[Detector] = []
    for name in names:
        if name in LOGIT_SCORES:
            out.append(LogitDetector(name, temperature))
        elif name == "odin":
            out.append(ODIN(model, normalizer, runtime, odin_temperature, odin_noise))
        elif name == "mahalanobis":
            out.append(Mahalanobis(model, normalizer, runtime, mahalanobis_noise, batch_size))
        else:
            raise ValueError(f"unknown score {name!r}; known: {', '.join(DETECTOR_NAMES)}")
    return out


SCORE_NAMES = list(DETECTOR_NAMES)   # msp, maxlogit, energy, odin, mahalanobis: the order of `score=all`


def resolve_score_names(value: Any) -> list[str]:
    """The `score` key -> validated list; `all` = every score."""
    names: list[str] = []
    for name in as_list(value):
        names += SCORE_NAMES if name == "all" else [name]
    unknown = [n for n in names if n not in SCORE_NAMES]
    if unknown:
        raise UserError(f"score={unknown[0]} is not known; choose from: {', '.join(SCORE_NAMES)} or all")
    if not names:
        raise UserError(f"score is empty; choose from: {', '.join(SCORE_NAMES)} or all")
    return list(dict.fromkeys(names))
