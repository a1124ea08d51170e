"""FixedPoint against an exact reference written with Python fractions (bitwise)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, neighbours_f32, random_float32

from qtorch import FixedPoint, Rounding, quantize
from qtorch.kernel_mode import kernel_mode
from qtorch.kernels.fixed import quantize_fixed
from qtorch.kernels.round import round_to_quantum

DETERMINISTIC = [m for m in Rounding if m is not Rounding.STOCHASTIC]


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    """These tests check the numerics of the eager reference (compiling costs seconds here)."""
    with kernel_mode("eager"):
        yield


# (mantissa bits, smallest exponent of a subnormal's ulp, largest finite) per dtype
_DTYPES = {
    torch.float32: (23, -149, Fraction((2**24 - 1) * 2**104)),
    torch.float64: (52, -1074, Fraction((2**53 - 1) * 2**971)),
}


def _dtype_floor(v: Fraction, dtype: torch.dtype) -> Fraction:
    """The largest number of ``dtype`` <= v, for v >= 0 (Fractions only)."""
    p, tiny_exp, largest = _DTYPES[dtype]
    if v >= largest:
        return largest
    if v == 0:
        return Fraction(0)
    e = math.floor(math.log2(v))  # may be off by one near powers of two: fix it up
    while Fraction(2) ** e > v:
        e -= 1
    while Fraction(2) ** (e + 1) <= v:
        e += 1
    quantum = Fraction(2) ** max(e - p, tiny_exp)
    return math.floor(v / quantum) * quantum


def _held_bound(k: int, fl: int, dtype: torch.dtype) -> Fraction:
    """Largest multiple of 2**-fl that is <= k * 2**-fl (k >= 0) and a number of ``dtype``."""
    step = Fraction(2) ** -fl
    v = _dtype_floor(k * step, dtype)
    return math.floor(v / step) * step


def _round(k: Fraction, mode: Rounding) -> int:
    if mode is Rounding.NEAREST:
        return round(k)  # half to even
    if mode is Rounding.TOWARD_ZERO:
        return math.trunc(k)
    if mode is Rounding.DOWN:
        return math.floor(k)
    return math.ceil(k)


def reference(x: torch.Tensor, fmt: FixedPoint, mode: Rounding) -> torch.Tensor:
    """Exact fixed-point rounding of every element of x, in x's dtype."""
    k_max = 2 ** (fmt.wl - 1) - 1
    k_min = -k_max if fmt.symmetric else -k_max - 1
    step = Fraction(2) ** -fmt.fl
    hi = _held_bound(k_max, fmt.fl, x.dtype)
    lo = -_held_bound(-k_min, fmt.fl, x.dtype)
    largest = _DTYPES[x.dtype][2]
    out = []
    for v in x.tolist():
        if math.isnan(v):
            out.append(v)
            continue
        if math.isinf(v):
            out.append(v if not fmt.clamp else math.copysign(float(hi if v > 0 else lo), v))
            continue
        q = _round(Fraction(v) / step, mode) * step
        if fmt.clamp:
            q = min(max(q, lo), hi)
        if abs(q) > largest:
            out.append(math.copysign(math.inf, q))
            continue
        held = float(np.float32(float(q))) if x.dtype == torch.float32 else float(q)
        assert Fraction(held) == q, f"{v} rounds to {q}, which {x.dtype} does not hold"
        out.append(math.copysign(held, v) if q == 0 else held)
    return torch.tensor(out, dtype=x.dtype)


def inputs(fmt: FixedPoint, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random values over and beyond the range, every kind of boundary, specials."""
    step = 2.0**-fmt.fl
    top = 2.0 ** (fmt.wl - fmt.fl - 1)
    g = torch.Generator().manual_seed(fmt.wl * 1000 + fmt.fl)
    parts = [
        (torch.rand(200, generator=g, dtype=torch.float64) * 3 - 1.5) * top,
        random_float32(200, seed=fmt.wl + 7).double(),
        SPECIALS_F32.double(),
        torch.tensor([2.0**-200, -(2.0**-200), 2.0**300, -(2.0**300)], dtype=torch.float64),
    ]
    ks = torch.cat(
        [
            torch.arange(-6, 7, dtype=torch.float64),
            torch.tensor([2**23 - 1, 2**23, 2**24 + 1, 2**40 + 3], dtype=torch.float64),
        ]
    )
    k_ends = torch.tensor([top / step - 1, top / step, -top / step, -top / step - 1])
    on_grid = torch.cat([ks, k_ends.double()]) * step
    midpoints = (torch.cat([ks, k_ends.double()]) + 0.5) * step
    parts += [on_grid, midpoints, on_grid * 1.25, on_grid * 3]
    x = torch.cat(parts).to(dtype)
    finite = x[torch.isfinite(x)]
    if dtype == torch.float32:
        x = torch.cat([x, neighbours_f32(finite)])
    else:
        up = torch.nextafter(finite, torch.full_like(finite, math.inf))
        down = torch.nextafter(finite, torch.full_like(finite, -math.inf))
        x = torch.cat([x, up, down])
    return x


FORMATS = [
    FixedPoint(8, 4),
    FixedPoint(8, 0),
    FixedPoint(1, 0),
    FixedPoint(2, 1),
    FixedPoint(4, -2),
    FixedPoint(16, 8),
    FixedPoint(12, 20),
    FixedPoint(24, 10),
    FixedPoint(8, 4, symmetric=True),
    FixedPoint(6, -3, symmetric=True),
    FixedPoint(8, 4, clamp=False),
    FixedPoint(8, -5, clamp=False),
    FixedPoint(10, 30, clamp=False),
    # working-dtype edges: wl > 24 (bounds float32 cannot hold), scale 2**±fl at its limits,
    # and the fallback path for fl beyond them
    FixedPoint(32, 0),
    FixedPoint(32, 16),
    FixedPoint(64, 32),
    FixedPoint(64, 0, symmetric=True),
    FixedPoint(8, 127),
    FixedPoint(8, -126),
    FixedPoint(8, 140),
    FixedPoint(8, -130),
    FixedPoint(20, 160, clamp=False),
    FixedPoint(20, -140, clamp=False),
    FixedPoint(64, 512),
    FixedPoint(64, -512),
]


@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_matches_fractions_float32(fmt: FixedPoint, mode: Rounding) -> None:
    x = inputs(fmt)
    got = quantize(x, fmt, mode)
    assert bits_equal(got, reference(x, fmt, mode))


@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize(
    "fmt",
    [
        FixedPoint(8, 4),
        FixedPoint(30, 20),
        FixedPoint(60, 0),
        FixedPoint(8, -300),
        FixedPoint(16, 8, clamp=False),
        FixedPoint(64, 40, symmetric=True),
    ],
    ids=repr,
)
def test_matches_fractions_float64(fmt: FixedPoint, mode: Rounding) -> None:
    x = inputs(fmt, torch.float64)
    got = quantize(x, fmt, mode)
    assert got.dtype == torch.float64
    assert bits_equal(got, reference(x, fmt, mode))


def test_ties_go_to_even() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5]) * 2**-4
    got = quantize(x, FixedPoint(8, 4), "nearest")
    assert got.mul(16).tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, -2.0]


def test_sign_of_zero_and_specials() -> None:
    x = torch.tensor([-0.0, 0.0, -0.01, math.nan, math.inf, -math.inf])
    got = quantize(x, FixedPoint(8, 4))
    assert bits_equal(got, torch.tensor([-0.0, 0.0, -0.0, math.nan, 7.9375, -8.0]))
    free = quantize(x, FixedPoint(8, 4, clamp=False))
    assert bits_equal(free, torch.tensor([-0.0, 0.0, -0.0, math.nan, math.inf, -math.inf]))


def test_properties() -> None:
    fmt = FixedPoint(8, 4)
    assert (fmt.bits, fmt.max, fmt.min, fmt.min_positive, fmt.eps) == (8, 7.9375, -8, 2**-4, 2**-4)
    assert FixedPoint(8, 4, symmetric=True).min == -7.9375
    assert FixedPoint(8, 0).max == 127 and FixedPoint(8, 0).min == -128
    assert FixedPoint(4, -2).max == 28 and FixedPoint(4, -2).eps == 4
    free = FixedPoint(8, 4, clamp=False)
    assert free.max == math.inf and free.min == -math.inf
    assert FixedPoint(64, 0).max == float(_held_bound(2**63 - 1, 0, torch.float64))
    assert hash(fmt) == hash(FixedPoint(8, 4)) and fmt == FixedPoint(8, 4)
    assert eval(repr(fmt), {"FixedPoint": FixedPoint}) == fmt


@pytest.mark.parametrize("fmt", [FixedPoint(8, 4), FixedPoint(5, -1, symmetric=True)], ids=repr)
def test_values(fmt: FixedPoint) -> None:
    values = fmt.values()
    k_max = 2 ** (fmt.wl - 1) - 1
    k_min = -k_max if fmt.symmetric else -k_max - 1
    expected = [float(Fraction(k) * Fraction(2) ** -fmt.fl) for k in range(k_min, k_max + 1)]
    assert values.dtype == torch.float64 and values.tolist() == expected
    assert values[0] == fmt.min and values[-1] == fmt.max


def test_values_needs_small_clamping_format() -> None:
    with pytest.raises(ValueError, match=r"wl in 1\.\.16"):
        FixedPoint(17, 0).values()
    with pytest.raises(ValueError, match="clamp=True"):
        FixedPoint(8, 0, clamp=False).values()


@pytest.mark.parametrize("mode", list(Rounding))
@pytest.mark.parametrize("fl", [-20, -3, 0, 5, 100])
def test_fast_path_agrees_with_grid_kernel(fl: int, mode: Rounding) -> None:
    """The power-of-two scaling path equals round_to_quantum bitwise, noise included."""
    x = torch.cat([random_float32(3000, seed=3), SPECIALS_F32, torch.tensor([2.0**-140])])
    noise = torch.rand(x.shape) if mode is Rounding.STOCHASTIC else None
    got = quantize_fixed(x, 64, fl, False, False, mode, noise)
    assert bits_equal(got, round_to_quantum(x, -fl, mode, noise))


def test_tiny_values_round_up_when_directed() -> None:
    x = torch.tensor([2.0**-149, -(2.0**-149), 0.0, -0.0])
    assert quantize(x, FixedPoint(8, -10), "up").tolist() == [1024.0, -0.0, 0.0, -0.0]
    assert quantize(x, FixedPoint(8, -10), "down").tolist() == [0.0, -1024.0, 0.0, -0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"wl": 0, "fl": 0}, "wl must be in 1..64, got 0"),
        ({"wl": 65, "fl": 0}, "wl must be in 1..64, got 65"),
        ({"wl": 8, "fl": 513}, "fl must be in -512..512, got 513"),
        ({"wl": 8, "fl": -513}, "fl must be in -512..512, got -513"),
    ],
)
def test_bad_parameters_raise_value_error(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FixedPoint(**kwargs)


@pytest.mark.parametrize(
    "args", [(8.0, 4), (8, "4"), (True, 4), (8, 4, "yes"), (8, 4, True, 1), (None, 4)]
)
def test_bad_parameter_types_raise_type_error(args: tuple[object, ...]) -> None:
    with pytest.raises(TypeError, match="FixedPoint: "):
        FixedPoint(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fmt",
    [FixedPoint(8, 4), FixedPoint(6, -2, symmetric=True), FixedPoint(12, 3, clamp=False)],
    ids=repr,
)
def test_stochastic_gives_a_neighbour(fmt: FixedPoint) -> None:
    x = inputs(fmt)
    got = quantize(x, fmt, "stochastic")
    down, up = reference(x, fmt, Rounding.DOWN), reference(x, fmt, Rounding.UP)
    assert bits_equal(torch.where(bits_equal_mask(got, up), down, got), down)
    # both neighbours do occur
    between = down != up
    assert bool((got[between] == down[between]).any()) and bool((got[between] == up[between]).any())


def bits_equal_mask(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise bitwise equality (NaN equals NaN)."""
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


@pytest.mark.parametrize(
    ("fl", "x"),
    [
        (4, 0.3),
        (4, -2.71),
        (0, 1600000.375),  # |x * 2**fl| near 1.6e6, where QPyTorch was biased
        (8, 6250.0 + 77 / 2048),
        (0, -1599999.875),
        (-3, 12.5),
    ],
)
def test_stochastic_is_unbiased(fl: int, x: float) -> None:
    n = 200_000
    xs = torch.full((n,), x, dtype=torch.float32)
    q = quantize(xs, FixedPoint(32, fl), "stochastic")
    step = Fraction(2) ** -fl
    k = Fraction(float(xs[0])) / step
    frac = float(k - math.floor(k))  # the probability of rounding up
    ups = (q.double() > math.floor(k) * float(step)).double().mean().item()
    sigma = math.sqrt(frac * (1 - frac) / n)
    assert abs(ups - frac) <= 5 * sigma + 1e-9, (ups, frac)


def test_stochastic_seeding() -> None:
    fmt = FixedPoint(8, 4)
    x = torch.rand(1000) * 4
    torch.manual_seed(7)
    a = quantize(x, fmt, "stochastic")
    torch.manual_seed(7)
    b = quantize(x, fmt, "stochastic")
    torch.manual_seed(8)
    c = quantize(x, fmt, "stochastic")
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1 = quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(3))
    g2 = quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(3))
    g3 = quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(4))
    assert torch.equal(g1, g2) and not torch.equal(g1, g3)


@pytest.mark.parametrize(
    "fmt",
    [
        FixedPoint(8, 4),
        FixedPoint(8, 0, symmetric=True),
        FixedPoint(16, -3),
        FixedPoint(1, 0),
        FixedPoint(12, 20),
        FixedPoint(16, 16, symmetric=True),
        FixedPoint(3, 9),
    ],
    ids=repr,
)
def test_encode_decode_round_trip_every_code(fmt: FixedPoint) -> None:
    k_max = 2 ** (fmt.wl - 1) - 1
    k_min = -k_max if fmt.symmetric else -k_max - 1
    codes = torch.arange(k_min, k_max + 1, dtype=torch.int32)
    values = fmt.decode(codes)
    expected = torch.tensor([math.ldexp(k, -fmt.fl) for k in codes.tolist()])
    assert values.dtype == torch.float32 and bits_equal(values, expected)
    assert bits_equal(fmt.decode(codes, dtype=torch.float64), fmt.values())
    assert torch.equal(fmt.encode(values), codes)
    assert torch.equal(fmt.encode(fmt.values()), codes)


def test_encode_rounds_and_saturates() -> None:
    fmt = FixedPoint(8, 4)
    x = torch.tensor([0.03, 0.09375, 100.0, -100.0, math.inf, -math.inf, -0.0])
    assert fmt.encode(x).tolist() == [0, 2, 127, -128, 127, -128, 0]
    assert FixedPoint(8, 4, symmetric=True).encode(torch.tensor([-9.0])).tolist() == [-127]


@pytest.mark.parametrize(("wl", "dtype"), [(32, torch.int32), (33, torch.int64), (64, torch.int64)])
def test_encode_wide_codes(wl: int, dtype: torch.dtype) -> None:
    fmt = FixedPoint(wl, 0)
    x = torch.tensor([math.inf, -math.inf, 1e30, 12345.0, -(2.0 ** (wl - 1))], dtype=torch.float64)
    codes = fmt.encode(x)
    assert codes.dtype == dtype
    assert codes.tolist() == [
        2 ** (wl - 1) - 1,
        -(2 ** (wl - 1)),
        2 ** (wl - 1) - 1,
        12345,
        -(2 ** (wl - 1)),
    ]


def test_encode_decode_errors() -> None:
    with pytest.raises(ValueError, match="NaN"):
        FixedPoint(8, 4).encode(torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="clamp=True"):
        FixedPoint(8, 4, clamp=False).encode(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"-128\.\.127"):
        FixedPoint(8, 4).decode(torch.tensor([128]))
    with pytest.raises(TypeError, match="integer tensor"):
        FixedPoint(8, 4).decode(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="floating-point tensor"):
        FixedPoint(8, 4).encode(torch.tensor([1]))


@pytest.mark.slow
@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize(
    "fmt",
    [
        FixedPoint(8, 4),
        FixedPoint(16, -3, symmetric=True),
        FixedPoint(24, 30, clamp=False),
        FixedPoint(32, 16),
        FixedPoint(8, 140),
    ],
    ids=repr,
)
def test_sweep_random_bit_patterns(fmt: FixedPoint, mode: Rounding) -> None:
    top = 2.0 ** (fmt.wl - fmt.fl - 1)
    g = torch.Generator().manual_seed(99)
    scaled = ((torch.rand(25_000, generator=g, dtype=torch.float64) * 3 - 1.5) * top).float()
    x = torch.cat([random_float32(25_000, seed=99), scaled])
    assert bits_equal(quantize(x, fmt, mode), reference(x, fmt, mode))


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(Rounding))
@pytest.mark.parametrize(
    "fmt", [FixedPoint(8, 4), FixedPoint(8, -3, clamp=False), FixedPoint(8, 140)], ids=repr
)
def test_compiled_kernel_is_bitwise_eager(fmt: FixedPoint, mode: Rounding) -> None:
    """torch.compile(fullgraph=True, dynamic=True) of the kernel gives the eager bits."""
    x = torch.cat([random_float32(5000, seed=4), inputs(fmt)])
    noise = torch.rand(x.shape) if mode is Rounding.STOCHASTIC else None
    torch._dynamo.reset()  # one code object serves every parametrization
    # a closure, as qtorch.kernels.fused compiles it: the format parameters are constants
    compiled = torch.compile(
        lambda a, n: fmt.quantize_kernel(a, mode, n), fullgraph=True, dynamic=True
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # raised inside Inductor
        got = compiled(x, noise)
    assert bits_equal(got, fmt.quantize_kernel(x, mode, noise))
