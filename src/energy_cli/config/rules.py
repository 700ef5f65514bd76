"""The validation rules a config key can have: each takes (config, dotted key) and raises a UserError with one
line naming the key, its value and what it accepts. Which key has which rule is declared next to the key's
type and default, in config/schema.py; commands/validate.py applies them."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf

from energy_cli.config.values import check_device, check_precision, margin_value
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
        raise UserError(f"{key}={_number(cfg, key):g} must be > 0")


def _non_negative(cfg: DictConfig, key: str) -> None:
    if _number(cfg, key) < 0:
        raise UserError(f"{key}={_number(cfg, key):g} must be >= 0")


def _within(cfg: DictConfig, key: str, low: float, high: float, high_included: bool = True) -> None:
    value = _number(cfg, key)
    if not (low <= value <= high if high_included else low <= value < high):
        raise UserError(f"{key}={value:g} must lie in [{low:g}, {high:g}{']' if high_included else ')'}")


def _boolean(cfg: DictConfig, key: str) -> None:
    value = _value(cfg, key)
    if value is not None and not isinstance(value, bool):
        raise UserError(f"{key}={value!r} must be true or false")


def choice_check(cfg: DictConfig, key: str, allowed: list[str]) -> None:
    """The value of `key`, as text, is one of `allowed` (names from a registry)."""
    value = str(_value(cfg, key))
    if value not in allowed:
        raise UserError(f"{key}={value} is not known; choose one of: {', '.join(allowed)}")


def _flag(cfg: DictConfig, key: str) -> None:
    if not isinstance(_value(cfg, key), bool):
        raise UserError(f"{key}={_value(cfg, key)} must be true or false")


# --------------------------------------------------------------------------- rules (one per key)

@functools.cache   # one rule object per argument set: a key declared twice keeps one rule
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


@functools.cache   # one rule object per argument set: a key declared twice keeps one rule
def choice(*allowed: str) -> Rule:
    return lambda cfg, key: choice_check(cfg, key, list(allowed))


@functools.cache   # one rule object per argument set: a key declared twice keeps one rule
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
    check_device(_value(cfg, key))


def precision(cfg: DictConfig, key: str) -> None:
    check_precision(_value(cfg, key))


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
    """m_in / m_out: a number in [-1e6, 1e6], or auto (measured from the starting model by finetune)."""
    value = margin_value(key, _value(cfg, key))
    if value is not None and abs(value) > 1e6:
        raise UserError(f"{key}={value:g} must be between -1e6 and 1e6 (an energy margin)")


def resume(cfg: DictConfig, key: str) -> None:
    value = _value(cfg, key)
    if not (value is None or isinstance(value, (bool, str))):
        raise UserError(f"{key}={value!r} must be a path to a checkpoint.pt (or its run folder), true or auto")


def wrn_depth(cfg: DictConfig, key: str) -> None:
    depth = _integer(cfg, key, 10, 1000)
    if (depth - 4) % 6:
        raise UserError(f"{key}={depth} must be 6n+4 (10, 16, 22, 28, 34, 40, ...)")


@functools.cache   # one rule object per argument set: a key declared twice keeps one rule
def within(low: float, high: float, high_included: bool = True) -> Rule:
    """A number in [low, high] (or [low, high) when `high_included` is false)."""
    return lambda cfg, key: _within(cfg, key, low, high, high_included)


@functools.cache   # one rule object per argument set: a key declared twice keeps one rule
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
