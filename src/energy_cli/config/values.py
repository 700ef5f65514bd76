"""Config values that more than one layer reads, parsed in one place: the device and precision names
(checked by the command's validation and again by the runtime that acts on them, with the same words) and
the energy loss's margins (a typed `Margins` value that validation hands to the finetune command)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from energy_cli.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "int8")


def check_device(name: object) -> str:
    """device=auto | cpu | cuda | cuda:N, as text; anything else is a UserError."""
    text = str(name)
    if not (text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())):
        raise UserError(f"device={text} is not known; choose one of: auto, cpu, cuda, cuda:N")
    return text


def check_precision(name: object) -> str:
    """precision=auto | fp32 | bf16, as text; anything else is a UserError."""
    text = str(name)
    if text not in PRECISIONS:
        raise UserError(f"precision={text} is not known; choose one of: {', '.join(PRECISIONS)}")
    return text


@dataclass(frozen=True)
class Margins:
    """The energy hinge margins of `finetune loss=energy`: ID energies are pushed below m_in, outlier
    energies above m_out. None stands for `auto`: measured from the starting model before fine-tuning
    (ood/margins.py)."""

    m_in: float | None
    m_out: float | None

    @property
    def any_auto(self) -> bool:
        return self.m_in is None or self.m_out is None

    def with_measured(self, auto_in: float, auto_out: float) -> tuple[float, float]:
        """(m_in, m_out) with each `auto` one replaced by its measured value."""
        return (auto_in if self.m_in is None else self.m_in, auto_out if self.m_out is None else self.m_out)


def margin_value(key: str, value: object) -> float | None:
    """m_in / m_out: a finite number, or None for `auto`."""
    if str(value) == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise UserError(f"{key}={value!r} must be a number or auto")
    return float(value)


def parse_margins(m_in: object, m_out: object) -> Margins:
    """The configured m_in / m_out as Margins; two numbers must satisfy m_in < m_out."""
    margins = Margins(margin_value("m_in", m_in), margin_value("m_out", m_out))
    if not margins.any_auto and not margins.m_in < margins.m_out:  # type: ignore[operator]
        raise UserError(f"m_in={margins.m_in:g} must be below m_out={margins.m_out:g} (ID energies are pushed below "
                        "m_in, outlier energies above m_out)")
    return margins
