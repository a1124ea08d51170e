"""The qtorch+ posit functions: posit_quantize, convert_to_posit, bfloat16_posit8_quantize."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import posit_reference as ref
import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, random_float32

from qtorch import Posit, Positbf, kernel_mode, quantize
from qtorch.quant import bfloat16_posit8_quantize, convert_to_posit, posit_quantize


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    with kernel_mode("eager"):
        yield


def all_bfloat16() -> torch.Tensor:
    return torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


# ---------------------------------------------------------------- posit_quantize


@pytest.mark.parametrize(("nsize", "es"), [(8, 0), (8, 2), (16, 1), (32, 2), (6, 4)])
def test_posit_quantize_is_quantize_with_posit(nsize: int, es: int) -> None:
    x = torch.cat([random_float32(4000, seed=nsize), SPECIALS_F32])
    assert bits_equal(posit_quantize(x, nsize, es), quantize(x, Posit(nsize, es)))
    assert bits_equal(
        posit_quantize(x, nsize, es, scale=4.0), quantize(x, Posit(nsize, es, scale=4.0))
    )


def test_posit_quantize_follows_the_reference() -> None:
    x = np.concatenate([ref.all_boundaries(10, 1), [3.3, -7.1e-5]])
    expected = ref.value_of_codes(ref.round_nearest_table(x, 10, 1), 10, 1)
    got = posit_quantize(torch.from_numpy(x), nsize=10, es=1).numpy()
    assert np.array_equal(got, expected)


def test_posit_quantize_stochastic_is_stochastic() -> None:
    """qtorch+ silently rounded to nearest here."""
    x = torch.full((2000,), 1.3)
    q = posit_quantize(x, 8, 1, rounding="stochastic")
    assert set(q.unique().tolist()) == {1.25, 1.3125}
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(
        posit_quantize(x, 8, 1, rounding="stochastic", generator=g1),
        posit_quantize(x, 8, 1, rounding="stochastic", generator=g2),
    )


def test_posit_quantize_errors() -> None:
    x = torch.ones(3)
    with pytest.raises(ValueError, match=r"nsize must be in 2\.\.32"):
        posit_quantize(x, 33, 2)
    with pytest.raises(ValueError, match=r"es must be in 0\.\.4"):
        posit_quantize(x, 8, 5)
    with pytest.raises(ValueError, match="rounding"):
        posit_quantize(x, 8, 1, rounding="nearst")


# ---------------------------------------------------------------- convert_to_posit


@pytest.mark.parametrize(("nsize", "es"), [(8, 0), (8, 2), (16, 1), (5, 3), (2, 0), (12, 4)])
def test_convert_to_posit_layout(nsize: int, es: int) -> None:
    x = np.concatenate([ref.all_boundaries(nsize, es), [0.0, np.inf, np.nan, 1e30, -1e-30]])
    with np.errstate(over="ignore"):  # boundaries beyond float32 become ±Inf: fine inputs
        x = x.astype(np.float32).astype(np.float64)
    codes = ref.round_nearest_table(x, nsize, es)
    expected = (codes & ((1 << nsize) - 1)) << (16 - nsize)
    got = convert_to_posit(torch.from_numpy(x).float(), nsize, es)
    assert got.dtype == torch.uint16
    assert np.array_equal(got.to(torch.int32).numpy(), expected)


def test_convert_to_posit_known_words() -> None:
    words = convert_to_posit(torch.tensor([1.0, -1.0, 0.0, float("nan")]), 8, 1)
    assert words.to(torch.int32).tolist() == [0x4000, 0xC000, 0, 0x8000]
    assert convert_to_posit(torch.tensor([1.0]), 16, 1).to(torch.int32).item() == 0x4000


def test_convert_to_posit_applies_scale() -> None:
    """qtorch+ ignored scale; here the code is that of x * scale."""
    x = torch.tensor([0.25, 3.0])
    assert torch.equal(convert_to_posit(x, 8, 1, scale=4.0), convert_to_posit(x * 4, 8, 1))
    assert not torch.equal(convert_to_posit(x, 8, 1, scale=4.0), convert_to_posit(x, 8, 1))


def test_convert_to_posit_needs_16_bits_or_fewer() -> None:
    with pytest.raises(ValueError, match=r"nsize must be in 2\.\.16, got 20"):
        convert_to_posit(torch.ones(2), 20, 1)


# ---------------------------------------------------------------- bfloat16 posits


@pytest.mark.parametrize("es", [0, 2])
@pytest.mark.parametrize("nsize", range(2, 9))
def test_bfloat16_every_code(nsize: int, es: int) -> None:
    """All 65,536 bfloat16 codes: the exact reference, and Posit on the same values."""
    check_bfloat16_codes(nsize, es)


@pytest.mark.slow
@pytest.mark.parametrize("es", [1, 3, 4])
@pytest.mark.parametrize("nsize", range(2, 9))
def test_bfloat16_every_code_other_es(nsize: int, es: int) -> None:
    check_bfloat16_codes(nsize, es)


def check_bfloat16_codes(nsize: int, es: int) -> None:
    x = all_bfloat16()
    q = bfloat16_posit8_quantize(x, nsize, es)
    assert q.dtype == torch.bfloat16
    with np.errstate(invalid="ignore"):
        x64 = x.double().numpy()
    expected = ref.value_of_codes(ref.round_nearest_table(x64, nsize, es), nsize, es)
    assert bits_equal(q, torch.from_numpy(expected).to(torch.bfloat16))
    assert bits_equal(q, quantize(x.float(), Posit(nsize, es)).to(torch.bfloat16))
    assert bits_equal(q.float(), quantize(x.float(), Posit(nsize, es)))  # no second rounding


def test_bfloat16_examples() -> None:
    """qtorch+ gave 6.0 here, and 0 beyond maxpos, below minpos and for Inf/NaN."""
    x = torch.tensor([2.5, 1e30, -1e-30, float("inf"), float("nan")], dtype=torch.bfloat16)
    q = bfloat16_posit8_quantize(x, 7, 2)
    fmt = Posit(7, 2)
    assert q[:3].tolist() == [2.5, fmt.max, -fmt.min_positive]
    assert torch.isnan(q[3:]).all()


def test_bfloat16_scale_and_stochastic() -> None:
    x = all_bfloat16()
    x = x[torch.isfinite(x)]
    assert bits_equal(bfloat16_posit8_quantize(x, 8, 1, scale=0.5), quantize(x, Positbf(8, 1, 0.5)))
    q = bfloat16_posit8_quantize(
        torch.full((1000,), 1.3, dtype=torch.bfloat16), 6, 1, 1.0, "stochastic"
    )
    assert set(q.unique().tolist()) == {1.25, 1.5}


def test_bfloat16_errors() -> None:
    with pytest.raises(TypeError, match=r"bfloat16 tensor, got torch\.float32"):
        bfloat16_posit8_quantize(torch.ones(2), 8, 1)
    with pytest.raises(ValueError, match=r"Positbf: nsize must be in 2\.\.8, got 9"):
        bfloat16_posit8_quantize(torch.ones(2, dtype=torch.bfloat16), 9, 1)


def test_positbf_on_float32_equals_posit() -> None:
    x = torch.cat([random_float32(5000, seed=4), SPECIALS_F32])
    assert bits_equal(quantize(x, Positbf(8, 2)), quantize(x, Posit(8, 2)))
