"""Checks on a composed config, run before any work: one clear line per mistake, naming the key and
what it accepts. (Hydra already rejects unknown keys and unknown config-group choices.)"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf

from energy_cli.data import ID_DATASETS, OUTLIERS, resolve_ood_names
from energy_cli.detectors import resolve_score_names
from energy_cli.errors import UserError
from energy_cli.models import BACKBONES


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


def _within(cfg: DictConfig, key: str, low: float, high: float, high_included: bool = True) -> None:
    value = _number(cfg, key)
    if not (low <= value <= high if high_included else low <= value < high):
        raise UserError(f"{key}={value:g} must lie in [{low:g}, {high:g}{']' if high_included else ')'}")


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


def margin_value(cfg: DictConfig, key: str) -> float | None:
    """m_in / m_out: a number, or None for `auto` (measured from the starting model by finetune)."""
    if str(OmegaConf.select(cfg, key)) == "auto":
        return None
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UserError(f"{key}={value!r} must be a number or auto")
    return float(value)


def validate(cfg: DictConfig) -> None:
    """Raise UserError for the first invalid value in `cfg` (the config of one command)."""

    command = cfg.command
    if command == "report":
        _flag(cfg, "plots")
        return
    _integer(cfg, "seed", 0)
    _choice(cfg, "dataset.name", sorted(ID_DATASETS))
    _choice(cfg, "backbone.name", list(BACKBONES))
    _choice(cfg, "precision", ["auto", "fp32", "bf16"])
    device = str(cfg.device)
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise UserError(f"device={device} is not known; choose one of: auto, cpu, cuda, cuda:N")
    threads = cfg.get("threads", "auto")
    if str(threads) != "auto":
        _integer(cfg, "threads", 1)
    if not isinstance(cfg.get("compile", False), bool):
        raise UserError(f"compile={cfg.compile!r} must be true or false")
    _positive(cfg, "temperature")
    if str(cfg.get("eval_batch_size", "auto")) != "auto":
        _integer(cfg, "eval_batch_size", 1)
    _boolean(cfg, "overwrite")
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
        if cfg.loss.name == "energy":
            m_in, m_out = margin_value(cfg, "m_in"), margin_value(cfg, "m_out")
            if m_in is not None and m_out is not None and not m_in < m_out:
                raise UserError(f"m_in={m_in:g} must be below m_out={m_out:g} (ID energies are pushed below m_in, "
                                "outlier energies above m_out)")
    if command == "eval":

        resolve_ood_names(cfg.ood, cfg.dataset)
        resolve_score_names(cfg.score)
        _positive(cfg, "odin.temperature")
        _non_negative(cfg, "odin.noise")
        _non_negative(cfg, "mahalanobis.noise")
        if OmegaConf.select(cfg, "odin.tune") is not None:
            for key in ("odin.tune", "mahalanobis.tune"):
                _flag(cfg, key)
            for key, check in (("odin.grid.temperature", _positive), ("odin.grid.noise", _non_negative),
                               ("mahalanobis.grid.noise", _non_negative)):
                values = OmegaConf.select(cfg, key)
                if not OmegaConf.is_list(values) or len(values) == 0:
                    raise UserError(f"{key}={values} must be a non-empty list of numbers, e.g. [0, 0.0014]")
                for i in range(len(values)):
                    check(cfg, f"{key}[{i}]")
            _integer(cfg, "validation_samples", 1)
        # the energy family (defaults in eval.yaml; a key missing from an older saved config takes the default)
        if OmegaConf.select(cfg, "react") is not None:
            _within(cfg, "react.percentile", 0, 100)
            _within(cfg, "dice.sparsity", 0, 1, high_included=False)
            _choice(cfg, "ash.variant", ["p", "b", "s"])
            _within(cfg, "ash.percentile", 0, 100, high_included=False)
            _integer(cfg, "knn.k", 1)
            if str(OmegaConf.select(cfg, "vim.dim")) != "auto":
                _integer(cfg, "vim.dim", 1)
            _positive(cfg, "gen.gamma")
            _integer(cfg, "gen.m", 1)
        if cfg.get("ood_resize") is not None:
            _choice(cfg, "ood_resize", ["resize", "native"])
        _integer(cfg, "num_to_avg", 1)
        if str(cfg.ood_samples) != "all":
            _integer(cfg, "ood_samples", 1)
        _flag(cfg, "plots")
    if command == "score" and cfg.threshold is not None:
        _number(cfg, "threshold")
