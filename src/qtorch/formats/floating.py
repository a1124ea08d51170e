"""Binary floating point: IEEE 754 layouts and the OCP FP8 / FP6 / FP4 variants."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from qtorch.formats.base import Format
from qtorch.formats.fixed import check_bool, check_int
from qtorch.kernels.floating import decode_float, encode_float, round_float
from qtorch.rounding import Rounding

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclasses.dataclass(frozen=True)
class FloatingPoint(Format):
    """Binary floating point with ``exp`` exponent bits and ``man`` fraction bits.

    A code is a sign bit, ``exp`` biased-exponent bits (bias 2**(exp-1) - 1) and ``man``
    fraction bits; the exponent field 0 holds zero and the subnormals. The defaults are IEEE 754
    binary semantics (the top exponent field is reserved for ±Inf and NaN) with saturation.

    Args:
        exp: exponent bits, 1..8.
        man: fraction (trailing significand) bits, 0..23.
        subnormals: if False the format has no subnormals: a result is flushed to signed zero
            when rounding x to ``man`` fraction bits with an unbounded exponent range gives a
            magnitude below ``min_normal`` (IEEE "tininess after rounding", as x86 and RISC-V
            flush-to-zero do), whatever the rounding mode. So x a little below ``min_normal``
            that rounds up to it is kept; ``decode`` reads subnormal codes as signed zero.
        saturate: if True (QPyTorch's behaviour) a finite x whose rounded magnitude exceeds
            ``max`` becomes ±max in every rounding mode. If False, IEEE 754 overflow: ±Inf
            (NaN in a format with NaN but no Inf) in nearest and stochastic rounding;
            ``"toward_zero"`` gives ±max, ``"down"`` gives +max or -Inf, ``"up"`` +Inf or -max.
            Formats with neither Inf nor NaN always saturate.
        has_inf: if False the top exponent field holds finite values (OCP "fn" layouts).
        has_nan: with ``has_inf=False``: if True only the all-ones code (each sign) is NaN
            (OCP E4M3: ``FloatingPoint(4, 3, has_inf=False)``, max 448); if False every code
            is finite (OCP FP6 / FP4). ``has_inf=True`` needs ``has_nan=True`` (IEEE layout;
            with ``man=0`` its top field holds only ±Inf, so there is no NaN code).

    Special values: NaN stays NaN (also in formats without a NaN code: the tensor still holds
    NaN). ±Inf stays ±Inf in formats with Inf, whatever ``saturate`` says. In a format without
    Inf, ±Inf overflows like a large finite value: to ±max when saturating (as torch's
    ``float8_e4m3fn`` cast and CUDA's ``satfinite`` conversions do) and in formats with neither
    Inf nor NaN, else to NaN in every rounding mode (as ml_dtypes does). -0 stays -0 and results
    that round to zero keep x's sign. Nearest rounding breaks ties to the even code (with
    ``man=0``: the even exponent field). Directed modes follow IEEE 754.

    Rounding is exact for float32 and float64 inputs (single rounding, no detour through
    float32). Layouts whose range exceeds the tensor's dtype (8 exponent bits without Inf, on
    float32) treat the largest float32-representable format value as their maximum.

    Example (float8 e5m2):

    >>> import qtorch
    >>> e5m2 = FloatingPoint(5, 2)
    >>> qtorch.quantize(torch.tensor([1.1, 3.5, 1e6, -1e-9]), e5m2).tolist()
    [1.0, 3.5, 57344.0, -0.0]
    >>> e5m2.max, e5m2.min_positive, e5m2.eps
    (57344.0, 1.52587890625e-05, 0.25)
    """

    exp: int
    man: int
    _: dataclasses.KW_ONLY
    subnormals: bool = True
    saturate: bool = True
    has_inf: bool = True
    has_nan: bool = True

    roundings: ClassVar[frozenset[Rounding]] = frozenset(Rounding)

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_int(name, "exp", self.exp, 1, 8)
        check_int(name, "man", self.man, 0, 23)
        for flag in ("subnormals", "saturate", "has_inf", "has_nan"):
            check_bool(name, flag, getattr(self, flag))
        if self.has_inf and not self.has_nan:
            raise ValueError(
                f"{name}: has_inf=True needs has_nan=True (in the IEEE layout the top exponent "
                "codes other than ±Inf are NaN); use has_inf=False, has_nan=False for a format "
                "with neither"
            )
        if self.max == 0.0:
            raise ValueError(
                f"{name}: exp={self.exp}, man={self.man} with subnormals={self.subnormals}, "
                f"has_inf={self.has_inf}, has_nan={self.has_nan} leaves no finite nonzero value"
            )

    # -- derived properties ---------------------------------------------------------------

    @property
    def bits(self) -> int:
        """Total width: sign, exponent and fraction bits."""
        return 1 + self.exp + self.man

    @property
    def bias(self) -> int:
        """Exponent bias, 2**(exp-1) - 1."""
        return (1 << (self.exp - 1)) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value, 1 - bias."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value, floor(log2(max))."""
        return math.frexp(self.max)[1] - 1

    @property
    def max(self) -> float:
        """The largest finite value (0.0 only for layouts the constructor rejects)."""
        # plain arithmetic (exact: powers of two, significands below 2**24), no math.ldexp,
        # so that the value also traces when torch.compile makes the parameters symbolic
        field, fraction = self._top_finite_code()
        if field == 0:
            return fraction * 2.0 ** (self.emin - self.man) if self.subnormals else 0.0
        return ((1 << self.man) + fraction) * 2.0 ** (field - self.bias - self.man)

    @property
    def min_normal(self) -> float:
        """2**emin: the smallest normal value, below which values are subnormal."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_positive(self) -> float:
        """The smallest positive value (a subnormal, unless ``subnormals`` is False)."""
        return math.ldexp(1.0, self.emin - self.man) if self.subnormals else self.min_normal

    @property
    def eps(self) -> float:
        """The gap between 1.0 and the next value of the grid: 2**-man when 1.0 is normal."""
        return math.ldexp(1.0, max(self.emin, 0) - self.man)

    @property
    def has_nan_code(self) -> bool:
        """Whether some code means NaN (not so without NaN, or with Inf and ``man=0``)."""
        return self.has_nan and not (self.has_inf and self.man == 0)

    def _top_finite_code(self) -> tuple[int, int]:
        """(exponent field, fraction) of the largest finite code."""
        top_field, all_ones = (1 << self.exp) - 1, (1 << self.man) - 1
        if self.has_inf or (self.has_nan and self.man == 0):
            return top_field - 1, all_ones
        if self.has_nan:
            return top_field, all_ones - 1
        return top_field, all_ones

    # -- protocol ---------------------------------------------------------------------------

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        """Round float32/float64 ``x`` to this format (see the class docstring)."""
        return round_float(
            x,
            self.man,
            self.emin,
            self.max,
            rounding,
            noise,
            subnormals=self.subnormals,
            saturate=self.saturate,
            has_inf=self.has_inf,
            has_nan=self.has_nan,
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Bit patterns of x rounded to nearest: sign bit at position exp + man.

        Returns int32 codes (int64 for the 32-bit ``FloatingPoint(8, 23)``), each in
        0 .. 2**bits - 1. The rounding is done in float64, so layouts wider than float32 get
        their full range. NaN encodes to the quiet NaN code carrying the NaN's sign bit (IEEE
        layout: top field with the leading fraction bit set; OCP "fn": all ones), as torch
        casts and ml_dtypes do; a format without a NaN code raises ``ValueError`` for NaN.

        >>> FloatingPoint(4, 3, has_inf=False).encode(torch.tensor([1.0, -448.0, 1e9]))
        tensor([ 56, 254, 126], dtype=torch.int32)
        """
        if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{type(self).__name__}.encode: x must be a floating tensor")
        q = self.quantize_kernel(x.to(torch.float64), Rounding.NEAREST, None)
        if not self.has_nan_code and bool(torch.isnan(q).any()):
            raise ValueError(f"{self!r} has no NaN code, but x holds NaN")
        codes = encode_float(q, self.exp, self.man, self.emin, has_inf=self.has_inf)
        return codes.to(torch.int32 if self.bits < 32 else torch.int64)

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values of the bit patterns ``codes`` (integers in 0 .. 2**bits - 1), in ``dtype``.

        Exact for every code when ``dtype`` holds the format (float64 always does). Without
        subnormals, subnormal codes read as signed zero.

        >>> FloatingPoint(4, 3, has_inf=False).decode(torch.tensor([56, 255, 126])).tolist()
        [1.0, nan, 448.0]
        """
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"{type(self).__name__}.decode: codes must be an integer tensor")
        if codes.dtype == torch.bool:
            raise TypeError(f"{type(self).__name__}.decode: codes must be an integer tensor")
        wide = codes.to(torch.int64)
        if bool(((wide < 0) | (wide >= 1 << self.bits)).any()):
            raise ValueError(
                f"{type(self).__name__}.decode: codes must be in 0..{(1 << self.bits) - 1}"
            )
        return decode_float(
            wide,
            self.exp,
            self.man,
            subnormals=self.subnormals,
            has_inf=self.has_inf,
            has_nan=self.has_nan,
            dtype=dtype,
        )

    def values(self) -> torch.Tensor:
        """Every distinct finite value, sorted ascending, as float64 (formats of <= 16 bits).

        >>> FloatingPoint(2, 1, has_inf=False, has_nan=False).values().tolist()
        [-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
        """
        if self.bits > 16:
            raise ValueError(f"{self!r}: values() needs at most 16 bits, got {self.bits}")
        codes = torch.arange(1 << (self.exp + self.man))
        positive = self.decode(codes, torch.float64)
        positive = torch.unique(positive[torch.isfinite(positive)])  # sorted, zero once
        return torch.cat([-positive[1:].flip(0), positive])
