"""The fast rounding formulations against the general reference, bitwise.

``round_fraction_bits`` (rounding on the bit pattern) and ``round_scaled`` (multiplying by
constants) are what the float, fixed and block kernels run, because Inductor vectorizes
them. Each must give exactly what ``round_to_quantum`` gives (itself checked against
``fractions`` in tests/test_rounding.py); nearest is also checked against ``fractions``
here. Inputs: random bit patterns, every special value, and ties with their neighbours.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from typing import Any

import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal

from qtorch.formats.base import Format
from qtorch.formats.block import BlockFloatingPoint
from qtorch.formats.fixed import FixedPoint
from qtorch.formats.floating import FloatingPoint
from qtorch.formats.posit import Posit
from qtorch.kernels.bits import (
    copysign,
    exponent,
    flip_sign,
    flip_sign_bits,
    isnan,
    layout,
    mul_pow2,
    pattern,
    signbit,
)
from qtorch.kernels.floating import saturate_finite
from qtorch.kernels.per_block import stored
from qtorch.kernels.round import (
    binades_fit,
    binades_nearest_fit,
    round_binades_nearest,
    round_binades_stochastic,
    round_fraction_bits,
    round_scaled,
    round_to_quantum,
)
from qtorch.rounding import Rounding

DTYPES = [torch.float32, torch.float64]


def _random_bits(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """n values of ``dtype`` from uniformly random bit patterns (any class of value)."""
    g = torch.Generator().manual_seed(seed)
    lay = layout(dtype)
    if dtype == torch.float32:
        bits = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64)
        return bits.to(torch.int32).view(dtype)
    bits = torch.randint(-(2**63), 2**63 - 1, (n,), generator=g, dtype=torch.int64)
    return bits.to(lay.int_dtype).view(dtype)


def _with_ties(x: torch.Tensor, drop: int) -> torch.Tensor:
    """x plus patterns whose ``drop`` low bits are exactly half a step, and their neighbours."""
    lay = layout(x.dtype)
    bits = x.view(lay.int_dtype)
    half = (bits & ~((1 << drop) - 1)) | (1 << (drop - 1))
    ties = torch.cat([half - 1, half, half + 1]).view(x.dtype)
    return torch.cat([x, ties, SPECIALS_F32.to(x.dtype)])


def _noise(x: torch.Tensor, seed: int = 1) -> torch.Tensor:
    """Uniform noise like qtorch.quantize draws, with the extreme values 0 and 1 - ulp."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(x.shape, generator=g, dtype=x.dtype)
    noise[::7] = 0.0
    noise[1::7] = 1.0 - 2.0 ** -(layout(x.dtype).mantissa_bits + 1)
    return noise


def _pow2(e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """2.0**e elementwise, exactly (e within the normal range), via float64 ldexp."""
    return torch.ldexp(torch.ones(e.shape, dtype=torch.float64), e.to(torch.int64)).to(dtype)


def _eager_and_compiled(fn: Any, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(*args)`` run eagerly and compiled (static shapes, one graph)."""
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args), compiled(*args)


def _normal_or_special(x: torch.Tensor) -> torch.Tensor:
    """The elements of x that round_fraction_bits is specified for (not NaN)."""
    return x[~torch.isnan(x)]


@pytest.mark.parametrize("rounding", list(Rounding), ids=lambda r: r.value)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_fraction_bits_matches_reference(dtype: torch.dtype, rounding: Rounding) -> None:
    lay = layout(dtype)
    for man in sorted({0, 1, 2, 3, 7, 10, 22, lay.mantissa_bits - 1}):
        drop = lay.mantissa_bits - man
        x = _normal_or_special(_with_ties(_random_bits(4000, dtype, seed=man), drop))
        noise = _noise(x) if rounding is Rounding.STOCHASTIC else None
        normal = x.abs() >= 2.0**lay.min_normal_exp
        # the reference quantum: x's binade for normal x, the lowest binade for the others
        quantum_exp = torch.where(normal, exponent(x) - man, lay.min_normal_exp - man)
        expected = round_to_quantum(x, quantum_exp, rounding, noise)
        if man == 0 and rounding is Rounding.NEAREST:
            # no fraction bit: a tie between 2**e and 2**(e+1) goes to the even exponent
            # field (the integer reference always picks the even integer 2)
            e = exponent(x)
            tie = normal & (x.abs() == 1.5 * _pow2(e, dtype))
            even_field = (e + lay.bias) % 2 == 0
            expected = torch.where(tie & even_field, torch.copysign(_pow2(e, dtype), x), expected)
        got = round_fraction_bits(x, man, rounding, noise)
        assert bits_equal(got, expected), f"man={man}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_fraction_bits_nearest_matches_fractions(dtype: torch.dtype) -> None:
    man = 4
    x = _random_bits(3000, dtype, seed=5)
    drop = layout(dtype).mantissa_bits - man
    x = _with_ties(x[torch.isfinite(x) & (x.abs() >= 2.0 ** layout(dtype).min_normal_exp)], drop)
    x = x[torch.isfinite(x)]
    x = x[(x != 0) & (x.abs() >= 2.0 ** layout(dtype).min_normal_exp)]
    expected = []
    for v in x.tolist():
        step = Fraction(2) ** (math.frexp(v)[1] - 1 - man)
        exact = round(Fraction(v) / step) * step  # Python rounds Fractions half to even
        expected.append(math.copysign(float(exact), v) if exact < 2**1024 else math.inf)
    want = torch.tensor(expected, dtype=torch.float64).to(dtype)  # past the range: ±Inf
    assert bits_equal(round_fraction_bits(x, man, Rounding.NEAREST), want)


@pytest.mark.parametrize("rounding", list(Rounding), ids=lambda r: r.value)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_scaled_matches_reference(dtype: torch.dtype, rounding: Rounding) -> None:
    quanta = [-149, -133, -126, -24, -2, 0, 1, 3, 40]
    if dtype == torch.float64:
        quanta += [-1074, -1000, -60, 100]
    for q in quanta:
        x = torch.cat([_random_bits(4000, dtype, seed=q + 2000), SPECIALS_F32.to(dtype)])
        x = torch.cat(
            [x, (x * 2.0**q)[: x.numel() // 4], torch.tensor([2.0**q * 2.5], dtype=dtype)]
        )
        x = x[torch.isfinite(mul_pow2(x.abs(), -q)) | torch.isnan(x)]  # where it is specified
        noise = _noise(x) if rounding is Rounding.STOCHASTIC else None
        expected = round_to_quantum(x, q, rounding, noise)
        got = round_scaled(x, q, rounding, noise)
        assert bits_equal(got, expected), f"q={q}"
        assert torch.equal(torch.isnan(got), torch.isnan(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_binades_stochastic_matches_reference(dtype: torch.dtype) -> None:
    lay = layout(dtype)
    cases = [(1, 0), (1, 1), (3, -6), (2, -2), (3, -7), (10, -14), (1, lay.min_normal_exp + 1)]
    cases += [(lay.mantissa_bits, lay.min_normal_exp + lay.mantissa_bits)]
    for man, floor_exp in cases:
        assert binades_fit(dtype, man, floor_exp)
        g = torch.Generator().manual_seed(man - floor_exp)
        # random patterns, specials, and values in the binades around 2**floor_exp
        near = torch.ldexp(
            torch.rand(2000, generator=g, dtype=torch.float64) * 4 - 2,
            torch.randint(floor_exp - 3, floor_exp + man + 3, (2000,), generator=g),
        )
        x = torch.cat([_random_bits(4000, dtype, seed=man - floor_exp), SPECIALS_F32.to(dtype)])
        x = torch.cat([x, near.to(dtype), torch.tensor([0.75, -2.5], dtype=dtype)])
        noise = _noise(x, seed=man)
        quantum_exp = torch.clamp(exponent(x), min=floor_exp) - man
        expected = round_to_quantum(x, quantum_exp, Rounding.STOCHASTIC, noise)
        got = round_binades_stochastic(x, man, floor_exp, noise)
        nan = torch.isnan(x)
        assert torch.equal(torch.isnan(got), nan), (man, floor_exp)
        assert bits_equal(got[~nan], expected[~nan]), (man, floor_exp)
        # with a limit: magnitudes above it saturate, ±Inf included, signs kept
        limit = 2.0 ** (floor_exp + man + 2) * 1.5
        saturated = round_binades_stochastic(x, man, floor_exp, noise, limit)
        clamped = torch.where(
            expected.abs() > limit, torch.copysign(torch.tensor(limit, dtype=dtype), x), expected
        )
        assert bits_equal(saturated[~nan], clamped[~nan]), (man, floor_exp)
        assert torch.isnan(saturated[nan]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_binades_nearest_matches_reference(dtype: torch.dtype) -> None:
    lay = layout(dtype)
    cases = [(1, 0, 2), (1, 1, 1), (3, -6, 8), (2, -14, 15), (3, -7, 8), (10, -14, 15)]
    cases += [(1, lay.min_normal_exp, 3), (lay.mantissa_bits - 1, lay.min_normal_exp, 0)]
    cases += [(2, -3, lay.bias - lay.mantissa_bits + 1)]  # the highest top it allows
    for man, floor_exp, top_exp in cases:
        assert binades_nearest_fit(dtype, man, floor_exp, top_exp)
        g = torch.Generator().manual_seed(man - floor_exp)
        # random patterns, specials, ties, and values in the binades at both ends
        near = torch.ldexp(
            torch.rand(4000, generator=g, dtype=torch.float64) * 2,
            torch.cat(
                [
                    torch.randint(floor_exp - man - 3, floor_exp + 3, (2000,), generator=g),
                    torch.randint(top_exp - 2, top_exp + 3, (2000,), generator=g),
                ]
            ),
        )
        x = _random_bits(4000, dtype, seed=man - floor_exp)
        magnitude = _with_ties(torch.cat([x, near.to(dtype)]), lay.mantissa_bits - man).abs()
        quantum_exp = torch.clamp(exponent(magnitude), min=floor_exp) - man
        expected = round_to_quantum(magnitude, quantum_exp, Rounding.NEAREST)
        got = round_binades_nearest(magnitude, man, floor_exp, top_exp)
        nan = torch.isnan(magnitude)
        assert torch.equal(torch.isnan(got), nan), (man, floor_exp)
        assert not signbit(got[~nan]).any(), (man, floor_exp)  # +0, never -0
        below = magnitude < 2.0 ** (top_exp + 1)
        assert bits_equal(got[below], expected[below]), (man, floor_exp)
        # larger magnitudes (+Inf too) stay large enough to be seen as overflow
        above = ~below & ~nan
        assert (got[above] >= 2.0 ** (top_exp + 1)).all(), (man, floor_exp)


def test_binades_nearest_fit_refuses_what_it_cannot_round() -> None:
    assert not binades_nearest_fit(torch.float32, 0, -6, 7)  # no fraction bit: ties differ
    assert not binades_nearest_fit(torch.float32, 23, -6, 7)  # nothing to drop
    assert not binades_nearest_fit(torch.float32, 3, 1, 0)  # the top below the floor
    assert not binades_nearest_fit(torch.float32, 7, -126, 127)  # 2c would overflow
    assert binades_nearest_fit(torch.float32, 7, -126, 110)
    assert not binades_nearest_fit(torch.float32, 7, -126, 111)
    assert binades_nearest_fit(torch.float64, 7, -126, 127)


def test_binades_fit_refuses_quanta_it_cannot_scale_exactly() -> None:
    assert not binades_fit(torch.float32, 0, -3)  # no fraction bit
    assert not binades_fit(torch.float32, 7, -126)  # quantum 2**-133 is subnormal
    assert not binades_fit(torch.float32, 1, 2)  # the inverse 2**-1 scales below 1
    assert binades_fit(torch.float64, 7, -126)


def test_round_scaled_keeps_tiny_values_rounding_away() -> None:
    # 2**-149 scaled by 2**-3 underflows to zero; it must still round up to one quantum
    x = torch.tensor([2.0**-149, -(2.0**-149), 0.0, -0.0])
    assert round_scaled(x, 3, Rounding.UP).tolist() == [8.0, -0.0, 0.0, -0.0]
    assert round_scaled(x, 3, Rounding.DOWN).tolist() == [0.0, -8.0, 0.0, -0.0]
    assert torch.equal(signbit(round_scaled(x, 3, Rounding.UP)), torch.tensor([0, 1, 0, 1]).bool())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mul_pow2_is_exact(dtype: torch.dtype) -> None:
    bias = layout(dtype).bias
    for n in (-2 * bias + 40, -bias - 20, -bias + 1, -5, 0, 7, bias - 2, bias + 20, 2 * bias):
        x = torch.tensor([1.0, -3.0, 0.75, 0.0, -0.0], dtype=dtype) * 2.0 ** -max(n - bias + 2, 0)
        got = mul_pow2(x, n)
        expected = torch.tensor([math.ldexp(v, n) for v in x.tolist()], dtype=torch.float64)
        assert bits_equal(got, expected.to(dtype)), n


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bit_tests_match_torch(dtype: torch.dtype) -> None:
    x = torch.cat([_random_bits(2000, dtype), SPECIALS_F32.to(dtype), -SPECIALS_F32.to(dtype)])
    assert torch.equal(signbit(x), torch.signbit(x))
    assert torch.equal(isnan(x), torch.isnan(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pattern_is_the_tensors_bit_pattern(dtype: torch.dtype) -> None:
    lay = layout(dtype)
    for value in [*SPECIALS_F32.tolist(), 57344.0, -2.5, 2.0**-140]:
        want = torch.tensor(value, dtype=dtype).view(lay.int_dtype).item()
        assert pattern(value, dtype) == want, value
    if dtype == torch.float32:  # every Python float is a float64
        with pytest.raises(ValueError, match="not exact"):
            pattern(0.1, dtype)


@pytest.mark.parametrize("limit", [57344.0, 448.0, 2.0**-130, 3.4028234663852886e38])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_saturate_finite_clamps_finite_magnitudes_only(dtype: torch.dtype, limit: float) -> None:
    """Eager and compiled, against a per-element Python reference on the bit patterns:
    finite magnitudes above the limit become the limit; +Inf and NaN (any payload) stay."""
    lay = layout(dtype)
    quiet = torch.tensor([1 << (lay.mantissa_bits - 1)], dtype=lay.int_dtype)
    nans = (torch.tensor([math.inf], dtype=dtype).view(lay.int_dtype) | quiet | 5).view(dtype)
    near = torch.tensor([limit], dtype=dtype).view(lay.int_dtype) + torch.arange(-2, 3).to(
        lay.int_dtype
    )
    r = torch.cat(
        [_random_bits(4000, dtype, seed=9), SPECIALS_F32.to(dtype), nans, near.view(dtype)]
    ).abs()  # magnitudes: the sign bit clear (NaN too)
    limit_bits = pattern(limit, dtype)
    want = [
        b if math.isnan(v) or math.isinf(v) or v <= limit else limit_bits
        for b, v in zip(r.view(lay.int_dtype).tolist(), r.tolist(), strict=True)
    ]
    want_bits = torch.tensor(want, dtype=lay.int_dtype)
    for got in _eager_and_compiled(saturate_finite, r, limit):
        assert torch.equal(got.view(lay.int_dtype), want_bits)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_copysign_is_torch_copysign_bit_for_bit(dtype: torch.dtype) -> None:
    """Eager and compiled (where it is a where on the sign bit), NaN payloads and signs too."""
    lay = layout(dtype)
    specials = torch.cat([SPECIALS_F32, -SPECIALS_F32]).to(dtype)
    negative_nan = (torch.tensor([-1], dtype=lay.int_dtype) << (lay.mantissa_bits - 1)).view(dtype)
    specials = torch.cat([specials, negative_nan, -negative_nan])
    v = torch.cat([_random_bits(3000, dtype, seed=5), specials.repeat_interleave(len(specials))])
    x = torch.cat([_random_bits(3000, dtype, seed=6), specials.repeat(len(specials))])
    want = torch.copysign(v, x).view(lay.int_dtype)
    for got in _eager_and_compiled(copysign, v, x):
        assert torch.equal(got.view(lay.int_dtype), want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_flip_sign_is_a_negation_where_x_is_negative(dtype: torch.dtype) -> None:
    """Both forms (the select, for an autograd graph and compiled CPU code; the bit
    operations otherwise) against ``where(torch.signbit(x), torch.neg(v), v)``, bit for bit:
    zeros and NaN flip too."""
    lay = layout(dtype)
    specials = torch.cat([SPECIALS_F32, -SPECIALS_F32]).to(dtype)
    v = torch.cat([_random_bits(3000, dtype, seed=7), specials.repeat_interleave(len(specials))])
    x = torch.cat([_random_bits(3000, dtype, seed=8), specials.repeat(len(specials))])
    want = torch.where(torch.signbit(x), torch.neg(v), v).view(lay.int_dtype)
    assert torch.equal(flip_sign(v, x).view(lay.int_dtype), want)
    assert torch.equal(flip_sign_bits(v, x.view(lay.int_dtype)).view(lay.int_dtype), want)
    # with a graph to build: the select, which keeps v in it (gradient ±1)
    w = v.clone().requires_grad_()
    flipped = flip_sign(w, x)
    assert torch.equal(flipped.detach().view(lay.int_dtype), want)
    flipped.sum().backward()
    assert w.grad is not None
    assert torch.equal(w.grad, torch.where(torch.signbit(x), -1.0, 1.0).to(dtype))
    zero = torch.zeros(1, dtype=dtype)
    assert torch.signbit(flip_sign_bits(zero, torch.tensor([-1], dtype=lay.int_dtype))).item()


@pytest.mark.parametrize("fmt", [Posit(8, 2), BlockFloatingPoint(8)], ids=repr)
def test_compiled_kernel_keeps_the_autograd_graph(fmt: Format) -> None:
    """Traced into a user's compiled function, a quantizer's result stays in x's graph."""
    x = torch.randn(64, requires_grad=True)

    def kernel(x: torch.Tensor) -> torch.Tensor:
        return fmt.quantize_kernel(x, Rounding.NEAREST, None)

    kernel.__code__ = kernel.__code__.replace(co_name=f"graph_{type(fmt).__name__}")
    y = torch.compile(kernel, fullgraph=True, backend="aot_eager")(x)
    assert y.requires_grad and bits_equal(y.detach(), kernel(x.detach()))
    (y * torch.arange(64.0)).sum().backward()
    compiled_grad = x.grad
    x.grad = None
    (kernel(x) * torch.arange(64.0)).sum().backward()
    assert compiled_grad is not None and bits_equal(compiled_grad, x.grad)


#: Float layouts whose kernels take different branches (subnormal flush, man=0 ties, fn
#: layouts, 8 exponent bits, IEEE overflow) plus fixed and block formats.
COMPILED_FORMATS = [
    FloatingPoint(5, 10),
    FloatingPoint(8, 7),
    FloatingPoint(8, 23, subnormals=False),
    FloatingPoint(4, 3, has_inf=False),
    FloatingPoint(4, 3, has_inf=False, saturate=False),
    FloatingPoint(5, 2, saturate=False),
    FloatingPoint(2, 1, has_inf=False, has_nan=False),
    FloatingPoint(3, 0, subnormals=False),
    FloatingPoint(1, 0, has_inf=False, has_nan=False),
    FixedPoint(8, 4),
    FixedPoint(12, -3, symmetric=True),
    BlockFloatingPoint(8),
]


@pytest.mark.slow
@pytest.mark.parametrize("rounding", list(Rounding), ids=lambda r: r.value)
@pytest.mark.parametrize("fmt", COMPILED_FORMATS, ids=repr)
def test_compiled_kernel_is_bitwise_eager(fmt: Format, rounding: Rounding) -> None:
    x = torch.cat([_random_bits(20011, torch.float32, seed=3), SPECIALS_F32, -SPECIALS_F32])
    x = torch.cat([x, torch.randn(4099) * 3, torch.randn(4099) * 2.0**-130])
    noise = _noise(x) if rounding is Rounding.STOCHASTIC else None

    def kernel(x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return fmt.quantize_kernel(x, rounding, noise)

    # a code object of its own: Dynamo caches at most 8 graphs per code object
    kernel.__code__ = kernel.__code__.replace(co_name=f"kernel_{abs(hash((fmt, rounding)))}")
    compiled = torch.compile(kernel, fullgraph=True, dynamic=False)
    with warnings.catch_warnings():  # Inductor's own deprecation notices, under -W error
        warnings.simplefilter("ignore")
        fused = compiled(x, noise)
    assert bits_equal(fused, fmt.quantize_kernel(x, rounding, noise))


def test_stored_returns_the_factors_and_needs_two() -> None:
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    out = stored(a, b)
    assert len(out) == 2 and bits_equal(out[0], a) and bits_equal(out[1], b)
    with pytest.raises(ValueError, match="two or more"):
        stored(a)
