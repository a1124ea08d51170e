"""Inputs on which an oracle was found wrong, with the exact answer (Fractions) as the judge.

torch's CPU float64 -> float16 / bfloat16 casts and ml_dtypes' float64 -> bfloat16 / float8
casts round twice (through float32), so for float64 inputs just above a float16 midpoint
they round down where correct rounding goes up. qtorch rounds float64 inputs once.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import qtorch


def _nearest_even(v: Fraction, step: Fraction) -> Fraction:
    return round(v / step) * step  # Python rounds Fractions half to even


@pytest.mark.parametrize(
    ("fmt", "x", "step"),
    [
        # just above the midpoint between 1 and 1 + 2**-10 (float16's ulp at 1)
        (qtorch.float16, 1 + 2**-11 + 2**-40, Fraction(1, 2**10)),
        # just above the midpoint between 1 and 1 + 2**-7 (bfloat16's ulp at 1)
        (qtorch.bfloat16, 1 + 2**-8 + 2**-40, Fraction(1, 2**7)),
        # just above the midpoint between 1.0 and 1.125 (e4m3's ulp at 1)
        (qtorch.float8_e4m3fn, 1.0625 + 2**-40, Fraction(1, 8)),
    ],
)
def test_float64_inputs_round_once(fmt: qtorch.FloatingPoint, x: float, step: Fraction) -> None:
    exact = _nearest_even(Fraction(x), step)
    got = qtorch.quantize(torch.tensor([x], dtype=torch.float64), fmt)
    assert Fraction(got.item()) == exact
    assert exact > 1  # the double-rounding casts give 1.0 here


def test_numpy_float16_cast_agrees_on_the_float64_case() -> None:
    """numpy's float64 -> float16 cast rounds once, like qtorch (a second, independent oracle)."""
    x = 1 + 2**-11 + 2**-40
    expected = float(np.float64(x).astype(np.float16))
    got = qtorch.quantize(torch.tensor([x], dtype=torch.float64), qtorch.float16).item()
    assert got == expected == 1 + 2**-10


def test_geomean_hint_is_the_correctly_rounded_square_root() -> None:
    """torch.sqrt on float32 CPU tensors gives sqrt(42/65536) one ulp high (0.0253153946...).

    The correctly rounded float32 root h is decided here with exact arithmetic: the root lies
    between the midpoints of h with its two float32 neighbours. The hint rule maps |y| > h to
    the upper entry, so h maps to 6/256 and the float32 just above h to 7/256 (with torch's
    root as the hint both would map to 6/256).
    """
    t0, t1 = 6 / 256, 7 / 256
    target = Fraction(t0) * Fraction(t1)  # 42/65536, exact in float32
    h = np.float32(0.02531539276242256)
    above = np.nextafter(h, np.float32(1))
    below = np.nextafter(h, np.float32(0))
    # h is the float32 nearest to sqrt(target): the midpoints around it bracket the root
    assert ((Fraction(float(h)) + Fraction(float(above))) / 2) ** 2 > target
    assert ((Fraction(float(h)) + Fraction(float(below))) / 2) ** 2 < target
    x = torch.tensor([float(h), float(above)])
    got = qtorch.quant.configurable_table_quantize_geomean(x, [t0, t1])
    assert got.tolist() == [t0, t1]
