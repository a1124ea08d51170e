"""Rounding to a power-of-two grid: the shared core of fixed, float and block formats.

Three formulations of the same operation, each exact (tests/test_rounding.py checks them
against ``fractions``; tests/test_kernels_fast.py checks they agree bitwise):

* :func:`round_to_quantum`: any quantum (a per-element tensor too), any magnitude;
* :func:`round_scaled`: a constant quantum, by multiplications with constants (fast);
* :func:`round_fraction_bits`: a fixed number of significand bits, on the bit pattern
  (fast; the quantum follows each element's binade).
"""

from __future__ import annotations

import torch

from qtorch.kernels.bits import copysign, exponent, flip_sign, layout, ldexp, mul_pow2, signbit
from qtorch.rounding import Rounding


def round_integer(
    y: torch.Tensor, rounding: Rounding, negative: torch.Tensor, noise: torch.Tensor | None
) -> torch.Tensor:
    """Round non-negative magnitudes ``y`` to integers (as floats).

    ``negative`` tells which magnitudes belong to negative values (for the directed modes).
    Nearest ties go to even. Stochastic rounds up when ``noise < frac(y)``, so with ``noise``
    uniform on [0, 1) it rounds up with probability frac(y), resolved to the noise's
    resolution (2**-24 for float32, 2**-53 for float64). ±Inf and NaN pass through.
    """
    if rounding is Rounding.NEAREST:
        return torch.round(y)
    if rounding is Rounding.STOCHASTIC:
        if noise is None:
            raise ValueError("stochastic rounding needs noise")
        low = torch.floor(y)
        # low + 1.0 or low + 0.0: a select's bits, at a fifth of an eager boolean select's
        # cost on the CPU (the mask is added as 0 / 1)
        return low + (noise < y - low)
    if rounding is Rounding.TOWARD_ZERO:
        return torch.floor(y)
    if rounding is Rounding.DOWN:
        return torch.where(negative, torch.ceil(y), torch.floor(y))
    if rounding is Rounding.UP:
        return torch.where(negative, torch.floor(y), torch.ceil(y))
    raise ValueError(f"unknown rounding {rounding!r}")


def round_signed_(y: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None) -> torch.Tensor:
    """Round y to integers (as floats), keeping the sign of zero; y is a temporary (overwritten).

    The same integers as :func:`round_integer` on |y| with the sign put back: nearest ties
    to even, directed modes by floor / ceil / trunc of the signed value, stochastic on the
    magnitude (up with probability frac(|y|)). ±Inf and NaN pass through.
    """
    if rounding is Rounding.NEAREST:
        return y.round_()  # half to even
    if rounding is Rounding.TOWARD_ZERO:
        return y.trunc_()
    if rounding is Rounding.DOWN:
        return y.floor_()
    if rounding is Rounding.UP:
        return y.ceil_()
    if noise is None:
        raise ValueError("stochastic rounding needs noise")
    magnitude = y.abs()
    low = torch.floor(magnitude)
    return copysign(low + (noise < magnitude - low), y)


def round_to_quantum(
    x: torch.Tensor,
    quantum_exp: torch.Tensor | int,
    rounding: Rounding,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round x to a multiple of 2**quantum_exp (a scalar or a broadcastable int tensor).

    The magnitude is scaled exactly to an integer grid, rounded, and scaled back; the sign
    (of zero too) is kept. A quantum finer than x's own ulp leaves x unchanged. A magnitude
    far below the quantum (under 2**-(mantissa_bits + 8) of it) is scaled to exactly that
    fraction instead, which rounds the same way in every deterministic mode and keeps the
    scaling exact. No range limit is applied: that is the caller's job. ±Inf stay ±Inf, NaN
    stays NaN.

    >>> round_to_quantum(torch.tensor([0.3, -0.7, 2.5]), -2, Rounding.NEAREST)
    tensor([ 0.2500, -0.7500,  2.5000])
    """
    mantissa_bits = layout(x.dtype).mantissa_bits
    e_x = exponent(x)
    finest = e_x - mantissa_bits
    if isinstance(quantum_exp, int):
        q_exp = finest.clamp(min=quantum_exp)
    else:
        q_exp = torch.maximum(finest, quantum_exp.to(finest.dtype))
    scale_exp = torch.minimum(q_exp, e_x + mantissa_bits + 8)
    magnitude = ldexp(x.abs(), -scale_exp)
    k = round_integer(magnitude, rounding, signbit(x), noise)
    return copysign(ldexp(k, q_exp), x)


def round_scaled(
    x: torch.Tensor, quantum_exp: int, rounding: Rounding, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """:func:`round_to_quantum` for a constant quantum, by multiplying with constants.

    Gives the same results as ``round_to_quantum(x, quantum_exp, ...)`` wherever the scaled
    value x * 2**-quantum_exp is finite (elsewhere ±Inf). Scaling down (quantum_exp > 0) may
    underflow; a scaled magnitude below 2**-(mantissa_bits + 8) rounds like that value in
    every mode (the noise is coarser), so that value stands in for it.

    >>> round_scaled(torch.tensor([0.3, -0.7, 2.5]), -2, Rounding.NEAREST)
    tensor([ 0.2500, -0.7500,  2.5000])
    """
    k = mul_pow2(x, -quantum_exp)
    if quantum_exp > 0 and rounding in (Rounding.STOCHASTIC, Rounding.DOWN, Rounding.UP):
        tiny = 2.0 ** -(layout(x.dtype).mantissa_bits + 8)
        k = torch.where((k.abs() < tiny) & (x != 0), torch.sign(x) * tiny, k)
    return mul_pow2(round_signed_(k, rounding, noise), quantum_exp)


def round_fraction_bits(
    x: torch.Tensor, man: int, rounding: Rounding, noise: torch.Tensor | None = None
) -> torch.Tensor:
    """Round x to ``man`` fraction bits with an unbounded exponent range, on its bit pattern.

    For a normal x this is ``round_to_quantum(x, exponent(x) - man, ...)``: the low
    ``mantissa_bits - man`` bits of the pattern are dropped (which truncates the magnitude),
    and rounding up adds one step to what is kept, a carry moving into the next binade (and
    past the dtype's largest finite value to ±Inf). A subnormal x (fixed exponent field) is
    rounded to a multiple of 2**(min_normal_exp - man) instead. ±Inf and zeros are kept;
    for NaN the result is unspecified (a payload can carry into the sign bit): callers route
    NaN elsewhere. ``man`` is at most the dtype's fraction bits.

    Nearest ties go to the even kept pattern (with ``man = 0``: the even exponent field of
    the working dtype). Stochastic rounds up when ``noise * 2**dropped_bits`` is below the
    dropped bits as an integer: the same decision as :func:`round_integer` on the scaled
    magnitude.

    >>> round_fraction_bits(torch.tensor([1.3, -2.75, 1e6]), 2, Rounding.NEAREST)
    tensor([ 1.2500e+00, -3.0000e+00,  1.0486e+06])
    """
    lay = layout(x.dtype)
    drop = lay.mantissa_bits - man  # fraction bits dropped
    if drop == 0:
        return x.clone()
    bits = x.view(lay.int_dtype)  # sign and magnitude: the int ops below act on the magnitude
    low_mask = (1 << drop) - 1
    if rounding is Rounding.NEAREST:
        # add just under half a step, plus one for an odd kept pattern; then truncate
        lowest_kept = (bits >> drop) & 1
        return ((bits + (low_mask >> 1) + lowest_kept) & ~low_mask).view(x.dtype)
    dropped = bits & low_mask
    kept = bits & ~low_mask
    if rounding is Rounding.TOWARD_ZERO:
        return kept.view(x.dtype)
    if rounding is Rounding.STOCHASTIC:
        if noise is None:
            raise ValueError("stochastic rounding needs noise")
        up = noise * 2.0**drop < dropped.to(x.dtype)  # exact on both sides
    elif rounding is Rounding.DOWN:
        up = (dropped != 0) & (bits < 0)
    elif rounding is Rounding.UP:
        up = (dropped != 0) & (bits >= 0)
    else:
        raise ValueError(f"unknown rounding {rounding!r}")
    return (kept + (up.to(lay.int_dtype) << drop)).view(x.dtype)


def round_binades_stochastic(
    x: torch.Tensor, man: int, floor_exp: int, noise: torch.Tensor, limit: float | None = None
) -> torch.Tensor:
    """Stochastic rounding to the quantum 2**(max(exponent(x), floor_exp) - man), in one pass.

    The same results as ``round_fraction_bits`` from 2**floor_exp up and ``round_scaled``
    with the quantum 2**(floor_exp - man) below it (up when ``noise`` is below the scaled
    magnitude's fraction), with one formula for both: the quantum and its inverse are
    powers of two made from x's exponent field, the magnitude is scaled to an integer grid
    by the inverse (exact), rounded, and scaled back. Needs ``man >= 1`` and
    ``min_normal_exp <= floor_exp - man <= 0`` for the working dtype (every quantum and
    inverse normal, no scaling below 1): check with :func:`binades_fit`. ±Inf stay ±Inf,
    NaN stays NaN, zeros keep their sign. With ``limit``, rounded magnitudes above it
    (±Inf included) become ``limit`` before the sign is put back (saturation at half the
    cost of clamping the signed result).
    """
    lay = layout(x.dtype)
    top = 2 * lay.bias  # the largest normal field
    bits = x.view(lay.int_dtype)
    fields = bits & (((1 << lay.exponent_bits) - 1) << lay.mantissa_bits)
    fields = fields.clamp(min=(floor_exp + lay.bias) << lay.mantissa_bits)
    if man == 1:
        # ±Inf and NaN take the top binade's quantum (with more fraction bits, theirs is
        # one whose inverse is normal: ±Inf times it stays ±Inf)
        fields = fields.clamp(max=top << lay.mantissa_bits)
    quantum_bits = fields - (man << lay.mantissa_bits)
    inverse = ((top << lay.mantissa_bits) - quantum_bits).view(x.dtype)  # 2**-quantum_exp
    k = x.abs() * inverse
    low = torch.floor(k)
    # k >= 0, so the rounded magnitude is +0 or more (or +NaN): negated where x's sign is
    r = (low + (noise < k - low)) * quantum_bits.view(x.dtype)
    if limit is not None:
        r = r.clamp(max=limit)  # NaN stays NaN
    return flip_sign(r, bits)


def round_binades_nearest(
    magnitude: torch.Tensor, man: int, floor_exp: int, top_exp: int
) -> torch.Tensor:
    """Nearest rounding of magnitudes (x >= +0, or NaN) to 2**(max(exponent, floor_exp) - man).

    The same results as ``round_fraction_bits`` from 2**floor_exp up and ``round_scaled``
    with the quantum 2**(floor_exp - man) below it, for magnitudes below 2**(top_exp + 1);
    larger ones (+Inf included) stay at or above 2**(top_exp + 1), for callers to treat as
    overflow. The magnitude m is rounded by adding and subtracting c = 2**(e + F - man), F
    the dtype's fraction bits and e m's binade clamped to [floor_exp, top_exp]: m + c lies
    in [c, 2c), where the dtype's spacing is the quantum, so the addition rounds m to the
    quantum (ties to even: to the even kept pattern) and the subtraction is exact; +0
    stays +0 and NaN stays NaN. About half the operations of the two-branch form. Needs
    ``1 <= man < F``, ``floor_exp <= top_exp`` and c, 2c finite and normal: check with
    :func:`binades_nearest_fit`.
    """
    lay = layout(magnitude.dtype)
    fraction_bits = lay.mantissa_bits
    fields = magnitude.view(lay.int_dtype) & (((1 << lay.exponent_bits) - 1) << fraction_bits)
    fields = fields.clamp(
        (floor_exp + lay.bias) << fraction_bits, (top_exp + lay.bias) << fraction_bits
    )
    c = (fields + ((fraction_bits - man) << fraction_bits)).view(magnitude.dtype)
    return (magnitude + c) - c


def binades_nearest_fit(dtype: torch.dtype, man: int, floor_exp: int, top_exp: int) -> bool:
    """Whether :func:`round_binades_nearest` applies to ``man``, ``floor_exp`` and ``top_exp``."""
    lay = layout(dtype)
    shift = lay.mantissa_bits - man
    return (
        1 <= man < lay.mantissa_bits
        and floor_exp <= top_exp
        and lay.min_normal_exp <= floor_exp + shift
        and top_exp + shift + 1 <= lay.bias
    )


def binades_fit(dtype: torch.dtype, man: int, floor_exp: int) -> bool:
    """Whether :func:`round_binades_stochastic` applies to ``man`` and ``floor_exp``."""
    return man >= 1 and layout(dtype).min_normal_exp <= floor_exp - man <= 0
