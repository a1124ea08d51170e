"""Fixed point: k * 2**-fl for a wl-bit two's-complement integer k."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import ClassVar

import torch

from qtorch.formats.base import Format
from qtorch.kernels.fixed import code_range, largest_grid_value, quantize_fixed
from qtorch.rounding import Rounding

__all__ = ["FixedPoint", "check_bool", "check_int"]


def check_int(owner: str, name: str, value: object, lo: int, hi: int) -> int:
    """Return ``value`` as an int in lo..hi, else raise TypeError / ValueError naming it."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    number = operator.index(value)
    if not lo <= number <= hi:
        raise ValueError(f"{owner}: {name} must be in {lo}..{hi}, got {number}")
    return int(number)


def check_bool(owner: str, name: str, value: object) -> bool:
    """Return ``value`` if it is a bool, else raise TypeError naming it."""
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class FixedPoint(Format):
    """Signed fixed point: values k * 2**-fl with k a wl-bit two's-complement integer.

    Args:
        wl: word length in bits, sign bit included, 1..64.
        fl: fractional bits, -512..512: the step is 2**-fl; 0 gives integers (``wl=8`` is
            int8) and a negative fl gives steps coarser than 1.
        clamp: limit results to the range [-2**(wl-fl-1), 2**(wl-fl-1) - 2**-fl]. With
            ``clamp=False`` only the precision is simulated: there is no range limit, ``max``
            is ``inf`` and the format has no codes (``encode``/``decode``/``values`` raise).
        symmetric: drop the most negative value, so the range is [-max, max].

    Rounding: all five modes; ``"nearest"`` sends ties to the even multiple of 2**-fl,
    ``"stochastic"`` rounds up with probability equal to the distance from the lower
    neighbour over the step (exact, unbiased at every magnitude). With ``clamp``, values
    beyond the range and ±Inf go to the nearest end; without, ±Inf stay ±Inf. NaN stays NaN.
    The sign of zero is kept: -0 stays -0 and a negative value that rounds to zero gives -0.

    Results are computed in the working dtype (float32, or float64 for float64 input). The
    rounding itself is always exact; but when wl > 24 (wl > 53 for float64) the ends of the
    range may not be float32 numbers, and then the clamp goes to the largest grid value that
    float32 holds, toward zero (e.g. ``FixedPoint(32, 0)`` clamps float32 at 2**31 - 128). A
    step finer than the dtype's own resolution leaves such values unchanged.

    >>> fmt = FixedPoint(wl=8, fl=4)
    >>> fmt.max, fmt.min, fmt.eps
    (7.9375, -8.0, 0.0625)
    >>> import qtorch
    >>> qtorch.quantize(torch.tensor([0.03, 0.09375, -9.0, 100.0]), fmt)
    tensor([ 0.0000,  0.1250, -8.0000,  7.9375])
    """

    wl: int
    fl: int
    clamp: bool = True
    symmetric: bool = False

    roundings: ClassVar[frozenset[Rounding]] = frozenset(Rounding)

    def __post_init__(self) -> None:
        object.__setattr__(self, "wl", check_int("FixedPoint", "wl", self.wl, 1, 64))
        object.__setattr__(self, "fl", check_int("FixedPoint", "fl", self.fl, -512, 512))
        check_bool("FixedPoint", "clamp", self.clamp)
        check_bool("FixedPoint", "symmetric", self.symmetric)

    @property
    def bits(self) -> int:
        """Word length in bits (sign included)."""
        return self.wl

    @property
    def max(self) -> float:
        """Largest value, 2**(wl-fl-1) - 2**-fl (``inf`` without clamp; rounded down to a
        float64 when wl > 54)."""
        if not self.clamp:
            return math.inf
        return largest_grid_value(code_range(self.wl, self.symmetric)[1], self.fl, torch.float64)

    @property
    def min(self) -> float:
        """Most negative value, -2**(wl-fl-1), or -max when symmetric (``-inf`` without clamp)."""
        if not self.clamp:
            return -math.inf
        k_min = code_range(self.wl, self.symmetric)[0]
        return -largest_grid_value(-k_min, self.fl, torch.float64)

    @property
    def min_positive(self) -> float:
        """Smallest positive value, the step 2**-fl."""
        return math.ldexp(1.0, -self.fl)

    @property
    def eps(self) -> float:
        """Gap between neighbouring values, 2**-fl."""
        return math.ldexp(1.0, -self.fl)

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        return quantize_fixed(x, self.wl, self.fl, self.clamp, self.symmetric, rounding, noise)

    def _need_codes(self, what: str) -> None:
        if not self.clamp:
            raise ValueError(f"FixedPoint: {what} needs clamp=True (without it there is no range)")

    def values(self) -> torch.Tensor:
        """Every value, ascending, as a float64 tensor (wl <= 16 and clamp only)."""
        self._need_codes("values()")
        if self.wl > 16:
            raise ValueError(f"FixedPoint: values() needs wl in 1..16, got {self.wl}")
        k_min, k_max = code_range(self.wl, self.symmetric)
        return torch.arange(k_min, k_max + 1, dtype=torch.float64) * math.ldexp(1.0, -self.fl)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The two's-complement integers k with round-to-nearest(x) = k * 2**-fl.

        Values beyond the range and ±Inf saturate to the end codes; NaN has no code
        (``ValueError``). Codes are torch.int32 for wl <= 32, torch.int64 otherwise.

        >>> FixedPoint(8, 4).encode(torch.tensor([0.5, -0.0625, 99.0]))
        tensor([  8,  -1, 127], dtype=torch.int32)
        """
        self._need_codes("encode")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"FixedPoint.encode: x must be a floating-point tensor, got {x!r}")
        if bool(torch.isnan(x).any()):
            raise ValueError("FixedPoint.encode: x contains NaN, which has no fixed-point code")
        k_min, k_max = code_range(self.wl, self.symmetric)
        x64 = x.to(torch.float64)
        q = quantize_fixed(x64, self.wl, self.fl, False, False, Rounding.NEAREST, None)
        k_float = q * 2.0**self.fl  # an integer, or ±Inf
        over = k_float >= 2.0 ** (self.wl - 1)  # would not fit; 2**63 itself overflows int64
        k_float = torch.where(over, 0.0, k_float).clamp(min=-(2.0 ** (self.wl - 1)))
        codes = torch.where(over, k_max, k_float.to(torch.int64)).clamp(k_min, k_max)
        return codes.to(torch.int32) if self.wl <= 32 else codes

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values k * 2**-fl of integer codes k, in ``dtype`` (exact where it holds them).

        >>> FixedPoint(8, 4).decode(torch.tensor([8, -1, 127]))
        tensor([ 0.5000, -0.0625,  7.9375])
        """
        self._need_codes("decode")
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"FixedPoint.decode: codes must be an integer tensor, got {codes!r}")
        if codes.dtype == torch.bool:
            raise TypeError("FixedPoint.decode: codes must be an integer tensor, got torch.bool")
        k_min, k_max = code_range(self.wl, self.symmetric)
        if codes.numel() and bool(((codes < k_min) | (codes > k_max)).any()):
            raise ValueError(f"FixedPoint.decode: codes must be in {k_min}..{k_max}")
        return (codes.to(torch.float64) * math.ldexp(1.0, -self.fl)).to(dtype)
