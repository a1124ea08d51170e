"""OCP Microscaling (MX) formats, bit-exact against gfloat's block encoder.

gfloat (pure Python, independent of this library) computes each block with
``compute_scale_amax`` / ``encode_block`` / ``decode_block``; we compare values, element codes
and E8M0 scale codes bitwise. Where the two libraries deliberately differ (a block holding
±Inf) the test says so and checks the documented behaviour instead.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from edge_cases import bits_equal

import qtorch
from qtorch.formats.fixed import FixedPoint
from qtorch.formats.mx import (
    MX,
    ScaleRule,
    mxfp4_e2m1,
    mxfp6_e2m3,
    mxfp6_e3m2,
    mxfp8_e4m3,
    mxfp8_e5m2,
    mxint8,
)
from qtorch.formats.presets import float8_e4m3fn

gfloat = pytest.importorskip("gfloat")
gf = pytest.importorskip("gfloat.formats")

PRESETS = {
    "mxfp8_e4m3": (mxfp8_e4m3, gf.format_info_mxfp8_e4m3),
    "mxfp8_e5m2": (mxfp8_e5m2, gf.format_info_mxfp8_e5m2),
    "mxfp6_e3m2": (mxfp6_e3m2, gf.format_info_mxfp6_e3m2),
    "mxfp6_e2m3": (mxfp6_e2m3, gf.format_info_mxfp6_e2m3),
    "mxfp4_e2m1": (mxfp4_e2m1, gf.format_info_mxfp4_e2m1),
    "mxint8": (mxint8, gf.format_info_mxint8),
}


def gfloat_block(fi, vals: np.ndarray) -> tuple[np.ndarray, list[int], int]:
    """gfloat's quantized values, element codes and scale code of one block (float64).

    A NaN in the block makes gfloat's scale NaN (E8M0 code 255) and the decoded block NaN;
    its element codes are then meaningless (-1 here: gfloat cannot encode NaN elements of
    formats without NaN).
    """
    scale = gfloat.compute_scale_amax(fi.etype.emax, vals)
    if math.isnan(scale):
        return np.full(len(vals), np.nan), [-1] * len(vals), gfloat.encode_float(fi.stype, scale)
    codes = list(gfloat.encode_block(fi, scale, vals / scale))
    values = np.fromiter(gfloat.decode_block(fi, codes), float, count=len(vals))
    return values, codes[1:], codes[0]


def gfloat_reference(
    fmt: MX, fi, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize x blockwise along fmt.dim with gfloat: values, element codes, scale codes."""
    dim = fmt.dim % x.dim()
    moved = x.movedim(dim, -1).to(torch.float64)
    rows = moved.reshape(-1, moved.shape[-1]).numpy()
    n, b = moved.shape[-1], fmt.block_size
    blocks = -(-n // b)
    values = np.zeros(rows.shape)
    codes = np.zeros(rows.shape, dtype=np.int64)
    scales = np.zeros((rows.shape[0], blocks), dtype=np.int64)
    for r, row in enumerate(rows):
        for k in range(blocks):
            lo, hi = k * b, min(n, (k + 1) * b)
            v, c, s = gfloat_block(fi, row[lo:hi])
            values[r, lo:hi], codes[r, lo:hi], scales[r, k] = v, c, s
    shape = moved.shape
    out = torch.from_numpy(values).reshape(shape).movedim(-1, dim).to(x.dtype)
    code_t = torch.from_numpy(codes).reshape(shape).movedim(-1, dim)
    scale_t = torch.from_numpy(scales).reshape(*shape[:-1], blocks).movedim(-1, dim)
    return out, code_t, scale_t


def unsigned_zero(fmt: MX, q: torch.Tensor) -> torch.Tensor:
    """Two's-complement int8 has no -0 (gfloat gives +0); FixedPoint keeps the sign of zero
    in quantize, as every qtorch format does, so MXINT8 results are compared as +0."""
    return q + 0.0 if isinstance(fmt.element, FixedPoint) else q


def element_bits(fmt: MX, codes: torch.Tensor) -> torch.Tensor:
    """Our element codes as unsigned bit patterns (FixedPoint codes are signed integers)."""
    return codes.to(torch.int64) & ((1 << fmt.bits) - 1)


def random_blocks(rows: int, n: int, seed: int) -> torch.Tensor:
    """float32 rows whose blocks span many binades (normal, subnormal, huge, zeros)."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.randn(rows, n, generator=g, dtype=torch.float64)
    row_exp = torch.randint(-140, 120, (rows, 1), generator=g)
    spread = torch.randint(-12, 4, (rows, n), generator=g)
    x = torch.ldexp(mag, (row_exp + spread).to(torch.float64)).to(torch.float32)
    zeros = torch.rand(rows, n, generator=g) < 0.05
    return torch.where(zeros, torch.zeros_like(x), x)


def check_against_gfloat(fmt: MX, fi, x: torch.Tensor) -> None:
    want, want_codes, want_scales = gfloat_reference(fmt, fi, x)
    got = unsigned_zero(fmt, qtorch.quantize(x, fmt))
    assert bits_equal(got, want), (x[got != want], got[got != want], want[got != want])
    codes, scales = fmt.encode(x)
    meaningful = want_codes >= 0
    assert torch.equal(element_bits(fmt, codes)[meaningful], want_codes[meaningful])
    assert torch.equal(scales.to(torch.int64), want_scales)
    assert bits_equal(fmt.decode(codes, scales, dtype=x.dtype), want)


@pytest.mark.parametrize("name", PRESETS)
def test_random_blocks_match_gfloat(name: str) -> None:
    fmt, fi = PRESETS[name]
    check_against_gfloat(fmt, fi, random_blocks(12, 64, seed=len(name)))


@pytest.mark.parametrize("name", PRESETS)
def test_power_of_two_boundaries_match_gfloat(name: str) -> None:
    """Block maxima just below, at and just above powers of two and the element max."""
    fmt, fi = PRESETS[name]
    elem_max = fi.etype.max
    rows = []
    for k in (-130, -127, -20, 0, 1, 9, 100, 127):
        p = math.ldexp(1.0, k)
        for top in (p, p * elem_max / 2 ** math.floor(math.log2(elem_max))):
            t = torch.tensor(top, dtype=torch.float32)
            for m in (torch.nextafter(t, torch.tensor(0.0)), t, torch.nextafter(t, 2 * t)):
                base = random_blocks(1, 32, seed=k & 0xFFFF)[0]
                base = base / base.abs().max() * m * 0.75
                base[5] = -m
                rows.append(base)
    check_against_gfloat(fmt, fi, torch.stack(rows))


def test_957_becomes_896_under_the_spec_rule() -> None:
    """The reported case: 957 in an MXFP8-E4M3 block with the spec's (floor) scale."""
    x = torch.tensor([957.0] + [1.0] * 31)
    want, _, want_scales = gfloat_reference(mxfp8_e4m3, gf.format_info_mxfp8_e4m3, x)
    assert want[0].item() == 896.0
    got = qtorch.quantize(x, mxfp8_e4m3)
    assert got[0].item() == 896.0 and bits_equal(got, want)
    assert mxfp8_e4m3.encode(x)[1].tolist() == [want_scales.item()] == [128]
    # the round-up rule picks 2**2 instead of 2**1, so 957 rounds to 960 and never saturates
    ceil = MX(float8_e4m3fn, scale_rule="ceil")
    assert qtorch.quantize(x, ceil)[0].item() == 960.0
    assert ceil.encode(x)[1].tolist() == [129]


def test_ceil_rule_never_saturates_and_is_otherwise_floor() -> None:
    """CEIL = FLOOR except where FLOOR saturates the block maximum; then one binade up."""
    x = random_blocks(64, 32, seed=7)
    floor = MX(float8_e4m3fn)
    ceil = MX(float8_e4m3fn, scale_rule=ScaleRule.CEIL)
    _, s_floor = floor.encode(x)
    _, s_ceil = ceil.encode(x)
    amax = x.abs().reshape(64, 1, 32).amax(-1).to(torch.float64)
    scale = torch.ldexp(torch.ones_like(amax), (s_floor - 127).to(torch.float64))
    saturates = amax / scale > 448
    assert saturates.any() and (~saturates).any()
    assert torch.equal(s_ceil, s_floor + saturates.to(s_floor.dtype))
    ceil_scale = torch.ldexp(torch.ones_like(amax), (s_ceil - 127).to(torch.float64))
    assert bool((amax / ceil_scale <= 448).all())


@pytest.mark.parametrize("name", PRESETS)
def test_nan_block_matches_gfloat(name: str) -> None:
    fmt, fi = PRESETS[name]
    x = random_blocks(2, 64, seed=3)
    x[0, 40] = math.nan
    check_against_gfloat(fmt, fi, x)
    got = qtorch.quantize(x, fmt)
    assert bool(torch.isnan(got[0, 32:]).all()) and not bool(torch.isnan(got[0, :32]).any())
    assert fmt.encode(x)[1][0].tolist()[1] == 255


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("inf", [math.inf, -math.inf])
def test_inf_block_is_nan(name: str, inf: float) -> None:
    """Deliberate difference from gfloat: an Inf makes its block's scale NaN (code 255).

    gfloat clips the scale of an Inf block to 2**127 and saturates the Inf to the element
    max (448 * 2**127 for E4M3: Inf in float32), flushing the rest of the block to zero.
    The spec gives E8M0 no Inf and makes a NaN scale mean "every element NaN"; the
    reference code of the spec's authors (microsoft/microxcaling) turns a shared exponent
    above 127, as Inf gives, into NaN. We follow that: no Inf input turns into a finite value.
    """
    fmt, fi = PRESETS[name]
    x = random_blocks(2, 64, seed=4)
    x[1, 3] = inf
    got = unsigned_zero(fmt, qtorch.quantize(x, fmt))
    assert bool(torch.isnan(got[1, :32]).all())
    clean = x.clone()
    clean[1, :32] = 0.0
    want, _, _ = gfloat_reference(fmt, fi, clean)
    assert bits_equal(got[:, 32:], want[:, 32:]) and bits_equal(got[0], want[0])
    codes, scales = fmt.encode(x)
    assert scales.tolist()[1][0] == 255
    assert bool(torch.isnan(fmt.decode(codes, scales)[1, :32]).all())
    _, _, gf_scale = gfloat_block(fi, x[1, :32].double().numpy())
    assert gf_scale == 254  # gfloat's scale 2**127, the documented difference


@pytest.mark.parametrize("name", PRESETS)
def test_all_zero_blocks_match_gfloat(name: str) -> None:
    fmt, fi = PRESETS[name]
    x = torch.zeros(3, 40)
    x[1] = -0.0
    x[2, 35] = 1.5
    check_against_gfloat(fmt, fi, x)
    got = qtorch.quantize(x, fmt)
    assert torch.equal(torch.signbit(got), torch.signbit(x))
    assert fmt.encode(x)[1][0].tolist() == [0, 0]


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8"])
def test_shorter_last_block_and_other_dims(name: str) -> None:
    fmt, fi = PRESETS[name]
    for dim, shape, block in ((-1, (3, 70), 32), (0, (70, 5), 32), (1, (2, 37, 3), 8)):
        sized = MX(fmt.element, block_size=block, dim=dim)
        x = random_blocks(1, math.prod(shape), seed=dim + 5).reshape(shape)
        fi_sized = gfloat.BlockFormatInfo("test", fi.etype, block, fi.stype)
        check_against_gfloat(sized, fi_sized, x)
        assert sized.encode(x)[1].shape[dim] == -(-shape[dim] // block)


def test_blocks_along_dim_are_independent_of_other_dims() -> None:
    x = random_blocks(6, 32, seed=9).t().contiguous()  # 32 x 6, blocks down dim 0
    fmt = MX(float8_e4m3fn, dim=0)
    got = qtorch.quantize(x, fmt)
    for j in range(6):
        assert bits_equal(got[:, j], qtorch.quantize(x[:, j], mxfp8_e4m3))
    # non-contiguous input gives the same result
    assert bits_equal(qtorch.quantize(x.t(), MX(float8_e4m3fn, dim=1)), got.t())


@pytest.mark.parametrize("name", PRESETS)
def test_codes_round_trip(name: str) -> None:
    """decode(codes) then encode gives the same codes, for every non-NaN element code."""
    fmt, _ = PRESETS[name]
    element = fmt.element
    if isinstance(element, FixedPoint):
        # -128 (-2) is larger in magnitude than the anchor 1.0: a block holding it gets the
        # next scale up, so 0x80 only ever arises from rounding (e.g. -1.999 -> -2)
        all_codes = torch.arange(-127, 128)
    else:
        all_codes = torch.arange(1 << fmt.bits)
        all_codes = all_codes[torch.isfinite(element.decode(all_codes))]
    anchor = element.encode(torch.tensor([2.0**fmt.emax_elem]))  # fixes the scale
    rows = -(-len(all_codes) // 31)
    padded = torch.cat([all_codes, all_codes[: rows * 31 - len(all_codes)]])
    codes = torch.cat([anchor.expand(rows, 1), padded.reshape(rows, 31)], dim=1)
    for scale in (0, 1, 100, 127, 200, 254 - 15):
        scales = torch.full((rows, 1), scale, dtype=torch.int32)
        values = fmt.decode(codes, scales)
        again, again_scales = fmt.encode(values)
        assert torch.equal(again_scales, scales)
        assert torch.equal(element_bits(fmt, again), element_bits(fmt, codes))
        assert bits_equal(qtorch.quantize(values, fmt), values)
    nan = fmt.decode(codes[:1], torch.tensor([[255]]))
    assert bool(torch.isnan(nan).all())


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8"])
def test_stochastic_rounding_unbiased_given_the_scale(name: str) -> None:
    fmt, fi = PRESETS[name]
    g = torch.Generator().manual_seed(1)
    top = 2.0 ** (fmt.emax_elem + 3)  # block max: scale 2**3 under the spec rule
    row = (torch.rand(32, generator=g, dtype=torch.float64) * 2 - 1) * fi.etype.max * 8
    row[0] = top
    x = row.to(torch.float32).expand(4000, 32).contiguous()
    with qtorch.kernel_mode("eager"):
        q = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(123))
        again = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(123))
    assert bits_equal(q, again)  # seeded: reproducible
    assert fmt.encode(x[:1])[1].tolist() == [[127 + 3]]
    down = np.array(
        [
            gfloat.round_float(fi.etype, v / 8, gfloat.RoundMode.TowardNegative, True) * 8
            for v in row.tolist()
        ]
    )
    up = np.array(
        [
            gfloat.round_float(fi.etype, v / 8, gfloat.RoundMode.TowardPositive, True) * 8
            for v in row.tolist()
        ]
    )
    lo = torch.from_numpy(down).to(torch.float32)
    hi = torch.from_numpy(up).to(torch.float32)
    assert bool(((q == lo) | (q == hi)).all())  # always one of the two neighbours
    step = (hi - lo).to(torch.float64)
    mean = q.to(torch.float64).mean(dim=0)
    bound = 5 * step / (2 * math.sqrt(x.shape[0])) + 1e-12
    assert bool(((mean - row.to(torch.float32).double()).abs() <= bound).all())
    assert bool((step > 0).sum() > 20)  # most elements really needed rounding


def test_format_properties_and_repr() -> None:
    assert mxfp8_e4m3.bits == 8 and mxfp4_e2m1.bits == 4 and mxint8.bits == 8
    assert mxfp8_e4m3.max == 448 * 2.0**127
    assert mxfp4_e2m1.max == 6 * 2.0**127
    assert mxfp8_e4m3.min_positive == 2.0**-9 * 2.0**-127
    assert [f.emax_elem for f, _ in PRESETS.values()] == [8, 15, 4, 2, 2, 0]
    assert [fi.etype.emax for _, fi in PRESETS.values()] == [8, 15, 4, 2, 2, 0]
    for fmt in (mxfp8_e4m3, mxint8, MX(float8_e4m3fn, 16, 0, "ceil")):
        assert eval(repr(fmt), vars(qtorch)) == fmt
    assert hash(MX(float8_e4m3fn, scale_rule="floor")) == hash(mxfp8_e4m3)
    assert MX(float8_e4m3fn, scale_rule="CEIL").scale_rule is ScaleRule.CEIL


def test_bad_parameters_raise() -> None:
    with pytest.raises(ValueError, match="block_size"):
        MX(float8_e4m3fn, block_size=0)
    with pytest.raises(ValueError, match="scale_rule"):
        MX(float8_e4m3fn, scale_rule="round")
    with pytest.raises(TypeError, match="element"):
        MX("e4m3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="saturate"):
        MX(qtorch.formats.floating.FloatingPoint(4, 3, saturate=False))
    with pytest.raises(ValueError, match="dim"):
        qtorch.quantize(torch.ones(4, 4), MX(float8_e4m3fn, dim=2))
    with pytest.raises(ValueError, match="rounding"):
        qtorch.quantize(torch.ones(4), mxfp8_e4m3, "up")


def test_dtypes_shapes_and_input_untouched() -> None:
    x = random_blocks(2, 40, seed=11)
    before = x.clone()
    want = qtorch.quantize(x, mxfp6_e3m2)
    assert bits_equal(x, before)
    assert bits_equal(qtorch.quantize(x.double(), mxfp6_e3m2), want.double())
    h = x.clamp(-6e4, 6e4).half()
    assert bits_equal(qtorch.quantize(h, mxfp6_e3m2), qtorch.quantize(h.float(), mxfp6_e3m2).half())
    assert qtorch.quantize(torch.empty(0, 3), mxfp6_e3m2).shape == (0, 3)
    scalar = qtorch.quantize(torch.tensor(957.0), mxfp8_e4m3)
    assert scalar.shape == () and scalar.item() == 896.0
    codes, scales = mxfp8_e4m3.encode(torch.tensor(957.0))
    assert codes.shape == () and scales.tolist() == [128]


@pytest.mark.slow  # compiling takes 15-80 s on 2 cores
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize(
    "fmt, shape, dtype",
    [
        (MX(float8_e4m3fn, block_size=32, dim=0), (40, 130), torch.float32),  # short block
        (mxint8, (40, 128), torch.float32),  # the common case: dim=-1, whole blocks
        (mxfp4_e2m1, (3, 40, 64), torch.float64),
    ],
)
def test_compiled_matches_eager(rounding: str, fmt: MX, shape, dtype) -> None:
    """The fused torch.compile path keeps the blocks (MX is not elementwise) bit for bit."""
    x = random_blocks(shape[-2], shape[-1], seed=12).expand(shape).contiguous().to(dtype)
    with qtorch.kernel_mode("eager"):
        want = qtorch.quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings():
        # torch's own import-time DeprecationWarning inside Inductor is not ours to fail on
        warnings.simplefilter("ignore", DeprecationWarning)
        with qtorch.kernel_mode("compiled"):
            got = qtorch.quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(5))
    assert bits_equal(got, want)


@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8"])
def test_float64_beyond_the_e8m0_range_matches_gfloat(name: str) -> None:
    """float64 blocks above 2**127 * elem_max clamp the scale to 2**127 and saturate;
    blocks far below 2**-127 flush to zero (scale code 0)."""
    fmt, fi = PRESETS[name]
    g = torch.Generator().manual_seed(13)
    mag = torch.randn(4, 32, generator=g, dtype=torch.float64)
    x = torch.cat([mag * 1e300, mag * 1e-300, mag * 2.0**140, mag * 2.0**-135])
    check_against_gfloat(fmt, fi, x)
    assert fmt.encode(x)[1].flatten().tolist()[:8] == [254] * 4 + [0] * 4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rule", ["floor", "ceil"])
@pytest.mark.parametrize("name", ["mxfp8_e4m3", "mxfp4_e2m1", "mxint8"])
def test_scale_codes_match_the_exact_rule_at_binade_edges(name: str, rule: str, dtype) -> None:
    """Scale codes (one element per block) against the rule evaluated on exact rationals,
    for powers of two, multiples of the element max and their neighbours over the dtype's
    whole range, subnormals included (the ceil rule has a window just below 2**-126)."""
    element = PRESETS[name][0].element
    fmt = MX(element, block_size=1, scale_rule=rule)
    lay = torch.finfo(dtype)
    lo = -149 if dtype == torch.float32 else -1074
    hi = 127 if dtype == torch.float32 else 1023
    pows = torch.tensor([2.0**k for k in range(lo, hi + 1)], dtype=torch.float64).to(dtype)
    anchors = torch.cat([pows, (pows * float(element.max)).clamp(max=lay.max), torch.zeros(1)])
    anchors = anchors.to(dtype)
    x = torch.cat(
        [
            anchors,
            torch.nextafter(anchors, torch.full_like(anchors, lay.max)),
            torch.nextafter(anchors, torch.zeros_like(anchors)),
        ]
    ).unsqueeze(1)
    emax_elem = math.frexp(float(element.max))[1] - 1
    elem_max = Fraction(float(element.max))

    def exact_code(a: float) -> int:
        if a == 0:
            return 0
        e = math.frexp(a)[1] - 1 - emax_elem
        if rule == "ceil" and Fraction(a) > elem_max * Fraction(2) ** e:
            e += 1
        return min(max(e, -127), 127) + 127

    want = [exact_code(a) for a in x.flatten().tolist()]
    assert fmt.encode(x)[1].flatten().tolist() == want


def test_zero_and_tiny_blocks_under_flush_to_zero() -> None:
    """No scale factor is a float32 subnormal: with denormals flushed, all-zero and
    subnormal blocks (scale 2**-127) still give signed zeros, not NaN."""
    x = torch.zeros(2, 32)
    x[1, :3] = torch.tensor([1e-39, -3e-39, 1e-40])
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        for fmt in (mxfp8_e4m3, mxint8):
            q = qtorch.quantize(x, fmt)
            assert bits_equal(q, x * 0.0)
            assert fmt.encode(x)[1].flatten().tolist() == [0, 0]
    finally:
        torch.set_flush_denormal(False)
