"""The qtorch+ table-lookup functions, with their semantics (and without their defects).

Each function computes y = x·scale in x's working dtype (float32, or float64 for float64
input), picks a table entry t for |y| by the function's rule, and returns sign(y)·t / scale
(both scalings rounded as the earlier library did). y = ±0 gives ±0. Unlike the earlier
library, NaN stays NaN and ±Inf (and any value far from the table) give the saturated
entry; ties are decided exactly; bad tables raise ``ValueError``; float64, float16 and
bfloat16 inputs work, on any device. For a table format usable everywhere a format is
accepted, see :class:`qtorch.Codebook`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch

from qtorch.kernels import codebook as kern
from qtorch.quantize import uniform_noise, working_tensor
from qtorch.rounding import Rounding

__all__ = [
    "ACT_FORMAT_TABLE",
    "NEW_FORMAT_TABLE",
    "act_format_quantize",
    "configurable_table_quantize",
    "configurable_table_quantize_geomean",
    "configurable_table_quantize_rounding_hint",
    "new_format_quantize",
]

# fmt: off
#: The 32 magnitudes of qtorch+ ``new_format_quantize``, ascending.
NEW_FORMAT_TABLE: tuple[float, ...] = (
    2**-16, 2**-15, 2**-14, 2**-13, 2**-12, 2**-11, 2**-10, 2**-9, 2**-8, 2**-7,
    3 / 256, 1 / 64, 5 / 256, 3 / 128, 7 / 256, 1 / 32, 9 / 256, 5 / 128, 3 / 64, 7 / 128,
    1 / 16, 9 / 128, 5 / 64, 3 / 32, 7 / 64, 1 / 8, 9 / 64, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 1.0,
)

#: The 32 magnitudes of qtorch+ ``act_format_quantize``, ascending.
ACT_FORMAT_TABLE: tuple[float, ...] = (
    1 / 4096, 1 / 2048, 1 / 1024, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8,
    3 / 16, 1 / 4, 5 / 16, 3 / 8, 7 / 16, 1 / 2, 9 / 16, 5 / 8, 3 / 4, 7 / 8,
    1.0, 9 / 8, 5 / 4, 3 / 2, 7 / 4, 2.0, 9 / 4, 3.0, 4.0, 6.0, 8.0, 16.0,
)
# fmt: on

Table = torch.Tensor | Sequence[float]


def configurable_table_quantize(
    x: torch.Tensor,
    table_lookup: Table,
    scale: float = 1.0,
    rounding: Rounding | str = "nearest",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Round |x·scale| to the nearest table entry, put the sign back, divide by scale.

    Args:
        x: float32, float64, float16 or bfloat16 tensor, never modified.
        table_lookup: the entries (a tensor or a sequence of numbers), any finite values in
            any order, duplicates allowed.
        scale: nonzero finite number: y = x·scale is looked up, the result divided by it.
        rounding: ``"nearest"``: the entry t minimising |t − |y||, the first in table order
            on an exact tie. ``"stochastic"`` (the earlier library silently rounded to
            nearest): one of the two entries around |y|, the upper with probability linear
            in the distance, so unbiased inside the table's range.
        generator: randomness for ``"stochastic"`` (default: the device's torch RNG).

    Returns sign(y)·t / scale in x's dtype; y = ±0 gives ±0, NaN stays NaN, ±Inf and values
    beyond the table give the extreme entry (with y's sign).

    >>> configurable_table_quantize(torch.tensor([0.3, -0.75, 0.0, 9.0]), [1.0, 0.5, 2.0])
    tensor([ 0.5000, -1.0000,  0.0000,  2.0000])
    """
    entries = _entries("configurable_table_quantize", table_lookup)
    return _lookup(x, entries, scale, rounding, generator, "configurable_table_quantize")


def configurable_table_quantize_rounding_hint(
    x: torch.Tensor, table_lookup: Table, rounding_hint: Table, scale: float = 1.0
) -> torch.Tensor:
    """Threshold rounding: the entry ``table_lookup[i]`` for the last i with |y| > hint[i].

    With y = x·scale: the result magnitude is ``table_lookup[i]`` for the last index i (in
    table order) whose ``rounding_hint[i]`` is below |y|, or 0 when there is none; the
    result is sign(y)·that / scale. Tables and hints may be in any order (usually both
    ascending, hint[i] being the switch-over point to entry i).

    Args:
        x: float32, float64, float16 or bfloat16 tensor, never modified.
        table_lookup: the entries, finite, any order.
        rounding_hint: one threshold per entry (same length), not NaN (±Inf allowed).
        scale: nonzero finite number.

    y = ±0 gives ±0, NaN stays NaN, ±Inf give the entry of the last hint below +Inf.

    >>> configurable_table_quantize_rounding_hint(
    ...     torch.tensor([0.1, 0.3, -0.9, 5.0]), [0.25, 1.0], [0.2, 0.8])
    tensor([ 0.0000,  0.2500, -1.0000,  1.0000])
    """
    caller = "configurable_table_quantize_rounding_hint"
    entries = _entries(caller, table_lookup)
    hints = _numbers(caller, "rounding_hint", rounding_hint)
    if len(hints) != len(entries):
        raise ValueError(
            f"{caller}: rounding_hint must have one value per table entry ({len(entries)}), "
            f"got {len(hints)}"
        )
    if any(math.isnan(h) for h in hints):
        raise ValueError(f"{caller}: rounding_hint must not contain NaN")
    return _hint_lookup(x, entries, hints, scale, caller)


def configurable_table_quantize_geomean(
    x: torch.Tensor, table_lookup: Table, scale: float = 1.0
) -> torch.Tensor:
    """:func:`configurable_table_quantize_rounding_hint` with geometric-mean hints.

    The hints are 1e-4, sqrt(t1·t0), sqrt(t2·t1), ... over the table in its own order,
    computed in float32 as the earlier library did (1e-4 rounded to float32; each product
    and root rounded to float32). So |y| <= 1e-4 gives 0, and in an ascending table each
    entry takes the values up to the geometric mean with the next one. A hint whose
    product is negative (entries of opposite signs) never selects its entry, as before.

    >>> configurable_table_quantize_geomean(torch.tensor([0.3, 0.4, -3.0, 1e-5]), [0.25, 1.0, 4.0])
    tensor([ 0.2500,  0.2500, -4.0000,  0.0000])
    """
    caller = "configurable_table_quantize_geomean"
    entries = _entries(caller, table_lookup)
    t32 = np.array(entries, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        roots = np.sqrt(t32[1:] * t32[:-1])  # IEEE float32 (torch.sqrt on CPU may be 1 ulp off)
    roots = np.where(np.isnan(roots), np.float32(np.inf), roots)
    hints = (float(np.float32(1e-4)), *roots.astype(np.float64).tolist())
    return _hint_lookup(x, entries, hints, scale, caller)


def new_format_quantize(
    x: torch.Tensor,
    scale: float = 1.0,
    rounding: Rounding | str = "nearest",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`configurable_table_quantize` with the fixed table :data:`NEW_FORMAT_TABLE`.

    32 magnitudes from 2**-16 to 1: powers of two up to 2**-7, then steps of 2**-8 ... up
    to 3/8, 1/2, 1. Nearest ties go to the smaller magnitude.

    >>> new_format_quantize(torch.tensor([0.3, -0.01, 100.0]))
    tensor([ 0.2500, -0.0117,  1.0000])
    """
    return _lookup(x, NEW_FORMAT_TABLE, scale, rounding, generator, "new_format_quantize")


def act_format_quantize(
    x: torch.Tensor,
    scale: float = 1.0,
    rounding: Rounding | str = "nearest",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`configurable_table_quantize` with the fixed table :data:`ACT_FORMAT_TABLE`.

    32 magnitudes from 2**-12 to 16. Nearest ties go to the smaller magnitude.

    >>> act_format_quantize(torch.tensor([0.3, -1.1, 100.0]))
    tensor([ 0.3125, -1.1250, 16.0000])
    """
    return _lookup(x, ACT_FORMAT_TABLE, scale, rounding, generator, "act_format_quantize")


# --- shared machinery ----------------------------------------------------------------------


def _numbers(caller: str, name: str, seq: Table) -> tuple[float, ...]:
    if isinstance(seq, torch.Tensor):
        if seq.is_complex() or seq.dtype == torch.bool:
            raise TypeError(f"{caller}: {name} must hold real numbers, got {seq.dtype}")
        return tuple(seq.detach().to("cpu", torch.float64).flatten().tolist())
    try:
        return tuple(float(v) for v in seq)
    except (TypeError, ValueError):
        raise TypeError(f"{caller}: {name} must be a tensor or a sequence of numbers") from None


def _entries(caller: str, table: Table) -> tuple[float, ...]:
    entries = _numbers(caller, "table_lookup", table)
    if not entries:
        raise ValueError(f"{caller}: table_lookup must not be empty")
    if not all(math.isfinite(t) for t in entries):
        raise ValueError(f"{caller}: table_lookup entries must be finite")
    return entries


def _check_scale(caller: str, scale: float) -> float:
    if isinstance(scale, torch.Tensor):
        scale = float(scale)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"{caller}: scale must be a number, got {scale!r}")
    if not (math.isfinite(scale) and scale != 0):
        raise ValueError(f"{caller}: scale must be a nonzero finite number, got {scale}")
    return float(scale)


def _lookup(
    x: torch.Tensor,
    entries: tuple[float, ...],
    scale: float,
    rounding: Rounding | str,
    generator: torch.Generator | None,
    caller: str,
) -> torch.Tensor:
    mode = Rounding.parse(rounding)
    if mode not in (Rounding.NEAREST, Rounding.STOCHASTIC):
        raise ValueError(
            f"{caller}: rounding must be 'nearest' or 'stochastic', got {mode.value!r}"
        )
    scale = _check_scale(caller, scale)
    work = working_tensor(x, caller)
    y = work * scale if scale != 1.0 else work
    table, thresholds, points, halves = _nearest_tables(entries, work.dtype, work.device)
    if mode is Rounding.STOCHASTIC:
        noise = uniform_noise(y, generator)
        n = table.numel() - 1  # the magnitudes that |y| > 0 can round to: table[1:]
        q = kern.round_mirrored_stochastic(y, points, n, noise, halves=halves)
    else:
        q = kern.round_mirrored(y, table, thresholds)
    if scale != 1.0:
        q = q / scale
    return q.to(x.dtype)


def _hint_lookup(
    x: torch.Tensor,
    entries: tuple[float, ...],
    hints: tuple[float, ...],
    scale: float,
    caller: str,
) -> torch.Tensor:
    scale = _check_scale(caller, scale)
    work = working_tensor(x, caller)
    y = work * scale if scale != 1.0 else work
    table, thresholds = _hint_tables(entries, hints, work.dtype, work.device)
    q = kern.round_mirrored(y, table, thresholds)
    if scale != 1.0:
        q = q / scale
    return q.to(x.dtype)


@kern.cached_tables(maxsize=128)
def _nearest_tables(
    entries: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Lookup tensors for 'nearest to |y|, first in table order on ties'.

    On |y| > 0 only these entries can win, in ascending order: the largest negative entry
    (if any) and the distinct entries >= 0. Index 0 of the table is the 0 that ±0 give.
    Returns the table, the thresholds, the points of stochastic rounding (``table[1:]``,
    padded for the search) and whether their differences need halves.
    """
    first_at: dict[float, int] = {}
    for i, t in enumerate(entries):
        first_at.setdefault(t + 0.0, i)
    negative = [t for t in first_at if t < 0]
    line = ([max(negative)] if negative else []) + sorted(t for t in first_at if t >= 0)
    cuts = [kern.value_cut(0.0)] + [
        kern.midpoint_cut(a, b, tie_up=first_at[b] < first_at[a])
        for a, b in itertools.pairwise(line)
    ]
    table = [0.0] + [kern.round_to_dtype(t, dtype) for t in line]
    return (
        torch.tensor(table, dtype=dtype, device=device),
        kern.thresholds_tensor(cuts, dtype, device, floor=0.0),
        torch.tensor(kern.padded_for_search(table[1:]), dtype=dtype, device=device),
        kern.stochastic_needs_halves(table, dtype),
    )


@kern.cached_tables(maxsize=128)
def _hint_tables(
    entries: tuple[float, ...], hints: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lookup tensors for 'the last i with |y| > hint[i]'.

    With m[i] = min(hint[i:]), "some j >= i has hint[j] < |y|" is m[i] < |y|, and m is
    ascending: the count of m[i] below |y| is one more than the last such i (or 0).
    """
    suffix_min: list[float] = []
    low = math.inf
    for h in reversed(hints):
        low = min(low, h)
        suffix_min.append(low)
    suffix_min.reverse()
    thresholds = [
        m if math.isinf(m) else kern.threshold(kern.value_cut(m), dtype) for m in suffix_min
    ]
    table = [0.0] + [kern.round_to_dtype(t, dtype) for t in entries]
    return (
        torch.tensor(table, dtype=dtype, device=device),
        torch.tensor(
            kern.padded_for_search([max(t, 0.0) for t in thresholds]), dtype=dtype, device=device
        ),
    )
