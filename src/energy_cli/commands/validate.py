"""Checks on a composed config, run before any work: one clear line per mistake, naming the key and what
it accepts. (Hydra already rejects unknown keys and unknown config-group choices.)

Every key of every command's config has one rule in RULES (its type, range and finiteness), so a value a
user can type never reaches the math unchecked; a test composes every command with every config-group
choice and checks that no key lacks a rule. `validate` applies the rules of the keys the config has, then
the checks that span several keys (m_in < m_out, one mean and std per channel, ...)."""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from energy_cli.config.values import check_device, check_precision, parse_margins
from energy_cli.errors import UserError

MAX_SEED = 2**63 - 1                     # torch, numpy and the per-step seed mixing all take it
TEMPERATURE_RANGE = (1e-3, 1e6)          # beyond it energy / ODIN scores overflow or underflow in float32
MAX_WIDTH = 4096                         # channels of a layer (small_cnn width, WRN widen factor x 64)

Rule = Callable[[DictConfig, str], None]


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def _number(cfg: DictConfig, key: str) -> float:
    value = _value(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{key}={value!r} must be a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise UserError(f"{key}={value!r} must be a finite number")
    return number


def _integer(cfg: DictConfig, key: str, minimum: int, maximum: int | None = None) -> int:
    value = _value(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{key}={value!r} must be a whole number >= {minimum}")
    if value < minimum:
        raise UserError(f"{key}={value} must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise UserError(f"{key}={value} must be <= {maximum}")
    return value


def _positive(cfg: DictConfig, key: str) -> None:
    if _number(cfg, key) <= 0:
        raise UserError(f"{key}={_value(cfg, key)} must be > 0")


def _non_negative(cfg: DictConfig, key: str) -> None:
    if _number(cfg, key) < 0:
        raise UserError(f"{key}={_value(cfg, key)} must be >= 0")


def _within(cfg: DictConfig, key: str, low: float, high: float, high_included: bool = True) -> None:
    value = _number(cfg, key)
    if not (low <= value <= high if high_included else low <= value < high):
        raise UserError(f"{key}={value:g} must lie in [{low:g}, {high:g}{']' if high_included else ')'}")


def _boolean(cfg: DictConfig, key: str) -> None:
    value = _value(cfg, key)
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{key}={value!r} must be true or false")


def _choice(cfg: DictConfig, key: str, allowed: list[str]) -> None:
    value = str(_value(cfg, key))
    if value not in allowed:
        raise UserError(f"{key}={value} is not known; choose one of: {', '.join(allowed)}")


def _flag(cfg: DictConfig, key: str) -> None:
    if not isinstance(_value(cfg, key), bool):
        raise UserError(f"{key}={_value(cfg, key)} must be true or false")


# --------------------------------------------------------------------------- rules (one per key)

def integer(minimum: int, maximum: int | None = None) -> Rule:
    def rule(cfg: DictConfig, key: str) -> None:
        _integer(cfg, key, minimum, maximum)

    return rule


def positive(cfg: DictConfig, key: str) -> None:
    _positive(cfg, key)


def non_negative(cfg: DictConfig, key: str) -> None:
    _non_negative(cfg, key)


def fraction(cfg: DictConfig, key: str) -> None:
    """A number in [0, 1) (dropout, momentum)."""
    value = _number(cfg, key)
    if not 0 <= value < 1:
        raise UserError(f"{key}={value:g} must be in [0, 1)")


def open_fraction(cfg: DictConfig, key: str) -> None:
    """A number in (0, 1) (a split fraction)."""
    value = _number(cfg, key)
    if not 0 < value < 1:
        raise UserError(f"{key}={value:g} must be between 0 and 1 (both excluded)")


def temperature(cfg: DictConfig, key: str) -> None:
    _positive(cfg, key)
    low, high = TEMPERATURE_RANGE
    value = _number(cfg, key)
    if not low <= value <= high:
        raise UserError(f"{key}={value:g} must be between {low:g} and {high:g} (beyond, the scores overflow or "
                        "lose all precision in float32)")


def flag(cfg: DictConfig, key: str) -> None:
    _flag(cfg, key)


def boolean_or_null(cfg: DictConfig, key: str) -> None:
    _boolean(cfg, key)


def choice(*allowed: str) -> Rule:
    return lambda cfg, key: _choice(cfg, key, list(allowed))


def auto_or(rule: Rule, word: str = "auto") -> Rule:
    return lambda cfg, key: None if str(_value(cfg, key)) == word else rule(cfg, key)


def text(cfg: DictConfig, key: str) -> None:
    """A string (a path, a name); null allowed."""
    value = _value(cfg, key)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{key}={value!r} must be a path or a name (text), or null")
    if isinstance(value, str) and "\x00" in value:
        raise UserError(f"{key}: a path cannot contain a NUL character")


def text_list(cfg: DictConfig, key: str) -> None:
    """A list of strings (paths, set names), or one comma-separated string."""
    value = _value(cfg, key)
    items = list(value) if isinstance(value, ListConfig) else [value]
    for item in items:
        if item is not None and not isinstance(item, (str, int, float)) or isinstance(item, bool):
            raise UserError(f"{key} must be a list of names or paths, got {item!r}")


def names(cfg: DictConfig, key: str) -> None:
    """A non-empty list of names (OOD sets)."""
    if _value(cfg, key) is None:
        raise UserError(f"{key}=null: name at least one set, e.g. {key}=[gaussian]")
    text_list(cfg, key)


def numbers(cfg: DictConfig, key: str) -> None:
    """A list of finite numbers (a normalisation mean)."""
    value = _value(cfg, key)
    items = list(value) if isinstance(value, ListConfig) else [value]
    for i, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(float(item)):
            raise UserError(f"{key}[{i}]={item!r} must be a finite number")


def positive_numbers(cfg: DictConfig, key: str) -> None:
    """A list of finite numbers > 0 (a normalisation std)."""
    numbers(cfg, key)
    value = _value(cfg, key)
    for i, item in enumerate(list(value) if isinstance(value, ListConfig) else [value]):
        if item <= 0:
            raise UserError(f"{key}[{i}]={item} must be > 0 (inputs are divided by it)")


def seed(cfg: DictConfig, key: str) -> None:
    _integer(cfg, key, 0, MAX_SEED)


def device(cfg: DictConfig, key: str) -> None:
    value = str(_value(cfg, key))
    if not (value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d{1,4}", value)):
        raise UserError(f"{key}={value} is not known; choose one of: auto, cpu, cuda, cuda:N")


def progress_value(cfg: DictConfig, key: str) -> None:
    if _value(cfg, key) not in (True, False, "auto"):
        raise UserError(f"{key}={_value(cfg, key)!r} is not known; choose one of: auto, true, false")


def auto_or_flag(cfg: DictConfig, key: str) -> None:
    if _value(cfg, key) not in ("auto", True, False):
        raise UserError(f"{key}={_value(cfg, key)!r} must be auto, true or false")


def number_or_null(cfg: DictConfig, key: str) -> None:
    if _value(cfg, key) is not None:
        _number(cfg, key)


def margin(cfg: DictConfig, key: str) -> None:
    margin_value(cfg, key)


def resume(cfg: DictConfig, key: str) -> None:
    value = _value(cfg, key)
    if not (value is None or isinstance(value, (bool, str))):
        raise UserError(f"{key}={value!r} must be a path to a checkpoint.pt (or its run folder), true or auto")


def wrn_depth(cfg: DictConfig, key: str) -> None:
    depth = _integer(cfg, key, 10, 1000)
    if (depth - 4) % 6:
        raise UserError(f"{key}={depth} must be 6n+4 (10, 16, 22, 28, 34, 40, ...)")


def within(low: float, high: float, high_included: bool = True) -> Rule:
    """A number in [low, high] (or [low, high) when `high_included` is false)."""
    return lambda cfg, key: _within(cfg, key, low, high, high_included)


def number_list(check: Callable[[DictConfig, str], None]) -> Rule:
    """A non-empty list of numbers, each passing `check` (a tuning grid)."""
    def rule(cfg: DictConfig, key: str) -> None:
        values = _value(cfg, key)
        if not OmegaConf.is_list(values) or len(values) == 0:
            raise UserError(f"{key}={values} must be a non-empty list of numbers, e.g. [0, 0.0014]")
        for i in range(len(values)):
            check(cfg, f"{key}[{i}]")

    return rule


def checked_elsewhere(cfg: DictConfig, key: str) -> None:
    """Names checked against their registries in `validate` (score and OOD set names, `command`)."""


def any_value(cfg: DictConfig, key: str) -> None:
    """Keys whose value cannot be wrong (a free-form note)."""


# Dotted key (fnmatch pattern) -> rule. Lists count as one value.
RULES: dict[str, Rule] = {
    "command": checked_elsewhere,
    # shared by every command
    "seed": seed,
    "device": device,
    "precision": choice("auto", "fp32", "bf16"),
    "data_root": text,
    "download": flag,
    "cache_dir": text,
    "temperature": temperature,
    "eval_batch_size": auto_or(integer(1)),
    "compile": flag,
    "threads": auto_or(integer(1, 4096)),
    "progress": progress_value,
    "probe": choice("auto", "off", "refresh"),
    "channels_last": auto_or_flag,
    "overwrite": boolean_or_null,
    # the in-distribution dataset
    "dataset.name": checked_elsewhere,
    "dataset.num_classes": auto_or(integer(2, 100_000)),   # auto: counted from dataset=folder's class folders
    "dataset.channels": choice("1", "3"),
    "dataset.image_size": integer(1, 4096),
    "dataset.test_fraction": open_fraction,
    "dataset.mean": auto_or(numbers),          # auto: measured from the training images (train)
    "dataset.std": auto_or(positive_numbers),
    "dataset.path": text,
    "dataset.stream": auto_or_flag,
    "dataset.workers": auto_or(integer(0, 256)),
    "dataset.augment.crop_pad": integer(0, 4096),
    "dataset.augment.flip": flag,
    "dataset.ood": names,
    "dataset.benchmark_ood": names,
    "dataset.ood_size": integer(1, 10_000_000),
    "dataset.m_in": margin,
    "dataset.m_out": margin,
    "dataset.recipe.*.epochs": integer(0),
    "dataset.recipe.*.lr": positive,
    "dataset.recipe.*.batch_size": integer(1),
    "dataset.recipe.*.outlier_batch_size": integer(1),
    "dataset.recipe.eval.num_to_avg": integer(1),
    "dataset.recipe.eval.ood_samples": auto_or(integer(1), "all"),
    # the backbone
    "backbone.name": checked_elsewhere,
    "backbone.arch": text,              # backbone=torchvision / timm: the model's name there
    "backbone.head": text,              # the linear layer giving the logits (dotted name); null = found by rule
    "backbone._target_": text,          # backbone=custom (or a user's backbone YAML): a class or function to build
    "backbone.width": integer(1, MAX_WIDTH),
    "backbone.dropout": fraction,
    "backbone.depth": wrn_depth,
    "backbone.widen_factor": integer(1, MAX_WIDTH // 64),
    # auxiliary outliers (finetune; listed in every command so that presets compose)
    "outliers.name": checked_elsewhere,
    "outliers.n": integer(1, 10_000_000),
    "outliers.path": text,
    "path": text,
    # train, finetune
    "ckpt": text,
    "epochs": integer(0, 1_000_000),
    "lr": positive,
    "batch_size": integer(1),
    "outlier_batch_size": integer(1),
    "weight_decay": non_negative,
    "momentum": fraction,
    "nesterov": flag,
    "resume": resume,
    "checkpoint_every_steps": integer(0),
    "sync_bn": flag,
    "m_in": margin,
    "m_out": margin,
    "loss.name": choice("energy", "oe"),
    "loss.weight": non_negative,
    # eval
    "ood": checked_elsewhere,
    "score": checked_elsewhere,
    "num_to_avg": integer(1, 100_000),
    "ood_samples": auto_or(integer(1), "all"),
    "save_scores": flag,
    "odin.temperature": temperature,
    "odin.noise": non_negative,
    "mahalanobis.noise": non_negative,
    "odin.tune": flag,
    "odin.grid.temperature": number_list(_positive),
    "odin.grid.noise": number_list(_non_negative),
    "mahalanobis.tune": flag,
    "mahalanobis.grid.noise": number_list(_non_negative),
    "validation_ood": names,
    "validation_samples": integer(1),
    "metric": choice("test_acc", "val_energy_fpr95"),
    "ood_resize": choice("resize", "native"),
    "react.percentile": within(0, 100),
    "dice.sparsity": within(0, 1, high_included=False),
    "ash.variant": choice("p", "b", "s"),
    "ash.percentile": within(0, 100, high_included=False),
    "knn.k": integer(1),
    "vim.dim": auto_or(integer(1)),
    "gen.gamma": positive,
    "gen.m": integer(1),
    "plots": flag,
    # score, report
    "paths": text_list,
    "threshold": number_or_null,
    "chunk_size": integer(1),
}


def leaf_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys of `cfg`'s values (a list is one value), Hydra's own settings left out."""
    keys = []
    for key in cfg.keys():
        name = f"{prefix}{key}"
        if name == "hydra":
            continue
        node = cfg._get_node(key)  # noqa: SLF001 - the node, unresolved: a group stays a group
        if isinstance(node, DictConfig):
            keys += leaf_keys(node, f"{name}.")
        else:
            keys.append(name)
    return keys


def rule_for(key: str) -> Rule | None:
    if key in RULES:
        return RULES[key]
    return next((rule for pattern, rule in RULES.items() if fnmatch.fnmatchcase(key, pattern)), None)


def margin_value(cfg: DictConfig, key: str) -> float | None:
    """m_in / m_out: a number, or None for `auto` (measured from the starting model by finetune)."""
    if str(_value(cfg, key)) == "auto":
        return None
    value = _value(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UserError(f"{key}={value!r} must be a number or auto")
    if abs(float(value)) > 1e6:
        raise UserError(f"{key}={value:g} must be between -1e6 and 1e6 (an energy margin)")
    return float(value)


OWN_BACKBONE_KEYS = ("backbone.name", "backbone.arch", "backbone.head", "backbone._target_")


def check_backbone(cfg: DictConfig, names: list[str]) -> bool:
    """backbone.name is a known backbone, or the backbone config has `_target_` (then any name, or none, will
    do); train with backbone=custom needs `_target_` (the other commands take it from the checkpoint). Returns
    whether a `_target_` is given."""
    target = _value(cfg, "backbone._target_")
    if target:
        return True
    _choice(cfg, "backbone.name", names)
    if str(_value(cfg, "backbone.name")) == "custom" and cfg.command == "train":
        raise UserError("backbone=custom needs backbone._target_=PACKAGE.MODULE.CLASS (an importable class or "
                        "function returning an nn.Module that maps images to logits)")
    return False


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Raise UserError for the first invalid value in `cfg` (the config of one command): first the names
    that pick code (dataset, backbone, outliers), then every key's rule, then the checks across keys.
    Returns the typed values the command's `run` takes besides the config (finetune: `margins`, a Margins,
    or None for loss=oe)."""
    command = cfg.command
    if command == "report":   # report must not import torch (the registries below do)
        for key in leaf_keys(cfg):
            rule = rule_for(key)
            if rule is not None:
                rule(cfg, key)
        return {}
    # lazy: the registries import torch
    from energy_cli.data import ID_DATASETS, OUTLIERS, resolve_ood_names
    from energy_cli.detectors import resolve_score_names
    from energy_cli.models import NAMES

    _choice(cfg, "dataset.name", sorted(ID_DATASETS))
    target = check_backbone(cfg, NAMES)
    if command == "finetune":
        _choice(cfg, "outliers.name", sorted(OUTLIERS))
    for key in leaf_keys(cfg):
        if target and key.startswith("backbone.") and key not in OWN_BACKBONE_KEYS:
            continue    # the arguments of the user's own model: its constructor checks them
        rule = rule_for(key)
        if rule is not None:
            rule(cfg, key)
    if command in ("train", "finetune", "eval", "score"):
        channels = int(str(cfg.dataset.channels))
        for key in ("dataset.mean", "dataset.std"):
            value = _value(cfg, key)
            if str(value) == "auto":   # measured from the training images, one per channel
                continue
            count = len(value) if isinstance(value, ListConfig) else 1
            if count != channels:
                raise UserError(f"{key} has {count} values, but dataset={cfg.dataset.name} has {channels} channel"
                                f"{'s' if channels > 1 else ''}: give one per channel")
    check_precision(cfg.precision)
    check_device(cfg.device)
    if command == "eval":
        resolve_ood_names(cfg.ood, cfg.dataset)
        resolve_score_names(cfg.score)
    if command == "score" and cfg.threshold is not None:
        _number(cfg, "threshold")
    if command == "finetune" and cfg.loss.name == "energy":
        return {"margins": parse_margins(cfg.m_in, cfg.m_out)}
    return {}
