"""How every number a reader sees is written: three significant digits, one format for the terminal, the report
and the verdict's sentences, so that 0.9128, 0.00399 and 1.4e-08 do not sit side by side."""

from __future__ import annotations

import math


def sig3(value: float | int | None) -> str:
    """``value`` to three significant digits, without an exponent from 0.001 to 999,999: 0.913, 0.00399, 4.32,
    86.5, 107, 7,656, trailing zeros dropped (0.5); an exponent below (1.40e-08); an integer as itself with thousands separators. None, NaN
    and infinities are said as such."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    value = float(f"{value:.3g}")  # rounded first, so 9.996 is 10.0 and 0.0009996 is 0.001
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude < -3:
        return f"{value:.2e}"
    if magnitude >= 2:
        return f"{round(value):,}"
    # Trailing zeros dropped: a threshold of 0.5 reads 0.5, not 0.500.
    return f"{value:.{2 - magnitude}f}".rstrip("0").rstrip(".")


class Number(float):
    """A float whose plain ``{x}`` in a rule's sentence is ``sig3``; an explicit spec (``{x:.0%}``) is kept."""

    def __format__(self, spec: str) -> str:
        return sig3(float(self)) if not spec else float.__format__(self, spec)
