"""Binary floating point: rounding, encoding and decoding as pure tensor code.

The functions take the layout as plain ints and bools (no format objects) and never branch in
Python on tensor values, so ``torch.compile`` can fuse them. Names follow IEEE 754: ``man``
fraction bits, ``emin`` the exponent of the smallest normal, a *field* is the biased exponent
bits of a code and a *fraction* its trailing significand bits.
"""

from __future__ import annotations

import math

import torch

from qtorch.kernels.bits import exponent, layout, ldexp, pattern, signbit
from qtorch.kernels.round import (
    binades_fit,
    binades_nearest_fit,
    round_binades_nearest,
    round_binades_stochastic,
    round_fraction_bits,
    round_scaled,
)
from qtorch.rounding import Rounding


def finite_limit(max_value: float, man: int, dtype: torch.dtype) -> float:
    """The largest format value that is also finite in the working ``dtype``.

    Equal to ``max_value`` except for layouts whose range exceeds the dtype (8 exponent bits
    without Inf on float32 tensors): then the largest value of the dtype's top binade.
    """
    if max_value <= torch.finfo(dtype).max:
        return max_value
    return (2.0 - 2.0**-man) * 2.0 ** layout(dtype).bias


def round_float(
    x: torch.Tensor,
    man: int,
    emin: int,
    max_value: float,
    rounding: Rounding,
    noise: torch.Tensor | None,
    *,
    subnormals: bool,
    saturate: bool,
    has_inf: bool,
    has_nan: bool,
) -> torch.Tensor:
    """Round x (float32 or float64) to a binary float with ``man`` fraction bits.

    1. Round to the quantum 2**(max(exponent(x), emin) - man) (subnormal grid below 2**emin);
       with ``subnormals=False`` the exponent is not held at emin (unbounded-exponent rounding)
       and results below 2**emin are flushed to signed zero: tininess after rounding.
    2. Resolve overflow (rounded magnitude above the largest finite value ``max_value``):
       to ±max when ``saturate`` or the format has neither Inf nor NaN; otherwise as IEEE 754
       does, to the overflow value (±Inf, or NaN without Inf) in nearest and stochastic
       rounding, and in directed modes only when rounding away from zero (toward zero gives
       ±max, down gives +max / -Inf, up gives +Inf / -max).
    3. ±Inf inputs stay ±Inf with Inf in the format; without Inf they overflow like large
       finite values: to ±max when saturating (or without NaN), else to NaN in every mode.

    Nearest ties go to the even code (with ``man=0``, the even exponent field). NaN stays NaN
    and every result keeps x's sign bit (-0 stays -0).

    Step 1 has two branch-free halves (both vectorize under ``torch.compile``): magnitudes
    from 2**emin up keep ``man`` fraction bits (:func:`round_fraction_bits`, on the bit
    pattern; every such x is a normal number of the working dtype, since emin >= -126), and
    magnitudes below it are rounded to the constant quantum of the lowest binade
    (:func:`round_scaled`): 2**(emin - man), or 2**(emin - 1 - man) without subnormals,
    where everything below 2**(emin - 1) ends below 2**emin and is flushed anyway. NaN
    takes the second half. Nearest rounding, where the binades allow it (every layout
    with a fraction bit whose range the working dtype holds with room for one binade
    more: not bfloat16 on float32), uses one formula for both halves instead, on the
    magnitude, with overflow handled before the sign is put back
    (:func:`_round_nearest_in_binades`, same bits; A/B 0.79-0.90 for float formats,
    4,194,304 float32, 2 threads). Stochastic rounding, where the quanta allow it (every
    format with a fraction bit and quanta from 2**-126 to 1 on float32), uses one formula
    for both halves instead (:func:`round_binades_stochastic`, same bits; A/B 0.92 float(5,2),
    0.94 MX E4M3, 0.96 NVFP4, 4,194,304 float32, 2 threads), and saturating formats
    saturate its magnitude before the sign (A/B 0.89-0.95 more).
    """
    floor_exp = emin if subnormals else emin - 1
    limit = finite_limit(max_value, man, x.dtype)
    saturated = False  # r already clamped to ±limit
    if (
        rounding is Rounding.STOCHASTIC
        and noise is not None
        and binades_fit(x.dtype, man, floor_exp)
    ):
        # when only the saturated result is used below, saturate the magnitude (cheaper)
        saturated = saturate or not (has_inf or has_nan)
        r = round_binades_stochastic(x, man, floor_exp, noise, limit if saturated else None)
    elif rounding is Rounding.NEAREST and binades_nearest_fit(
        x.dtype, man, floor_exp, top_exp := max(math.frexp(limit)[1] - 1, floor_exp)
    ):
        return _round_nearest_in_binades(
            x, man, emin, floor_exp, top_exp, limit, subnormals, saturate, has_inf, has_nan
        )
    else:
        r = torch.where(
            x.abs() >= 2.0**emin,  # False for NaN, which round_scaled keeps
            round_fraction_bits(x, man, rounding, noise),
            round_scaled(x, floor_exp - man, rounding, noise),
        )
    if man == 0 and not subnormals and rounding is Rounding.NEAREST:
        # The tie 1.5 * 2**(emin-1) lies between 2**(emin-1) and 2**emin: the even exponent
        # field is the lower one, which flushes to zero. (Above 2**emin the even field of
        # the working dtype is the format's: both biases are odd, except with exp=1, whose
        # only format, 0 and ±2, saturates every tie above 2 to 2 either way.)
        r = torch.where(x.abs() == 1.5 * 2.0 ** (emin - 1), r * 0.0, r)
    if not subnormals:
        r = torch.where(r.abs() < 2.0**emin, r * 0.0, r)
    clamped = r if saturated else r.clamp(-limit, limit)  # r has x's sign; NaN stays NaN
    if not has_inf and (saturate or not has_nan):
        return clamped  # every overflow saturates, ±Inf inputs included
    special = x.abs() == math.inf  # ±Inf inputs (vectorizes, unlike isinf)
    if not saturate and rounding is not Rounding.TOWARD_ZERO:
        overflow = r.abs() > limit
        if rounding is Rounding.DOWN:
            overflow = overflow & signbit(x)
        elif rounding is Rounding.UP:
            overflow = overflow & ~signbit(x)
        special = special | overflow
    if has_inf:
        return torch.where(special, x * math.inf, clamped)  # x is nonzero there: ±Inf
    return torch.where(special, torch.copysign(torch.full_like(x, math.nan), x), clamped)


def _round_nearest_in_binades(
    x: torch.Tensor,
    man: int,
    emin: int,
    floor_exp: int,
    top_exp: int,
    limit: float,
    subnormals: bool,
    saturate: bool,
    has_inf: bool,
    has_nan: bool,
) -> torch.Tensor:
    """:func:`round_float` with nearest rounding where :func:`binades_nearest_fit` allows.

    Every step acts on the magnitude (:func:`round_binades_nearest`), and x's sign bit is
    put back last, by an OR: saturation (a clamp before rounding, the same result since
    ``limit`` is on the grid; with Inf in the format, after rounding, on the bit patterns:
    :func:`saturate_finite`), overflow to ±Inf or NaN after rounding, the flush without
    subnormals; ±Inf inputs take the same steps as large values. Same bits as the general
    form.
    """
    lay = layout(x.dtype)
    magnitude = x.abs()
    if saturate and has_inf:
        r = saturate_finite(round_binades_nearest(magnitude, man, floor_exp, top_exp), limit)
    elif saturate or not (has_inf or has_nan):
        magnitude = magnitude.clamp(max=limit)  # NaN stays NaN
        r = round_binades_nearest(magnitude, man, floor_exp, top_exp)
    else:
        r = round_binades_nearest(magnitude, man, floor_exp, top_exp)
        r = torch.where(r > limit, math.inf if has_inf else math.nan, r)
    if not subnormals:
        r = torch.where(r < 2.0**emin, 0.0, r)
    sign = x.view(lay.int_dtype) & ~lay.magnitude_mask
    return (r.view(lay.int_dtype) | sign).view(x.dtype)


def saturate_finite(r: torch.Tensor, limit: float) -> torch.Tensor:
    """r with its finite values above ``limit`` set to ``limit``; +Inf and NaN stay.

    r holds magnitudes (+0 and up, +Inf, NaN with the sign bit clear) and ``limit`` is a
    positive finite value of r's dtype. Computed on the bit patterns, which order like the
    magnitudes, +Inf above every finite one and NaN above +Inf: the patterns from +Inf's up
    stay, the others take the integer minimum with limit's. Three vector operations; the
    float form, ``where(r > limit, where(r == inf, r, limit), r)``, compiled to seven on
    AVX2 (Inductor converts each comparison's mask for the blend): float(5,2) nearest's
    loop went from 20 to 16 instructions per 8 elements. A/B (4,194,304 float32, Zen 2):
    float(5,2) nearest 0.92-0.98 in three runs at 2 threads (wall clock), bfloat16
    0.99-1.00; 0.99-1.00 at one thread (CPU time), where the loop waits for memory.
    """
    lay = layout(r.dtype)
    bits = r.view(lay.int_dtype)
    inf = pattern(math.inf, r.dtype)
    # ">" rather than ">=": GCC 12.2 miscompiles an AVX2 select on an integer ">=" when
    # AVX-512 is enabled too (docs/performance.md)
    kept = bits > inf - 1
    return torch.where(kept, bits, bits.clamp(max=pattern(limit, r.dtype))).view(r.dtype)


def decode_float(
    codes: torch.Tensor,
    exp: int,
    man: int,
    *,
    subnormals: bool,
    has_inf: bool,
    has_nan: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Values of the bit patterns ``codes`` (integers, sign bit at position exp + man).

    Only the low ``1 + exp + man`` bits are read. Subnormal codes decode to signed zero when
    ``subnormals`` is False. With Inf, the top field holds ±Inf (fraction 0) and NaN; with NaN
    only, the all-ones field and fraction is NaN. Computed exactly in float64, then cast.
    """
    codes = codes.to(torch.int64)
    bias = (1 << (exp - 1)) - 1
    top_field = (1 << exp) - 1
    negative = ((codes >> (exp + man)) & 1) == 1
    field = (codes >> man) & top_field
    fraction = codes & ((1 << man) - 1)
    normal = field > 0
    significand = (fraction + (normal.to(torch.int64) << man)).to(torch.float64)
    if not subnormals:
        significand = significand * normal
    value = ldexp(significand, field.clamp(min=1) - bias - man)
    if has_inf:
        value = torch.where(field == top_field, math.inf, value)
        value = torch.where((field == top_field) & (fraction != 0), math.nan, value)
    elif has_nan:
        value = torch.where((field == top_field) & (fraction == (1 << man) - 1), math.nan, value)
    value = torch.where(negative, -value, value)
    return value.to(dtype)


def encode_float(q: torch.Tensor, exp: int, man: int, emin: int, *, has_inf: bool) -> torch.Tensor:
    """Bit patterns (int64) of values ``q`` already representable in the format.

    Finite values and ±Inf get their IEEE-style code; NaN gets the quiet NaN code with the
    NaN's sign bit: with Inf the top field with the leading fraction bit set (or every
    fraction bit when there is only one), without Inf the all-ones field and fraction.
    """
    top_field = (1 << exp) - 1
    negative = torch.signbit(q).to(torch.int64)
    magnitude = q.abs().to(torch.float64)
    finite = torch.isfinite(magnitude)
    safe = torch.where(finite, magnitude, 0.0)
    quantum_exp = exponent(safe).clamp(min=emin)
    integer = ldexp(safe, man - quantum_exp).to(torch.int64)  # exact: q is on the grid
    body = ((quantum_exp - emin).to(torch.int64) << man) + integer
    if has_inf:
        quiet = 1 << (man - 1) if man > 0 else 0
        nan_code = (top_field << man) | quiet
        special = torch.where(torch.isnan(magnitude), nan_code, top_field << man)
    else:
        special = torch.full_like(body, (top_field << man) | ((1 << man) - 1))
    body = torch.where(finite, body, special)
    return body | (negative << (exp + man))
