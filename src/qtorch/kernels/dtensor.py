"""DTensors (``torch.distributed.tensor``): rounded as the full tensor is, shard by shard.

A DTensor stands for its full (global) tensor, of which each rank holds a part (FSDP2's
sharded parameters, tensor-parallel weights and activations). ``quantize`` of a DTensor
is the DTensor, with x's mesh and placements, of the rounding of the full tensor: bit for
bit what rounding ``x.full_tensor()`` gives (NaN payloads aside: parts rounded by the eager
kernels keep the input NaN, quieted, where compiled ones may set every payload bit),
stochastic rounding included, where every
rank drew the same seed (seed every rank identically, as for DDP); each element gets the
noise of its place in the full tensor (:func:`qtorch.kernels.noise.uniform_at`), so the
ranks' parts of the noise do not repeat each other.

- **Each rank rounds its own part** (no communication) where the part holds whole runs
  of what the format rounds together: elementwise formats (fixed, float, posit, codebook)
  under any mix of ``Shard`` and ``Replicate`` placements, and MX and NVFP4 (without the
  ``"amax"`` tensor scale) when no placement shards the dimension their blocks run along.
  Nearest rounding of a part runs the plain tensor's path (the compiled kernels); so does
  stochastic rounding of a part that is a contiguous range of the full tensor's elements
  (FSDP2's ``Shard(0)``, replicas), its noise taken from an equivalent seed
  (:func:`qtorch.kernels.noise.seed_at`); other parts are rounded by the eager kernels,
  given the noise of their indices.
- **Otherwise the full tensor is gathered** (``x.full_tensor()``, an all-gather), rounded
  on every rank, and each rank keeps its part: block floating point (one exponent per
  tensor or per slice), NVFP4's ``"amax"`` tensor scale, blocks that a placement cuts,
  ``Partial`` placements (pending sums: their parts do not round like the sum) and
  placements other than ``Shard`` and ``Replicate``. ``quantize_`` of a ``Partial``
  DTensor raises ``ValueError`` (its parts cannot hold the rounded sum).

Before, DTensors ran through the eager operations by torch's sharding rules: stochastic
rounding raised (the noise was a plain tensor), codebooks raised, and posits and block
floating point gave other numbers than the full tensor's rounding.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch

from qtorch.formats.base import Format
from qtorch.kernels.noise import seed_at, uniform_at
from qtorch.rounding import Rounding

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.placement_types import Placement

#: Rounds a plain tensor with a given seed (None for nearest): ``dense(t, seed, inplace)``.
Dense = Callable[[torch.Tensor, torch.Tensor | None, bool], torch.Tensor]


def is_dtensor(x: object) -> bool:
    """Whether x is a DTensor (without importing torch.distributed when nothing has)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(x, module.DTensor)


def quantize(
    x: torch.Tensor,
    fmt: Format,
    mode: Rounding,
    seed: torch.Tensor | None,
    dtype: torch.dtype,
    inplace: bool,
    caller: str,
    dense: Dense,
) -> torch.Tensor:
    """x (a DTensor) rounded to ``fmt``: a new DTensor with x's mesh and placements, or x
    with its part overwritten (``inplace``). ``seed``: stochastic rounding's (the same on
    every rank); ``dtype``: the working dtype; ``dense`` rounds a plain tensor."""
    from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

    d = cast("DTensor", x)
    mesh, placements = d.device_mesh, tuple(d.placements)
    local = d.to_local()
    plain = all(type(p) is Shard or type(p) is Replicate for p in placements)
    if plain and _parts_are_whole(fmt, x.ndim, placements):
        offset = _global_offset(d, mesh, placements)
        rounded = _round_part(local, tuple(x.shape), offset, fmt, mode, seed, dtype, dense)
    else:
        if inplace and any(p.is_partial() for p in placements):
            raise ValueError(
                f"{caller}: x is a DTensor with Partial placements (a pending sum), whose "
                "parts cannot hold its rounding; redistribute it, or use quantize"
            )
        full = dense(d.full_tensor(), seed, False)
        spread: list[Placement] = [Replicate() if p.is_partial() else p for p in placements]
        rounded = distribute_tensor(full, mesh, spread, src_data_rank=None).to_local()
        placements = tuple(spread)
    if inplace:
        local.copy_(rounded)
        return x
    return DTensor.from_local(
        rounded, mesh, placements, run_check=False, shape=x.shape, stride=x.stride()
    )


def never_like(x: torch.Tensor) -> torch.Tensor:
    """A 0-d False for ``torch.where(never, x, q)`` with x a DTensor: replicated."""
    from torch.distributed.tensor import DTensor, Replicate

    mesh = cast("DTensor", x).device_mesh
    never = torch.zeros((), dtype=torch.bool, device=x.device)
    return DTensor.from_local(never, mesh, [Replicate()] * mesh.ndim)


def _parts_are_whole(fmt: Format, ndim: int, placements: Sequence[Placement]) -> bool:
    """Whether every part of a tensor so placed holds whole runs of what ``fmt`` rounds
    together (elements; MX and NVFP4 blocks, when their dimension is not sharded)."""
    if fmt.elementwise:
        return True
    from qtorch.formats.mx import MX
    from qtorch.formats.nvfp4 import NVFP4

    if isinstance(fmt, NVFP4) and fmt.tensor_scale == "amax":
        return False
    if not isinstance(fmt, MX | NVFP4) or ndim == 0:
        return False
    block_dim = fmt.dim % ndim
    return not any(p.is_shard(block_dim) for p in placements)


def _global_offset(
    x: torch.Tensor, mesh: DeviceMesh, placements: Sequence[Placement]
) -> tuple[int, ...]:
    """Where this rank's part starts in the full tensor, per dimension."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    _, offset = compute_local_shape_and_global_offset(x.shape, mesh, placements)
    return tuple(int(o) for o in offset)


def _round_part(
    local: torch.Tensor,
    shape: tuple[int, ...],
    offset: tuple[int, ...],
    fmt: Format,
    mode: Rounding,
    seed: torch.Tensor | None,
    dtype: torch.dtype,
    dense: Dense,
) -> torch.Tensor:
    """The part ``local`` (starting at ``offset`` in a full tensor of ``shape``) rounded as
    the full tensor's rounding rounds it."""
    if seed is None:
        return dense(local, None, False)
    start = _contiguous_start(local.shape, shape, offset)
    shifted = None if start is None else seed_at(seed, start, local.numel(), dtype)
    if shifted is not None:
        return dense(local, shifted, False)
    noise = uniform_at(seed, _flat_indices(local.shape, shape, offset, local.device), dtype)
    return fmt.quantize_kernel(local.to(dtype), mode, noise).to(local.dtype)


def _contiguous_start(
    local: torch.Size, shape: tuple[int, ...], offset: tuple[int, ...]
) -> int | None:
    """The full tensor's flat index of the part's first element, when the part is one run
    of consecutive flat indices (its dimensions after the first are whole), else None."""
    if any(o for o in offset[1:]) or tuple(local[1:]) != tuple(shape[1:]):
        return None
    row = 1
    for size in shape[1:]:
        row *= size
    return offset[0] * row if offset else 0


def _flat_indices(
    local: torch.Size, shape: tuple[int, ...], offset: tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """The full tensor's row-major flat indices of the part's elements, shaped like it."""
    index = torch.zeros(local, dtype=torch.int64, device=device)
    stride = 1
    for dim in reversed(range(len(shape))):
        view = [1] * len(shape)
        view[dim] = -1
        coords = torch.arange(offset[dim], offset[dim] + local[dim], device=device)
        index += coords.view(view) * stride
        stride *= shape[dim]
    return index
