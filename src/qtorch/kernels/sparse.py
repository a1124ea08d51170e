"""Sparse COO tensors: round the stored values, keep the pattern.

A sparse tensor stands for its dense one, whose unstored elements are zeros. Every format
that holds 0 rounds 0 to 0 in every rounding mode (a value the format holds never moves),
so the rounded dense tensor is zero where x stores nothing, and its sparse form is x's
pattern (coalesced) with rounded values: bit for bit the dense tensor's rounding at the
stored places, stochastic rounding included (each stored element gets the noise of its
place in the dense tensor, :func:`qtorch.kernels.noise.uniform_at`), and a stored -0 too
(which ``x.to_dense()`` turns into +0, adding it to zeros). A stored value that rounds to
zero stays stored, as an explicit zero.

Elementwise formats round the values alone (the work is proportional to the number of
stored elements). Formats with shared scales (block floating point, MX, NVFP4) round the
dense tensor and keep x's places: a block's scale comes from its largest magnitude,
which the zeros never change, but the blocks are laid out in the dense tensor (memory and
time of the dense size). Where the result would be dense, ``ValueError``: a format without
0 (a codebook without a zero entry), and a block holding NaN or ±Inf in a format that
rounds such a block to NaN whole (block floating point, MX, NVFP4). Other layouts (CSR,
CSC, BSR, BSC, nested tensors) raise ``TypeError``.

The eager operations do the work (no compiled kernels: sparse work is small or dominated
by the dense conversion).
"""

from __future__ import annotations

import torch

from qtorch.formats.base import Format
from qtorch.kernels.eager import run as eager_run
from qtorch.kernels.noise import uniform_at
from qtorch.rounding import Rounding


def check_layout(x: torch.Tensor, caller: str) -> None:
    """Raise ``TypeError`` for layouts other than strided (dense) and sparse COO."""
    if x.is_nested:
        raise TypeError(f"{caller}: nested tensors are not supported; quantize each of x.unbind()")
    if x.layout not in (torch.strided, torch.sparse_coo):
        raise TypeError(
            f"{caller}: x must be a dense (strided) or sparse COO tensor, got {x.layout}; "
            "x.to_sparse_coo() converts it"
        )


def quantize(
    x: torch.Tensor,
    fmt: Format,
    mode: Rounding,
    seed: torch.Tensor | None,
    dtype: torch.dtype,
    inplace: bool,
    caller: str,
) -> torch.Tensor:
    """x (sparse COO) rounded to ``fmt``: a new coalesced sparse tensor, or x overwritten
    with it (``inplace``). ``seed``: stochastic rounding's, as for dense tensors;
    ``dtype``: the working dtype (float32 or float64)."""
    _check_zero(fmt, mode, dtype, x.device, caller)
    y = x.coalesce()
    if fmt.elementwise:
        values = y.values()
        noise = None if seed is None else uniform_at(seed, _dense_indices(y), dtype)
        rounded = fmt.quantize_kernel(values.to(dtype), mode, noise).to(x.dtype)
    else:
        dense = torch.zeros(y.shape, dtype=x.dtype, device=x.device)
        dense[tuple(y.indices())] = y.values()  # not to_dense(): 0 + -0 would be +0
        dense = eager_run(dense, fmt, mode, seed, dtype, False)
        rounded = dense.sparse_mask(y).values()
        if torch.count_nonzero(dense) != torch.count_nonzero(rounded):
            raise ValueError(
                f"{caller}: rounding x to {fmt!r} made elements it does not store nonzero "
                "(a block holding NaN or ±Inf rounds whole to NaN): the result is dense; "
                "quantize x.to_dense()"
            )
    out = torch.sparse_coo_tensor(
        y.indices(), rounded, y.shape, is_coalesced=True, check_invariants=False
    )
    return x.copy_(out) if inplace else out


def _check_zero(
    fmt: Format, mode: Rounding, dtype: torch.dtype, device: torch.device, caller: str
) -> None:
    zero = torch.zeros(1, dtype=dtype, device=device)
    noise = torch.full_like(zero, 0.5) if mode is Rounding.STOCHASTIC else None
    if fmt.quantize_kernel(zero, mode, noise).item() != 0:
        raise ValueError(
            f"{caller}: {fmt!r} does not hold 0, so the unstored zeros of a sparse tensor "
            "would round to other values (a dense result); quantize x.to_dense()"
        )


def _dense_indices(y: torch.Tensor) -> torch.Tensor:
    """The row-major flat indices in the dense tensor of the elements of ``y.values()``
    (coalesced y; values of shape ``(nnz, *dense dims)``), shaped like the values."""
    sparse_dims = y.sparse_dim()
    flat = torch.zeros(y._nnz(), dtype=torch.int64, device=y.device)
    for dim in range(sparse_dims):
        flat = flat * y.shape[dim] + y.indices()[dim]
    dense_size = 1
    for size in y.shape[sparse_dims:]:
        dense_size *= size
    within = torch.arange(dense_size, dtype=torch.int64, device=y.device)
    return (flat.unsqueeze(1) * dense_size + within).view(y.values().shape)
