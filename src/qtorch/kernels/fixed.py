"""Fixed point: round to multiples of 2**-fl, clamp to a wl-bit two's-complement range.

Pure tensor code on float32 / float64 tensors; the format parameters are plain Python ints
and bools, so ``torch.compile`` sees them as constants.
"""

from __future__ import annotations

import torch

from qtorch.kernels.bits import FloatLayout, layout
from qtorch.kernels.round import round_signed_, round_to_quantum
from qtorch.rounding import Rounding


def code_range(wl: int, symmetric: bool) -> tuple[int, int]:
    """The smallest and largest wl-bit two's-complement code k (-k_max when symmetric)."""
    k_max = (1 << (wl - 1)) - 1
    return (-k_max if symmetric else -k_max - 1), k_max


def largest_grid_value(k: int, fl: int, dtype: torch.dtype) -> float:
    """The largest multiple of 2**-fl that is <= k * 2**-fl (k >= 0) and exact in ``dtype``.

    This is k * 2**-fl itself whenever ``dtype`` can hold it; otherwise its low bits are
    dropped (rounding toward zero), and a value beyond the dtype's largest finite number is
    replaced by the largest multiple of 2**-fl that the dtype holds.
    """
    lay = layout(dtype)
    p = lay.mantissa_bits
    if k == 0:
        return 0.0
    s = -fl  # the value is k * 2**s
    if k.bit_length() - 1 + s > lay.bias:
        k, s = (1 << (p + 1)) - 1, lay.bias - p  # the dtype's largest finite value
        if s < -fl:
            k, s = k >> (-fl - s), -fl
        return float(k) * 2.0**s
    quantum = max(k.bit_length() - 1 + s - p, lay.min_normal_exp - p)
    if quantum > s:
        k, s = k >> (quantum - s), quantum
    # exact: k has at most p + 1 bits. (Not math.ldexp: Dynamo cannot trace it on the
    # format's attributes under torch.compile(dynamic=True).)
    return float(k) * 2.0**s


def fixed_bounds(wl: int, fl: int, symmetric: bool, dtype: torch.dtype) -> tuple[float, float]:
    """The most negative and most positive values of the format that ``dtype`` holds exactly."""
    k_min, k_max = code_range(wl, symmetric)
    return -largest_grid_value(-k_min, fl, dtype), largest_grid_value(k_max, fl, dtype)


def _round_scaled(
    x: torch.Tensor,
    fl: int,
    bounds: tuple[float, float] | None,
    rounding: Rounding,
    noise: torch.Tensor | None,
    lay: FloatLayout,
) -> torch.Tensor:
    """Round x to multiples of 2**-fl by an exact power-of-two scaling, then clamp to bounds.

    Needs 2**fl and 2**-fl to be exact constants of the dtype. Scaling by 2**fl is exact for
    fl >= 0 except on overflow, which only happens to values beyond every wl-bit range (the
    clamp catches them) or, without a clamp, to values whose ulp is already >= 2**-fl (they
    are kept as they are). For fl < 0 it may underflow; any scaled magnitude below
    2**-(p + 8) rounds like 2**-(p + 8) in every mode (the noise is coarser), so that value
    stands in for it. The clamp happens on the integer k, before scaling back.
    """
    k = x * 2.0**fl
    if fl < 0 and rounding in (Rounding.STOCHASTIC, Rounding.DOWN, Rounding.UP):
        tiny = 2.0 ** -(lay.mantissa_bits + 8)
        k = torch.where((k.abs() < tiny) & (x != 0), torch.sign(x) * tiny, k)
    k = round_signed_(k, rounding, noise)
    if bounds is not None:
        # exact: held values, scaled (clamp_min_ and clamp_max_: vmap has no rule for clamp_)
        k = k.clamp_min_(bounds[0] * 2.0**fl).clamp_max_(bounds[1] * 2.0**fl)
    q = k.mul_(2.0**-fl)
    if fl > 0 and bounds is None:
        q = torch.where(x.abs() >= 2.0 ** (lay.mantissa_bits - fl), x, q)
    return q


def quantize_fixed(
    x: torch.Tensor,
    wl: int,
    fl: int,
    clamp: bool,
    symmetric: bool,
    rounding: Rounding,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round x to the fixed-point grid k * 2**-fl, k a wl-bit two's-complement integer.

    With ``clamp`` the result lies in [-2**(wl-fl-1), 2**(wl-fl-1) - 2**-fl] (the most negative
    value dropped when ``symmetric``) and ±Inf go to the ends; bounds the dtype cannot hold
    exactly are replaced by the nearest grid values it holds, toward zero. Without ``clamp``
    there is no range limit and ±Inf stay ±Inf. NaN stays NaN, the sign of zero is kept
    (a negative value that rounds to zero gives -0). ``x`` is float32 or float64.

    >>> quantize_fixed(torch.tensor([0.3, -0.7, 9.0]), 4, 1, True, False, Rounding.NEAREST)
    tensor([ 0.5000, -0.5000,  3.5000])
    """
    lay = layout(x.dtype)
    bounds = fixed_bounds(wl, fl, symmetric, x.dtype) if clamp else None
    if -(lay.bias - 1) <= fl <= lay.bias:
        return _round_scaled(x, fl, bounds, rounding, noise, lay)
    if bounds is not None:
        x = x.clamp(*bounds)  # rounding is monotone and the bounds are on the grid
    return round_to_quantum(x, -fl, rounding, noise)
