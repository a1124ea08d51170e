"""Posit: SoftPosit bit-exactness, the format protocol, specials, stochastic rounding."""

from __future__ import annotations

import math
from collections.abc import Iterator
from fractions import Fraction
from types import ModuleType

import numpy as np
import posit_reference as ref
import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, random_float32

from qtorch import Posit, Positbf, kernel_mode, quantize

F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    with kernel_mode("eager"):
        yield


# ---------------------------------------------------------------- SoftPosit, bit for bit

SOFTPOSIT_FORMATS = [(8, 0), (16, 1), (32, 2)] + [(n, 2) for n in range(2, 33)]


def softposit_round(sp: ModuleType, x: np.ndarray, nsize: int, es: int) -> tuple[list, list]:
    """SoftPosit's signed codes and values (float64) for float64 inputs x.

    The Python package converts from C double (``convertDoubleTo*``): float32 inputs are
    widened exactly, so this is SoftPosit's rounding of the exact input value.
    """
    named = {(8, 0): "P8", (16, 1): "P16", (32, 2): "P32"}
    codes, values = [], []
    for v in x.tolist():
        if (nsize, es) in named:
            suffix = named[(nsize, es)]
            p = getattr(sp, f"convertDoubleTo{suffix}")(v)
            code = p.v
            values.append(getattr(sp, f"convert{suffix}ToDouble")(p))
        else:
            p = sp.convertDoubleToPX2(v, nsize)
            code = p.v >> (32 - nsize)
            values.append(sp.convertPX2ToDouble(p))
        code &= (1 << nsize) - 1
        codes.append(code - (1 << nsize) if code >> (nsize - 1) else code)
        if codes[-1] == -(1 << (nsize - 1)):
            values[-1] = math.nan  # convertP8ToDouble gives inf for NaR; NaR is NaN here
    return codes, values


def boundary_sample(nsize: int, es: int, count: int, seed: int) -> np.ndarray:
    """Exact rounding boundaries (and values) of random codes, as float64, both signs."""
    rng = np.random.default_rng(seed)
    top = (1 << (nsize - 1)) - 1
    picks = np.unique(np.concatenate([rng.integers(1, max(top, 2), count), [1, top, top - 1]]))
    out = []
    for i in picks.tolist():
        if 1 <= i <= top:
            out.append(float(ref.decode(i, nsize, es)))  # type: ignore[arg-type]
        if 1 <= i < top:
            out.append(float(ref.decode(2 * i + 1, nsize + 1, es)))  # type: ignore[arg-type]
    pos = np.array(out)
    return np.concatenate([pos, -pos])


def softposit_inputs(nsize: int, es: int, dtype: np.dtype, full: bool) -> np.ndarray:
    if nsize <= 16 and (full or nsize <= 12):
        points = ref.all_boundaries(nsize, es)
    else:
        points = boundary_sample(nsize, es, 4000 if full else 400, seed=nsize)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = points.astype(dtype)
        cast = cast[np.isfinite(cast)]
        near = np.concatenate(
            [cast, np.nextafter(cast, dtype.type(np.inf)), np.nextafter(cast, dtype.type(-np.inf))]
        )
        count = 100_000 if full else 3000
        if dtype == np.float32:
            rand = torch.cat([random_float32(count, seed=nsize), SPECIALS_F32]).numpy()
        else:
            bits = np.random.default_rng(nsize).integers(-(2**63), 2**63 - 1, count)
            rand = np.concatenate([bits.view(np.float64), [0.0, -0.0, np.inf, -np.inf, np.nan]])
        return np.concatenate([near, rand.astype(dtype)])


def check_softposit(nsize: int, es: int, dtype: np.dtype, full: bool) -> None:
    sp = pytest.importorskip("softposit")
    with np.errstate(invalid="ignore"):  # signalling NaN bit patterns
        x = softposit_inputs(nsize, es, np.dtype(dtype), full)
        codes, values = softposit_round(sp, x.astype(np.float64), nsize, es)
    xt = torch.from_numpy(x)
    got_codes = Posit(nsize, es).encode(xt).numpy()
    bad = np.flatnonzero(got_codes != np.array(codes))
    assert bad.size == 0, (x[bad[:5]], got_codes[bad[:5]], np.array(codes)[bad[:5]])
    expected = torch.tensor(values, dtype=torch.float64).to(xt.dtype)  # exact: es = 2 or less
    assert bits_equal(quantize(xt, Posit(nsize, es)), expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("nsize", "es"), SOFTPOSIT_FORMATS)
def test_matches_softposit(nsize: int, es: int, dtype: np.dtype) -> None:
    check_softposit(nsize, es, dtype, full=False)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("nsize", "es"), SOFTPOSIT_FORMATS)
def test_matches_softposit_full(nsize: int, es: int, dtype: np.dtype) -> None:
    check_softposit(nsize, es, dtype, full=True)


# ---------------------------------------------------------------- the format as a value


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nsize": 1, "es": 0}, "Posit: nsize must be in 2..32, got 1"),
        ({"nsize": 33, "es": 2}, "Posit: nsize must be in 2..32, got 33"),
        ({"nsize": 8, "es": 5}, "Posit: es must be in 0..4, got 5"),
        ({"nsize": 8, "es": -1}, "Posit: es must be in 0..4, got -1"),
        ({"nsize": 8, "es": 1, "scale": 0.0}, "Posit: scale must be a positive finite"),
        ({"nsize": 8, "es": 1, "scale": -2.0}, "Posit: scale must be a positive finite"),
        ({"nsize": 8, "es": 1, "scale": math.inf}, "Posit: scale must be a positive finite"),
        ({"nsize": 8, "es": 1, "scale": math.nan}, "Posit: scale must be a positive finite"),
    ],
)
def test_bad_parameters_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Posit(**kwargs)


def test_bad_types_raise() -> None:
    with pytest.raises(TypeError, match="nsize"):
        Posit(8.0, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scale"):
        Posit(8, 1, "2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Positbf: nsize must be in 2\.\.8, got 9"):
        Positbf(9, 1)


def test_value_semantics() -> None:
    assert Posit(8, 2) == Posit(8, 2, 1.0)
    assert hash(Posit(8, 2)) == hash(Posit(8, 2, 1.0))
    assert Posit(8, 2) != Positbf(8, 2)
    assert repr(Posit(16, 1)) == "Posit(nsize=16, es=1, scale=1.0)"
    assert eval(repr(Positbf(6, 1, 2.0))) == Positbf(6, 1, 2.0)
    assert str(Posit(8, 1))  # qtorch+ raised here


@pytest.mark.parametrize(("nsize", "es"), [(2, 0), (3, 2), (5, 4), (8, 0), (8, 2), (12, 1)])
def test_properties_match_reference(nsize: int, es: int) -> None:
    fmt = Posit(nsize, es)
    values = ref.sorted_values(nsize, es)
    positive = [v for v in values if v > 0]
    assert fmt.bits == nsize
    assert fmt.useed == 2 ** (2**es)
    assert Fraction(fmt.max) == positive[-1] == ref.maxpos(nsize, es)
    assert Fraction(fmt.min_positive) == positive[0] == ref.minpos(nsize, es)
    above_one = [v for v in positive if v > 1]
    assert fmt.eps == (float(above_one[0] - 1) if above_one else math.inf)


def test_scaled_properties() -> None:
    fmt = Posit(8, 1, scale=4.0)
    assert fmt.max == 2.0**12 / 4 and fmt.min_positive == 2.0**-12 / 4
    assert Posit(32, 4).max == 2.0**480 and Posit(32, 4).min_positive == 2.0**-480


def test_values_needs_sixteen_bits_or_fewer() -> None:
    with pytest.raises(ValueError, match="nsize <= 16"):
        Posit(17, 1).values()


# ---------------------------------------------------------------- the examples


def test_rounding_is_on_the_encoding() -> None:
    q = quantize(torch.tensor([4.0e6, 4.2e6, -4.2e6]), Posit(8, 2))
    assert q.tolist() == [2.0**20, 2.0**24, -(2.0**24)]
    q = quantize(torch.tensor([10.0, 7.5, -10.0]), Posit(4, 1))
    assert q.tolist() == [16.0, 4.0, -16.0]


def test_bfloat16_posit7_keeps_2_5() -> None:
    x = torch.tensor([2.5], dtype=torch.bfloat16)
    assert quantize(x, Positbf(7, 2)).item() == 2.5
    assert quantize(x, Posit(7, 2)).item() == 2.5


# ---------------------------------------------------------------- specials and saturation


@pytest.mark.parametrize(("nsize", "es"), [(8, 0), (8, 2), (16, 1), (32, 2), (12, 4), (32, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_specials(nsize: int, es: int, dtype: torch.dtype) -> None:
    fmt = Posit(nsize, es)
    tiny = torch.finfo(dtype).smallest_normal * 2.0**-10  # a subnormal
    x = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, tiny, -tiny], dtype=dtype)
    q = quantize(x, fmt)
    assert q[:2].tolist() == [0.0, 0.0] and not torch.signbit(q[:2]).any()
    assert torch.isnan(q[2:5]).all()
    assert (q[5] > 0) and (q[6] < 0)  # never 0
    big = torch.tensor([torch.finfo(dtype).max, -torch.finfo(dtype).max], dtype=dtype)
    assert torch.isfinite(quantize(big, fmt)).all()
    if dtype == torch.float64:  # float64 holds every posit: exact saturation
        assert quantize(x[5:], fmt).tolist() == [fmt.min_positive, -fmt.min_positive]
        assert quantize(big, fmt).tolist() == [fmt.max, -fmt.max]
    codes = fmt.encode(x)
    nar = -(2 ** (nsize - 1))
    tiny_code = ref.round_nearest(Fraction(float(x[5])), nsize, es)  # 1 unless minpos < tiny
    assert codes.tolist() == [0, 0, nar, nar, nar, tiny_code, -tiny_code]


def test_wide_format_in_float32_saturates_at_float32_posits() -> None:
    fmt = Posit(16, 4)  # minpos 2**-224, maxpos 2**224
    values, _ = ref.table(16, 4)
    lo = values[values >= 2.0**-149].min()
    hi = values[values <= F32_MAX].max()
    x = torch.tensor([2.0**-149, 1e-45, F32_MAX, -F32_MAX, 2.0**127 * 1.9])
    q = quantize(x, fmt)
    assert q.tolist() == [lo, lo, hi, -hi, hi]
    assert quantize(x.double(), fmt)[2].item() == float(
        ref.decode(ref.round_nearest(Fraction(F32_MAX), 16, 4), 16, 4)  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("es", [0, 1, 2])
def test_posit32_is_exact_near_one(es: int) -> None:
    """posit<32,es> has at least 23 fraction bits near 1: float32 inputs come back unchanged."""
    g = torch.Generator().manual_seed(es)
    x = torch.rand(20000, generator=g) * 2 - 1
    x = torch.ldexp(x, torch.randint(-4, 5, x.shape, generator=g))
    assert bits_equal(quantize(x, Posit(32, es)), x)


# ---------------------------------------------------------------- encode / decode


@pytest.mark.parametrize(("nsize", "es"), [(2, 0), (8, 0), (8, 4), (12, 3), (16, 1)])
def test_round_trip_every_code(nsize: int, es: int) -> None:
    fmt = Posit(nsize, es)
    half = 1 << (nsize - 1)
    codes = torch.arange(-half + 1, half, dtype=torch.int32)
    values = fmt.decode(codes, dtype=torch.float64)
    assert torch.equal(fmt.encode(values), codes)
    assert torch.equal(values, fmt.values())
    assert torch.isnan(fmt.decode(torch.tensor([-half, half])).float()).all()  # NaR, both forms


@pytest.mark.slow
@pytest.mark.parametrize(("nsize", "es"), [(n, es) for n in range(2, 17) for es in range(5)])
def test_round_trip_every_code_all_formats(nsize: int, es: int) -> None:
    test_round_trip_every_code(nsize, es)


@pytest.mark.parametrize(("nsize", "es"), [(32, 0), (32, 2), (32, 4), (24, 3), (17, 1)])
def test_round_trip_sampled_codes(nsize: int, es: int) -> None:
    fmt = Posit(nsize, es)
    half = 1 << (nsize - 1)
    g = torch.Generator().manual_seed(nsize)
    codes = torch.randint(-half + 1, half, (20000,), generator=g, dtype=torch.int64)
    codes = torch.cat([codes, torch.tensor([1, -1, half - 1, -half + 1, 0])]).to(torch.int32)
    values = fmt.decode(codes, dtype=torch.float64)
    assert torch.equal(fmt.encode(values), codes)
    some = codes[:200].tolist()
    assert values[:200].tolist() == [float(ref.decode(c, nsize, es)) for c in some]  # type: ignore[arg-type]


def test_decode_dtypes_and_errors() -> None:
    assert Positbf(8, 1).decode(torch.tensor([64])).dtype == torch.bfloat16
    assert Posit(8, 1).decode(torch.tensor([64])).dtype == torch.float32
    assert Posit(8, 1, scale=2.0).decode(torch.tensor([64])).item() == 0.5
    with pytest.raises(TypeError, match="integer tensor"):
        Posit(8, 1).decode(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="floating-point tensor"):
        Posit(8, 1).encode(torch.tensor([1]))


# ---------------------------------------------------------------- scale


@pytest.mark.parametrize("scale", [4.0, 0.125, 3.0])
def test_scale_multiplies_then_divides(scale: float) -> None:
    x = random_float32(5000, seed=7, finite=True)
    x = x[(x.abs() > 1e-30) & (x.abs() < 1e30)]
    expected = quantize(x * scale, Posit(8, 1)) / scale
    assert bits_equal(quantize(x, Posit(8, 1, scale)), expected)


# ---------------------------------------------------------------- tensors and dtypes


def test_tensor_contract() -> None:
    fmt = Posit(8, 1)
    x = torch.randn(6, 5)
    before = x.clone()
    q = quantize(x.t(), fmt)  # non-contiguous
    assert torch.equal(q, quantize(x.t().contiguous(), fmt))
    assert torch.equal(x, before)
    assert quantize(torch.empty(0, 3), fmt).shape == (0, 3)
    assert quantize(torch.tensor(3.3), fmt).item() == 3.25
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        y = quantize(x.to(dtype), fmt)
        assert y.dtype == dtype
        assert torch.equal(y.float(), quantize(x.to(dtype).float(), fmt))
    with pytest.raises(TypeError):
        quantize(torch.tensor([1, 2]), fmt)
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize(x, fmt, "up")


@pytest.mark.slow
@pytest.mark.parametrize(("nsize", "es"), [(8, 0), (16, 1), (32, 2), (16, 4)])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_compiled_matches_eager(nsize: int, es: int, rounding: str) -> None:
    x = torch.cat([random_float32(50_000, seed=1), SPECIALS_F32])
    fmt = Posit(nsize, es)
    with kernel_mode("eager"):
        eager = quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(3))
    with kernel_mode("compiled"):
        compiled = quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(3))
    assert bits_equal(eager, compiled)


# ---------------------------------------------------------------- stochastic rounding


def neighbour_pair(x: float, nsize: int, es: int) -> tuple[float, float]:
    a, b = ref.neighbours(Fraction(x), nsize, es)
    return float(a), float(b)


@pytest.mark.parametrize(("nsize", "es"), [(6, 1), (8, 2), (8, 0), (16, 4)])
def test_stochastic_gives_a_neighbour(nsize: int, es: int) -> None:
    fmt = Posit(nsize, es)
    x = torch.exp(torch.randn(400) * (2.0 ** (es + 1))) * torch.sign(torch.randn(400))
    x = x.double().clamp(-fmt.max, fmt.max)
    x = torch.where(x.abs() < fmt.min_positive, fmt.min_positive, x)
    q = quantize(x.repeat(20), fmt, "stochastic").view(20, -1)
    for j, v in enumerate(x.tolist()):
        allowed = set(neighbour_pair(v, nsize, es))
        assert set(q[:, j].tolist()) <= allowed


@pytest.mark.parametrize(
    ("nsize", "es", "x"),
    [
        (8, 0, 1.3),  # fraction bits: linear region
        (8, 2, 3.0e6),  # between 2**20 and 2**24 (exponent bits cut)
        (6, 1, 5.0),  # across a regime boundary
        (8, 2, -0.3),
        (16, 4, 1.0e20),
    ],
)
def test_stochastic_is_unbiased(nsize: int, es: int, x: float) -> None:
    n = 40_000
    q = quantize(torch.full((n,), x, dtype=torch.float64), Posit(nsize, es), "stochastic")
    lower, upper = neighbour_pair(x, nsize, es)
    p = (x - lower) / (upper - lower)
    assert set(q.unique().tolist()) == {lower, upper}
    sigma = abs(upper - lower) * math.sqrt(p * (1 - p) / n)
    assert abs(q.mean().item() - x) < 5 * sigma


def test_stochastic_outside_the_range_saturates() -> None:
    fmt = Posit(8, 1)
    x = torch.tensor([1e-30, -1e-30, 1e30, -1e30]).repeat(100)
    q = quantize(x, fmt, "stochastic")
    assert torch.equal(q, quantize(x, fmt))


def test_stochastic_is_reproducible() -> None:
    x = torch.randn(1000)
    fmt = Posit(8, 1)
    torch.manual_seed(5)
    a = quantize(x, fmt, "stochastic")
    torch.manual_seed(5)
    b = quantize(x, fmt, "stochastic")
    c = quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(5))
    d = quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(c, d)
    assert not torch.equal(a, quantize(x, fmt, "stochastic"))


def test_scale_overflow_and_underflow_saturate() -> None:
    """x * scale leaving the float range still saturates (with x's sign), never 0/NaN/Inf."""
    tiny = Posit(8, 1, scale=2.0**-100)
    x = torch.tensor([-1e-30, 1e-30])
    assert tiny.encode(x).tolist() == [-1, 1]
    assert quantize(x, tiny).tolist() == [-tiny.min_positive, tiny.min_positive]
    huge = Posit(8, 1, scale=2.0**100)
    x = torch.tensor([3e38, -3e38])
    assert huge.encode(x).tolist() == [127, -127]
    assert quantize(x, huge).tolist() == [huge.max, -huge.max]


def test_input_requiring_grad_gets_a_result_in_its_graph() -> None:
    # As for every format: the eager ops keep the graph; rounding is a step function, so the
    # gradient through it is zero (straight-through estimators are qtorch.quant.quantizer's).
    x = (torch.randn(3000) * 4).requires_grad_()
    q = quantize(x, Posit(8, 2))
    assert q.requires_grad
    q.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))
    with torch.no_grad():
        assert bits_equal(q.detach(), quantize(x, Posit(8, 2)))
