"""An exact posit reference written from the definition (Python ints and fractions only).

Nothing here imports qtorch. A posit<n, es> code is an n-bit two's-complement integer; the
magnitude bits after the sign are a regime (a run of equal bits ended by the opposite bit or
by the end of the word), then up to es exponent bits (missing ones are 0), then the fraction.
Rounding to nearest follows the Posit Standard: the boundary between neighbouring codes i and
i + 1 is the value of the (n + 1)-bit code 2i + 1, and a value equal to it goes to the even
code; nonzero values never round to 0 or NaR (they saturate at ±minpos / ±maxpos).
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np


def decode(code: int, nsize: int, es: int) -> Fraction | None:
    """The exact value of an n-bit code (its low n bits); None for NaR."""
    code &= (1 << nsize) - 1
    if code == 0:
        return Fraction(0)
    if code == 1 << (nsize - 1):
        return None
    negative = code >> (nsize - 1) == 1
    if negative:
        code = (1 << nsize) - code
    bits = format(code, f"0{nsize}b")[1:]
    first = bits[0]
    run = len(bits) - len(bits.lstrip(first))
    k = run - 1 if first == "1" else -run
    rest = bits[run + 1 :]
    exp_bits, frac_bits = rest[:es].ljust(es, "0"), rest[es:]
    e = int(exp_bits, 2) if es else 0
    f = Fraction(int(frac_bits, 2), 1 << len(frac_bits)) if frac_bits else Fraction(0)
    value = Fraction(2) ** (k * (1 << es) + e) * (1 + f)
    return -value if negative else value


def maxpos(nsize: int, es: int) -> Fraction:
    return Fraction(2) ** ((1 << es) * (nsize - 2))


def minpos(nsize: int, es: int) -> Fraction:
    return 1 / maxpos(nsize, es)


def round_nearest(x: Fraction, nsize: int, es: int) -> int:
    """The signed code of x rounded to nearest (bisection over the codes: any nsize)."""
    if x == 0:
        return 0
    if x < 0:
        return -round_nearest(-x, nsize, es)
    top = (1 << (nsize - 1)) - 1
    if x >= maxpos(nsize, es):
        return top
    if x <= minpos(nsize, es):
        return 1
    lo, hi = 1, top  # decode(lo) <= x < decode(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if decode(mid, nsize, es) <= x:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    boundary = decode(2 * lo + 1, nsize + 1, es)
    assert boundary is not None
    if x < boundary:
        return lo
    if x > boundary:
        return hi
    return lo if lo % 2 == 0 else hi


def neighbours(x: Fraction, nsize: int, es: int) -> tuple[Fraction, Fraction]:
    """Magnitude-wise neighbours (lower, upper) of x on the code line (equal if x is a posit).

    Needs minpos <= |x| <= maxpos; the pair carries x's sign.
    """
    sign = -1 if x < 0 else 1
    mag = abs(x)
    lo, hi = 1, (1 << (nsize - 1)) - 1  # decode(lo) <= mag <= decode(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if decode(mid, nsize, es) <= mag:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    a, b = decode(lo, nsize, es), decode(hi, nsize, es)
    assert a is not None and b is not None and a <= mag <= b
    if a == mag:
        b = a
    elif b == mag:
        a = b
    return sign * a, sign * b


def as_float64(value: Fraction) -> float:
    """value as a float64, asserting that the conversion is exact."""
    f = float(value)
    assert Fraction(f) == value, value
    return f


@functools.cache
def table(nsize: int, es: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, boundaries) of the positive posits, float64 (exact for nsize <= 16, any es).

    values[i] is code i + 1; boundaries[i] lies between values[i] and values[i + 1].
    """
    top = (1 << (nsize - 1)) - 1
    values = [as_float64(decode(c, nsize, es)) for c in range(1, top + 1)]  # type: ignore[arg-type]
    bounds = [as_float64(decode(2 * c + 1, nsize + 1, es)) for c in range(1, top)]  # type: ignore[arg-type]
    return np.array(values), np.array(bounds)


def round_nearest_table(x: np.ndarray, nsize: int, es: int) -> np.ndarray:
    """Signed int64 codes of float64 inputs x rounded to nearest (nsize <= 16).

    Same rule as :func:`round_nearest`, vectorised with exact float64 comparisons. ±Inf and NaN
    give NaR (-2**(nsize-1)); ±0 gives 0.
    """
    _, bounds = table(nsize, es)
    mag = np.abs(x)
    index = np.searchsorted(bounds, mag, side="left")  # boundaries strictly below |x|
    padded = np.append(bounds, np.inf)  # nsize 2 has no boundary
    at_tie = padded[index] == mag
    code = index + 1  # codes 1.. for the positive posits
    code = np.where(at_tie & (code % 2 == 1), code + 1, code)
    code = np.where(np.signbit(x), -code, code)
    code = np.where(mag == 0, 0, code)
    return np.where(np.isfinite(x), code, -(1 << (nsize - 1))).astype(np.int64)


def value_of_codes(codes: np.ndarray, nsize: int, es: int) -> np.ndarray:
    """float64 values of signed codes from :func:`round_nearest_table` (NaR gives NaN)."""
    values, _ = table(nsize, es)
    mag = np.abs(codes)
    safe = np.clip(mag, 1, len(values))
    out = np.where(codes < 0, -values[safe - 1], values[safe - 1])
    out = np.where(codes == 0, 0.0, out)
    return np.where(codes == -(1 << (nsize - 1)), np.nan, out)


def all_boundaries(nsize: int, es: int) -> np.ndarray:
    """Every rounding boundary (and every value) of posit<nsize, es>, both signs, float64."""
    values, bounds = table(nsize, es)
    pos = np.concatenate([values, bounds])
    return np.concatenate([pos, -pos])


def sorted_values(nsize: int, es: int) -> list[Fraction]:
    """All finite values ascending (exact), for checks of ``values()``."""
    vals = {decode(c, nsize, es) for c in range(1 << nsize)}
    vals.discard(None)
    return sorted(vals)  # type: ignore[type-var]


__all__ = [
    "all_boundaries",
    "as_float64",
    "decode",
    "maxpos",
    "minpos",
    "neighbours",
    "round_nearest",
    "round_nearest_table",
    "sorted_values",
    "table",
    "value_of_codes",
]
