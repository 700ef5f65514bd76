"""Checks on a composed config, run before any work: one clear line per mistake, naming the key and
what it accepts. (Hydra already rejects unknown keys and unknown config-group choices.)"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from energy_cli.config.values import check_device, check_precision, parse_margins
from energy_cli.errors import UserError


def _number(cfg: DictConfig, key: str) -> float:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{key}={value!r} must be a number")
    if not math.isfinite(float(value)):
        raise UserError(f"{key}={value!r} must be a finite number")
    return float(value)


def _integer(cfg: DictConfig, key: str, minimum: int) -> int:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{key}={value!r} must be a whole number >= {minimum}")
    if value < minimum:
        raise UserError(f"{key}={value} must be >= {minimum}")
    return value


def _positive(cfg: DictConfig, key: str) -> None:
    if _number(cfg, key) <= 0:
        raise UserError(f"{key}={OmegaConf.select(cfg, key)} must be > 0")


def _non_negative(cfg: DictConfig, key: str) -> None:
    if _number(cfg, key) < 0:
        raise UserError(f"{key}={OmegaConf.select(cfg, key)} must be >= 0")


def _boolean(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{key}={value!r} must be true or false")


def _choice(cfg: DictConfig, key: str, allowed: list[str]) -> None:
    value = str(OmegaConf.select(cfg, key))
    if value not in allowed:
        raise UserError(f"{key}={value} is not known; choose one of: {', '.join(allowed)}")


def _flag(cfg: DictConfig, key: str) -> None:
    if not isinstance(OmegaConf.select(cfg, key), bool):
        raise UserError(f"{key}={OmegaConf.select(cfg, key)} must be true or false")


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Raise UserError for the first invalid value in `cfg` (the config of one command). Returns the typed
    values the command's `run` takes besides the config (finetune: `margins`, a Margins or None for loss=oe)."""
    command = cfg.command
    if command == "report":   # before the imports below: report must not import torch
        _flag(cfg, "plots")
        return {}
    # lazy: the registries import torch, which report must not
    from energy_cli.data import ID_DATASETS, OUTLIERS, resolve_ood_names
    from energy_cli.detectors import resolve_score_names
    from energy_cli.models import BACKBONES


    _integer(cfg, "seed", 0)
    _choice(cfg, "dataset.name", sorted(ID_DATASETS))
    _choice(cfg, "backbone.name", list(BACKBONES))
    check_precision(cfg.precision)
    check_device(cfg.device)
    threads = cfg.get("threads", "auto")
    if str(threads) != "auto":
        _integer(cfg, "threads", 1)
    _choice(cfg, "probe", ["auto", "off", "refresh"])
    if cfg.get("channels_last", "auto") not in ("auto", True, False):
        raise UserError(f"channels_last={cfg.channels_last!r} must be auto, true or false")
    if not isinstance(cfg.get("compile", False), bool):
        raise UserError(f"compile={cfg.compile!r} must be true or false")
    _positive(cfg, "temperature")
    if str(cfg.get("eval_batch_size", "auto")) != "auto":
        _integer(cfg, "eval_batch_size", 1)
    _boolean(cfg, "overwrite")
    if cfg.progress not in (True, False, "auto"):
        raise UserError(f"progress={cfg.progress!r} is not known; choose one of: auto, true, false")
    if command in ("train", "finetune"):
        _integer(cfg, "epochs", 0)
        _integer(cfg, "batch_size", 1)
        _positive(cfg, "lr")
        _non_negative(cfg, "weight_decay")
        momentum = _number(cfg, "momentum")
        if not 0 <= momentum < 1:
            raise UserError(f"momentum={momentum:g} must be in [0, 1)")
        _integer(cfg, "checkpoint_every_steps", 0)
        if not isinstance(cfg.get("sync_bn", False), bool):
            raise UserError(f"sync_bn={cfg.sync_bn!r} must be true or false")
        resume = cfg.get("resume")
        if not (resume is None or isinstance(resume, (bool, str))):
            raise UserError(f"resume={resume!r} must be a path to a checkpoint.pt (or its run folder), true or auto")
    if command == "finetune":

        _integer(cfg, "outlier_batch_size", 1)
        _choice(cfg, "outliers.name", sorted(OUTLIERS))
        _choice(cfg, "loss.name", ["energy", "oe"])
        _non_negative(cfg, "loss.weight")
        return {"margins": parse_margins(cfg.m_in, cfg.m_out) if cfg.loss.name == "energy" else None}
    if command == "eval":

        resolve_ood_names(cfg.ood, cfg.dataset)
        resolve_score_names(cfg.score)
        _positive(cfg, "odin.temperature")
        _non_negative(cfg, "odin.noise")
        _non_negative(cfg, "mahalanobis.noise")
        _integer(cfg, "num_to_avg", 1)
        if str(cfg.ood_samples) != "all":
            _integer(cfg, "ood_samples", 1)
        _flag(cfg, "plots")
    if command == "score" and cfg.threshold is not None:
        _number(cfg, "threshold")
    return {}
