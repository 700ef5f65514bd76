"""Hydra override strings on the command line, read and written before Hydra composes anything: which key an
override sets, the value it gives (read with Hydra's own override parser), and quoting a value (a path, an
OOD set name) so that Hydra reads it back unchanged."""

from __future__ import annotations

import re
from typing import Any, Sequence

from omegaconf import ListConfig

_PLAIN = re.compile(r"[A-Za-z0-9_\-./:+@%]+")   # needs no quotes in Hydra's grammar


def key_of(override: str) -> str:
    """The key an override sets: `+a.b=1` -> `a.b`, `~a` -> `a`, `a=1` -> `a`."""
    return override.split("=", 1)[0].lstrip("+~")


def _parsed(override: str) -> object:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override).value()


def raw_value_of(override: str) -> str:
    """The text after the first `=` of `key=value`, as typed (quotes kept); "" when there is none."""
    return override.split("=", 1)[1] if "=" in override else ""


def is_override(arg: str) -> bool:
    """True for a `key=value` (or `+key=value`, `~key`) argument, False for a flag such as `-m`."""
    return not arg.startswith("-") and ("=" in arg or arg.startswith("~"))


def is_sweep(override: str) -> bool:
    """True for an override that lists several values to sweep over (`lr=0.1,0.2`, `seed=range(3)`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(override).is_sweep_override()
    except Exception:  # noqa: BLE001 - a malformed override is Hydra's to report, with its own message
        return False


def value_of(override: str) -> str:
    """The value of `key=value` as Hydra reads it, as text: quotes and escapes removed, null -> "null",
    booleans lower-case; the raw text when Hydra cannot parse it (Hydra reports that itself later)."""
    raw = raw_value_of(override)
    try:
        value = _parsed(override)
    except Exception:  # noqa: BLE001 - a malformed override is Hydra's to report, with its own message
        return raw.strip()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return value if isinstance(value, str) else raw.strip()


def last_value(args: Sequence[str], key: str) -> str | None:
    """The value of the last override of `key` among `args` (flags skipped), or None when none sets it."""
    values = [value_of(a) for a in args if is_override(a) and "=" in a and key_of(a) == key]
    return values[-1] if values else None


def sets_key(args: Sequence[str], key: str) -> bool:
    return any(is_override(a) and "=" in a and key_of(a) == key for a in args)


def quote(text: str, mark: str = "'") -> str:
    """`text` as an override value (or list element) that Hydra reads back unchanged: as is when plain, else
    between `mark` quotes (' or "), with backslashes before a quote doubled, the quote mark escaped and `${`
    escaped so that OmegaConf does not interpolate it."""
    if _PLAIN.fullmatch(text) and _parsed(f"x={text}") == text:   # not a number, bool or null either
        return text
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)          # OmegaConf: \${ is literal
    text = re.sub(rf"(\\*)({mark}|\Z)", lambda m: m.group(1) * 2 + ("\\" + mark if m.group(2) else ""), text)
    return f"{mark}{text}{mark}"


def as_list(value: Any) -> list[str]:
    """A list-valued key given as a list, or as one comma-separated string."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v).strip() for v in value]
    return [v.strip() for v in str(value).split(",") if v.strip()]
