"""QPyTorch 0.3's functional quantizers: same names, parameter names and defaults.

Each function builds the format (one object per argument list:
:mod:`qtorch.quant.format_cache`) and calls :func:`qtorch.quantize`. Unlike QPyTorch, the
parameters are validated (``ValueError`` / ``TypeError``), any float dtype is accepted and
returned, stochastic rounding follows ``torch.manual_seed`` (or ``generator=``), and
nearest rounding sends ties to even everywhere.
"""

from __future__ import annotations

import torch

from qtorch.formats.block import BlockFloatingPoint
from qtorch.formats.fixed import FixedPoint
from qtorch.formats.floating import FloatingPoint
from qtorch.quant.format_cache import format_of
from qtorch.quantize import quantize
from qtorch.rounding import Rounding

__all__ = ["block_quantize", "fixed_point_quantize", "float_quantize"]


def fixed_point_quantize(
    x: torch.Tensor,
    wl: int,
    fl: int,
    clamp: bool = True,
    symmetric: bool = False,
    rounding: Rounding | str = "stochastic",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round x to ``FixedPoint(wl, fl, clamp, symmetric)``; see that class for the semantics.

    >>> fixed_point_quantize(torch.tensor([0.3, -9.0]), 8, 4, rounding="nearest")
    tensor([ 0.3125, -8.0000])
    """
    return quantize(x, format_of(FixedPoint, wl, fl, clamp, symmetric), rounding, generator)


def block_quantize(
    x: torch.Tensor,
    wl: int,
    dim: int = -1,
    rounding: Rounding | str = "stochastic",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round x to ``BlockFloatingPoint(wl, dim)``; see that class for the semantics.

    >>> block_quantize(torch.tensor([1.0, 0.3, -0.7]), 4, rounding="nearest")
    tensor([ 1.0000,  0.2500, -0.7500])
    """
    return quantize(x, format_of(BlockFloatingPoint, wl, dim), rounding, generator)


def float_quantize(
    x: torch.Tensor,
    exp: int,
    man: int,
    rounding: Rounding | str = "stochastic",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round x to ``FloatingPoint(exp, man)`` (IEEE layout, saturating); see that class.

    >>> float_quantize(torch.tensor([1.0 + 2**-11, 70000.0]), 5, 10, rounding="nearest")
    tensor([1.0000e+00, 6.5504e+04])
    """
    return quantize(x, format_of(FloatingPoint, exp, man), rounding, generator)
