"""Counting thresholds below each value: the search behind codebook rounding.

Eager code counts with ``torch.bucketize``. Compiled code counts with a :class:`Search`
prepared per table (:func:`prepare_search`), which Inductor turns into one vectorized loop:
an unrolled sum of comparisons with the thresholds as constants for small tables, a
two-level lookup for larger ones (bucket by the bit pattern of |y|, then compare with the
few thresholds of that bucket), a binary search otherwise. Pure tensor code, any device.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np
import torch

from qtorch.kernels.bits import signbit

__all__ = [
    "BUCKETS_MAX",
    "UNROLL_MAX",
    "WIDTH_MAX",
    "Search",
    "binary_search",
    "bucket_base",
    "bucket_of",
    "count_below",
    "gather",
    "gather_in_range",
    "lookup",
    "pack_pairs",
    "prepare_search",
    "search_count",
    "search_lookup",
    "search_lookup_pair",
    "unpack_pairs",
]

#: Tables of at most this many thresholds are searched by an unrolled sum of comparisons.
UNROLL_MAX = 16
#: Most buckets (per sign) of a two-level lookup.
BUCKETS_MAX = 2048
#: Most thresholds that one bucket of a two-level lookup may hold (else: binary search).
WIDTH_MAX = 4


class Search(NamedTuple):
    """How compiled code counts the thresholds below y (see :func:`search_count`).

    ``values``: the thresholds ascending, as Python floats of the working dtype, when there
    are at most :data:`UNROLL_MAX` of them and they are compared one by one (unrolled),
    else empty; ``entries``: then the table (one more number than thresholds) for
    :func:`search_lookup` (prepared with entries, small tables are always unrolled).
    With ``buckets`` > 0, a two-level lookup: the magnitude bucket of y is
    ``clamp((bits(|y|) >> shift) - offset, 0, buckets - 1)``; with ``signed`` the buckets of
    negative y come first, mirrored (2·buckets in all). ``base[b]`` counts the thresholds
    below every value of bucket b, ``window[b·width + j]`` (j < width) are the next
    thresholds (NaN past the end), the only ones that values of the bucket can exceed;
    ``choices[b·(width + 1) + c]`` is the entry of count ``base[b] + c`` (with ``entries``);
    for float32 with one threshold per bucket, ``pairs[b]`` also holds bucket b's two
    choices, packed (:func:`pack_pairs`), so that :func:`search_lookup` reads them and the
    threshold independently (a gather whose index waits for another costs about half as
    much again). With neither, a binary search over the padded thresholds.
    """

    values: tuple[float, ...]
    or_equal: bool
    signed: bool
    entries: tuple[float, ...] = ()
    shift: int = 0
    offset: int = 0
    buckets: int = 0
    width: int = 0
    base: torch.Tensor | None = None
    window: torch.Tensor | None = None
    choices: torch.Tensor | None = None
    pairs: torch.Tensor | None = None


def prepare_search(
    values: Sequence[float],
    dtype: torch.dtype,
    device: torch.device,
    or_equal: bool = False,
    signed: bool = True,
    entries: Sequence[float] = (),
    unroll: bool = False,
) -> Search:
    """The :class:`Search` for sorted thresholds ``values`` (numbers of dtype, no NaN).

    ``signed=False`` promises that every y searched is >= 0 or NaN (a mirrored table).
    ``entries``: the table that :func:`lookup` indexes (numbers of dtype), if it is used.
    With ``entries`` or ``unroll``, at most :data:`UNROLL_MAX` values are compared one by
    one (``values`` set, no buckets).
    The bucket layout is the one with the fewest thresholds per bucket (then the fewest
    buckets), found by trying every shift; everything here is exact float/int arithmetic.
    """
    values = tuple(v + 0.0 for v in values)  # -0.0 -> 0.0: bucket bounds and floats agree
    if (entries or unroll) and len(values) <= UNROLL_MAX:
        return Search(values, or_equal, signed, tuple(entries))
    best = _best_buckets(np.array(values), dtype, or_equal, signed) if values else None
    if best is None:  # an unrolled count (slower than buckets in float64), or binary search
        return Search(values if len(values) <= UNROLL_MAX else (), or_equal, signed)
    width, shift, offset, buckets, base = best
    padded = np.concatenate([np.array(values), np.full(width, np.nan)])
    window = padded[base[:, None] + np.arange(width)].reshape(-1)
    choices = pairs = None
    if entries:
        counts = np.minimum(base[:, None] + np.arange(width + 1), len(values))
        chosen = np.array(entries)[counts]
        choices = torch.tensor(chosen.reshape(-1), dtype=dtype, device=device)
        if dtype == torch.float32 and width == 1:
            pairs = torch.tensor(pack_pairs(chosen[:, 0], chosen[:, 1]), device=device)
    return Search(
        (),
        or_equal,
        signed,
        (),
        shift,
        offset,
        buckets,
        width,
        torch.tensor(base, dtype=torch.int32, device=device),
        torch.tensor(window, dtype=dtype, device=device),
        choices,
        pairs,
    )


def bucket_base(
    values: Sequence[float], dtype: torch.dtype, or_equal: bool = False, signed: bool = True
) -> np.ndarray:
    """``base`` of the bucket layout :func:`prepare_search` picks for these arguments, as
    numpy integers (it has buckets: the caller checked), for preparations that need it on
    the host: :attr:`Search.base` is on the device, and a meta or fake one holds no data."""
    values = tuple(v + 0.0 for v in values)
    best = _best_buckets(np.array(values), dtype, or_equal, signed)
    assert best is not None
    return best[4]


def _best_buckets(
    t: np.ndarray, dtype: torch.dtype, or_equal: bool, signed: bool
) -> tuple[int, int, int, int, np.ndarray] | None:
    """(width, shift, offset, buckets, base) of the best bucket layout, None if too wide."""
    kind, ikind = (np.float32, np.int32) if dtype == torch.float32 else (np.float64, np.int64)
    nbits = 8 * np.dtype(kind).itemsize
    key_inf = int(np.array(np.inf, dtype=kind).view(ikind))
    keys = np.abs(t).astype(kind).view(ikind).astype(np.int64)  # bits of |t|, monotonic
    side: Literal["left", "right"] = "right" if or_equal else "left"
    best = None
    for shift in range(nbits - 1):
        levels = np.unique(keys >> shift).tolist()
        # the end buckets take everything beyond: a lone 0 or Inf need not widen the range
        for offset, top in itertools.product(levels[:4], levels[-4:]):
            buckets = top - offset + 1
            if not 0 < buckets <= BUCKETS_MAX:
                continue
            j = np.arange(buckets, dtype=np.int64) + offset
            lo_key, hi_key = j << shift, np.minimum(((j + 1) << shift) - 1, key_inf)
            lo_key[0], hi_key[-1] = 0, key_inf  # the end buckets take everything beyond
            lo = lo_key.astype(ikind).view(kind).astype(np.float64)
            hi = hi_key.astype(ikind).view(kind).astype(np.float64)
            if signed:  # negative y: bucket buckets - 1 - j holds [-hi_j, -lo_j]
                lo, hi = np.concatenate([-hi[::-1], lo]), np.concatenate([-lo[::-1], hi])
            # thresholds every value of the bucket exceeds, and those none exceeds
            base = np.searchsorted(t, lo, side)
            width = int((np.searchsorted(t, hi, side) - base).max())
            if best is None or (width, buckets) < (best[0], best[3]):
                best = (width, shift, offset, buckets, base)
    if best is None or best[0] > WIDTH_MAX:
        return None
    return best


# --- kernels: tensor code ----------------------------------------------------------------


def count_below(
    y: torch.Tensor,
    padded: torch.Tensor,
    size: int,
    or_equal: bool = False,
    search: Search | None = None,
) -> torch.Tensor:
    """How many of the first ``size`` entries of a sorted table are < y (<= y with ``or_equal``).

    Returns int32 counts shaped like y. ``padded`` is the table ascending, then NaN up to
    length 2**k - 1 (see :func:`padded_for_search`). Eager code runs ``torch.bucketize``;
    under ``torch.compile`` the same count comes from :func:`search_count` with ``search``
    (prepared for this table, ``or_equal`` and y's dtype by :func:`prepare_search`), or
    without it from :func:`binary_search`; both compile into one loop and are tested to
    agree bitwise. For NaN y the count is some valid index (0..size), which callers mask.
    """
    if torch.compiler.is_compiling():
        if search is not None and (search.values or search.buckets or not size):
            return search_count(y, search)
        return binary_search(y, padded, or_equal)
    return torch.bucketize(y.contiguous(), padded[:size], out_int32=True, right=or_equal)


def search_count(y: torch.Tensor, search: Search) -> torch.Tensor:
    """:func:`count_below` by a prepared :class:`Search`: vectorizable, no data-dependent loop.

    Few thresholds: the sum of the comparisons with each (Python floats, so the compiler
    sees constants). Else a two-level lookup: the bucket of y from its bit pattern (the bits
    of a float >= 0, read as an integer, grow with its value), the count of thresholds below
    the bucket, plus the comparisons with the bucket's ``width`` thresholds.
    """

    def above(t: torch.Tensor | float) -> torch.Tensor:
        return (y >= t if search.or_equal else y > t).to(torch.int32)

    if not search.buckets:
        count = torch.zeros(y.shape, dtype=torch.int32, device=y.device)
        for t in search.values:
            count = count + above(t)
        return count
    assert search.base is not None
    return _bucket_count(y, search, search.base)[1]


def bucket_of(y: torch.Tensor, search: Search) -> torch.Tensor:
    """The bucket (int64) of each y in a two-level :class:`Search` (``search.buckets`` > 0)."""
    bits = y.abs().view(torch.int32 if y.dtype == torch.float32 else torch.int64)
    bucket = ((bits >> search.shift) - search.offset).clamp(0, search.buckets - 1)
    if search.signed:
        bucket = torch.where(signbit(y), search.buckets - 1 - bucket, search.buckets + bucket)
    return bucket.long()


def _bucket_count(
    y: torch.Tensor, search: Search, base: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(bucket of y, ``base[bucket]`` (0 without base) + how many of the bucket's thresholds
    y exceeds)."""
    assert search.window is not None
    bucket = bucket_of(y, search)
    if base is None:
        count = torch.zeros_like(bucket, dtype=torch.int32)
    else:
        count = gather_in_range(base, bucket)
    first = bucket * search.width
    for j in range(search.width):
        t = gather_in_range(search.window, first + j)
        count = count + (y >= t if search.or_equal else y > t).to(torch.int32)
    return bucket, count


def lookup(
    y: torch.Tensor, table: torch.Tensor, padded: torch.Tensor, search: Search | None
) -> torch.Tensor:
    """``table[count_below(y, padded, n - 1)]`` for a table of n entries.

    Under ``torch.compile``, with a ``search`` prepared with the entries, the same value
    comes from :func:`search_lookup` (tested to agree bitwise).
    """
    prepared = search is not None and (search.entries or search.choices is not None)
    if prepared and torch.compiler.is_compiling():
        assert search is not None
        return search_lookup(y, search)
    return gather(table, count_below(y, padded, table.numel() - 1, search=search))


def search_lookup(y: torch.Tensor, search: Search) -> torch.Tensor:
    """The entry for y by a :class:`Search` prepared with the entries: no data-dependent loop.

    A small table is a chain of ``torch.where`` with every threshold and entry a constant
    (no gather at all); a larger one reads the entry from the bucket's ``choices`` (two
    dependent gathers in all), or with one threshold per float32 bucket, reads the
    threshold and the bucket's packed ``pairs`` (two independent gathers) and chooses.
    """
    if search.entries:
        q = torch.full_like(y, search.entries[0])
        for t, v in zip(search.values, search.entries[1:], strict=True):
            q = torch.where(y > t, v, q)
        return q
    if search.pairs is not None and search.window is not None:
        bucket = bucket_of(y, search)
        threshold = gather_in_range(search.window, bucket)
        low, high = unpack_pairs(gather_in_range(search.pairs, bucket))
        return torch.where(y >= threshold if search.or_equal else y > threshold, high, low)
    assert search.choices is not None, "search_lookup needs a search prepared with entries"
    bucket, count = _bucket_count(y, search, None)
    return gather_in_range(search.choices, bucket * (search.width + 1) + count)


def search_lookup_pair(
    y: torch.Tensor, search: Search, second: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`search_lookup` of a bucketed search, reading also ``second``: choices of a
    second table, laid out like ``search.choices`` (one bucket search, two gathers)."""
    assert search.choices is not None, "search_lookup_pair needs a bucketed search with entries"
    bucket, count = _bucket_count(y, search, None)
    k = bucket * (search.width + 1) + count
    return gather_in_range(search.choices, k), gather_in_range(second, k)


def pack_pairs(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """int64 holding the bit patterns of float32 ``low`` (bits 0-31) and ``high`` (32-63)."""
    lo_bits = low.astype(np.float32).view(np.uint32).astype(np.uint64)
    hi_bits = high.astype(np.float32).view(np.uint32).astype(np.uint64)
    return (lo_bits | (hi_bits << np.uint64(32))).view(np.int64)


def unpack_pairs(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two float32 numbers of :func:`pack_pairs` (int64 to int32 keeps the low half)."""
    low = packed.to(torch.int32).view(torch.float32)
    return low, (packed >> 32).to(torch.int32).view(torch.float32)


def binary_search(y: torch.Tensor, padded: torch.Tensor, or_equal: bool = False) -> torch.Tensor:
    """:func:`count_below` as a branch-free binary search: k steps, each one gather from the
    small table and one comparison (the NaN padding never compares true)."""
    pos = torch.zeros(y.shape, dtype=torch.int32, device=y.device)
    step = (padded.numel() + 1) // 2
    while step:
        probe = gather(padded, pos + (step - 1))
        hit = probe <= y if or_equal else probe < y
        pos = torch.where(hit, pos + step, pos)
        step //= 2
    return pos


def gather(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for a 1-D table and an integer index tensor of any shape."""
    return table.index_select(0, index.reshape(-1)).view(index.shape)


def gather_in_range(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for indices known to lie in 0..len(table) - 1 (not checked).

    ``aten._unsafe_index`` compiles without the per-element bounds check and wrap-around of
    negative indices that make a checked gather several times slower.
    """
    return torch.ops.aten._unsafe_index(table, [index.long()])
