"""Codebooks: formats defined by the list of their values (table lookup), and the NF4 preset."""

from __future__ import annotations

import enum
import functools
import itertools
import math
import sys
from dataclasses import KW_ONLY, dataclass
from fractions import Fraction
from typing import ClassVar, NamedTuple

import torch

from qtorch.formats.base import Format
from qtorch.formats.fixed import check_bool
from qtorch.kernels import codebook as kern
from qtorch.kernels import codebook_search as search
from qtorch.kernels.compiled_call import compile_constant
from qtorch.quantize import working_tensor
from qtorch.rounding import Rounding

__all__ = ["NF4_VALUES", "Boundary", "Codebook", "CodebookTables", "nf4"]

#: Most entries a codebook may hold.
MAX_ENTRIES = 65536


class Boundary(str, enum.Enum):
    """Where nearest rounding switches from one table entry to the next."""

    #: At the midpoint (a + b) / 2: the entry nearest by value.
    MIDPOINT = "midpoint"
    #: At the geometric mean sqrt(a·b): the entry nearest in log|x|.
    GEOMETRIC = "geometric"

    def __repr__(self) -> str:  # the string, so that a Codebook's repr is its constructor call
        return repr(self.value)


class CodebookTables(NamedTuple):
    """A codebook's lookup tensors for one working dtype and device.

    ``table``: the value of every code index (magnitudes when mirrored, ``table[0]`` = 0),
    in the working dtype. ``thresholds``: the largest number of that dtype that rounds to
    each entry rather than the next (NaN-padded for the binary search). ``points``: the
    values that stochastic rounding chooses among, in the working dtype (``table[first:]``,
    padded; ``first`` is 1 when only ±0 give the 0 of ``table[0]``). ``search``: the
    thresholds prepared for the compiled kernels
    (:func:`qtorch.kernels.codebook_search.prepare_search`); ``bracket``: the points
    prepared for them (:func:`qtorch.kernels.codebook.prepare_bracket`). ``halves``:
    whether the difference of two points could overflow the working dtype.
    """

    table: torch.Tensor
    thresholds: torch.Tensor
    points: torch.Tensor
    first: int
    search: search.Search
    bracket: kern.Bracket
    halves: bool


@dataclass(frozen=True)
class Codebook(Format):
    """A format whose values are listed: nearest or stochastic rounding to a table.

    Args:
        entries: the table, strictly increasing, finite, 1..65536 numbers (any iterable,
            stored as a tuple of floats). With ``signed=False`` they are magnitudes (>= 0)
            and the format holds ±each of them and 0; with ``signed=True`` the format holds
            exactly these values (e.g. :data:`nf4`). :meth:`values` lists what it holds.
        signed: False (default): a sign-mirrored magnitude table, the kind of QPyTorch /
            qtorch+ tables: |x| is rounded, the sign of x is put back, ±0 stays ±0 (also
            when 0 is not an entry). True: a table of signed values.
        scale: the format holds entries[i] / scale (a positive finite float; a power of two
            keeps the entries exact). Equivalent to scaling x by ``scale`` before the lookup
            and dividing after, without the two roundings.
        boundaries: the rule of nearest rounding: ``"midpoint"`` (nearest by value),
            ``"geometric"`` (nearest in log|x|: the switch between entries a and b is at
            sqrt(a·b)) or explicit thresholds, one per pair of neighbouring entries with
            ``entries[i] <= thresholds[i] < entries[i + 1]`` (magnitudes when mirrored).

    Nearest rounding gives the entry whose interval holds x (|x| when mirrored); a value
    exactly on a boundary (a tie) goes to the lower entry: the smaller value, or when
    mirrored the smaller magnitude. The decision is exact (no rounding error in
    distances). In a mirrored table without 0, only ±0 give 0: tiny nonzero values go to
    the smallest entry. With geometric boundaries in a signed table, the switch between
    entries of opposite signs, or next to a zero entry, is at 0, and ±0 go to the zero
    entry when there is one. Stochastic rounding ignores ``boundaries``: it gives one of
    the two entries around x, the upper with probability (x - lower) / (upper - lower), so
    it is unbiased inside the table's range (lower and upper as the working dtype holds
    them; the test ``noise * (upper - lower) < x - lower`` runs in the working dtype).

    Beyond the table (±Inf included) the result saturates at the extreme entry (with x's
    sign when mirrored); NaN stays NaN. In a signed table ±0 give the entry 0 (+0) if there
    is one. Results are the entries in the working dtype (float32, float64 for float64
    input): an entry that float32 cannot hold exactly comes out rounded to nearest.

    Codes (:meth:`encode`, :meth:`decode`): signed tables number their entries 0..n-1 in
    ascending order. Mirrored tables are sign-magnitude: the magnitude index i (0 is the
    value 0, then the entries ascending) in the low ``bits - 1`` bits and the sign on top,
    so -0 has its own code.

    >>> import qtorch
    >>> fmt = Codebook([0.5, 1.0, 2.0])
    >>> fmt.max, fmt.min_positive, fmt.bits
    (2.0, 0.5, 3)
    >>> qtorch.quantize(torch.tensor([0.0, 0.2, -0.75, 1.6, -9.0]), fmt)
    tensor([ 0.0000,  0.5000, -0.5000,  2.0000, -2.0000])
    """

    #: Compiled for the CPU on the (n / 16, 16) view (see Format), the stochastic kernel of
    #: a 16-entry table was 10x slower: Inductor split it into a 2-D and a flat loop joined
    #: by a buffer of bools. On x flat, with the noise still made in rows of 16: A/B 0.93
    #: (16 entries) and 0.95 (256) against the flat index. (On CUDA: the view.)
    row_view_noise: ClassVar[bool] = False

    entries: tuple[float, ...]
    _: KW_ONLY
    signed: bool = False
    scale: float = 1.0
    boundaries: Boundary | tuple[float, ...] = Boundary.MIDPOINT

    def __post_init__(self) -> None:
        values = _float_tuple("entries", self.entries)
        n = len(values)
        if not 1 <= n <= MAX_ENTRIES:
            raise ValueError(f"Codebook: entries must hold 1..{MAX_ENTRIES} entries, got {n}")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"Codebook: entries must be finite, got {_show(values)}")
        if any(b <= a for a, b in itertools.pairwise(values)):
            raise ValueError(
                "Codebook: entries must be strictly increasing (use sorted(set(entries))), "
                f"got {_show(values)}"
            )
        check_bool("Codebook", "signed", self.signed)
        if not self.signed and values[0] < 0:
            raise ValueError(
                "Codebook: entries of a sign-mirrored table (signed=False) are magnitudes and "
                f"must be >= 0, got {_show(values)}"
            )
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"Codebook: scale must be a number, got {scale!r}")
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"Codebook: scale must be a positive finite number, got {scale}")
        largest = Fraction(max(abs(values[0]), abs(values[-1]))) / Fraction(scale)
        if largest > sys.float_info.max:
            raise ValueError(f"Codebook: entries / scale must be finite in float64, scale {scale}")
        object.__setattr__(self, "entries", values)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "boundaries", _check_boundaries(self.boundaries, values))

    # --- properties ---------------------------------------------------------------------

    @property
    def bits(self) -> int:
        """Bits of a code: ceil(log2(number of codes)); mirrored tables add a sign bit."""
        if self.signed:
            return (len(self.entries) - 1).bit_length()
        return _layout(self).sign_bit + 1

    @property
    def max(self) -> float:
        """Largest value (float64, rounded to nearest if entries[i] / scale is not one)."""
        return kern.round_to_dtype(_layout(self).entries[-1], torch.float64)

    @property
    def min(self) -> float:
        """Most negative value (-max when mirrored)."""
        if not self.signed:
            return -self.max
        return kern.round_to_dtype(_layout(self).entries[0], torch.float64)

    @property
    def min_positive(self) -> float:
        """Smallest positive value; NaN when there is none."""
        positive = [e for e in _layout(self).entries if e[0] > 0]
        return kern.round_to_dtype(positive[0], torch.float64) if positive else math.nan

    def values(self) -> torch.Tensor:
        """Every distinct value ascending, float64 (+0 and -0 count once)."""
        entries = {kern.round_to_dtype(e, torch.float64) for e in _layout(self).entries}
        if not self.signed:
            entries |= {-v for v in entries} | {0.0}
        return torch.tensor(sorted(entries), dtype=torch.float64)

    # --- rounding -------------------------------------------------------------------------

    def lookup_tables(self, dtype: torch.dtype, device: torch.device | str) -> CodebookTables:
        """The lookup tensors for a working dtype (float32/float64) and device (cached)."""
        return _tables(_fields(self), dtype, torch.device(device))

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        t = _tables(_fields(self), x.dtype, x.device)
        if rounding is Rounding.STOCHASTIC:
            if noise is None:
                raise ValueError("Codebook: stochastic rounding needs noise")
            stochastic = (
                kern.round_signed_stochastic if self.signed else kern.round_mirrored_stochastic
            )
            n = t.table.numel() - t.first
            return stochastic(x, t.points, n, noise, t.bracket, t.halves)
        if self.signed:
            return kern.round_signed(x, t.table, t.thresholds, t.search)
        return kern.round_mirrored(x, t.table, t.thresholds, t.search)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (torch.int32) of x rounded to nearest (see the class for the layout).

        Values beyond the table and ±Inf get the extreme codes; NaN has no code
        (``ValueError``).

        >>> Codebook([0.5, 1.0, 2.0]).encode(torch.tensor([0.0, 0.6, -2.0, -0.0]))
        tensor([0, 1, 7, 4], dtype=torch.int32)
        """
        work = working_tensor(x, "Codebook.encode")
        if bool(torch.isnan(work).any()):
            raise ValueError("Codebook.encode: x contains NaN, which has no codebook code")
        t = _tables(_fields(self), work.dtype, work.device)
        size = t.table.numel()
        if self.signed:
            return kern.encode_signed(work, t.thresholds, size, t.search)
        return kern.encode_mirrored(work, t.thresholds, size, _layout(self).sign_bit, t.search)

    def decode(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The values of integer codes, in ``dtype``; unused codes raise ``ValueError``.

        >>> Codebook([0.5, 1.0, 2.0]).decode(torch.tensor([0, 1, 7, 4]))
        tensor([ 0.0000,  0.5000, -2.0000, -0.0000])
        """
        if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
            raise TypeError(f"Codebook.decode: codes must be an integer tensor, got {codes!r}")
        if codes.dtype == torch.bool:
            raise TypeError("Codebook.decode: codes must be an integer tensor, got torch.bool")
        lay = _layout(self)
        size = len(lay.entries) if self.signed else len(lay.code_entries)
        index = codes if self.signed else codes & ((1 << lay.sign_bit) - 1)
        limit = size if self.signed else 2 << lay.sign_bit
        if codes.numel() and bool(((codes < 0) | (codes >= limit) | (index >= size)).any()):
            raise ValueError(f"Codebook.decode: codes must be valid codes of {self!r}")
        working = torch.float64 if dtype == torch.float64 else torch.float32
        table = _tables(_fields(self), working, codes.device).table
        if self.signed:
            return kern.decode_signed(codes, table).to(dtype)
        return kern.decode_mirrored(codes, table, lay.sign_bit).to(dtype)


# --- validation helpers -------------------------------------------------------------------


def _float_tuple(name: str, seq: object) -> tuple[float, ...]:
    if isinstance(seq, torch.Tensor):
        seq = seq.detach().cpu().flatten().tolist()
    if isinstance(seq, (str, bytes)) or not hasattr(seq, "__iter__"):
        raise TypeError(f"Codebook: {name} must be a sequence of numbers, got {seq!r}")
    try:
        return tuple(float(v) + 0.0 for v in seq)  # + 0.0 turns -0.0 into 0.0
    except (TypeError, ValueError):
        raise TypeError(f"Codebook: {name} must be a sequence of numbers, got {seq!r}") from None


def _show(values: tuple[float, ...]) -> str:
    if len(values) <= 8:
        return repr(values)
    return f"({', '.join(map(repr, values[:4]))}, ..., {values[-1]!r}) ({len(values)} entries)"


def _check_boundaries(rule: object, values: tuple[float, ...]) -> Boundary | tuple[float, ...]:
    if isinstance(rule, str):
        try:
            return Boundary(rule.lower())
        except ValueError:
            pass
        raise ValueError(
            "Codebook: boundaries must be 'midpoint', 'geometric' or a sequence of "
            f"thresholds, got {rule!r}"
        )
    cuts = _float_tuple("boundaries", rule)
    if len(cuts) != len(values) - 1:
        raise ValueError(
            f"Codebook: boundaries must hold one threshold per pair of neighbouring entries "
            f"({len(values) - 1}), got {len(cuts)}"
        )
    for i, t in enumerate(cuts):
        if not values[i] <= t < values[i + 1]:
            raise ValueError(
                f"Codebook: boundaries[{i}] must be in [entries[{i}], entries[{i + 1}]) = "
                f"[{values[i]}, {values[i + 1]}), got {t}"
            )
    return cuts


# --- derived tables (cached) -------------------------------------------------------------


class _Layout(NamedTuple):
    entries: tuple[kern.Ratio, ...]  # the entries, scaled: entries[i] / scale, exact
    code_entries: tuple[kern.Ratio, ...]  # value of each code index (magnitude when mirrored)
    cuts: tuple[kern.Cut, ...]  # between neighbouring code entries
    first: int  # code index of entries[0]
    sign_bit: int  # mirrored: position of the sign bit in a code


@functools.lru_cache(maxsize=64)
def _layout(fmt: Codebook) -> _Layout:
    entries = tuple(kern.scaled(v, fmt.scale) for v in fmt.entries)
    pairs = list(itertools.pairwise(entries))
    if isinstance(fmt.boundaries, tuple):
        cuts = [kern.value_cut(kern.scaled(t, fmt.scale)) for t in fmt.boundaries]
    elif fmt.boundaries is Boundary.MIDPOINT:
        cuts = [kern.midpoint_cut(a, b) for a, b in pairs]
    else:
        cuts = [_geometric(a, b) for a, b in pairs]
    first = 0 if fmt.signed or fmt.entries[0] == 0 else 1
    code_entries = ((0, 1),) * first + entries
    cuts = [kern.value_cut(0.0)] * first + cuts  # only ±0 go to an added zero
    sign_bit = (len(code_entries) - 1).bit_length()
    return _Layout(entries, code_entries, tuple(cuts), first, sign_bit)


def _geometric(a: kern.Ratio, b: kern.Ratio) -> kern.Cut:
    if a[0] * b[0] > 0:
        return kern.geometric_cut(a, b)
    return kern.value_cut(0.0, tie_up=b[0] == 0)  # a zero entry takes ±0; across zero at 0


#: What defines a codebook: its entries, signed, scale and boundaries (:func:`_fields`).
Fields = tuple[tuple[float, ...], bool, float, Boundary | tuple[float, ...]]


def _fields(fmt: Codebook) -> Fields:
    """The fields that define ``fmt``, the argument of :func:`_tables` that stands for it."""
    return fmt.entries, fmt.signed, fmt.scale, fmt.boundaries


@compile_constant
def _tables(fields: Fields, dtype: torch.dtype, device: torch.device) -> CodebookTables:
    """The lookup tensors, built once; ``torch.compile`` runs this natively (a constant).

    It takes the format's fields (:func:`_fields`), not the format: Dynamo turns the
    arguments of such a function into Python constants, and torch 2.11's cannot do that
    with a frozen dataclass (every codebook kernel then failed to compile).
    """
    return _build_tables(fields, dtype, device)


@kern.cached_tables(maxsize=64)
def _build_tables(fields: Fields, dtype: torch.dtype, device: torch.device) -> CodebookTables:
    entries, signed, scale, boundaries = fields
    fmt = Codebook(entries, signed=signed, scale=scale, boundaries=boundaries)
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"Codebook: working dtype must be float32 or float64, got {dtype}")
    lay = _layout(fmt)
    table = [kern.round_to_dtype(e, dtype) for e in lay.code_entries]
    thresholds = [kern.threshold(cut, dtype) for cut in lay.cuts]
    points = table[lay.first :]
    return CodebookTables(
        table=torch.tensor(table, dtype=dtype, device=device),
        thresholds=torch.tensor(kern.padded_for_search(thresholds), dtype=dtype, device=device),
        points=torch.tensor(kern.padded_for_search(points), dtype=dtype, device=device),
        first=lay.first,
        search=search.prepare_search(thresholds, dtype, device, signed=fmt.signed, entries=table),
        bracket=kern.prepare_bracket(points, dtype, device, fmt.signed),
        halves=kern.stochastic_needs_halves(points, dtype),
    )


#: The 16 NF4 values of QLoRA (Dettmers et al. 2023), as listed in bitsandbytes.
NF4_VALUES: tuple[float, ...] = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)

#: NF4, the 4-bit NormalFloat of QLoRA: 16 signed values in [-1, 1], codes 0..15 ascending.
#: Use ``dataclasses.replace(nf4, scale=1 / absmax)`` for a block's absmax scaling.
nf4 = Codebook(NF4_VALUES, signed=True)
