"""Table lookup (codebook) rounding: exact boundary preparation, then tensor kernels.

Preparation is plain Python, run once per table and working dtype: every boundary between
two neighbouring entries (a midpoint, a geometric mean or a user threshold) is turned into
the largest number of the working dtype that still rounds to the lower entry, found with
exact rational (integer) arithmetic. Rounding a tensor then needs a count of the
thresholds below each value (:func:`count_below`) and one gather: no distance arithmetic,
so no rounding error near a boundary, and a value exactly on a boundary (a tie) goes where
the boundary's ``tie_up`` flag says.

Eager code counts with ``torch.bucketize``. Compiled code counts with a :class:`Search`
prepared per table (:func:`prepare_search`), which Inductor turns into one vectorized loop:
an unrolled sum of comparisons with the thresholds as constants for small tables, a
two-level lookup for larger ones (bucket by the bit pattern of |y|, then compare with the
few thresholds of that bucket), a binary search otherwise.

The kernels are pure tensor code: no Python branching on tensor values, any device.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, NamedTuple, TypeVar

import numpy as np
import torch

from qtorch.kernels.bits import flip_sign, isnan, signbit
from qtorch.kernels.codebook_search import (
    Search,
    bucket_base,
    bucket_of,
    count_below,
    gather,
    gather_in_range,
    lookup,
    pack_pairs,
    prepare_search,
    search_lookup_pair,
    unpack_pairs,
)
from qtorch.kernels.compiled_call import dispatch_mode_active, int_loads_copy

__all__ = [
    "Bracket",
    "Cut",
    "Ratio",
    "TableCache",
    "bracket",
    "cached_tables",
    "choose_stochastic",
    "decode_mirrored",
    "decode_signed",
    "encode_mirrored",
    "encode_signed",
    "geometric_cut",
    "midpoint_cut",
    "padded_for_search",
    "prepare_bracket",
    "ratio",
    "round_mirrored",
    "round_mirrored_stochastic",
    "round_signed",
    "round_signed_stochastic",
    "round_to_dtype",
    "scaled",
    "stochastic_needs_halves",
    "threshold",
    "value_cut",
]

_FLOAT32_MAX = float(np.finfo(np.float32).max)


_T = TypeVar("_T")


class TableCache(Generic[_T]):
    """A function that builds lookup tensors, with ``functools.lru_cache(maxsize)`` for
    calls whose new tensors are plain tensors.

    Under a dispatch mode that makes tensors of its own (``FakeTensorMode``, the tracing of
    ``torch.export`` or symbolic ``make_fx``: ``torch.empty(0)`` is not a plain tensor
    there) the tables are built anew, of that mode, and not kept: the cache kept them, and
    served fake or traced tables to every later call (after ``torch.export.export`` of a
    model with a codebook quantizer, the model itself returned FakeTensors). Real tables
    cannot serve there instead: a ``FakeTensorMode`` refuses real inputs. So the builders
    never read a tensor back (a fake or meta one has no data): what they need on the host
    they compute there (:func:`qtorch.kernels.codebook_search.bucket_base`).
    """

    def __init__(self, build: Callable[..., _T], maxsize: int) -> None:
        self._build = build
        self._cached = functools.lru_cache(maxsize)(build)
        functools.update_wrapper(self, build)

    def __call__(self, *args: Hashable) -> _T:
        if dispatch_mode_active() and type(torch.empty(0)) is not torch.Tensor:
            return self._build(*args)  # a mode that makes tensors of its own: fake, traced
        return self._cached(*args)

    def cache_clear(self) -> None:
        self._cached.cache_clear()


def cached_tables(maxsize: int) -> Callable[[Callable[..., _T]], TableCache[_T]]:
    """Decorator: ``build`` as a :class:`TableCache` of ``maxsize`` entries."""
    return lambda build: TableCache(build, maxsize)


# --- preparation: exact boundaries as thresholds of a working dtype -------------------------

#: An exact rational number as (numerator, denominator), denominator > 0, not reduced.
Ratio = tuple[int, int]


def ratio(v: float | Fraction | Ratio) -> Ratio:
    """The exact value of a float or Fraction (or a Ratio, returned as is)."""
    if isinstance(v, tuple):
        return v
    return v.as_integer_ratio()


def scaled(v: float, scale: float) -> Ratio:
    """v / scale exactly (scale > 0)."""
    nv, dv = v.as_integer_ratio()
    ns, ds = scale.as_integer_ratio()
    return nv * ds, dv * ns


@dataclass(frozen=True)
class Cut:
    """The boundary between two neighbouring table entries, kept exact.

    The boundary is the rational num/den, or with ``root`` the number sign·sqrt(|num/den|)
    (a geometric mean, never rounded). A value goes to the upper entry when it lies above
    the boundary, and also when it equals it if ``tie_up`` is set. ``guess`` is a float
    close to the boundary, where :func:`threshold` starts its search.
    """

    num: int
    den: int
    root: bool = False
    tie_up: bool = False
    guess: float = 0.0

    @property
    def exact(self) -> bool:
        """Whether the boundary is the float ``guess`` itself (then floats compare exactly)."""
        return not self.root and self.guess.as_integer_ratio() == _reduced(self.num, self.den)

    def keeps_down(self, v: float) -> bool:
        """Whether the number v (a float, ±Inf allowed) rounds to the lower entry."""
        if math.isinf(v):
            return v < 0
        nv, dv = v.as_integer_ratio()
        if not self.root:  # v <= num/den, compared as integers
            lhs, rhs = nv * self.den, self.num * dv
            return lhs < rhs if self.tie_up else lhs <= rhs
        square, bound = nv * nv * self.den, abs(self.num) * dv * dv
        if self.num >= 0:  # boundary +sqrt(num/den): v below it iff v < 0 or v*v below
            return nv < 0 or (square < bound if self.tie_up else square <= bound)
        # boundary -sqrt(|num/den|): v below it iff v < 0 and v*v above
        return nv < 0 and (square > bound if self.tie_up else square >= bound)


def value_cut(t: float | Fraction | Ratio, tie_up: bool = False) -> Cut:
    """The boundary at the number t."""
    num, den = ratio(t)
    return Cut(num, den, tie_up=tie_up, guess=num / den)


def midpoint_cut(
    a: float | Fraction | Ratio, b: float | Fraction | Ratio, tie_up: bool = False
) -> Cut:
    """The boundary at (a + b) / 2: values go to the nearer entry."""
    (na, da), (nb, db) = ratio(a), ratio(b)
    num, den = na * db + nb * da, 2 * da * db
    return Cut(num, den, tie_up=tie_up, guess=num / den)


def geometric_cut(a: float | Fraction | Ratio, b: float | Fraction | Ratio) -> Cut:
    """The boundary at sign·sqrt(a·b) for two entries of the same strict sign (ties go down).

    Values go to the entry nearer in log|x|.
    """
    (na, da), (nb, db) = ratio(a), ratio(b)
    if na * nb <= 0:
        raise ValueError(f"geometric boundary needs two entries of one sign, got {a} and {b}")
    guess = math.sqrt(abs(na / da)) * math.sqrt(abs(nb / db))
    if na > 0:
        return Cut(na * nb, da * db, root=True, guess=guess)
    return Cut(-(na * nb), da * db, root=True, guess=-guess)


def _reduced(num: int, den: int) -> Ratio:
    g = math.gcd(num, den)
    return num // g, den // g


def _step(v: float, up: bool, dtype: torch.dtype) -> float:
    """The neighbour of v in dtype (float32 or float64) above (``up``) or below."""
    if dtype == torch.float64:
        return math.nextafter(v, math.inf if up else -math.inf)
    if v == 0:
        return 2.0**-149 if up else -(2.0**-149)
    (bits,) = struct.unpack("<I", struct.pack("<f", v))
    bits += 1 if (v > 0) == up else -1  # sign-magnitude: away from zero is +1
    return float(struct.unpack("<f", struct.pack("<I", bits))[0])


def _nearby(v: float, dtype: torch.dtype) -> float:
    """The number of dtype nearest to v, clamped to the dtype's finite range."""
    if dtype == torch.float64:
        return v
    return float(
        struct.unpack("<f", struct.pack("<f", min(max(v, -_FLOAT32_MAX), _FLOAT32_MAX)))[0]
    )


def threshold(cut: Cut, dtype: torch.dtype) -> float:
    """The largest number of dtype (or -Inf) that rounds to the lower entry.

    Then a value x of that dtype rounds up exactly when x > threshold, which is what
    :func:`count_below` counts. Exact (integer arithmetic, or float comparisons when the
    boundary is itself a float64), searched from ``cut.guess``.
    """
    if cut.exact:
        at = cut.guess
        if dtype == torch.float64:
            return math.nextafter(at, -math.inf) if cut.tie_up else at
        v = _nearby(at, dtype)
        if v > at or (cut.tie_up and v == at):
            v = _step(v, False, dtype)
        return v  # _nearby is within one step of at, so v is the largest below
    v = _nearby(cut.guess, dtype)
    while not cut.keeps_down(v):
        v = _step(v, False, dtype)
    while v != math.inf:
        above = _step(v, True, dtype)
        if not cut.keeps_down(above):
            break
        v = above
    return v


def round_to_dtype(q: float | Fraction | Ratio, dtype: torch.dtype) -> float:
    """q rounded to the nearest number of dtype (ties to even), ±Inf beyond its range."""
    num, den = ratio(q)
    if num < 0:
        return -round_to_dtype((-num, den), dtype)
    nearest64 = num / den  # correctly rounded
    if nearest64.as_integer_ratio() == _reduced(num, den) and (
        dtype == torch.float64 or _nearby(nearest64, dtype) == nearest64
    ):
        return nearest64  # q is a number of dtype
    lo = threshold(value_cut((num, den)), dtype)  # the largest dtype number <= q
    nl, dl = lo.as_integer_ratio()
    if nl * den == num * dl:
        return lo
    hi = _step(lo, True, dtype)
    nh, dh = (2 ** (1024 if dtype == torch.float64 else 128), 1) if math.isinf(hi) else ratio(hi)
    # compare q - lo with hi - q over the common denominator den * dl * dh
    below = (num * dl - nl * den) * dh
    above = (nh * den - num * dh) * dl
    if below != above:
        return lo if below < above else hi
    bits = (
        np.float64(lo).view(np.int64) if dtype == torch.float64 else np.float32(lo).view(np.int32)
    )
    return lo if int(bits) % 2 == 0 else hi


def padded_for_search(values: Sequence[float]) -> list[float]:
    """``values`` followed by NaN up to length 2**k - 1, the shape :func:`count_below` needs."""
    size = (1 << len(values).bit_length()) - 1
    return [*values, *([math.nan] * (size - len(values)))]


def thresholds_tensor(
    cuts: Sequence[Cut], dtype: torch.dtype, device: torch.device, floor: float | None = None
) -> torch.Tensor:
    """The thresholds of ``cuts`` in dtype, each raised to ``floor`` if given, padded for search."""
    values = [threshold(cut, dtype) for cut in cuts]
    if floor is not None:
        values = [max(v, floor) for v in values]
    return torch.tensor(padded_for_search(values), dtype=dtype, device=device)


def round_signed(
    x: torch.Tensor, table: torch.Tensor, thresholds: torch.Tensor, search: Search | None = None
) -> torch.Tensor:
    """Nearest rounding to a signed table: ``table[i]`` with i = #(thresholds < x).

    ``table`` holds the n entries ascending in x's dtype and ``thresholds`` the n - 1
    thresholds (see :func:`threshold`, padded by :func:`padded_for_search`), both on x's
    device; ``search`` optionally the same thresholds prepared for compiled code
    (:func:`prepare_search`). Values beyond the ends (±Inf included) get the end entries;
    NaN stays NaN.
    """
    q = lookup(x, table, thresholds, search)
    return torch.where(isnan(x), x, q)


def round_mirrored(
    x: torch.Tensor, table: torch.Tensor, thresholds: torch.Tensor, search: Search | None = None
) -> torch.Tensor:
    """Nearest rounding of |x| to a magnitude table, with x's sign put back.

    ``table[0]`` must be 0 and ``thresholds[0] >= 0``, so that ±0 gives ±0; the result is
    ``table[i]`` with i = #(thresholds < |x|), negated when x is negative (entries may be
    negative: the result is sign(x)·t). ``search`` as in :func:`round_signed`. NaN stays NaN.
    """
    q = lookup(x.abs(), table, thresholds, search)
    q = flip_sign(q, x)
    return torch.where(isnan(x), x, q)


def stochastic_needs_halves(points: Sequence[float], dtype: torch.dtype) -> bool:
    """Whether the difference of two ``points`` can overflow dtype (then work with halves)."""
    return any(abs(p) >= torch.finfo(dtype).max / 2 for p in points)


class Bracket(NamedTuple):
    """How compiled code finds the two points around y (see :func:`prepare_bracket`).

    ``search``: the points (``or_equal``); up to
    :data:`~qtorch.kernels.codebook_search.UNROLL_MAX` of them as constants
    (``search.values``). For larger float32 tables bucketed with at most one point per
    bucket: ``inner``, per bucket the first point above the bucket's lowest value,
    p[B] (the last point beyond the end), and ``outer`` the points p[B - 1] and p[B + 1]
    (clamped to the table) packed into one int64 (low half, high half); two independent
    gathers. ``pair``: the same two points as two float32 tables, which compiled code reads
    instead (three gathers) on a CPU whose integer vectors Inductor reads through a stack
    copy (AVX2: :func:`~qtorch.kernels.compiled_call.int_loads_copy`, asked only while
    compiling): codebook 256 stochastic took 0.84 of the time (A/B, 4,194,304 float32, 2
    threads, Zen 2), the same bits. A value y of the bucket is past
    p[B] when y >= p[B]: p[B] lies in the bucket or above all of it (or y is beyond the
    last point, where either pair gives the end point). Other bucketed tables: ``upper``,
    the upper point of each count laid out like the search's choices (which hold the
    lower point).
    """

    search: Search
    upper: torch.Tensor | None = None
    inner: torch.Tensor | None = None
    outer: torch.Tensor | None = None
    pair: tuple[torch.Tensor, torch.Tensor] | None = None


def prepare_bracket(
    points: Sequence[float], dtype: torch.dtype, device: torch.device, signed: bool = True
) -> Bracket:
    """The :class:`Bracket` for ``points`` (ascending numbers of dtype)."""
    n = len(points)
    if n < 2:
        return Bracket(prepare_search(points, dtype, device, or_equal=True, signed=signed))
    plain = prepare_search(points, dtype, device, or_equal=True, signed=signed, unroll=True)
    if plain.values or not plain.buckets:
        return Bracket(plain)
    if dtype == torch.float32 and plain.width <= 1:
        # points <= every y of the bucket
        base = bucket_base(points, dtype, or_equal=True, signed=signed).astype(np.int64)
        p = np.array(points, dtype=np.float32)
        # lo, hi for c = 0 or 1 points of the bucket <= y: c=0 (p[B-1], p[B]), c=1 (p[B],
        # p[B+1]), indices clamped to the table (lo = hi = the end point beyond the ends)
        below, at = p[np.maximum(base - 1, 0)], p[np.minimum(base, n - 1)]
        above = p[np.minimum(base + 1, n - 1)]
        return Bracket(
            plain,
            inner=torch.tensor(at, device=device),
            outer=torch.tensor(pack_pairs(below, above), device=device),
            pair=(torch.tensor(below, device=device), torch.tensor(above, device=device)),
        )
    lower = [points[min(max(k - 1, 0), n - 2)] for k in range(n + 1)]  # by count of points <= y
    upper = [points[min(max(k - 1, 0), n - 2) + 1] for k in range(n + 1)]
    search = prepare_search(points, dtype, device, or_equal=True, signed=signed, entries=lower)
    second = prepare_search(points, dtype, device, or_equal=True, signed=signed, entries=upper)
    return Bracket(search, upper=second.choices)


def bracket(
    y: torch.Tensor, points: torch.Tensor, n: int, prepared: Bracket | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two points lo <= hi of the table around y, for :func:`choose_stochastic`.

    ``points`` are the n table values in y's dtype, ascending (padded for the search).
    Inside the table lo is the last point <= y and hi the next one. Below the first point
    (-Inf included) lo is the first point; at or above the last (+Inf included) hi is the
    last point; there hi (below) or lo (above) is either the neighbouring point or the end
    point itself, which :func:`choose_stochastic` resolves the same way. NaN gives some
    pair of points. ``prepared``: from :func:`prepare_bracket`, for compiled code: small
    tables compare with every point as a constant (no gather), larger ones read lo and hi
    from per-bucket lists (two gathers).
    """
    if n == 1:
        lo = gather_in_range(points, torch.zeros(y.shape, dtype=torch.int32, device=y.device))
        return lo, lo
    search = None if prepared is None else prepared.search
    if torch.compiler.is_compiling() and prepared is not None and search is not None:
        if search.values:
            v = search.values
            lo, hi = torch.full_like(y, v[0]), torch.full_like(y, v[1])
            for j in range(1, n - 1):
                above = y >= v[j]
                lo, hi = torch.where(above, v[j], lo), torch.where(above, v[j + 1], hi)
            return lo, hi
        if prepared.inner is not None and prepared.outer is not None:
            bucket = bucket_of(y, search)
            at = gather_in_range(prepared.inner, bucket)
            if prepared.pair is not None and y.device.type == "cpu" and int_loads_copy():
                # a gathered int64 vector is read through a stack copy there
                below, above = (gather_in_range(t, bucket) for t in prepared.pair)
            else:
                below, above = unpack_pairs(gather_in_range(prepared.outer, bucket))
            past = y >= at
            return torch.where(past, at, below), torch.where(past, above, at)
        if search.choices is not None and prepared.upper is not None:
            return search_lookup_pair(y, search, prepared.upper)
    i = (count_below(y, points, n, or_equal=True, search=search) - 1).clamp(0, n - 2)
    return gather_in_range(points, i), gather_in_range(points, i + 1)


def choose_stochastic(
    y: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, noise: torch.Tensor, halves: bool
) -> torch.Tensor:
    """hi when ``noise * (hi - lo) < y - lo`` or y >= hi, else lo (in y's dtype).

    With noise uniform on [0, 1) (of y's dtype and resolution) hi comes out with
    probability (y - lo) / (hi - lo), up to the rounding of the two products in y's dtype
    (a few units in the last place of the noise); exactly lo at y == lo and hi at y == hi.
    ``halves``: compare halves of both sides, for points whose difference would overflow.
    """
    if halves:
        up = noise * (hi * 0.5 - lo * 0.5) < y * 0.5 - lo * 0.5
    else:
        up = noise * (hi - lo) < y - lo
    return torch.where(up | (y >= hi), hi, lo)


def round_signed_stochastic(
    x: torch.Tensor,
    points: torch.Tensor,
    n: int,
    noise: torch.Tensor,
    prepared: Bracket | None = None,
    halves: bool = False,
) -> torch.Tensor:
    """Stochastic rounding to a signed table of n ``points`` (x's dtype, ascending, padded).

    Only the two entries around x can come out (:func:`choose_stochastic`); beyond the
    table the end entry; NaN stays NaN. ``prepared``: see :func:`bracket`.
    """
    lo, hi = bracket(x, points, n, prepared)
    q = choose_stochastic(x, lo, hi, noise, halves)
    return torch.where(isnan(x), x, q)


def round_mirrored_stochastic(
    x: torch.Tensor,
    points: torch.Tensor,
    n: int,
    noise: torch.Tensor,
    prepared: Bracket | None = None,
    halves: bool = False,
) -> torch.Tensor:
    """Stochastic rounding of |x| among n ``points`` (magnitudes), x's sign put back.

    ``points`` (x's dtype, ascending, padded for search) are the table's magnitudes
    without the 0 that only ±0 give; ±0 gives ±0. NaN stays NaN. ``prepared``: see
    :func:`bracket`.
    """
    y = x.abs()
    lo, hi = bracket(y, points, n, prepared)
    q = choose_stochastic(y, lo, hi, noise, halves)
    q = torch.where(y == 0, y, q)
    q = flip_sign(q, x)
    return torch.where(isnan(x), x, q)


def encode_signed(
    x: torch.Tensor, thresholds: torch.Tensor, size: int, search: Search | None = None
) -> torch.Tensor:
    """Codes (int32) of nearest rounding to a signed table of ``size`` entries: the index."""
    return count_below(x, thresholds, size - 1, search=search)


def encode_mirrored(
    x: torch.Tensor,
    thresholds: torch.Tensor,
    size: int,
    sign_bit: int,
    search: Search | None = None,
) -> torch.Tensor:
    """Codes (int32) of nearest rounding to a mirrored table: sign << sign_bit | index."""
    index = count_below(x.abs(), thresholds, size - 1, search=search)
    return index | (signbit(x).to(torch.int32) << sign_bit)


def decode_signed(codes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The entries ``table[codes]`` (codes must be valid indices)."""
    return gather(table, codes.long())


def decode_mirrored(codes: torch.Tensor, table: torch.Tensor, sign_bit: int) -> torch.Tensor:
    """The values of sign-magnitude codes: ±``table[codes & (2**sign_bit - 1)]``."""
    codes = codes.long()
    q = gather(table, codes & ((1 << sign_bit) - 1))
    return torch.where(((codes >> sign_bit) & 1) == 1, -q, q)
