"""Detectors by name: every detection score behind one small interface (base.py), one module per detector,
and `score_images` (scoring.py), the batched pass that feeds them all from one forward pass per batch.

`score=all` is the paper's five (DETECTOR_NAMES); `score=extended` adds the energy family that followed it
(EXTENDED_NAMES: react, dice, ash, knn, vim, gen), each configured by its own group of keys."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from energy_cli.config.overrides import as_list
from energy_cli.data.batches import Normalizer
from energy_cli.detectors.ash import ASH
from energy_cli.detectors.base import Detector
from energy_cli.detectors.dice import DICE
from energy_cli.detectors.gen import GEN
from energy_cli.detectors.knn import KNN
from energy_cli.detectors.logit import LogitDetector
from energy_cli.detectors.mahalanobis import Mahalanobis
from energy_cli.detectors.odin import ODIN
from energy_cli.detectors.react import ReAct
from energy_cli.detectors.vim import ViM
from energy_cli.engine.runtime import Runtime
from energy_cli.errors import UserError
from energy_cli.models import Classifier
from energy_cli.ood.scores import LOGIT_SCORES

# the paper's five scores, in the contract's order (`score=all`)
DETECTOR_NAMES = (*LOGIT_SCORES, "odin", "mahalanobis")
# the energy family after the paper (`score=extended` = all + these)
EXTENDED_NAMES = ("react", "dice", "ash", "knn", "vim", "gen")


def build_detectors(names: Sequence[str], model: Classifier, normalizer: Normalizer, runtime: Runtime, *,
                    temperature: float = 1.0, odin_temperature: float = 1000.0, odin_noise: float = 0.0014,
                    mahalanobis_noise: float = 0.0, batch_size: int = 1024,
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> list[Detector]:
    """One detector per score name (SCORE_NAMES), in the given order. `options` holds the settings of the
    extended detectors by name (eval's react / dice / ash / knn / vim / gen keys); missing ones take the
    papers' defaults. react, dice and ash take the energy `temperature`."""
    opts = {name: dict((options or {}).get(name) or {}) for name in EXTENDED_NAMES}
    out: list[Detector] = []
    for name in names:
        if name in LOGIT_SCORES:
            out.append(LogitDetector(name, temperature))
        elif name == "odin":
            out.append(ODIN(model, normalizer, runtime, odin_temperature, odin_noise))
        elif name == "mahalanobis":
            out.append(Mahalanobis(model, normalizer, runtime, mahalanobis_noise, batch_size))
        elif name == "react":
            out.append(ReAct(model, normalizer, runtime, temperature=temperature, batch_size=batch_size,
                             **opts["react"]))
        elif name == "dice":
            out.append(DICE(model, normalizer, runtime, temperature=temperature, batch_size=batch_size,
                            **opts["dice"]))
        elif name == "ash":
            out.append(ASH(model, temperature=temperature, **opts["ash"]))
        elif name == "knn":
            out.append(KNN(model, normalizer, runtime, batch_size=batch_size, **opts["knn"]))
        elif name == "vim":
            out.append(ViM(model, normalizer, runtime, batch_size=batch_size, **opts["vim"]))
        elif name == "gen":
            out.append(GEN(**opts["gen"]))
        else:
            raise ValueError(f"unknown score {name!r}; known: {', '.join(SCORE_NAMES)}")
    return out


SCORE_NAMES = [*DETECTOR_NAMES, *EXTENDED_NAMES]   # every score eval knows, in the order reports use


def resolve_score_names(value: Any) -> list[str]:
    """The `score` key -> validated list; `all` = the paper's five, `extended` = those and the energy family."""
    groups = {"all": list(DETECTOR_NAMES), "extended": SCORE_NAMES}
    names: list[str] = []
    for name in as_list(value):
        names += groups.get(name, [name])
    unknown = [n for n in names if n not in SCORE_NAMES]
    if unknown:
        raise UserError(f"score={unknown[0]} is not known; choose from: {', '.join(SCORE_NAMES)}, all (the paper's "
                        "five) or extended (all of them)")
    if not names:
        raise UserError(f"score is empty; choose from: {', '.join(SCORE_NAMES)}, all or extended")
    return list(dict.fromkeys(names))
