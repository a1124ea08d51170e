"""The eager path: ``fmt.quantize_kernel`` run op by op, in cache-sized pieces on the CPU.

Each eager operation writes a full-size temporary. On the CPU a temporary of a few MiB is a
fresh allocation that page-faults on first touch (the allocator hands large blocks back to
the system), and a kernel of 20–40 operations over 4,194,304 float32 then spends most of
its time faulting and streaming memory: 50–60 ms for a posit, 40–55 ms for a float format.
Run on pieces of :data:`CHUNK` elements, the temporaries stay in the cache and are reused
by the allocator: 15–17 ms and 9–10 ms (2 threads; the posit kernel, rid of its boolean
masks since, now takes 11–13 ms). The result is bit for bit the same, because each piece
holds whole runs that the format rounds independently of the rest, given what they share
(:meth:`qtorch.formats.base.Format.eager_pieces`: single elements for elementwise formats,
whole blocks for MX and NVFP4 (:func:`qtorch.kernels.mx.piece_layout`: rows where the
blocks run along the last dimension), the slices ``x[i]`` for block floating point with
``dim=0``; any pieces for block floating point's one block and NVFP4's ``"amax"`` tensor
scale, once the tensor's maximum is taken piece by piece), and the noise of every piece is
the slice of the whole tensor's noise (:func:`qtorch.kernels.noise.uniform_range`).

Not split: block floating point with blocks along another dimension, tensors on other
devices (their allocators cache blocks), tensors that need an autograd graph, and code
being traced by ``torch.compile`` (the user's compiler should see whole-tensor operations).
"""

from __future__ import annotations

import math

import torch

from qtorch.formats.base import EagerPieces, Format
from qtorch.kernels.noise import uniform_from_counter, uniform_range
from qtorch.rounding import Rounding

#: Elements per piece: float32 temporaries of 1 MiB, which the cache holds.
CHUNK = 2**18


def splits(x: torch.Tensor, fmt: Format) -> bool:
    """Whether :func:`run` quantizes x piece by piece."""
    return _plan(x, fmt, torch.float64 if x.dtype == torch.float64 else torch.float32) is not None


def _plan(x: torch.Tensor, fmt: Format, dtype: torch.dtype) -> EagerPieces | None:
    """The format's :meth:`~qtorch.formats.base.Format.eager_pieces` for x, if x is split."""
    if (
        x.device.type != "cpu"
        or x.numel() <= 2 * CHUNK
        or (x.requires_grad and torch.is_grad_enabled())
        or torch.compiler.is_compiling()
    ):
        return None
    return fmt.eager_pieces(x, dtype, CHUNK)


def run(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding,
    seed: torch.Tensor | None,
    dtype: torch.dtype,
    inplace: bool,
) -> torch.Tensor:
    """The eager reference: x rounded to ``fmt`` in x's dtype (written into x if ``inplace``).

    ``dtype`` is the working dtype (float32 or float64), ``seed`` the 0-d int64 seed of
    stochastic rounding (None otherwise). Returns a new tensor, or x itself when ``inplace``.
    """
    plan = _plan(x, fmt, dtype)
    if plan is None:
        noise = None if seed is None else uniform_from_counter(seed, x.shape, dtype)
        q = fmt.quantize_kernel(x.to(dtype), rounding, noise)
        if inplace:
            return x.copy_(q)
        return q.clone() if q is x else q.to(x.dtype)
    flat = x.reshape(-1)  # a view when x is contiguous
    writes_x = inplace and flat.data_ptr() == x.data_ptr() and x.is_contiguous()
    out = flat if writes_x else torch.empty_like(flat)
    step = piece_length(plan, CHUNK)
    for start in range(0, flat.numel(), step):
        stop = min(start + step, flat.numel())
        # Each piece reads only its own elements before they are written, so writing into x
        # (in place) is safe.
        out[start:stop] = round_piece(flat, start, stop, plan, rounding, seed, dtype)
    if writes_x:
        return x
    if inplace:
        return x.copy_(out.view(x.shape))
    return out.view(x.shape)


def piece_length(plan: EagerPieces, chunk: int) -> int:
    """Elements per piece: a multiple of ``plan.align`` units, about ``chunk`` elements (one
    such multiple at least)."""
    size = math.prod(plan.unit[1:]) * plan.align  # elements between two cuts
    return max(chunk // size, 1) * size


def round_piece(
    flat: torch.Tensor,
    start: int,
    stop: int,
    plan: EagerPieces,
    rounding: Rounding,
    seed: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The result for ``flat[start:stop]`` of the flat tensor that ``plan`` was made for, in
    the working ``dtype``, flat, with the noise of those indices. ``start`` is a cut of
    ``plan`` (a multiple of its ``align`` units), and so is ``stop`` unless it is the end."""
    piece = flat[start:stop].view(-1, *plan.unit[1:]).to(dtype)
    noise = None
    if seed is not None:
        noise = uniform_range(seed, start, stop, dtype).view(piece.shape)
    return plan.kernel(piece, rounding, noise).reshape(-1)
