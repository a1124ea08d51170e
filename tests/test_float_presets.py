"""The named float presets against ml_dtypes, torch's float8 casts and integer bit tricks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, neighbours_f32, random_float32

import qtorch
import qtorch.formats as formats
from qtorch import FloatingPoint
from qtorch.kernel_mode import kernel_mode

ml_dtypes = pytest.importorskip("ml_dtypes")

INF, NAN = math.inf, math.nan

#: (preset, ml_dtypes type name). float8_e3m4 is no preset, but the same family.
ML_DTYPES = [
    (formats.float8_e5m2, "float8_e5m2"),
    (formats.float8_e4m3, "float8_e4m3"),
    (formats.float8_e4m3fn, "float8_e4m3fn"),
    (formats.float6_e3m2fn, "float6_e3m2fn"),
    (formats.float6_e2m3fn, "float6_e2m3fn"),
    (formats.float4_e2m1fn, "float4_e2m1fn"),
    (FloatingPoint(3, 4), "float8_e3m4"),
]
CASES = [pytest.param(fmt, name, id=name) for fmt, name in ML_DTYPES]


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    """Check the eager reference kernels (the fused-path tests compare compiled to eager)."""
    with kernel_mode("eager"):
        yield


def _ml_type(name: str) -> type:
    if not hasattr(ml_dtypes, name):
        pytest.skip(f"ml_dtypes has no {name}")
    return getattr(ml_dtypes, name)


def _ml_cast(x: torch.Tensor, ml_type: type) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):  # NaN / overflow are what we test
        return x.numpy().astype(ml_type)


def _ml_round(x: torch.Tensor, ml_type: type) -> torch.Tensor:
    return torch.from_numpy(_ml_cast(x, ml_type).astype(np.float32))


def _ml_codes(ml_type: type, bits: int) -> torch.Tensor:
    """Every code of the type as float32 values, in code order."""
    codes = np.arange(2**bits, dtype=np.uint8)
    return torch.from_numpy(codes.view(ml_type).astype(np.float32))


def _inputs(values: torch.Tensor, n_random: int = 20_000) -> torch.Tensor:
    """Every value, every midpoint of neighbours (and beyond max) ± one float32 ulp, random."""
    v = torch.unique(values[torch.isfinite(values)].double().abs())
    beyond = 2 * v[-1] - v[-2]
    v = torch.cat([v, beyond.reshape(1), 2 * beyond.reshape(1)])
    mids = ((v[1:] + v[:-1]) / 2).float()
    m = torch.cat([neighbours_f32(mids), neighbours_f32(v.float())])
    return torch.cat([m, -m, random_float32(n_random, seed=21), SPECIALS_F32])


@pytest.mark.parametrize(("fmt", "name"), CASES)
def test_every_code_decodes_like_ml_dtypes(fmt: FloatingPoint, name: str) -> None:
    ml_type = _ml_type(name)
    expected = _ml_codes(ml_type, fmt.bits)
    assert bits_equal(fmt.decode(torch.arange(2**fmt.bits)), expected)
    finite = expected[torch.isfinite(expected)].double()
    assert torch.equal(fmt.values(), torch.unique(finite + 0.0))  # +0.0 merges -0 into 0


@pytest.mark.parametrize(("fmt", "name"), CASES)
def test_rounding_matches_ml_dtypes(fmt: FloatingPoint, name: str) -> None:
    ml_type = _ml_type(name)
    x = _inputs(_ml_codes(ml_type, fmt.bits))
    if not fmt.has_nan:  # ml_dtypes turns NaN into ±0 there; we keep NaN (tested below)
        x = x[~torch.isnan(x)]
    oracle = _ml_round(x, ml_type)
    assert bits_equal(qtorch.quantize(x, dataclasses.replace(fmt, saturate=False)), oracle)
    # saturating: every overflow (±Inf inputs in formats without Inf too) goes to ±max
    overflow = ~torch.isfinite(oracle) & ~torch.isnan(x)
    if fmt.has_inf:
        overflow &= torch.isfinite(x)
    saturated = torch.where(overflow, torch.copysign(torch.full_like(x, fmt.max), x), oracle)
    assert bits_equal(qtorch.quantize(x, fmt), saturated)


@pytest.mark.parametrize(("fmt", "name"), CASES)
def test_encode_matches_ml_dtypes_bits(fmt: FloatingPoint, name: str) -> None:
    ml_type = _ml_type(name)
    x = _inputs(_ml_codes(ml_type, fmt.bits), n_random=10_000)
    if not fmt.has_nan:
        x = x[~torch.isnan(x)]
    expected = torch.from_numpy(_ml_cast(x, ml_type).view(np.uint8).astype(np.int32))
    assert torch.equal(dataclasses.replace(fmt, saturate=False).encode(x), expected)


@pytest.mark.parametrize(
    "fmt", [formats.float6_e3m2fn, formats.float6_e2m3fn, formats.float4_e2m1fn], ids=repr
)
def test_formats_without_nan_keep_nan_and_saturate_inf(fmt: FloatingPoint) -> None:
    x = torch.tensor([NAN, -NAN, INF, -INF, 1e6])
    for f in (fmt, dataclasses.replace(fmt, saturate=False)):
        got = qtorch.quantize(x, f)
        assert torch.isnan(got[:2]).all()
        assert got[2:].tolist() == [fmt.max, -fmt.max, fmt.max]


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [(formats.float8_e4m3fn, torch.float8_e4m3fn), (formats.float8_e5m2, torch.float8_e5m2)],
    ids=["float8_e4m3fn", "float8_e5m2"],
)
def test_matches_torch_float8_casts(fmt: FloatingPoint, dtype: torch.dtype) -> None:
    """Against torch's cast, in the overflow mode of the installed torch: the e4m3fn cast
    saturates (Inf too) in torch 2.13 and gave NaN beyond 448 in 2.11; e5m2 overflows to
    Inf."""
    saturate = bool(torch.isfinite(torch.tensor([1e6]).to(dtype).float()).item())
    if dtype == torch.float8_e4m3fn and torch.__version__ >= (2, 13):
        assert saturate
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float()
    x = _inputs(codes)
    got = qtorch.quantize(x, dataclasses.replace(fmt, saturate=saturate))
    assert bits_equal(got, x.to(dtype).float())


def _round_bits(x: torch.Tensor, drop: int) -> torch.Tensor:
    """Round float32 x to nearest-even on the bit pattern, dropping the low ``drop`` bits.

    Exact for every finite float32 of formats with float32's exponent range: the value is
    linear in the pattern within a binade and across the subnormal range, and a carry out of
    the fraction bumps the exponent (up to the Inf pattern on overflow).
    """
    bits = x.view(torch.int32).to(torch.int64)
    half = (1 << (drop - 1)) - 1 + ((bits >> drop) & 1)
    rounded = ((bits & 0x7FFFFFFF) + half) >> drop << drop
    return (rounded | (bits & ~0x7FFFFFFF)).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize(
    ("fmt", "drop"), [(formats.tf32, 13), (formats.bfloat16, 16)], ids=["tf32", "bfloat16"]
)
def test_wide_exponent_presets_match_bit_rounding(fmt: FloatingPoint, drop: int) -> None:
    x = random_float32(200_000, seed=22, finite=True)
    x = torch.cat([x, neighbours_f32(torch.tensor([3.4028234663852886e38, 2.0**-149, 2.0**-126]))])
    oracle = _round_bits(x, drop)
    assert bits_equal(qtorch.quantize(x, dataclasses.replace(fmt, saturate=False)), oracle)
    if drop == 16:
        assert bits_equal(oracle, x.bfloat16().float())  # the bit trick is a faithful oracle


@pytest.mark.parametrize(("fmt", "name"), CASES)
def test_properties_match_ml_dtypes_finfo(fmt: FloatingPoint, name: str) -> None:
    info = ml_dtypes.finfo(_ml_type(name))
    assert fmt.max == float(info.max)
    assert fmt.min_positive == float(info.smallest_subnormal)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.eps == float(info.eps)
    assert fmt.bits == info.bits
    assert fmt.emax == info.maxexp - 1
    assert fmt.emin == info.minexp


@pytest.mark.parametrize(
    ("fmt", "dtype"), [(formats.float16, torch.float16), (formats.bfloat16, torch.bfloat16)]
)
def test_properties_match_torch_finfo(fmt: FloatingPoint, dtype: torch.dtype) -> None:
    info = torch.finfo(dtype)
    assert (fmt.max, fmt.min_normal, fmt.eps, fmt.bits) == (
        info.max,
        info.smallest_normal,
        info.eps,
        info.bits,
    )
    smallest = torch.nextafter(torch.zeros(1, dtype=dtype), torch.ones(1, dtype=dtype))
    assert fmt.min_positive == smallest.item()


def test_presets_are_the_class_defaults_and_exported() -> None:
    assert formats.float16 == FloatingPoint(5, 10)
    assert formats.bfloat16 == FloatingPoint(8, 7)
    assert formats.tf32 == FloatingPoint(8, 10)
    assert formats.float8_e4m3 == FloatingPoint(4, 3)
    assert formats.float8_e4m3fn == FloatingPoint(4, 3, has_inf=False, has_nan=True)
    for fmt, _ in ML_DTYPES[:6]:
        assert fmt.saturate and fmt.subnormals
    for name in ("float16", "bfloat16", "tf32", "float8_e5m2", "float4_e2m1fn"):
        assert getattr(qtorch, name) is getattr(formats, name)
        assert name in formats.__all__ and name in qtorch.__all__
    assert qtorch.FloatingPoint is formats.FloatingPoint
    assert (formats.tf32.max, formats.tf32.eps) == (math.ldexp(2 - 2**-10, 127), 2**-10)
