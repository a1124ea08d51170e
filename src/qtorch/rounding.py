"""Rounding modes: a closed set, accepted as strings at the API edge."""

from __future__ import annotations

import enum
from typing import TypeVar

E = TypeVar("E", bound=enum.Enum)


def parse_option(cls: type[E], value: E | str, label: str) -> E:
    """The member of the string-valued Enum ``cls`` for ``value``: a member, or its value in
    any letter case. Anything else raises ``ValueError("<label> must be one of ...")``."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        # this runs on every quantize call: a dict lookup, not Enum's call machinery
        member = cls._value2member_map_.get(value.lower())
        if member is not None:
            return member  # type: ignore[return-value]
    allowed = ", ".join(repr(m.value) for m in cls)
    raise ValueError(f"{label} must be one of {allowed}, got {value!r}")


class Rounding(enum.Enum):
    """How a value between two neighbouring representable values is resolved."""

    #: Round to the nearest representable value; ties go to the even code.
    NEAREST = "nearest"
    #: Round up with probability (x - lower) / (upper - lower), else down: unbiased.
    STOCHASTIC = "stochastic"
    #: Round toward zero (truncate the magnitude).
    TOWARD_ZERO = "toward_zero"
    #: Round toward -Inf.
    DOWN = "down"
    #: Round toward +Inf.
    UP = "up"

    @classmethod
    def parse(cls, value: Rounding | str) -> Rounding:
        """Return the member for ``value`` (a member or its string name).

        >>> Rounding.parse("nearest")
        <Rounding.NEAREST: 'nearest'>
        """
        return parse_option(cls, value, "rounding")


DIRECTED = frozenset({Rounding.TOWARD_ZERO, Rounding.DOWN, Rounding.UP})
"""The deterministic directed modes (IEEE 754 roundTowardZero / Negative / Positive)."""
