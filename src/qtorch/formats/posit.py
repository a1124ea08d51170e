"""Posits: posit<nsize, es> as in the Posit Standard and SoftPosit, and bfloat16 posits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qtorch.formats.base import Format
from qtorch.formats.fixed import check_int
from qtorch.kernels.posit import decode_posit, encode_posit, round_posit
from qtorch.rounding import Rounding

__all__ = ["Posit", "Positbf"]


def _check_scale(owner: str, scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{owner}: scale must be a number, got {type(scale).__name__} {scale!r}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{owner}: scale must be a positive finite number, got {scale!r}")
    return float(scale)


def _check_codes(owner: str, codes: object) -> torch.Tensor:
    if (
        not isinstance(codes, torch.Tensor)
        or codes.is_floating_point()
        or codes.is_complex()
        or codes.dtype == torch.bool
    ):
        raise TypeError(f"{owner}: codes must be an integer tensor, got {codes!r}")
    return codes


@dataclass(frozen=True)
class Posit(Format):
    """posit<nsize, es>: the tapered-precision format of the Posit Standard (2022).

    A code is an ``nsize``-bit two's-complement integer; its magnitude bits are a regime (a
    run of equal bits worth a factor useed = 2**(2**es) per bit), up to ``es`` exponent bits
    and the remaining fraction bits. Values are 0, NaR (shown as NaN) and
    ±useed**k * 2**e * (1 + f) between minpos = useed**-(nsize-2) and maxpos =
    useed**(nsize-2).

    Args:
        nsize: bits per posit, 2..32.
        es: exponent bits, 0..4.
        scale: positive finite factor: values are rounded as ``x * scale`` and the result
            divided by ``scale`` (so the posit grid is divided by ``scale``). Both operations
            are ordinary floating-point operations of the working dtype: exact when ``scale``
            is a power of two and nothing over- or underflows.

    Rounding:
        ``"nearest"`` rounds on the encoding with ties to the even code, exactly as SoftPosit
        and the standard do; where exponent bits are cut this is not nearest in value:
        posit<8,2> rounds 4.0e6 to 2**20 but 4.2e6 to 2**24. ``"stochastic"`` rounds up to
        the next posit (in magnitude) with probability (|x| - lower) / (upper - lower), which
        is unbiased for minpos <= |x| <= maxpos (resolved to the noise's resolution, 2**-24
        for float32); outside that range it saturates like nearest, so it is biased there.

    Specials: a finite nonzero value never rounds to 0 or NaR: beyond maxpos it gives
    ±maxpos, below minpos ±minpos. ±Inf and NaN give NaN (NaR). -0 gives +0 (posits have one
    zero). float32 and float64 inputs are rounded exactly. Float32 holds every posit value
    except for the wide formats, 2**es * (nsize - 2) > 126 (es 3 with nsize >= 18, es 4 with
    nsize >= 10), whose minpos and maxpos lie beyond float32's range: for float32 tensors
    these saturate instead at the smallest posit >= 2**-149 and the largest posit <= the
    float32 maximum (never at 0 or Inf); use float64 tensors for the full range.

    >>> import qtorch
    >>> fmt = Posit(8, 2)
    >>> fmt.max, fmt.min_positive, fmt.eps, fmt.useed
    (16777216.0, 5.960464477539063e-08, 0.125, 16)
    >>> qtorch.quantize(torch.tensor([1.1, 4.0e6, 4.2e6, -1e30, float("inf")]), fmt)
    tensor([ 1.1250e+00,  1.0486e+06,  1.6777e+07, -1.6777e+07,         nan])
    >>> fmt.encode(torch.tensor([1.0, -1.0, 0.0]))
    tensor([ 64, -64,   0], dtype=torch.int32)
    """

    nsize: int
    es: int
    scale: float = 1.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        object.__setattr__(self, "nsize", check_int(name, "nsize", self.nsize, 2, self._max_n()))
        object.__setattr__(self, "es", check_int(name, "es", self.es, 0, 4))
        object.__setattr__(self, "scale", _check_scale(name, self.scale))

    @staticmethod
    def _max_n() -> int:
        return 32

    @property
    def bits(self) -> int:
        """Bits per value, ``nsize``."""
        return self.nsize

    @property
    def useed(self) -> int:
        """2**(2**es): the factor one more regime bit is worth."""
        return 1 << (1 << self.es)

    @property
    def max(self) -> float:
        """maxpos / scale, with maxpos = useed**(nsize-2)."""
        return math.ldexp(1.0, (1 << self.es) * (self.nsize - 2)) / self.scale

    @property
    def min_positive(self) -> float:
        """minpos / scale, with minpos = useed**-(nsize-2)."""
        return math.ldexp(1.0, -(1 << self.es) * (self.nsize - 2)) / self.scale

    @property
    def eps(self) -> float:
        """Gap between 1.0 and the next larger posit (unscaled; ``inf`` for nsize 2)."""
        avail = self.nsize - 3  # bits left after the sign and the regime "10" of 1.0
        if avail < 0:
            return math.inf
        if avail >= self.es:
            return math.ldexp(1.0, -(avail - self.es))
        return math.ldexp(1.0, 1 << (self.es - avail)) - 1.0

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        return round_posit(x, self.nsize, self.es, self.scale, rounding, noise)

    def values(self) -> torch.Tensor:
        """Every value (divided by ``scale``), ascending, float64 (nsize <= 16)."""
        if self.nsize > 16:
            raise ValueError(f"{type(self).__name__}: values() needs nsize <= 16, got {self.nsize}")
        half = 1 << (self.nsize - 1)
        codes = torch.arange(-half + 1, half, dtype=torch.int64)
        return decode_posit(codes, self.nsize, self.es, self.scale)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The nsize-bit two's-complement codes (torch.int32) of ``x * scale`` rounded to nearest.

        Saturates like :meth:`quantize_kernel` but over the whole posit range (no float32
        clamp). ±0 gives 0; ±Inf and NaN give NaR, the code -2**(nsize-1).

        >>> Posit(8, 0).encode(torch.tensor([1.0, 1e9, float("nan")]))
        tensor([  64,  127, -128], dtype=torch.int32)
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"{type(self).__name__}.encode: x must be a floating-point tensor")
        work = x if x.dtype in (torch.float32, torch.float64) else x.float()
        return encode_posit(work, self.nsize, self.es, self.scale)

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values (divided by ``scale``) of integer codes, in ``dtype``.

        Only the low nsize bits of each integer count, read as two's complement, so both
        signed codes and unsigned bit patterns work. NaR gives NaN. Values are built exactly
        (in float32 where it holds every value of the format, else in float64) and cast:
        float32 rounds to nearest even where it lacks the bits (posit<32,*> near 1, and the
        wide formats' extremes, which become 0 or ±Inf).

        >>> Posit(8, 0).decode(torch.tensor([64, -64, 0x7F, 0x80]))
        tensor([ 1., -1., 64., nan])
        """
        codes = _check_codes(f"{type(self).__name__}.decode", codes)
        return decode_posit(codes, self.nsize, self.es, self.scale, dtype)


@dataclass(frozen=True)
class Positbf(Posit):
    """posit<nsize, es> for nsize 2..8, the bfloat16 flavour (qtorch+'s bfloat16 posits).

    Every posit of at most 8 bits is exactly a bfloat16 number (at most 5 fraction bits,
    exponent within 2**±96), so rounding a bfloat16 tensor to it gives bfloat16 results with
    no second rounding. ``qtorch.quantize`` widens bfloat16 to float32 exactly, rounds as
    :class:`Posit` does, and casts back exactly. For float32 tensors the values equal those of
    ``Posit`` (no rounding to bfloat16 first). :meth:`decode` returns bfloat16 by default.
    Semantics (ties, saturation, NaN, ``scale``) are those of :class:`Posit`; with a
    ``scale`` that is not a power of two the final division can round in the cast back.

    >>> import qtorch
    >>> qtorch.quantize(torch.tensor([2.5, 100.0], dtype=torch.bfloat16), Positbf(7, 2))
    tensor([ 2.5000, 96.0000], dtype=torch.bfloat16)
    """

    @staticmethod
    def _max_n() -> int:
        return 8

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """Values of integer codes, bfloat16 by default (see :meth:`Posit.decode`)."""
        return super().decode(codes, dtype)
