"""Block floating point: one shared exponent per block, wl-bit sign-magnitude mantissas.

Pure tensor code on float32 / float64 tensors; ``wl`` and ``dim`` are plain ints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from qtorch.kernels.bits import (
    compiled_without_graph,
    copysign,
    exponent,
    flip_sign,
    layout,
    pow2,
    signbit,
)
from qtorch.kernels.compiled_call import int_loads_copy
from qtorch.kernels.fixed import largest_grid_value
from qtorch.kernels.per_block import stored
from qtorch.kernels.round import round_integer
from qtorch.rounding import Rounding


def block_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """max |x| of each block, shaped to broadcast against x (NaN if the block has a NaN).

    ``dim=-1``: the whole tensor is one block. ``dim=d``: one block per index i along d
    (the elements of ``x.select(d, i)``). x must not be empty.

    The maximum is taken over the bit patterns of |x| as integers, which order like the
    magnitudes, with every NaN above +Inf; so a block with a NaN gets a NaN (its payload
    may differ from the input's). An integer maximum compiles to a plain vector max,
    while a float maximum must also propagate NaN (the maximum alone, compiled: 0.45
    against 0.64 times ``torch.mul`` for 4,194,304 float32, AVX-512). Compiled for a CPU
    whose integer vectors are read through a stack copy (AVX2:
    :func:`~qtorch.kernels.compiled_call.int_loads_copy`) it is the float maximum of |x|,
    which propagates NaN: NaN, +Inf and the finite maxima alike, and the kernels read no
    more of a NaN maximum than its exponent bits, so the results are the same bits (cold,
    4,194,304 float32, 2 threads, Zen 2: 0.52 against 0.76 ms; ``x.sum()`` 0.60).
    """
    float_max = torch.compiler.is_compiling() and x.device.type == "cpu" and int_loads_copy()
    if float_max:
        magnitude = x.abs()
    else:
        lay = layout(x.dtype)
        magnitude = x.view(lay.int_dtype) & ((1 << (lay.exponent_bits + lay.mantissa_bits)) - 1)
    if dim == -1:
        # compiled off the CPU (Triton): in rows; else whole_max (in rows read at once where
        # compiled for the CPU)
        rows = x.device.type != "cpu" and torch.compiler.is_compiling()
        top = max_in_rows(magnitude) if rows else whole_max(magnitude)
    else:
        others = [d for d in range(x.ndim) if d != dim]
        top = magnitude.amax(dim=others, keepdim=True) if others else magnitude
    return top if float_max else top.view(x.dtype)


#: Rows that :func:`max_in_streams` reads at once.
STREAMS = 9

#: Fewest elements whose maximum a kernel compiled for the CPU takes with
#: :func:`max_in_streams`: rows of at least 2 (Dynamo specializes a length of 0 or 1, and
#: guards on it), so one kernel serves every size from here on.
STREAMED_MIN = 2 * STREAMS


def streams_branch(shape: Sequence[int], device_type: str) -> tuple[bool, ...]:
    """The choice :func:`whole_max` makes on x's shape in a kernel compiled for
    ``device_type``, as a part of its key (``Format.shape_branches``): on the CPU, whether
    x has the :data:`STREAMED_MIN` elements from which it reads rows at once; elsewhere
    none."""
    return (math.prod(shape) >= STREAMED_MIN,) if device_type == "cpu" else ()


def whole_max(t: torch.Tensor) -> torch.Tensor:
    """``t.amax()``; in a kernel compiled for the CPU, from :data:`STREAMED_MIN` elements
    (:func:`streams_branch`), t flattened and read as rows at once (:func:`max_in_streams`).
    NaN propagates either way."""
    if torch.compiler.is_compiling() and any(streams_branch(t.shape, t.device.type)):
        return max_in_streams(t.reshape(-1))
    return t.amax()


def max_in_streams(t: torch.Tensor) -> torch.Tensor:
    """``t.amax()`` of a 1-D tensor of at least :data:`STREAMED_MIN` elements, read as
    :data:`STREAMS` rows at once, for a kernel compiled for the CPU.

    Inductor's loop then reads each thread's part of t as nine streams instead of one. A
    pass that only reads is bounded here by the cache misses each core keeps in flight,
    not by the memory bus (``x.amax()`` took 0.63 of ``torch.mul``'s time on a third of its
    bytes; docs/performance.md), and more streams keep more in flight. The rows' maximum
    covers t's first ``STREAMS * (n // STREAMS)`` elements; the last :data:`STREAMS`
    elements, which hold the rest, are taken apart (a maximum may read an element twice).
    An odd row count keeps the rows of a power-of-two length off each other's cache sets:
    eight rows of 2**19 elements were slower than seven or nine. Block(8) nearest on
    4,194,304 float32, cold caches, Zen 2 (AVX2): 1.65-1.85 -> 1.42-1.50 times
    ``torch.mul`` at 2 threads, 2.00 -> 1.48 at 1 thread; the same bits.
    """
    n = t.numel()
    length = n // STREAMS
    rows = t[: STREAMS * length].view(STREAMS, length)
    top = rows[0]
    for i in range(1, STREAMS):
        top = torch.maximum(top, rows[i])
    return torch.maximum(top.amax(), t[n - STREAMS :].amax())


#: Row length of :func:`max_in_rows`.
MAX_ROW = 4096


def max_in_rows(t: torch.Tensor) -> torch.Tensor:
    """``t.amax()`` of a tensor of magnitudes (never negative) as the maximum of the
    maxima of rows of :data:`MAX_ROW`, for a kernel compiled for Triton.

    There a kernel compiled for symbolic sizes splits a whole-tensor reduction into as many
    pieces as suited the size it was first compiled for (128 at 1,048,576), so 1e8 elements
    ran on 128 programs. Rows give one program per row at every size. On an H200, block(8)
    nearest on 1e8 float32: 0.51 → 0.41 ms (copy 0.21 ms).

    t is zero-padded to :func:`rows_extent` elements, whole rows and one more, so that no
    piece of the traced code has a size that can be 0 or 1: cutting the rows and the tail
    apart made Dynamo guard on the tail's size (0, 1 or more) and the row count (0, 1 or
    more), and a size in another class than the compiling one got a second graph behind
    qtorch's cache (the guards read with benchmarks/cuda_codegen.py).
    """
    flat = t.reshape(-1)
    pad = rows_extent(flat.numel()) - flat.numel()
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, MAX_ROW).amax(dim=1).amax()


def rows_extent(n: int) -> int:
    """The length :func:`max_in_rows` pads n elements to: whole rows of :data:`MAX_ROW`,
    at least two, and 4097 to 8192 elements of padding."""
    return MAX_ROW * (n // MAX_ROW + 2)


def kernel_extent(shape: Sequence[int], dim: int) -> int:
    """The element count of the largest tensor a kernel compiled off the CPU makes for x
    of ``shape`` (for :meth:`qtorch.formats.base.Format.kernel_extent`): ``dim=-1``, x
    padded to :func:`rows_extent`; else x, or the four factors per block that
    :func:`quantize_block` stores side by side if they are more (blocks of 1-3 elements;
    1-D x, a block per element, stores none)."""
    n = math.prod(shape)
    if dim == -1:
        return rows_extent(n)
    blocks = shape[dim] if 0 <= dim < len(shape) and len(shape) > 1 else 0
    return max(n, 4 * blocks)


def quantize_block(
    x: torch.Tensor,
    wl: int,
    dim: int,
    rounding: Rounding,
    noise: torch.Tensor | None = None,
    top: torch.Tensor | None = None,
) -> torch.Tensor:
    """Round each block of x to multiples of 2**(e + 2 - wl), e = floor(log2(block max)).

    The result is clamped to ±(2**(e+1) - 2**(e+2-wl)), i.e. the mantissa keeps wl - 1
    magnitude bits and a sign. An all-zero block stays zero (signs kept); a block holding
    NaN or ±Inf becomes all NaN. The clamp acts on the integer mantissa, so blocks near the
    dtype's largest value cannot overflow or change sign. ``x`` is float32 or float64 and
    not empty; ``dim`` is -1 or a dimension of x. ``top``: the blocks' maxima if known
    (:func:`block_max` of a tensor that x is part of, with ``dim=-1``), else taken from x.

    Each element is scaled exactly to its block's integer grid (by two per-block powers of
    two, so the scale may lie outside the dtype's exponent range), rounded, clamped and
    scaled back. A scaled magnitude may underflow, but only far below 2**-(p + 8) (p the
    dtype's fraction bits), where every mode rounds it as it rounds 2**-(p + 8) (the noise
    is coarser), so that value (or |x| itself, if smaller) stands in for a magnitude that
    became zero.

    >>> quantize_block(torch.tensor([1.0, 0.3, -0.7]), 4, -1, Rounding.NEAREST)
    tensor([ 1.0000,  0.2500, -0.7500])
    """
    lay = layout(x.dtype)
    if top is None:
        top = block_max(x, dim)
    quantum_exp = exponent(top) + (2 - wl)  # per block; NaN/Inf blocks: harmless, see below
    half = quantum_exp >> 1  # floor(quantum_exp / 2): a shift vectorizes, division does not
    nan_if_special = torch.where(top < math.inf, 1.0, math.nan).to(x.dtype)
    factors = (
        pow2(-half, x.dtype),
        pow2(half - quantum_exp, x.dtype),
        pow2(half, x.dtype) * nan_if_special,
        pow2(quantum_exp - half, x.dtype),
    )
    # Stored once per block (see per_block), unless every element is its own block (1-D x
    # with dim=0): stored, the factors would be four full-size tensors written and read.
    single = dim != -1 and all(d == dim for d in range(x.ndim))
    down_1, down_2, up_1, up_2 = factors if single else stored(*factors)
    magnitude = x.abs() * down_1 * down_2
    if rounding in (Rounding.STOCHASTIC, Rounding.DOWN, Rounding.UP):
        # an underflowed (to zero) magnitude rounds like any magnitude below the noise's
        # resolution: stand in min(|x|, 2**-(p + 8)) for it, which is 0 only for a zero x
        # (one comparison and a clamp: A/B 0.99 with the sign below, same bits)
        tiny = 2.0 ** -(lay.mantissa_bits + 8)
        magnitude = torch.where(magnitude == 0, x.abs().clamp(max=tiny), magnitude)
    k = round_integer(magnitude, rounding, signbit(x), noise)
    # 2**(wl-1) - 1, or the largest dtype value below it when the dtype cannot hold that:
    # then the step is finer than the ulp of the block's top binade, the only elements the
    # clamp can touch, so they were not rounded and the clamp changes nothing
    k = k.clamp(max=largest_grid_value((1 << (wl - 1)) - 1, 0, x.dtype))
    q = k * up_1 * up_2  # +0 or more, or +NaN: copysign's |q| is q itself
    return flip_sign(q, x) if compiled_without_graph(x) else copysign(q, x)
