"""Per-block factors stored once per block, for formats that scale blocks of elements.

Compiled, Inductor inlines a per-block expression into the element loop that reads it, and
so recomputes it for every vector of elements (16 float32 on AVX-512); a shared exponent is
tens of scalar operations each time. On CPU, Inductor (torch 2.13) stores a stack of
distinct tensors in a buffer, so :func:`stored` stacks the factors: they are then computed
once per block, vectorized across blocks, and the element loop only loads them. Eager, it
is a copy of the per-block tensors, which are ``block_size`` times smaller than x.

Measured with ``benchmarks/ab.py`` (4,194,304 float32, one thread, same bits), time with
against without: block(8) nearest 0.81-0.83 and stochastic 0.86-0.87, MX nearest 0.81-0.87
and stochastic 0.97. NVFP4 stores its scales since its element pass runs on the
``(n_blocks, 16)`` view (qtorch.kernels.mx). A single factor cannot be stored this way,
since Inductor folds away a stack of one tensor, or of one tensor twice: stack it with a
second tensor (NVFP4 its NaN flags; the noise's lane numbers a zero buffer).
"""

from __future__ import annotations

import torch


def stored(*factors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same per-block tensors (two or more, equal shapes), stacked and split again.

    The stack is along a new first dimension: along a new last one, Inductor (torch 2.13)
    miscompiled the stochastic ``block(8, 0)`` kernel on 1-D inputs, where every element is
    its own block (some results were garbage; tests/test_fused.py caught it).
    """
    if len(factors) < 2:
        raise ValueError("stored() needs two or more tensors (a stack of one is folded away)")
    return torch.stack(factors).unbind(0)
