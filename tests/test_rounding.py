"""The Rounding enum and the shared power-of-two grid kernel, against exact arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from qtorch.kernels.bits import exponent, ldexp
from qtorch.kernels.round import round_to_quantum
from qtorch.rounding import Rounding


@pytest.mark.parametrize("mode", list(Rounding))
def test_parse_accepts_member_and_string(mode: Rounding) -> None:
    assert Rounding.parse(mode) is mode
    assert Rounding.parse(mode.value) is mode
    assert Rounding.parse(mode.value.upper()) is mode


@pytest.mark.parametrize("bad", ["nearst", "", 3, None])
def test_parse_rejects_unknown(bad: object) -> None:
    with pytest.raises(ValueError, match="rounding must be one of"):
        Rounding.parse(bad)  # type: ignore[arg-type]


def _random_floats(n: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if dtype == torch.float32:
        bits = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64)
        x = bits.to(torch.int32).view(torch.float32)
    else:
        bits = torch.randint(-(2**63), 2**63 - 1, (n,), generator=g, dtype=torch.int64)
        x = bits.view(torch.float64)
    return x[torch.isfinite(x)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exponent_matches_frexp(dtype: torch.dtype) -> None:
    x = _random_floats(20000, dtype)
    x = x[x != 0]
    expected = torch.tensor([math.frexp(v)[1] - 1 for v in x.tolist()], dtype=torch.int32)
    assert torch.equal(exponent(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ldexp_is_exact_across_the_range(dtype: torch.dtype) -> None:
    x = torch.tensor([1.0, 3.0, -5.0], dtype=dtype)
    for e in (-140, -60, 0, 60, 120):
        got = ldexp(x, e).tolist()
        assert got == [math.ldexp(v, e) for v in x.tolist()]


def _exact_round(v: float, q: int, mode: Rounding) -> float:
    """Round v to a multiple of 2**q with Fractions (the oracle)."""
    step = Fraction(2) ** q
    k = Fraction(v) / step
    lo = math.floor(k)
    if mode is Rounding.NEAREST:
        r = round(k)  # Python rounds Fractions half to even
    elif mode is Rounding.TOWARD_ZERO:
        r = math.trunc(k)
    elif mode is Rounding.DOWN:
        r = lo
    else:
        r = math.ceil(k)
    return math.copysign(float(r * step), v)


@pytest.mark.parametrize("mode", [m for m in Rounding if m is not Rounding.STOCHASTIC])
@pytest.mark.parametrize("q", [-149, -20, -2, 0, 3, 40])
def test_round_to_quantum_matches_fractions(mode: Rounding, q: int) -> None:
    x = torch.cat([_random_floats(3000, torch.float32), torch.tensor([0.0, -0.0, 2.5, -2.5])])
    x = x.clamp(-1e30, 1e30)
    got = round_to_quantum(x, q, mode)
    expected = torch.tensor([_exact_round(v, q, mode) for v in x.tolist()], dtype=torch.float32)
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


def test_round_to_quantum_keeps_specials() -> None:
    x = torch.tensor([float("inf"), float("-inf"), float("nan")])
    got = round_to_quantum(x, -3, Rounding.NEAREST)
    assert got[0] == math.inf and got[1] == -math.inf and torch.isnan(got[2])
