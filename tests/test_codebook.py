"""Codebook formats against a brute-force reference written here with Python Fractions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from fractions import Fraction

import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, neighbours_f32, random_float32

import qtorch
from qtorch import Codebook, Rounding, nf4
from qtorch.formats import Boundary
from qtorch.formats.codebook import _fields
from qtorch.kernels.codebook import (
    bracket,
    choose_stochastic,
    padded_for_search,
    prepare_bracket,
)
from qtorch.kernels.codebook_search import (
    binary_search,
    count_below,
    prepare_search,
    search_count,
    search_lookup,
)
from qtorch.kernels.noise import draw_seed, uniform_from_counter

INF = math.inf


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    """These tests check the eager reference; the compiled path is compared in a slow test."""
    with qtorch.kernel_mode("eager"):
        yield


# The 16 NF4 values as published with QLoRA (Dettmers et al. 2023) in bitsandbytes
# (functional.py get_4bit_type("nf4") / csrc kernels' dequantization table), typed here.
PUBLISHED_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip


# --- the reference: argmin over the table, exact --------------------------------------------


def _pick(entries: list[Fraction], v: Fraction, distance) -> Fraction:  # type: ignore[no-untyped-def]
    """The entry with the smallest distance to v; the first (smallest) on a tie."""
    best = entries[0]
    for t in entries[1:]:
        if distance(t, v) < distance(best, v):
            best = t
    return best


def _by_value(t: Fraction, v: Fraction) -> Fraction:
    return abs(t - v)


def _by_log(t: Fraction, v: Fraction) -> Fraction:
    """A monotone stand-in for |log|t| - log|v||: max(t/v, v/t) (same sign, both nonzero)."""
    if t == 0 or v == 0 or (t > 0) != (v > 0):
        return Fraction(10**400)  # infinitely far in log space
    r = t / v
    return max(r, 1 / r)


def reference(x: float, fmt: Codebook) -> float:
    """What nearest rounding to fmt must give for the float x (before the cast to x's dtype)."""
    entries = [Fraction(e) / Fraction(fmt.scale) for e in fmt.entries]
    if math.isnan(x):
        return math.nan
    if not fmt.signed:
        if x == 0:
            return x
        magnitude = reference(abs(x), dataclasses.replace(fmt, signed=True))
        return math.copysign(magnitude, x)
    if math.isinf(x):
        return float(entries[-1] if x > 0 else entries[0])
    v = Fraction(x)
    if isinstance(fmt.boundaries, tuple):  # the rule: the entry after every threshold below v
        cuts = [Fraction(t) / Fraction(fmt.scale) for t in fmt.boundaries]
        return float(entries[sum(1 for c in cuts if v > c)])
    if fmt.boundaries is Boundary.GEOMETRIC:
        if v == 0:  # log|0| = -inf: the zero entry, else a tie between the neighbours of 0
            below = [t for t in entries if t <= 0]
            return float(below[-1] if below else entries[0])
        return float(_pick(entries, v, _by_log))
    return float(_pick(entries, v, _by_value))


def reference_tensor(x: torch.Tensor, fmt: Codebook) -> torch.Tensor:
    ref = [reference(v, fmt) for v in x.tolist()]
    return torch.tensor(ref, dtype=torch.float64).to(x.dtype)


# --- inputs ------------------------------------------------------------------------------


def probes(fmt: Codebook, n_random: int = 400, seed: int = 0) -> torch.Tensor:
    """Entries, exact ties and their float32 neighbours, random values near and far, specials."""
    vals = fmt.values()
    mids = (vals[1:] / 2 + vals[:-1] / 2) if vals.numel() > 1 else vals
    g = torch.Generator().manual_seed(seed)
    span = float(vals.abs().max()) or 1.0
    near = (torch.rand(n_random, generator=g, dtype=torch.float64) * 2.4 - 1.2) * span
    parts = [
        neighbours_f32(vals.float()),
        neighbours_f32(mids.float()),
        near.float(),
        random_float32(n_random, seed=seed),
        SPECIALS_F32,
        torch.tensor([1e30, -1e30, 1e-30, -1e-30, 1e-45]),
    ]
    return torch.cat(parts)


TABLES = {
    "mirrored": Codebook([0.5, 1.0, 2.0, 3.0, 8.0]),
    "mirrored_zero": Codebook([0.0, 0.125, 0.75, 1.0]),
    "mirrored_single": Codebook([0.25]),
    "zero_only": Codebook([0.0]),
    "signed": Codebook([-3.0, -0.5, 0.25, 0.5, 7.0], signed=True),
    "signed_single": Codebook([-1.5], signed=True),
    "nf4": nf4,
    "scaled": Codebook([0.5, 1.0, 3.0], scale=3.0),
    "scaled_nf4": dataclasses.replace(nf4, scale=1 / 0.37),
    "geometric": Codebook([0.0, 1 / 64, 0.25, 1.0, 6.0], boundaries="geometric"),
    "geometric_signed": Codebook([-4.0, -1.0, 0.0, 0.5, 2.0], signed=True, boundaries="geometric"),
    "geometric_straddle": Codebook([-2.0, -0.5, 0.25, 3.0], signed=True, boundaries="geometric"),
    "thresholds": Codebook([0.25, 1.0, 4.0], boundaries=(0.3, 3.0)),
    "thresholds_signed": Codebook([-1.0, 0.0, 2.0], signed=True, boundaries=(-1.0, 1.5)),
    "tiny_huge": Codebook([2.0**-140, 1e-20, 3.0e38]),
    "float64_only": Codebook([0.1, 0.2, 0.3]),
}


def test_tables_take_the_fields_that_define_the_format() -> None:
    """The lookup tables are built from the format's fields (a frozen dataclass cannot be
    an argument of the function torch.compile runs at trace time on torch 2.11): those
    fields must be every field, and must rebuild an equal format."""
    names = {f.name for f in dataclasses.fields(Codebook)}
    assert names == {"entries", "signed", "scale", "boundaries"}
    for fmt in TABLES.values():
        entries, signed, scale, boundaries = _fields(fmt)
        assert Codebook(entries, signed=signed, scale=scale, boundaries=boundaries) == fmt


def _random_tables() -> dict[str, Codebook]:
    g = torch.Generator().manual_seed(5)
    out = {}
    for i in range(4):
        raw = (torch.randn(1 + 7 * i, generator=g) * 10 ** (2 * i - 3)).tolist()
        entries = sorted(set(raw))
        out[f"random_signed{i}"] = Codebook(entries, signed=True)
        out[f"random_mirrored{i}"] = Codebook(sorted({abs(v) for v in raw}))
    return out


TABLES.update(_random_tables())


@pytest.mark.parametrize("name", sorted(TABLES))
def test_nearest_matches_reference(name: str) -> None:
    fmt = TABLES[name]
    x = probes(fmt)
    assert bits_equal(qtorch.quantize(x, fmt), reference_tensor(x, fmt))


@pytest.mark.parametrize("name", ["mirrored", "signed", "nf4", "geometric", "scaled"])
def test_float64_input_matches_reference(name: str) -> None:
    fmt = TABLES[name]
    x = probes(fmt).double()
    x = torch.cat([x, x * (1 + 2.0**-40), torch.randn(300, dtype=torch.float64)])
    assert bits_equal(qtorch.quantize(x, fmt), reference_tensor(x, fmt))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["mirrored", "nf4"])
def test_half_inputs_round_like_float32(name: str, dtype: torch.dtype) -> None:
    fmt = TABLES[name]
    x = probes(fmt).to(dtype)
    got = qtorch.quantize(x, fmt)
    assert got.dtype == dtype
    assert bits_equal(got, reference_tensor(x.float(), fmt).to(dtype))


def test_nf4_is_the_published_table() -> None:
    assert list(nf4.entries) == PUBLISHED_NF4
    assert nf4.values().tolist() == PUBLISHED_NF4
    assert (nf4.bits, nf4.max, nf4.min, nf4.min_positive) == (4, 1.0, -1.0, PUBLISHED_NF4[8])
    assert nf4.encode(torch.tensor(PUBLISHED_NF4)).tolist() == list(range(16))
    assert qtorch.nf4 is nf4 and qtorch.formats.nf4 is nf4


def test_mirrored_properties_and_values() -> None:
    fmt = Codebook([0.5, 1.0, 2.0])
    assert fmt.values().tolist() == [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
    assert (fmt.bits, fmt.max, fmt.min, fmt.min_positive) == (3, 2.0, -2.0, 0.5)
    assert Codebook([0.0, 1.0]).bits == 2
    assert Codebook(list(range(8)), signed=True).bits == 3
    assert Codebook([1.0], signed=True).bits == 0
    assert math.isnan(Codebook([-2.0, -1.0], signed=True).min_positive)
    assert Codebook([1.0, 3.0], scale=4.0).values().tolist() == [-0.75, -0.25, 0.0, 0.25, 0.75]


def test_ties_go_to_the_smaller_entry() -> None:
    mirrored = Codebook([1.0, 2.0, 4.0])
    x = torch.tensor([1.5, -1.5, 3.0, -3.0])
    assert qtorch.quantize(x, mirrored).tolist() == [1.0, -1.0, 2.0, -2.0]
    signed = Codebook([-2.0, -1.0, 1.0], signed=True)
    assert qtorch.quantize(torch.tensor([-1.5, 0.0, -0.0]), signed).tolist() == [-2.0, -1.0, -1.0]


def test_zero_nan_and_inf() -> None:
    fmt = Codebook([0.5, 1.0])
    x = torch.tensor([0.0, -0.0, 1e-40, -1e-40, INF, -INF, math.nan])
    got = qtorch.quantize(x, fmt)
    assert bits_equal(got, torch.tensor([0.0, -0.0, 0.5, -0.5, 1.0, -1.0, math.nan]))
    signed = qtorch.quantize(x, nf4)
    assert bits_equal(signed, torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, -1.0, math.nan]))


def test_shapes_strides_and_input_untouched() -> None:
    x = torch.randn(6, 5).t()
    before = x.clone()
    got = qtorch.quantize(x, nf4)
    assert torch.equal(x, before)
    assert bits_equal(got.contiguous().view(-1), reference_tensor(x.reshape(-1), nf4))
    assert qtorch.quantize(torch.empty(0, 3), nf4).shape == (0, 3)
    assert qtorch.quantize(torch.tensor(0.3), nf4).item() == PUBLISHED_NF4[11]


# --- stochastic rounding ------------------------------------------------------------------


def _bracket(v: float, entries: list[float]) -> set[float]:
    below = [e for e in entries if e <= v]
    above = [e for e in entries if e >= v]
    lo = below[-1] if below else entries[0]
    hi = above[0] if above else entries[-1]
    return {lo, hi}


@pytest.mark.parametrize("name", ["mirrored", "signed", "nf4", "mirrored_zero", "signed_single"])
def test_stochastic_gives_only_bracketing_entries(name: str) -> None:
    fmt = TABLES[name]
    x = probes(fmt, n_random=200)
    x = x[torch.isfinite(x)]
    got = qtorch.quantize(x.repeat(8), fmt, "stochastic").tolist()
    values = fmt.values().tolist()
    for v, q in zip(x.repeat(8).tolist(), got, strict=True):
        if not fmt.signed and v == 0:
            assert q == 0 and math.copysign(1, q) == math.copysign(1, v)
            continue
        if fmt.signed:
            assert q in _bracket(v, values)
        else:
            magnitudes = [e for e in values if e > 0 or (0.0 in fmt.entries and e == 0)]
            assert abs(q) in _bracket(abs(v), magnitudes)
            assert math.copysign(1, q) == math.copysign(1, v)


def test_stochastic_special_values() -> None:
    x = torch.tensor([INF, -INF, math.nan, 0.0, -0.0, 50.0])
    assert bits_equal(
        qtorch.quantize(x, Codebook([0.5, 1.0]), "stochastic"),
        torch.tensor([1.0, -1.0, math.nan, 0.0, -0.0, 1.0]),
    )
    assert bits_equal(
        qtorch.quantize(x, nf4, "stochastic"), torch.tensor([1.0, -1.0, math.nan, 0.0, 0.0, 1.0])
    )


@pytest.mark.parametrize(
    ("fmt", "v"),
    [(Codebook([0.5, 1.0, 2.0]), -1.3), (nf4, 0.3), (nf4, -0.01), (Codebook([1.0, 3.0]), 2.9)],
)
def test_stochastic_is_unbiased(fmt: Codebook, v: float) -> None:
    n = 40000
    x = torch.full((n,), v, dtype=torch.float64)
    q = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(3))
    lo, hi = sorted(_bracket(abs(v) if not fmt.signed else v, fmt.values().tolist()))
    lo, hi = (math.copysign(lo, v), math.copysign(hi, v)) if not fmt.signed else (lo, hi)
    p = (v - lo) / (hi - lo)  # probability of hi
    sigma = abs(hi - lo) * math.sqrt(p * (1 - p) / n)
    assert abs(q.mean().item() - v) < 5 * sigma


@pytest.mark.parametrize("name", ["nf4", "mirrored", "signed", "tiny_huge", "float64_only"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stochastic_decision_is_the_exact_probability(name: str, dtype: torch.dtype) -> None:
    """Each element's choice against exact arithmetic on its own noise number.

    Oracle: with lo <= |y| < hi the table values around y (in the working dtype) and u the
    element's noise, hi comes out iff u < (y - lo) / (hi - lo) in Fractions. qtorch
    compares in the working dtype, so elements whose u lies within a few units of the
    noise's last place of that fraction may go either way; every other must agree.
    """
    fmt = TABLES[name]
    x = probes(fmt, n_random=400).to(dtype)
    x = x[torch.isfinite(x) & (x != 0)]
    x = torch.cat([x, x * 0.999, x * 1.001])
    g = torch.Generator().manual_seed(21)
    got = qtorch.quantize(x, fmt, "stochastic", generator=g).tolist()
    seed = draw_seed(torch.Generator().manual_seed(21), x.device)
    noise = uniform_from_counter(seed, x.shape, dtype).tolist()
    values = fmt.values().to(dtype).tolist()
    points = values if fmt.signed else [v for v in values if v > 0 or 0.0 in fmt.entries]
    points = sorted(set(points))
    band = Fraction(2) ** (-21 if dtype == torch.float32 else -50)
    undecided = 0
    for v, u, q in zip(x.tolist(), noise, got, strict=True):
        y = v if fmt.signed else abs(v)
        i = min(max(sum(p <= y for p in points) - 1, 0), len(points) - 2)
        lo, hi = points[i], points[i + 1]
        if y <= lo:
            expected = lo
        elif y >= hi:
            expected = hi
        else:
            p = (Fraction(y) - Fraction(lo)) / (Fraction(hi) - Fraction(lo))
            if abs(Fraction(u) - p) <= band:
                undecided += 1
                continue
            expected = hi if Fraction(u) < p else lo
        assert (q if fmt.signed else abs(q)) == expected, (name, v, u, q)
    assert undecided < len(got) / 100


def test_stochastic_is_reproducible() -> None:
    x = torch.randn(1000)
    a = qtorch.quantize(x, nf4, "stochastic", generator=torch.Generator().manual_seed(7))
    b = qtorch.quantize(x, nf4, "stochastic", generator=torch.Generator().manual_seed(7))
    torch.manual_seed(11)
    c = qtorch.quantize(x, nf4, "stochastic")
    torch.manual_seed(11)
    d = qtorch.quantize(x, nf4, "stochastic")
    assert torch.equal(a, b) and torch.equal(c, d)
    assert not torch.equal(a, qtorch.quantize(x, nf4, "nearest"))


# --- codes --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mirrored", "mirrored_zero", "zero_only", "nf4", "signed"])
def test_encode_decode_round_trip(name: str) -> None:
    fmt = TABLES[name]
    values = fmt.values()
    if not fmt.signed:
        values = torch.cat([values, torch.tensor([-0.0], dtype=torch.float64)])
    codes = fmt.encode(values)
    assert codes.dtype == torch.int32
    assert len(set(codes.tolist())) == values.numel()
    assert int(codes.min()) >= 0 and int(codes.max()) < 2**fmt.bits
    assert bits_equal(fmt.decode(codes, dtype=torch.float64), values)
    x = probes(fmt)
    x = x[~torch.isnan(x)]
    assert bits_equal(fmt.decode(fmt.encode(x)), reference_tensor(x, fmt))


def test_code_layout() -> None:
    fmt = Codebook([0.5, 1.0, 2.0])  # magnitudes 0, 0.5, 1, 2 in 2 bits, sign in bit 2
    x = torch.tensor([0.0, 0.5, 1.0, 2.0, -0.0, -0.5, -1.0, -2.0])
    assert fmt.encode(x).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert Codebook([0.0, 1.0, 2.0]).encode(torch.tensor([-2.0])).tolist() == [4 + 2]


def test_encode_and_decode_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        nf4.encode(torch.tensor([math.nan]))
    with pytest.raises(ValueError, match="valid codes"):
        nf4.decode(torch.tensor([16]))
    with pytest.raises(ValueError, match="valid codes"):
        Codebook([0.5, 1.0, 2.0]).decode(torch.tensor([-1]))
    with pytest.raises(ValueError, match="valid codes"):
        Codebook([0.5, 1.0]).decode(torch.tensor([3]))  # magnitude index 3 of 0..2
    with pytest.raises(TypeError):
        nf4.decode(torch.tensor([1.0]))
    with pytest.raises(TypeError):
        nf4.encode(torch.tensor([1]))


# --- the format object ----------------------------------------------------------------------


def test_format_is_a_hashable_value_with_a_constructor_repr() -> None:
    fmt = Codebook((0.5, 1.0), scale=2.0, boundaries="geometric")
    same = Codebook([0.5, 1.0], scale=2, boundaries=Boundary.GEOMETRIC)
    assert fmt == same and hash(fmt) == hash(same)
    assert eval(repr(fmt), {"Codebook": Codebook}) == fmt
    assert eval(
        repr(Codebook([0.0, 1.0], boundaries=[0.5])), {"Codebook": Codebook}
    ).boundaries == (0.5,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.scale = 3.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"entries": []}, ValueError, "1..65536"),
        ({"entries": [0.0] * 65537}, ValueError, "1..65536"),
        ({"entries": [0.5, math.nan]}, ValueError, "finite"),
        ({"entries": [0.5, INF]}, ValueError, "finite"),
        ({"entries": [1.0, 0.5]}, ValueError, "strictly increasing"),
        ({"entries": [0.5, 0.5]}, ValueError, "strictly increasing"),
        ({"entries": [-1.0, 0.5]}, ValueError, ">= 0"),
        ({"entries": "abc"}, TypeError, "sequence"),
        ({"entries": [0.5], "signed": 1}, TypeError, "signed"),
        ({"entries": [0.5], "scale": 0.0}, ValueError, "scale"),
        ({"entries": [0.5], "scale": -2.0}, ValueError, "scale"),
        ({"entries": [0.5], "scale": INF}, ValueError, "scale"),
        ({"entries": [1e300], "scale": 1e-10}, ValueError, "finite in float64"),
        ({"entries": [0.5, 1.0], "boundaries": "middle"}, ValueError, "midpoint"),
        ({"entries": [0.5, 1.0], "boundaries": (0.6, 0.7)}, ValueError, "one threshold"),
        ({"entries": [0.5, 1.0], "boundaries": (1.0,)}, ValueError, r"boundaries\[0\]"),
        ({"entries": [0.5, 1.0], "boundaries": (0.4,)}, ValueError, r"boundaries\[0\]"),
    ],
)
def test_parameters_are_validated(kwargs: dict, error: type, match: str) -> None:
    entries = kwargs.pop("entries")
    with pytest.raises(error, match=match):
        Codebook(entries, **kwargs)


def test_rounding_modes_and_dtypes_are_checked() -> None:
    with pytest.raises(ValueError, match="rounding"):
        qtorch.quantize(torch.ones(2), nf4, "up")
    with pytest.raises(TypeError):
        qtorch.quantize(torch.ones(2, dtype=torch.int32), nf4)


def test_entries_from_a_tensor_and_minus_zero() -> None:
    fmt = Codebook(torch.tensor([-0.0, 1.0]))
    assert fmt.entries == (0.0, 1.0) and math.copysign(1, fmt.entries[0]) == 1


@pytest.mark.parametrize("or_equal", [False, True])
@pytest.mark.parametrize("size", [0, 1, 2, 7, 8, 100])
def test_binary_search_agrees_with_bucketize(size: int, or_equal: bool) -> None:
    """The compiled path's search (binary_search) against the eager one (torch.bucketize)."""
    g = torch.Generator().manual_seed(size)
    table = torch.sort(torch.randint(-20, 20, (size,), generator=g).float() / 4).values
    padded = torch.tensor(padded_for_search(table.tolist()))
    specials = SPECIALS_F32[~torch.isnan(SPECIALS_F32)]  # NaN: any valid count, masked later
    y = torch.cat([table, table, torch.arange(-24, 24) / 4 + 1 / 8, specials, specials]).view(2, -1)
    expected = torch.bucketize(y, table, right=or_equal, out_int32=True)
    assert torch.equal(binary_search(y, padded, or_equal), expected)
    assert torch.equal(count_below(y, padded, size, or_equal), expected)


def _search_tables() -> dict[str, list[float]]:
    """Sorted threshold lists: the two-level lookup's kinds of spacing, and a few small ones."""
    g = torch.Generator().manual_seed(11)
    return {
        "few": [-2.5, -0.25, 0.0, 1 / 3, 7.0],
        "sixteen": [k / 4 - 2 for k in range(16)],
        "grid": [(k + 0.5) / 16 for k in range(255)],
        "signed_grid": [(k - 127.5) / 32 for k in range(255)],
        "log": sorted(2.0 ** (k / 8) for k in range(-120, 120)),
        "random": sorted(set((torch.randn(300, generator=g) * 100).tolist())),
        "zero_and_tiny": [0.0, 2.0**-149, 1e-40, *[(k + 1) / 7 for k in range(60)]],
        "infinite_ends": [-INF, *[k / 3 for k in range(-40, 40)], INF],
        # dense among values far apart: the two-level lookup gives up, binary search
        "clustered": [*(1.0 + k * 2.0**-23 for k in range(200)), *(2.0**k for k in range(9, 99))],
    }


SEARCH_TABLES = _search_tables()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("name", sorted(SEARCH_TABLES))
def test_prepared_search_agrees_with_bucketize(name: str, signed: bool, dtype: torch.dtype) -> None:
    """The compiled path's counts and lookups (search_count, search_lookup), run eagerly here,
    against torch.bucketize and an indexed table, on thresholds, both their float
    neighbours, ±0, specials and random values."""
    values = torch.tensor(SEARCH_TABLES[name], dtype=torch.float64).to(dtype)
    if not signed:
        values = values.abs()
    values = torch.unique(values)  # sorted, distinct in dtype
    finite = values[torch.isfinite(values)]
    g = torch.Generator().manual_seed(len(values))
    y = torch.cat(
        [
            values,
            torch.nextafter(finite, torch.tensor(INF, dtype=dtype)),
            torch.nextafter(finite, torch.tensor(-INF, dtype=dtype)),
            torch.randn(3000, generator=g, dtype=dtype) * float(finite.abs().max()),
            SPECIALS_F32[~torch.isnan(SPECIALS_F32)].to(dtype),
            torch.tensor([0.0, -0.0, 5e-324, 1e-300, 1e300], dtype=torch.float64).to(dtype),
        ]
    )
    y = torch.cat([y, -y]) if signed else y.abs()
    entries = [float(k) * 3 - 100 for k in range(len(values) + 1)]
    for or_equal in (False, True):
        expected = torch.bucketize(y, values, right=or_equal, out_int32=True)
        search = prepare_search(values.tolist(), dtype, y.device, or_equal, signed)
        if name == "clustered":
            assert not (search.values or search.buckets)  # too dense: binary search instead
            continue
        assert search.buckets > 0  # a count: always the two-level lookup when it fits
        assert torch.equal(search_count(y, search), expected)
    search = prepare_search(values.tolist(), dtype, y.device, False, signed, entries)
    expected = torch.bucketize(y, values, out_int32=True)
    if name != "clustered":
        assert bool(search.values) == (len(values) <= 16)  # small: unrolled, else buckets
        lookup = search_lookup(y, search)
        assert torch.equal(lookup, torch.tensor(entries, dtype=dtype)[expected.long()])
        if search.values:
            assert torch.equal(search_count(y, search), expected)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("name", sorted(SEARCH_TABLES))
def test_prepared_bracket_chooses_like_the_count(
    name: str, signed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compiled path's bracket (constants or buckets), run eagerly here, against the
    bracket from the count: the same stochastic choice for every y (their pairs may differ
    beyond the ends, where both give the end point)."""
    values = torch.tensor(SEARCH_TABLES[name], dtype=torch.float64).float()
    values = torch.unique(values if signed else values.abs())
    values = values[torch.isfinite(values)]
    points = values.tolist()
    padded = torch.tensor(padded_for_search(points))
    g = torch.Generator().manual_seed(len(points))
    y = torch.cat(
        [
            values,
            torch.nextafter(values, torch.tensor(INF)),
            torch.nextafter(values, torch.tensor(-INF)),
            torch.randn(3000, generator=g) * float(values.abs().max()) * 1.2,
            SPECIALS_F32[~torch.isnan(SPECIALS_F32)],
            torch.tensor([0.0, 2.0**-149, 1e-30, 3e38]),
        ]
    )
    y = torch.cat([y, -y]) if signed else y.abs()
    noise = torch.rand(y.shape, generator=g)
    noise[::5] = 0.0
    noise[1::5] = 1.0 - 2.0**-24
    n = len(points)
    expected = choose_stochastic(y, *bracket(y, padded, n), noise, halves=False)
    prepared = prepare_bracket(points, torch.float32, y.device, signed=signed)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    got = choose_stochastic(y, *bracket(y, padded, n, prepared), noise, halves=False)
    assert bits_equal(got, expected), name


def test_table_of_65536_entries() -> None:
    entries = [k / 256 for k in range(65536)]  # 0 .. 256 - 1/256, ties at odd multiples of 1/512
    fmt = Codebook(entries)
    g = torch.Generator().manual_seed(2)
    x = torch.cat([torch.rand(3000, generator=g) * 600 - 300, torch.arange(-20, 20) / 512])
    got = qtorch.quantize(x, fmt)
    # reference for this uniform grid: round |x|*256 to nearest, ties down, saturate at 65535
    expected = []
    for v in x.tolist():
        k = Fraction(abs(v)) * 256
        n = math.floor(k)
        n = n if k - n <= Fraction(1, 2) else n + 1
        expected.append(math.copysign(min(n, 65535) / 256, v))
    assert bits_equal(got, torch.tensor(expected))
    assert fmt.bits == 17
    codes = fmt.encode(x)
    assert bits_equal(fmt.decode(codes), got)


_G3 = torch.Generator().manual_seed(3)
COMPILED_TABLES = {
    "nf4": nf4,
    "scaled": Codebook([0.5, 1.0, 2.0], scale=3.0),
    "scaled_nf4": dataclasses.replace(nf4, scale=1 / 0.37),
    "mirrored16": Codebook([0.0] + [2.0 ** (k / 2 - 4) for k in range(15)]),
    "mirrored256": Codebook([k / 16 for k in range(256)]),
    "signed256": Codebook(sorted(set((torch.randn(256, generator=_G3) * 2).tolist())), signed=True),
    "geometric64": Codebook([2.0 ** (k / 4) for k in range(-32, 32)], boundaries="geometric"),
    "clustered": Codebook([*(1.0 + k * 2.0**-20 for k in range(100)), 2.0**100]),  # binary search
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", sorted(COMPILED_TABLES))
def test_compiled_matches_eager(name: str, rounding: str, dtype: torch.dtype) -> None:
    fmt = COMPILED_TABLES[name]
    x = torch.cat([probes(fmt, n_random=3000), torch.randn(10000) * float(fmt.max)]).to(dtype)
    if dtype == torch.float64:  # the float64 neighbours of entries and midpoints too
        vals = fmt.values()
        mids = vals[1:] / 2 + vals[:-1] / 2
        for v in (vals, mids):
            x = torch.cat([x, v, torch.nextafter(v, v + 1), torch.nextafter(v, v - 1)])
    eager = qtorch.quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(1))
    with qtorch.kernel_mode("compiled"):
        compiled = qtorch.quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(1))
    assert bits_equal(compiled, eager)
    if rounding == "nearest" and dtype == torch.float32:
        assert bits_equal(eager, reference_tensor(x, fmt))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nf4", "mirrored", "geometric", "thresholds", "scaled_nf4"])
def test_every_bfloat16_and_float16_input(name: str) -> None:
    """Exhaustive: all 2 x 65,536 bit patterns of bfloat16 and float16, widened to float32."""
    fmt = TABLES[name]
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    for dtype in (torch.bfloat16, torch.float16):
        x = patterns.view(dtype).float()
        assert bits_equal(qtorch.quantize(x, fmt), reference_tensor(x, fmt))


@pytest.mark.parametrize("int_loads_copy", [False, True], ids=["packed", "two tables"])
def test_both_compiled_brackets_give_the_eager_bits(
    int_loads_copy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled stochastic rounding to a bucketed table reads the points around x from
    one gather of int64 pairs, or on AVX2 (whose integer vector loads go through a stack
    copy) from two float32 tables; each form, whatever this CPU's, against the eager
    kernel."""
    import warnings

    from qtorch.cli.bench import family_format
    from qtorch.formats import codebook as formats_codebook
    from qtorch.kernels import codebook as kernels_codebook

    fmt = family_format("codebook256")
    assert isinstance(fmt, Codebook)
    tables = formats_codebook._tables(_fields(fmt), torch.float32, torch.device("cpu"))
    assert tables.bracket.outer is not None and tables.bracket.pair is not None
    monkeypatch.setattr(kernels_codebook, "int_loads_copy", lambda: int_loads_copy)
    inside = torch.linspace(-9.0, 9.0, 4001)
    x = torch.cat([SPECIALS_F32, random_float32(2000, seed=8), inside, neighbours_f32(inside)])
    noise = uniform_from_counter(torch.tensor(11), x.shape)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # raised inside Inductor
        compiled = torch.compile(lambda a, n: fmt.quantize_kernel(a, Rounding.STOCHASTIC, n))
        got = compiled(x, noise)
    assert bits_equal(got, fmt.quantize_kernel(x, Rounding.STOCHASTIC, noise))
