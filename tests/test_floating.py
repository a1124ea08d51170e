"""FloatingPoint against torch casts, numpy and an exact reference written with fractions."""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import math
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, neighbours_f32, random_float32

import qtorch
from qtorch import FloatingPoint, Rounding
from qtorch.kernel_mode import kernel_mode

INF, NAN = math.inf, math.nan
DETERMINISTIC = [m for m in Rounding if m is not Rounding.STOCHASTIC]


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    """Check the eager reference kernels (the fused-path tests compare compiled to eager)."""
    with kernel_mode("eager"):
        yield


def quantize(x: torch.Tensor, fmt: FloatingPoint, mode: Rounding | str = "nearest") -> torch.Tensor:
    return qtorch.quantize(x, fmt, mode)


# -- the exact reference ------------------------------------------------------------------------


def _code_value(c: int, exp: int, man: int) -> Fraction:
    """Value of a non-negative code by the IEEE formula, ignoring special codes."""
    bias = 2 ** (exp - 1) - 1
    field, fraction = c >> man, c % 2**man
    significand = fraction if field == 0 else 2**man + fraction  # times 2**(man - ...)
    power = max(field, 1) - bias - man
    return Fraction(significand * 2**power) if power >= 0 else Fraction(significand, 2**-power)


@functools.cache
def exact_table(fmt: FloatingPoint) -> tuple[list[float], list[int]]:
    """Positive finite values (zero included) and their codes, ascending, from the layout.

    Values are exact float64 numbers (significand times a power of two, at most 24 bits).
    """
    exp, man = fmt.exp, fmt.man
    top = 2**exp - 1
    c = np.arange(2 ** (exp + man))
    field, fraction = c >> man, c % 2**man
    keep = np.ones(len(c), dtype=bool)
    if fmt.has_inf:
        keep &= field != top
    elif fmt.has_nan:
        keep &= (field != top) | (fraction != 2**man - 1)
    if not fmt.subnormals:
        keep &= (field != 0) | (fraction == 0)
    return layout_values(c, exp, man)[keep].tolist(), c[keep].tolist()


def layout_values(codes: np.ndarray, exp: int, man: int) -> np.ndarray:
    """Values of non-negative codes by the IEEE formula (exact float64), ignoring specials."""
    bias = 2 ** (exp - 1) - 1
    field, fraction = codes >> man, codes % 2**man
    significand = np.where(field == 0, fraction, 2**man + fraction).astype(np.float64)
    return np.ldexp(significand, np.maximum(field, 1) - bias - man)


def _choose_up(a: Fraction, lo: Fraction, hi: Fraction, lo_odd: bool, mode: Rounding, neg: bool):
    if mode is Rounding.NEAREST:
        return a - lo > hi - a or (a - lo == hi - a and lo_odd)
    if mode is Rounding.TOWARD_ZERO:
        return False
    if mode is Rounding.DOWN:
        return neg
    return not neg  # UP


def reference(v: float, fmt: FloatingPoint, mode: Rounding) -> float:
    """Round v to fmt exactly: neighbours from the code table, IEEE overflow rules."""
    if math.isnan(v):
        return NAN
    neg = math.copysign(1.0, v) < 0
    values, codes = exact_table(fmt)
    top = values[-1]
    if math.isinf(v):
        if fmt.has_inf:
            return v
        return NAN if fmt.has_nan and not fmt.saturate else math.copysign(float(top), v)
    a = Fraction(abs(v))
    min_normal = Fraction(2) ** (2 - 2 ** (fmt.exp - 1))
    if not fmt.subnormals and 0 < a < min_normal:
        # unbounded exponent range below min_normal, then flush what stays below it
        e = math.frexp(abs(v))[1] - 1
        q = Fraction(2) ** (e - fmt.man)
        k = math.floor(a / q)
        odd = (k % 2 == 1) if fmt.man > 0 else (e + 2 ** (fmt.exp - 1) - 1) % 2 == 1
        if k * q != a and _choose_up(a, k * q, (k + 1) * q, odd, mode, neg):
            k += 1
        r = k * q
        return math.copysign(float(r) if r >= min_normal else 0.0, v)
    i = bisect.bisect_right(values, a) - 1
    lo, lo_code = Fraction(values[i]), codes[i]
    if lo == a:
        return math.copysign(float(a), v)
    if i + 1 < len(values):
        hi, overflow = Fraction(values[i + 1]), False
    else:
        hi, overflow = _code_value(lo_code + 1, fmt.exp, fmt.man), True
    if not _choose_up(a, lo, hi, lo_code % 2 == 1, mode, neg):
        return math.copysign(float(lo), v)
    if not overflow:
        return math.copysign(float(hi), v)
    if fmt.saturate or not (fmt.has_inf or fmt.has_nan):
        return math.copysign(float(top), v)
    return math.copysign(INF, v) if fmt.has_inf else NAN


def reference_tensor(x: torch.Tensor, fmt: FloatingPoint, mode: Rounding) -> torch.Tensor:
    out = [reference(v, fmt, mode) for v in x.tolist()]
    return torch.tensor(out, dtype=x.dtype)


def boundary_inputs(fmt: FloatingPoint, dtype: torch.dtype, limit: int = 1000) -> torch.Tensor:
    """Every value, every midpoint of neighbours (and beyond max), ± one ulp of dtype; extremes.

    Formats of more than 8 bits get a sample of ``limit`` of them (plus the extremes).
    """
    values, codes = exact_table(fmt)
    beyond = _code_value(codes[-1] + 1, fmt.exp, fmt.man)
    points = [*map(Fraction, values), beyond, 2 * beyond]
    mids = [(a + b) / 2 for a, b in itertools.pairwise(points)]
    below = Fraction(2) ** (2 - 2 ** (fmt.exp - 1) - fmt.man)  # under the smallest quantum
    extra = [below / 2, below / 3, below * Fraction(3, 4), 3 * beyond, 2.0**100, 2.0**-130]
    mags = torch.tensor([float(p) for p in points + mids + extra], dtype=torch.float64)
    mags = mags[mags <= torch.finfo(dtype).max].to(dtype)
    up = torch.nextafter(mags, torch.full_like(mags, INF))
    down = torch.nextafter(mags, torch.full_like(mags, -INF))
    m = torch.cat([mags, up, down])
    m = torch.cat([m, -m])
    if len(m) > limit:  # keep the top and bottom of the range, sample the rest
        g = torch.Generator().manual_seed(len(m))
        ends = (m.abs() >= values[-1] / 4) | (m.abs() <= 8 * values[1])
        m = torch.cat([m[ends], m[torch.randperm(len(m), generator=g)[:limit]]])
    specials = SPECIALS_F32.to(dtype)
    return torch.cat([m, specials, torch.tensor([torch.finfo(dtype).max], dtype=dtype)])


REFERENCE_FORMATS = [
    FloatingPoint(5, 2),
    FloatingPoint(4, 3),
    FloatingPoint(4, 3, has_inf=False),
    FloatingPoint(3, 2, has_inf=False, has_nan=False),
    FloatingPoint(2, 1, has_inf=False, has_nan=False),
    FloatingPoint(1, 3),
    FloatingPoint(1, 2, has_inf=False, has_nan=False),
    FloatingPoint(1, 1, has_inf=False),
    FloatingPoint(3, 0),
    FloatingPoint(4, 0, has_inf=False),
    FloatingPoint(2, 0, has_inf=False, has_nan=False),
    FloatingPoint(4, 3, subnormals=False),
    FloatingPoint(3, 2, subnormals=False, has_inf=False, has_nan=False),
    FloatingPoint(2, 0, subnormals=False, has_inf=False, has_nan=False),
    FloatingPoint(1, 2, subnormals=False, has_inf=False),
    FloatingPoint(8, 2),
    FloatingPoint(8, 0, has_inf=False),
    FloatingPoint(8, 1, has_inf=False, has_nan=False),
    FloatingPoint(7, 1, subnormals=False),
]


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("mode", DETERMINISTIC, ids=lambda m: m.value)
@pytest.mark.parametrize("fmt", REFERENCE_FORMATS, ids=repr)
def test_deterministic_modes_match_exact_reference(
    fmt: FloatingPoint, mode: Rounding, saturate: bool
) -> None:
    fmt = dataclasses.replace(fmt, saturate=saturate)
    # float64 holds every format; float32 only those whose range fits it (see the next test)
    wide = fmt.max > torch.finfo(torch.float32).max
    dtypes = [torch.float64] if wide else [torch.float32, torch.float64]
    for dtype in dtypes:
        x = boundary_inputs(fmt, dtype)
        got = quantize(x, fmt, mode)
        expected = reference_tensor(x, fmt, mode)
        assert bits_equal(got, expected), [
            (a, g, e)
            for a, g, e in zip(x.tolist(), got.tolist(), expected.tolist(), strict=True)
            if not bits_equal(torch.tensor([g]), torch.tensor([e]))
        ][:5]


@pytest.mark.parametrize("mode", DETERMINISTIC, ids=lambda m: m.value)
def test_random_float32_match_exact_reference(mode: Rounding) -> None:
    x = random_float32(3000, seed=3)
    for fmt in (FloatingPoint(5, 10, saturate=False), FloatingPoint(8, 7), FloatingPoint(6, 4)):
        assert bits_equal(quantize(x, fmt, mode), reference_tensor(x, fmt, mode))


def test_range_wider_than_float32_is_clamped_to_float32() -> None:
    fmt = FloatingPoint(8, 2, has_inf=False)  # max 1.5 * 2**128
    big = torch.tensor([3.4028234663852886e38, -3.0e38, INF], dtype=torch.float32)
    largest = math.ldexp(1.75, 127)  # the largest value of the format that float32 holds
    assert quantize(big, fmt).tolist() == [largest, -largest, largest]  # Inf saturates too
    unsat = quantize(big, dataclasses.replace(fmt, saturate=False))
    assert unsat[1].item() == -largest
    assert torch.isnan(unsat[[0, 2]]).all()  # 2**128 is beyond float32: the overflow value
    assert quantize(big.double(), fmt).tolist()[:2] == [2.0**128, -largest]


# -- float16 and bfloat16 against torch casts ----------------------------------------------


def _every_code(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype).float()


def _midpoints(dtype: torch.dtype) -> torch.Tensor:
    """Midpoints of neighbouring finite values of dtype (and max / beyond), ± one float32 ulp."""
    v = _every_code(dtype).double()
    v = torch.unique(v[torch.isfinite(v) & (v >= 0)])
    top = v[-1:]
    beyond = top + (top - v[-2:-1])
    v = torch.cat([v, beyond, 2 * beyond])
    mids = ((v[1:] + v[:-1]) / 2).float()
    m = neighbours_f32(mids)
    return torch.cat([m, -m])


def _saturated(oracle: torch.Tensor, x: torch.Tensor, max_value: float) -> torch.Tensor:
    """The oracle with finite-input overflow clamped to ±max."""
    overflow = torch.isinf(oracle) & torch.isfinite(x)
    return torch.where(overflow, torch.copysign(torch.full_like(x, max_value), x), oracle)


CASTS = [
    pytest.param(FloatingPoint(5, 10), torch.float16, id="float16"),
    pytest.param(FloatingPoint(8, 7), torch.bfloat16, id="bfloat16"),
]


@pytest.mark.parametrize(("fmt", "dtype"), CASTS)
@pytest.mark.parametrize("inputs", ["codes", "midpoints", "random"])
def test_nearest_matches_torch_cast(fmt: FloatingPoint, dtype: torch.dtype, inputs: str) -> None:
    if inputs == "codes":
        x = _every_code(dtype)
    elif inputs == "midpoints":
        x = _midpoints(dtype)
    else:
        x = torch.cat([random_float32(100_000, seed=11), SPECIALS_F32])
    oracle = x.to(dtype).float()
    unsat = dataclasses.replace(fmt, saturate=False)
    assert bits_equal(quantize(x, unsat), oracle)
    assert bits_equal(quantize(x, fmt), _saturated(oracle, x, fmt.max))


def test_float16_ties_and_overflow_boundary() -> None:
    x = torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 65519.99, 65520.0, -65520.0, 2**-25, 2**-24])
    expected = [1.0, 1 + 2**-9, 65504.0, INF, -INF, 0.0, 2**-24]
    assert quantize(x, FloatingPoint(5, 10, saturate=False)).tolist() == expected


def test_float64_float16_is_single_rounding() -> None:
    # torch's float64 -> float16 / bfloat16 casts round twice (through float32) on CPU; numpy's
    # float16 cast rounds once, and the fractions reference does for both.
    tiny = 2.0**-40
    x = torch.tensor([1 + 2**-11 + tiny, 1 + 2**-11 - tiny, 1 + 2**-8 + tiny], dtype=torch.float64)
    assert quantize(x, FloatingPoint(5, 10)).tolist() == [1 + 2**-10, 1.0, 1 + 2**-8]
    assert quantize(x, FloatingPoint(8, 7)).tolist() == [1.0, 1.0, 1 + 2**-7]
    assert x.half().double().tolist()[0] == 1.0  # the double rounding this test guards against


@pytest.mark.parametrize(("fmt", "dtype"), CASTS)
def test_float64_inputs_round_once(fmt: FloatingPoint, dtype: torch.dtype) -> None:
    mids = _midpoints(dtype).double()
    near = torch.cat(
        [
            torch.nextafter(mids, torch.full_like(mids, INF)),
            torch.nextafter(mids, torch.full_like(mids, -INF)),
        ]
    )
    g = torch.Generator().manual_seed(5)
    bits = torch.randint(-(2**63), 2**63 - 1, (20_000,), generator=g, dtype=torch.int64)
    x = torch.cat([mids, near, bits.view(torch.float64), SPECIALS_F32.double()])
    unsat = dataclasses.replace(fmt, saturate=False)
    got = quantize(x, unsat)
    if dtype == torch.float16:
        with np.errstate(over="ignore"):
            oracle = torch.from_numpy(x.numpy().astype(np.float16).astype(np.float64))
        assert bits_equal(got, oracle)
        sample = torch.cat(
            [near[torch.randperm(len(near))[:1000]], bits[:1000].view(torch.float64)]
        )
    else:  # no single-rounding float64 -> bfloat16 cast exists: the exact reference
        sample = torch.cat(
            [near[torch.randperm(len(near))[:3000]], bits[:2000].view(torch.float64)]
        )
    assert bits_equal(quantize(sample, unsat), reference_tensor(sample, unsat, Rounding.NEAREST))
    # where float32 holds x exactly, the torch cast is an oracle too
    exact32 = x[x.float().double() == x]
    assert bits_equal(quantize(exact32, unsat), exact32.to(dtype).double())


def test_float32_format_on_float64_is_the_float32_cast() -> None:
    g = torch.Generator().manual_seed(6)
    bits = torch.randint(-(2**63), 2**63 - 1, (100_000,), generator=g, dtype=torch.int64)
    x = torch.cat([bits.view(torch.float64), SPECIALS_F32.double()])
    fmt = FloatingPoint(8, 23, saturate=False)
    assert bits_equal(quantize(x, fmt), x.float().double())
    saturating = quantize(x, FloatingPoint(8, 23))
    assert bits_equal(saturating, _saturated(x.float().double(), x, fmt.max))


def test_float32_format_on_float32_is_identity() -> None:
    x = torch.cat([random_float32(100_000, seed=8), SPECIALS_F32])
    for fmt in (FloatingPoint(8, 23), FloatingPoint(8, 23, saturate=False)):
        assert bits_equal(quantize(x, fmt), x)


@pytest.mark.parametrize(("fmt", "dtype"), CASTS)
def test_half_inputs_come_back_in_their_dtype(fmt: FloatingPoint, dtype: torch.dtype) -> None:
    x = _every_code(dtype).to(dtype)
    same = quantize(x, fmt)
    assert same.dtype == dtype
    assert torch.equal(same.view(torch.int16), x.view(torch.int16))
    e5m2 = FloatingPoint(5, 2)
    narrow = quantize(x, e5m2)
    assert narrow.dtype == dtype
    assert bits_equal(narrow.float(), quantize(x.float(), e5m2).to(dtype).float())


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "dtype"), CASTS)
def test_float32_sweep_matches_torch_cast(fmt: FloatingPoint, dtype: torch.dtype) -> None:
    """Every float32 of the binades where rounding changes character, a stride elsewhere."""
    unsat = dataclasses.replace(fmt, saturate=False)
    every = torch.arange(2**23, dtype=torch.int64)
    stride = torch.arange(0, 2**23, 127, dtype=torch.int64)  # odd stride: all low-bit patterns
    lowest, normal, top = fmt.emin - fmt.man + 127, fmt.emin + 127, fmt.emax + 127
    dense = {lowest - 2, lowest - 1, normal - 1, normal, 127, top, top + 1} & set(range(256))
    for sign in (0, 1):
        for field in range(256):
            fraction = every if field in dense else stride
            bits = (sign << 31) | (field << 23) | fraction
            x = bits.to(torch.int32).view(torch.float32)
            assert bits_equal(quantize(x, unsat), x.to(dtype).float()), (sign, field)


# -- special values and shapes ----------------------------------------------------------------

LAYOUTS = [
    FloatingPoint(5, 2),
    FloatingPoint(4, 3, has_inf=False),
    FloatingPoint(2, 1, has_inf=False, has_nan=False),
]


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("mode", list(Rounding), ids=lambda m: m.value)
@pytest.mark.parametrize("fmt", LAYOUTS, ids=repr)
def test_specials(fmt: FloatingPoint, mode: Rounding, saturate: bool) -> None:
    fmt = dataclasses.replace(fmt, saturate=saturate)
    x = torch.tensor([NAN, -NAN, INF, -INF, 0.0, -0.0, -1e-30, 1e-30])
    got = quantize(x, fmt, mode)
    assert torch.isnan(got[:2]).all()
    if fmt.has_inf:
        assert got[2:4].tolist() == [INF, -INF]
    elif fmt.has_nan and not saturate:
        assert torch.isnan(got[2:4]).all()
    else:
        assert got[2:4].tolist() == [fmt.max, -fmt.max]
    zeros = got[4:] if mode not in (Rounding.DOWN, Rounding.UP, Rounding.STOCHASTIC) else got[4:6]
    assert torch.equal(torch.signbit(zeros), torch.signbit(x[4 : 4 + len(zeros)]))
    assert (zeros == 0).all()


def test_flush_to_zero_decides_after_rounding() -> None:
    fmt = FloatingPoint(5, 10, subnormals=False)
    n = fmt.min_normal  # 2**-14
    x = torch.tensor([n * (1 - 2**-12), n * (1 - 2**-11), -n * (1 - 2**-12), n / 2, -(2.0**-20)])
    # the first rounds (with 10 fraction bits, unbounded exponent) up to min_normal: kept
    assert quantize(x, fmt).tolist() == [n, 0.0, -n, 0.0, -0.0]
    assert torch.signbit(quantize(x, fmt)[-1])
    assert quantize(x[3:4], fmt, "up").tolist() == [0.0]  # flushed whatever the direction
    assert quantize(x[1:2], FloatingPoint(5, 10), "nearest").tolist() == [n]  # with subnormals


def test_directed_overflow_follows_ieee() -> None:
    fmt = FloatingPoint(5, 2, saturate=False)
    x = torch.tensor([1e6, -1e6, 60000.0, -60000.0])
    m = fmt.max
    assert quantize(x, fmt, "toward_zero").tolist() == [m, -m, m, -m]
    assert quantize(x, fmt, "down").tolist() == [m, -INF, m, -INF]
    assert quantize(x, fmt, "up").tolist() == [INF, -m, INF, -m]
    assert quantize(x, fmt, "nearest").tolist() == [INF, -INF, m, -m]
    saturating = dataclasses.replace(fmt, saturate=True)
    for mode in Rounding:
        assert quantize(x, saturating, mode).tolist() == [m, -m, m, -m]


def test_shapes_strides_and_input_untouched() -> None:
    fmt = FloatingPoint(4, 3)
    base = torch.randn(6, 8, dtype=torch.float64).float() * 30
    x = base.t()  # non-contiguous
    before = x.clone()
    got = quantize(x, fmt)
    assert torch.equal(x, before)
    assert got.shape == x.shape
    assert bits_equal(got.contiguous().flatten(), quantize(x.contiguous().flatten(), fmt))
    assert quantize(torch.tensor(3.3), fmt).shape == ()
    assert quantize(torch.tensor(3.3), fmt).item() == 3.25
    assert quantize(torch.empty(0, 3), fmt).shape == (0, 3)


# -- stochastic rounding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt", [FloatingPoint(4, 3), FloatingPoint(5, 2, saturate=False), FloatingPoint(3, 0)], ids=repr
)
def test_stochastic_picks_a_neighbour_and_is_unbiased(fmt: FloatingPoint) -> None:
    g = torch.Generator().manual_seed(7)
    values = exact_table(fmt)[0]
    top = float(values[-1])
    x = torch.cat(
        [
            (torch.rand(40, generator=g) * 2 - 1) * top,  # in range
            torch.rand(10, generator=g) * float(values[3]),  # subnormal / tiny
            torch.tensor([float(values[5]), top * 1.01, -top * 1.01]),
        ]
    )
    draws = 4000
    got = quantize(x.expand(draws, -1), fmt, "stochastic")
    lo = reference_tensor(x, fmt, Rounding.DOWN)
    hi = reference_tensor(x, fmt, Rounding.UP)
    assert ((got == lo) | (got == hi)).all()
    between = torch.isfinite(hi) & torch.isfinite(lo) & (lo != hi)
    assert between.sum() >= 45
    gap = (hi - lo).double()[between]
    p = (x.double()[between] - lo.double()[between]) / gap
    mean = got.double()[:, between].mean(0)
    sigma = gap * torch.sqrt(p * (1 - p) / draws)
    tolerance = 6 * sigma + gap * 2.0**-23  # float32 noise resolves p to 2**-24
    assert ((mean - x.double()[between]).abs() <= tolerance).all()
    # really random: both neighbours show up wherever each has probability >= 1 %
    likely = (p > 0.01) & (p < 0.99)
    assert ((got[:, between] == hi[between]).any(0) | ~likely).all()
    assert ((got[:, between] == lo[between]).any(0) | ~likely).all()


@pytest.mark.parametrize(
    "fmt",
    [
        FloatingPoint(4, 3, subnormals=False),
        FloatingPoint(5, 2, subnormals=False, has_inf=False, has_nan=False),
    ],
    ids=repr,
)
def test_stochastic_without_subnormals_flushes(fmt: FloatingPoint) -> None:
    # tininess after rounding: a value rounded below 2**emin becomes a signed zero
    emin = exact_table(fmt)[0][1]  # the smallest positive value, 2**emin
    g = torch.Generator().manual_seed(8)
    x = torch.cat([torch.rand(300, generator=g) * 2 * emin, -torch.rand(300, generator=g) * emin])
    got = quantize(x.expand(200, -1), fmt, "stochastic")
    lo, hi = (reference_tensor(x, fmt, mode) for mode in (Rounding.DOWN, Rounding.UP))
    assert ((got == lo) | (got == hi)).all()
    assert ((got == 0) | (got.abs() >= emin)).all()
    assert (got == 0).any() and (got.abs() == emin).any()
    assert torch.equal(torch.signbit(got), torch.signbit(x).expand_as(got))


def test_stochastic_is_reproducible() -> None:
    x = torch.randn(1000) * 10
    fmt = FloatingPoint(4, 3)
    torch.manual_seed(123)
    a = quantize(x, fmt, "stochastic")
    torch.manual_seed(123)
    b = quantize(x, fmt, "stochastic")
    torch.manual_seed(124)
    c = quantize(x, fmt, "stochastic")
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (9, 9, 10))
    d, e, f = (qtorch.quantize(x, fmt, "stochastic", generator=g) for g in (g1, g2, g3))
    assert torch.equal(d, e) and not torch.equal(d, f)


# -- values, encode, decode -----------------------------------------------------------------

SMALL_FORMATS = [
    *REFERENCE_FORMATS[:15],
    FloatingPoint(1, 1),
    FloatingPoint(1, 0, has_inf=False, has_nan=False),
    FloatingPoint(1, 14, has_inf=False),
    FloatingPoint(5, 10),
    FloatingPoint(8, 7, subnormals=False),
    FloatingPoint(8, 0),
    FloatingPoint(6, 9, has_inf=False, has_nan=False),
]


def fraction_values(fmt: FloatingPoint) -> list[Fraction]:
    """Every finite value of the format, sorted, enumerated code by code with fractions."""
    top_field, ones = 2**fmt.exp - 1, 2**fmt.man - 1
    found = set()
    for c in range(2 ** (fmt.exp + fmt.man)):
        field, fraction = c >> fmt.man, c & ones
        if field == top_field and (fmt.has_inf or (fmt.has_nan and fraction == ones)):
            continue  # Inf / NaN codes
        if field == 0 and fraction and not fmt.subnormals:
            continue
        found |= {_code_value(c, fmt.exp, fmt.man), -_code_value(c, fmt.exp, fmt.man)}
    return sorted(found)


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=repr)
def test_values_and_properties_match_exact_enumeration(fmt: FloatingPoint) -> None:
    if fmt.bits <= 12:
        expected = fraction_values(fmt)
    else:  # the same layout formula on numpy float64 (exact), 20 times faster
        table = exact_table(fmt)[0]
        expected = sorted({*table, *(-v for v in table)})
    positive = [v for v in expected if v >= 0]
    assert fmt.values().dtype == torch.float64
    assert fmt.values().tolist() == [float(v) for v in expected]
    assert fmt.max == float(positive[-1])
    assert fmt.min_positive == float(positive[1])
    assert fmt.bits == 1 + fmt.exp + fmt.man
    assert fmt.bias == 2 ** (fmt.exp - 1) - 1
    assert fmt.min_normal == 2.0**fmt.emin
    assert fmt.emax == math.floor(math.log2(fmt.max))
    above_one = [v for v in positive if v > 1]
    if 1 in positive and above_one:
        assert fmt.eps == float(above_one[0] - 1)


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=repr)
def test_every_code_round_trips(fmt: FloatingPoint) -> None:
    codes = torch.arange(2**fmt.bits)
    x = fmt.decode(codes, torch.float64)
    magnitudes = layout_values(np.arange(2 ** (fmt.bits - 1)), fmt.exp, fmt.man)
    finite = torch.isfinite(x)
    subnormal_code = ((codes % 2 ** (fmt.bits - 1)) >> fmt.man == 0) & (codes % 2**fmt.man != 0)
    canonical = finite & ~(subnormal_code & (not fmt.subnormals))
    exp_tensor = torch.from_numpy(np.concatenate([magnitudes, -magnitudes]))
    assert bits_equal(x[canonical], exp_tensor[canonical])
    assert (x[subnormal_code & ~canonical & finite] == 0).all()
    encoded = fmt.encode(x)
    assert encoded.dtype == torch.int32
    assert torch.equal(encoded[canonical], codes[canonical].to(torch.int32))
    back = fmt.decode(encoded[~finite], torch.float64)
    assert bits_equal(back, x[~finite])  # ±Inf codes exact; NaN codes give NaN


def test_encode_canonical_nan_and_errors() -> None:
    e5m2 = FloatingPoint(5, 2)
    nan_in = torch.tensor([NAN, -NAN])
    assert e5m2.encode(nan_in).tolist() == [0x7E, 0xFE]
    assert FloatingPoint(4, 3, has_inf=False).encode(nan_in).tolist() == [0x7F, 0xFF]
    assert FloatingPoint(8, 23).encode(torch.tensor([-1.0])).dtype == torch.int64
    for no_nan in (FloatingPoint(2, 1, has_inf=False, has_nan=False), FloatingPoint(5, 0)):
        with pytest.raises(ValueError, match="no NaN code"):
            no_nan.encode(torch.tensor([1.0, NAN]))
    with pytest.raises(ValueError, match=r"codes must be in 0\.\.255"):
        e5m2.decode(torch.tensor([256]))
    with pytest.raises(TypeError):
        e5m2.decode(torch.tensor([1.0]))
    with pytest.raises(TypeError):
        e5m2.encode(torch.tensor([1]))
    with pytest.raises(ValueError, match="at most 16 bits"):
        FloatingPoint(8, 10).values()
    # formats without Inf: ±Inf saturates to the max code, or is NaN without saturation
    e4m3fn = FloatingPoint(4, 3, has_inf=False)
    assert e4m3fn.encode(torch.tensor([INF, -INF])).tolist() == [0x7E, 0xFE]
    unsat = FloatingPoint(4, 3, has_inf=False, saturate=False)
    assert unsat.encode(torch.tensor([INF, -INF])).tolist() == [0x7F, 0xFF]


# -- parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exp": 0, "man": 3}, "exp must be in 1..8, got 0"),
        ({"exp": 9, "man": 3}, "exp must be in 1..8, got 9"),
        ({"exp": 5, "man": -1}, "man must be in 0..23, got -1"),
        ({"exp": 5, "man": 24}, "man must be in 0..23, got 24"),
        ({"exp": 5, "man": 2, "has_nan": False}, "has_inf=True needs has_nan=True"),
        ({"exp": 1, "man": 0}, "leaves no finite nonzero value"),
        ({"exp": 1, "man": 3, "subnormals": False}, "leaves no finite nonzero value"),
        ({"exp": 1, "man": 0, "has_inf": False}, "leaves no finite nonzero value"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FloatingPoint(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"exp": 5.0, "man": 3}, "exp must be an int"),
        ({"exp": True, "man": 3}, "exp must be an int"),
        ({"exp": 5, "man": 2, "saturate": 1}, "saturate must be True or False"),
    ],
)
def test_parameters_of_the_wrong_type_raise_type_error(kwargs: dict, message: str) -> None:
    """As every format does (FixedPoint, Posit, Codebook): TypeError for a wrong type."""
    with pytest.raises(TypeError, match=message):
        FloatingPoint(**kwargs)


def test_value_semantics_and_repr() -> None:
    fmt = FloatingPoint(4, 3, has_inf=False)
    assert fmt == FloatingPoint(4, 3, has_inf=False, has_nan=True)
    assert hash(fmt) == hash(FloatingPoint(4, 3, has_inf=False))
    assert len({fmt, FloatingPoint(4, 3), FloatingPoint(4, 3)}) == 2
    for f in SMALL_FORMATS:
        assert eval(repr(f), {"FloatingPoint": FloatingPoint}) == f
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.man = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        FloatingPoint(4, 3, False)  # type: ignore[misc]  # the options are keyword-only
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize(torch.ones(2), fmt, "nearest_even")


@pytest.mark.slow
def test_compiled_path_matches_eager_across_formats() -> None:
    """Several formats compiled one after another (the format's ints may turn symbolic)."""
    x = torch.cat([random_float32(8192, seed=30), SPECIALS_F32])
    formats = [
        FloatingPoint(5, 10),
        FloatingPoint(4, 3, has_inf=False, saturate=False),
        FloatingPoint(2, 1, has_inf=False, has_nan=False),
        FloatingPoint(3, 0, subnormals=False),
    ]
    for fmt in formats:
        for mode in DETERMINISTIC:
            eager = quantize(x, fmt, mode)
            with kernel_mode("compiled"):
                compiled = quantize(x, fmt, mode)
            assert bits_equal(compiled, eager), (fmt, mode)
