"""Rounding to a power-of-two grid: the shared core of fixed, float and block formats."""

from __future__ import annotations

import torch

from qtorch.kernels.bits import exponent, layout, ldexp
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
        return low + (noise < y - low).to(y.dtype)
    if rounding is Rounding.TOWARD_ZERO:
        return torch.floor(y)
    if rounding is Rounding.DOWN:
        return torch.where(negative, torch.ceil(y), torch.floor(y))
    if rounding is Rounding.UP:
        return torch.where(negative, torch.floor(y), torch.ceil(y))
    raise ValueError(f"unknown rounding {rounding!r}")


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
    k = round_integer(magnitude, rounding, torch.signbit(x), noise)
    return torch.copysign(ldexp(k, q_exp), x)
