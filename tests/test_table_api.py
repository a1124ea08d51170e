"""The qtorch+ table functions against a plain reference of their rules (numpy, Fractions)."""

from __future__ import annotations

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
from qtorch.quant import (
    act_format_quantize,
    configurable_table_quantize,
    configurable_table_quantize_geomean,
    configurable_table_quantize_rounding_hint,
    new_format_quantize,
)

# The two fixed tables, typed from the issue / the qtorch+ C++ source.
NEW_FORMAT = [
    2**-16, 2**-15, 2**-14, 2**-13, 2**-12, 2**-11, 2**-10, 2**-9, 2**-8, 2**-7, 3 / 256, 1 / 64,
    5 / 256, 3 / 128, 7 / 256, 1 / 32, 9 / 256, 5 / 128, 3 / 64, 7 / 128, 1 / 16, 9 / 128, 5 / 64,
    3 / 32, 7 / 64, 1 / 8, 9 / 64, 3 / 16, 1 / 4, 3 / 8, 1 / 2, 1,
]  # fmt: skip
ACT_FORMAT = [
    1 / 4096, 1 / 2048, 1 / 1024, 1 / 512, 1 / 256, 1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 3 / 16,
    1 / 4, 5 / 16, 3 / 8, 7 / 16, 1 / 2, 9 / 16, 5 / 8, 3 / 4, 7 / 8, 1, 9 / 8, 5 / 4, 3 / 2, 7 / 4,
    2, 9 / 4, 3, 4, 6, 8, 16,
]  # fmt: skip


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    with qtorch.kernel_mode("eager"):
        yield


# --- the reference -----------------------------------------------------------------------


def _finish(y: np.float32, t: float, scale: float) -> float:
    """sign(y)·t / scale in float32, as the earlier library computed it."""
    q = np.float32(-t) if np.signbit(y) else np.float32(t)
    with np.errstate(over="ignore"):
        return float(q / np.float32(scale))


_exact = functools.lru_cache(maxsize=None)(Fraction)


def ref_nearest(x: float, table: list[float], scale: float = 1.0) -> float:
    """y = x·scale; 0 stays (signed) 0; else the entry nearest |y|, first in table order."""
    if math.isnan(x):
        return math.nan
    with np.errstate(over="ignore"):
        y = np.float32(x) * np.float32(scale)
    if y == 0:
        return float(y / np.float32(scale))
    if math.isinf(y):
        best = max(table, key=lambda t: (t, -table.index(t)))  # the largest entry, first copy
        return _finish(y, best, scale)
    target = Fraction(float(abs(y)))
    best = table[0]
    for t in table[1:]:
        if abs(_exact(t) - target) < abs(_exact(best) - target):
            best = t
    return _finish(y, best, scale)


def ref_hint(x: float, table: list[float], hints: list[float], scale: float = 1.0) -> float:
    """The qtorch+ loop: the entry for the last i with |y| > hint[i], else 0."""
    if math.isnan(x):
        return math.nan
    with np.errstate(over="ignore"):
        y = np.float32(x) * np.float32(scale)
    if y == 0:
        return float(y / np.float32(scale))
    chosen = 0.0
    for t, h in zip(table, hints, strict=True):
        if abs(float(y)) > h:
            chosen = t
    return _finish(y, chosen, scale)


def ref_geomean_hints(table: list[float]) -> list[float]:
    t = [np.float32(v) for v in table]
    with np.errstate(invalid="ignore"):
        roots = [float(np.sqrt(t[i] * t[i - 1])) for i in range(1, len(t))]
    return [float(np.float32(1e-4))] + [math.inf if math.isnan(r) else r for r in roots]


def inputs(table: list[float], scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Entries, midpoints and their neighbours (divided by scale), random and special values."""
    pos = sorted({abs(t) for t in table})
    points = pos + [(a + b) / 2 for a, b in itertools.pairwise(pos)]
    base = torch.tensor(points, dtype=torch.float32) / scale
    g = torch.Generator().manual_seed(seed)
    span = max(pos) / abs(scale) if max(pos) else 1.0
    near = (torch.rand(300, generator=g) * 2.4 - 1.2) * span
    return torch.cat([neighbours_f32(base), -neighbours_f32(base), near, SPECIALS_F32,
                      random_float32(300, seed=seed)])  # fmt: skip


def expected(x: torch.Tensor, rule, *args) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return torch.tensor([rule(v, *args) for v in x.tolist()], dtype=torch.float32)


TABLES = {
    "ascending": [0.25, 0.5, 1.0, 2.0, 4.0],
    "unsorted_duplicates": [1.0, 0.5, 4.0, 0.5, 2.0, 1.0, 0.25],
    "descending": [8.0, 3.0, 1.0, 0.0],
    "with_negative": [-0.5, 0.75, -3.0, 2.0],
    "only_negative": [-1.0, -0.25],
    "single": [0.375],
    "zero_and_huge": [0.0, 1e-30, 3.0e38],
    "not_float32": [0.1, 0.2, 0.7],
}


@pytest.mark.parametrize("scale", [1.0, 4.0, 0.3, -2.0])
@pytest.mark.parametrize("name", sorted(TABLES))
def test_nearest_matches_reference(name: str, scale: float) -> None:
    table = TABLES[name]
    x = inputs(table, scale)
    got = configurable_table_quantize(x, torch.tensor(table, dtype=torch.float64), scale)
    assert bits_equal(got, expected(x, ref_nearest, table, scale))


def test_ties_go_to_the_first_entry_in_table_order() -> None:
    x = torch.tensor([0.75, -0.75, 1.5])
    assert configurable_table_quantize(x, [1.0, 0.5, 2.0]).tolist() == [1.0, -1.0, 1.0]
    assert configurable_table_quantize(x, [0.5, 1.0, 2.0]).tolist() == [0.5, -0.5, 1.0]
    assert configurable_table_quantize(x, [2.0, 1.0, 0.5]).tolist() == [1.0, -1.0, 2.0]


def test_fixed_tables() -> None:
    for fn, table in ((new_format_quantize, NEW_FORMAT), (act_format_quantize, ACT_FORMAT)):
        for scale in (1.0, 8.0, 0.7):
            x = inputs(table, scale)
            assert bits_equal(fn(x, scale), expected(x, ref_nearest, table, scale))


def test_special_values_are_fixed() -> None:
    x = torch.tensor([math.nan, math.inf, -math.inf, 1e6, -1e6, 0.0, -0.0])
    got = configurable_table_quantize(x, [0.5, 2.0])
    assert bits_equal(got, torch.tensor([math.nan, 2.0, -2.0, 2.0, -2.0, 0.0, -0.0]))
    got = new_format_quantize(x)
    assert bits_equal(got, torch.tensor([math.nan, 1.0, -1.0, 1.0, -1.0, 0.0, -0.0]))


HINTED = {
    "ascending": ([0.25, 1.0, 4.0], [0.2, 0.5, 2.5]),
    "unsorted_hints": ([1.0, 2.0, 3.0, 4.0], [0.5, 3.0, 1.0, 10.0]),
    "negative_and_inf": ([0.5, -1.0, 7.0], [-1.0, 0.75, math.inf]),
    "single": ([2.0], [1.0]),
}


@pytest.mark.parametrize("scale", [1.0, 0.3])
@pytest.mark.parametrize("name", sorted(HINTED))
def test_rounding_hint_matches_reference(name: str, scale: float) -> None:
    table, hints = HINTED[name]
    x = torch.cat(
        [inputs(table, scale), neighbours_f32(torch.tensor([h for h in hints if abs(h) < 1e30]))]
    )
    got = configurable_table_quantize_rounding_hint(x, table, torch.tensor(hints), scale)
    hints32 = [float(np.float32(h)) for h in hints]  # a float32 tensor of hints, as before
    assert bits_equal(got, expected(x, ref_hint, table, hints32, scale))
    exact = configurable_table_quantize_rounding_hint(x, table, hints, scale)  # a list: exact
    assert bits_equal(exact, expected(x, ref_hint, table, hints, scale))


@pytest.mark.parametrize("table", [NEW_FORMAT, [0.25, 1.0, 4.0], [4.0, 1.0, 9.0], [-1.0, 2.0, 3.0]])
def test_geomean_matches_reference(table: list[float]) -> None:
    hints = ref_geomean_hints(table)
    x = torch.cat([inputs(table), neighbours_f32(torch.tensor([h for h in hints if h < 1e30]))])
    got = configurable_table_quantize_geomean(x, torch.tensor(table))
    assert bits_equal(got, expected(x, ref_hint, table, hints, 1.0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(dtype: torch.dtype) -> None:
    table = [0.25, 0.5, 1.0, 2.0]
    x = (torch.randn(500) * 2).to(dtype)
    got = configurable_table_quantize(x, table)
    assert got.dtype == dtype
    if dtype == torch.float64:  # exact nearest on float64 values
        want = []
        for v in x.tolist():
            best = min(table, key=lambda t: (abs(Fraction(t) - abs(Fraction(v))), table.index(t)))
            want.append(math.copysign(best, v) if v != 0 else v)
        assert bits_equal(got, torch.tensor(want, dtype=torch.float64))
    else:
        assert bits_equal(got, expected(x.float(), ref_nearest, table).to(dtype))


# --- stochastic ------------------------------------------------------------------------------


def test_stochastic_brackets_and_is_unbiased() -> None:
    table = [0.5, 2.0, 1.0]
    x = torch.full((40000,), -1.2)
    q = configurable_table_quantize(x, table, rounding="stochastic")
    assert set(q.tolist()) == {-1.0, -2.0}
    sigma = 1.0 * math.sqrt(0.2 * 0.8 / x.numel())
    assert abs(q.double().mean().item() + 1.2) < 5 * sigma
    y = inputs(table)
    y = y[torch.isfinite(y)]
    got = configurable_table_quantize(y, table, rounding="stochastic").tolist()
    for v, r in zip(y.tolist(), got, strict=True):
        lo = max([t for t in table if t <= abs(v)], default=0.5)
        hi = min([t for t in table if t >= abs(v)], default=2.0)
        assert (v == 0 and r == 0) or abs(r) in (lo, hi)


def test_stochastic_is_reproducible() -> None:
    x = torch.randn(2000)
    g = torch.Generator().manual_seed
    a = act_format_quantize(x, rounding="stochastic", generator=g(4))
    b = act_format_quantize(x, rounding="stochastic", generator=g(4))
    assert torch.equal(a, b) and not torch.equal(a, act_format_quantize(x))
    torch.manual_seed(9)
    c = new_format_quantize(x, 2.0, "stochastic")
    torch.manual_seed(9)
    assert torch.equal(c, new_format_quantize(x, 2.0, "stochastic"))


# --- validation --------------------------------------------------------------------------


def test_inputs_are_validated() -> None:
    x = torch.ones(3)
    with pytest.raises(ValueError, match="empty"):
        configurable_table_quantize(x, torch.tensor([]))
    with pytest.raises(ValueError, match="finite"):
        configurable_table_quantize(x, [1.0, math.nan])
    with pytest.raises(ValueError, match="finite"):
        configurable_table_quantize_geomean(x, [1.0, math.inf])
    with pytest.raises(ValueError, match="one value per table entry"):
        configurable_table_quantize_rounding_hint(x, [1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        configurable_table_quantize_rounding_hint(x, [1.0, 2.0], [0.5, math.nan])
    with pytest.raises(ValueError, match="scale"):
        configurable_table_quantize(x, [1.0], scale=0.0)
    with pytest.raises(ValueError, match="rounding"):
        new_format_quantize(x, rounding="up")
    with pytest.raises(ValueError, match="rounding"):
        act_format_quantize(x, rounding="bogus")
    with pytest.raises(TypeError):
        configurable_table_quantize(torch.ones(3, dtype=torch.int64), [1.0])
    with pytest.raises(TypeError):
        configurable_table_quantize(x, "abc")


def test_input_is_not_modified_and_shapes_are_kept() -> None:
    x = torch.randn(4, 6).t()
    before = x.clone()
    got = configurable_table_quantize(x, [0.5, 1.0], 2.0)
    assert torch.equal(x, before) and got.shape == (6, 4)
    assert configurable_table_quantize(torch.empty(0), [1.0]).shape == (0,)
