"""Posit<n, es> for every n <= 16 and es <= 4 against the exact reference (tests/posit_reference).

Inputs: every value and every rounding boundary of the format (both signs) and their float
neighbours one ulp away, plus random bit patterns over the whole range and the specials.
The default run covers a sample of the formats; ``-m slow`` covers all 75.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import posit_reference as ref
import pytest
import torch
from edge_cases import SPECIALS_F32, random_float32

from qtorch import Posit, kernel_mode, quantize

F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = 2.0**-149

ALL_FORMATS = [(n, es) for n in range(2, 17) for es in range(5)]
SAMPLE = [(n, es) for n in range(2, 9) for es in range(5)] + [(10, 4), (11, 3), (12, 1), (16, 0)]
SLOW_REST = [f for f in ALL_FORMATS if f not in SAMPLE]


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    """The eager reference kernel (the compiled path is compared with it in test_posit)."""
    with kernel_mode("eager"):
        yield


def boundary_inputs(nsize: int, es: int, dtype: np.dtype) -> np.ndarray:
    """Every value and boundary that the dtype holds, with neighbours, random and specials."""
    points = ref.all_boundaries(nsize, es)
    with np.errstate(over="ignore"):
        cast = points.astype(dtype)
    cast = cast[np.isfinite(cast) & (cast.astype(np.float64) == points)]
    near = np.concatenate(
        [cast, np.nextafter(cast, dtype.type(np.inf)), np.nextafter(cast, dtype.type(-np.inf))]
    )
    if dtype == np.float32:
        extra = torch.cat([random_float32(3000, seed=nsize * 10 + es), SPECIALS_F32]).numpy()
    else:
        rng = np.random.default_rng(nsize * 10 + es)
        bits = rng.integers(-(2**63), 2**63 - 1, 3000, dtype=np.int64)
        extra = np.concatenate([bits.view(np.float64), SPECIALS_F32.numpy().astype(np.float64)])
    return np.concatenate([near, extra.astype(dtype)])


def float32_range(nsize: int, es: int) -> tuple[float, float]:
    """The smallest and largest positive posits that float32 holds (the documented clamp)."""
    values, _ = ref.table(nsize, es)
    return values[values >= F32_TINY].min(), values[values <= F32_MAX].max()


def check_format(nsize: int, es: int, dtype: np.dtype) -> None:
    with np.errstate(invalid="ignore"):  # casts of signalling NaN bit patterns
        _check_format(nsize, es, dtype)


def _check_format(nsize: int, es: int, dtype: np.dtype) -> None:
    fmt = Posit(nsize, es)
    x = boundary_inputs(nsize, es, np.dtype(dtype))
    xt = torch.from_numpy(x)
    codes = ref.round_nearest_table(x.astype(np.float64), nsize, es)
    np.testing.assert_array_equal(fmt.encode(xt).numpy(), codes)

    expected = ref.value_of_codes(codes, nsize, es)
    if dtype == np.float32:
        lo, hi = float32_range(nsize, es)
        clamped = np.sign(expected) * np.clip(np.abs(expected), lo, hi)
        expected = np.where(expected == 0, 0.0, clamped)
    q = quantize(xt, fmt).numpy()
    expected = expected.astype(dtype)
    same = (q.view(f"i{q.itemsize}") == expected.view(f"i{q.itemsize}")) | (
        np.isnan(q) & np.isnan(expected)
    )
    bad = np.flatnonzero(~same)
    assert bad.size == 0, (x[bad[:5]], q[bad[:5]], expected[bad[:5]])

    decoded = fmt.decode(torch.from_numpy(codes), dtype=torch.float64).numpy()
    exact = ref.value_of_codes(codes, nsize, es)
    assert np.array_equal(decoded, exact, equal_nan=True)
    decoded32 = fmt.decode(torch.from_numpy(codes)).numpy()  # float32: a rounding cast
    with np.errstate(over="ignore"):
        assert np.array_equal(decoded32, exact.astype(np.float32), equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("nsize", "es"), SAMPLE)
def test_boundaries_match_reference(nsize: int, es: int, dtype: np.dtype) -> None:
    check_format(nsize, es, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("nsize", "es"), SLOW_REST)
def test_boundaries_match_reference_all_formats(nsize: int, es: int, dtype: np.dtype) -> None:
    check_format(nsize, es, dtype)


@pytest.mark.parametrize(("nsize", "es"), [(n, es) for n in range(2, 11) for es in range(5)])
def test_values_are_every_code_decoded(nsize: int, es: int) -> None:
    expected = [float(v) for v in ref.sorted_values(nsize, es)]
    got = Posit(nsize, es).values()
    assert got.dtype == torch.float64
    assert got.tolist() == expected


@pytest.mark.parametrize(("nsize", "es"), [(16, 0), (14, 2)])
def test_values_sixteen_bits(nsize: int, es: int) -> None:
    values, _ = ref.table(nsize, es)
    expected = np.concatenate([-values[::-1], [0.0], values])
    assert np.array_equal(Posit(nsize, es).values().numpy(), expected)


@pytest.mark.parametrize(("nsize", "es"), [(24, 0), (32, 2), (32, 4), (20, 3), (17, 1)])
def test_wide_sizes_match_bisection_reference(nsize: int, es: int) -> None:
    """nsize > 16: boundaries of random codes (exact Fractions) and their float64 neighbours."""
    rng = np.random.default_rng(nsize + es)
    top = (1 << (nsize - 1)) - 1
    picks = np.concatenate([rng.integers(1, top, 300), [1, 2, 3, top - 2, top - 1]])
    xs = []
    for i in picks.tolist():
        b = float(ref.decode(2 * i + 1, nsize + 1, es))  # exact: <= 31 significant bits
        xs += [b, np.nextafter(b, np.inf), np.nextafter(b, -np.inf), -b]
    x = np.array(xs)
    expected = np.array([ref.round_nearest(Fraction(v), nsize, es) for v in xs])
    got = Posit(nsize, es).encode(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, expected)
    values = np.array([float(ref.decode(int(c), nsize, es)) for c in expected])
    q = quantize(torch.from_numpy(x), Posit(nsize, es)).numpy()
    np.testing.assert_array_equal(q, values)


def test_reference_self_check() -> None:
    """The reference reproduces the issue's examples (so it is not vacuous)."""
    assert ref.decode(ref.round_nearest(Fraction(4_000_000), 8, 2), 8, 2) == 2**20
    assert ref.decode(ref.round_nearest(Fraction(4_200_000), 8, 2), 8, 2) == 2**24
    assert ref.decode(ref.round_nearest(Fraction(10), 4, 1), 4, 1) == 16
    assert ref.decode(ref.round_nearest(Fraction(15, 2), 4, 1), 4, 1) == 4
    assert ref.decode(0x40, 8, 0) == 1 and ref.decode(0x7F, 8, 0) == 64
    assert ref.decode(0x80, 8, 0) is None
    x = np.array([4.0e6, 4.2e6, -4.2e6, 0.0, np.nan])
    assert ref.round_nearest_table(x, 8, 2).tolist() == [126, 127, -127, 0, -128]
