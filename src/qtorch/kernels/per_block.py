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

On CUDA, MX does not store its factors where the blocks fill their dimension
(:func:`qtorch.kernels.mx.quantize_mx`): there Inductor fuses the per-block maximum, the
factors and the element pass into one Triton kernel that reads x once, where the stack
makes three kernels that read it twice. Where the last block is padded it stores them: in
one piece, a 1-D x of symbolic length failed to compile (``CantSplit`` in Inductor's
Triton code generator, torch 2.13; found by benchmarks/cuda_interpret.py), and stored
they make fewer kernels for 2-D x too (nearest 2 instead of 3). On an
H200 (torch 2.11, 1e8 float32, compiled at 1,048,576 elements first; device-to-device
copy 0.21 ms): MX nearest 0.45 → 0.28 ms, stochastic 0.51 → 0.34-0.37 ms, same bits
(benchmarks/gpu_check.py). NVFP4 does the same on CUDA where the blocks fill their
dimension (run 3 of gpu_check, on whole blocks: 0.44 → 0.33 ms) and keeps the stack for rows
that end in a padded block, whose kernel failed to compile without it (an
``AssertionError`` inside Inductor). :func:`qtorch.kernels.mx.factors_in_kernel` decides.
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
