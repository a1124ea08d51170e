"""BlockFloatingPoint against an exact reference written with Python fractions (bitwise)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from fractions import Fraction

import numpy as np
import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, neighbours_f32, random_float32

from qtorch import BlockFloatingPoint, Rounding, quantize
from qtorch.kernel_mode import kernel_mode
from qtorch.kernels.block import max_in_rows

DETERMINISTIC = [m for m in Rounding if m is not Rounding.STOCHASTIC]
F32_MAX = 3.4028234663852886e38


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    """These tests check the numerics of the eager reference (compiling costs seconds here)."""
    with kernel_mode("eager"):
        yield


def _round(k: Fraction, mode: Rounding) -> int:
    if mode is Rounding.NEAREST:
        return round(k)  # half to even
    if mode is Rounding.TOWARD_ZERO:
        return math.trunc(k)
    if mode is Rounding.DOWN:
        return math.floor(k)
    return math.ceil(k)


def _reference_block(values: list[float], wl: int, mode: Rounding, f32: bool) -> list[float]:
    """One block: shared exponent of the largest magnitude, wl-bit sign-magnitude mantissas."""
    if any(not math.isfinite(v) for v in values):
        return [math.nan] * len(values)
    top = max(abs(Fraction(v)) for v in values)
    if top == 0:
        return list(values)
    e = math.frexp(top)[1] - 1  # frexp is exact: top = m * 2**(e+1), 0.5 <= m < 1
    step = Fraction(2) ** (e + 2 - wl)
    k_max = 2 ** (wl - 1) - 1
    out = []
    for v in values:
        k = max(-k_max, min(k_max, _round(Fraction(v) / step, mode)))
        q = k * step
        held = float(np.float32(float(q))) if f32 else float(q)
        assert Fraction(held) == q
        out.append(math.copysign(held, v))
    return out


def reference(x: torch.Tensor, fmt: BlockFloatingPoint, mode: Rounding) -> torch.Tensor:
    """Exact block floating point of x (float32 or float64), block by block."""
    f32 = x.dtype == torch.float32
    out = x.clone()
    if fmt.dim == -1:
        flat = _reference_block(x.flatten().tolist(), fmt.wl, mode, f32)
        return torch.tensor(flat, dtype=x.dtype).reshape(x.shape)
    for i in range(x.shape[fmt.dim]):
        block = x.select(fmt.dim, i)
        q = _reference_block(block.flatten().tolist(), fmt.wl, mode, f32)
        out.select(fmt.dim, i).copy_(torch.tensor(q, dtype=x.dtype).reshape(block.shape))
    return out


def test_issue_examples() -> None:
    x = torch.tensor([1.0, 0.3, -0.7])
    assert quantize(x, BlockFloatingPoint(4), "nearest").tolist() == [1.0, 0.25, -0.75]


def _vector(seed: int, n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = 2.0 ** torch.randint(-30, 30, (1,), generator=g).item()
    return (torch.randn(n, generator=g) * scale).float()


@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("wl", [2, 3, 4, 8, 12, 24, 25, 26, 40])
def test_whole_tensor_block_matches_fractions(wl: int, mode: Rounding) -> None:
    fmt = BlockFloatingPoint(wl)
    for seed in range(3):
        x = _vector(seed + wl)
        # every rounding boundary of this block's grid and its float32 neighbours
        top = x.abs().max().item()
        e = math.frexp(top)[1] - 1
        step = 2.0 ** (e + 2 - wl)
        ks = torch.arange(-(2 ** min(wl - 1, 6)), 2 ** min(wl - 1, 6), dtype=torch.float64)
        boundaries = torch.cat([ks * step, (ks + 0.5) * step]).float()
        boundaries = boundaries[boundaries.abs() <= top]
        x = torch.cat([x, neighbours_f32(boundaries), torch.tensor([-0.0, 0.0])])
        assert bits_equal(quantize(x, fmt, mode), reference(x, fmt, mode))


@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_per_slice_blocks_3d(dim: int, mode: Rounding) -> None:
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(4, 5, 6, generator=g) * 2.0 ** torch.randint(-20, 20, (4, 5, 6), generator=g)
    x.select(dim, 1).copy_(-x.select(dim, 1).abs())  # an all-negative slice
    x.select(dim, 2).zero_()  # an all-zero slice
    x.select(dim, 3).fill_(-0.0)
    fmt = BlockFloatingPoint(5, dim)
    assert bits_equal(quantize(x, fmt, mode), reference(x, fmt, mode))


def test_all_negative_slice_uses_largest_magnitude() -> None:
    """QPyTorch+ took the signed maximum here: -0.5 would have set the exponent."""
    x = torch.tensor([[-0.5, -3.0, -0.3], [0.3, 0.2, 0.1]])
    got = quantize(x, BlockFloatingPoint(4, dim=0), "nearest")
    assert got.tolist() == [[-0.5, -3.0, -0.5], [0.3125, 0.1875, 0.125]]


@pytest.mark.parametrize("mode", list(Rounding))
def test_near_float32_max_keeps_sign(mode: Rounding) -> None:
    x = torch.tensor([F32_MAX, -F32_MAX, 2.0**127, -(2.0**127 * 1.999), 1.0])
    for wl in (2, 4, 8, 24, 25, 32):
        fmt = BlockFloatingPoint(wl)
        got = quantize(x, fmt, mode)
        assert torch.isfinite(got).all() and torch.equal(got[:4].sign(), x[:4].sign())
        if mode is not Rounding.STOCHASTIC:
            assert bits_equal(got, reference(x, fmt, mode))


def test_specials_make_the_block_nan() -> None:
    x = torch.tensor([[1.0, math.nan, 2.0], [1.0, 0.5, 0.25], [math.inf, 1.0, 0.0]])
    got = quantize(x, BlockFloatingPoint(8, dim=0))
    assert got[0].isnan().all() and got[2].isnan().all()
    assert got[1].tolist() == [1.0, 0.5, 0.25]
    assert quantize(x, BlockFloatingPoint(8)).isnan().all()
    assert quantize(torch.tensor([-math.inf, 1.0]), BlockFloatingPoint(8)).isnan().all()


@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_random_bit_patterns_per_row(mode: Rounding) -> None:
    x = torch.cat([random_float32(600, seed=5, finite=True)[:588], SPECIALS_F32]).reshape(50, 12)
    fmt = BlockFloatingPoint(6, dim=0)
    assert bits_equal(quantize(x, fmt, mode), reference(x, fmt, mode))


def _reference_stochastic(values: list[float], noise: list[float], wl: int) -> list[float]:
    """One float32 block rounded stochastically with the given noise: up where the noise
    is below the exact fraction of |v| / step (so a nonzero v far below the step rounds up
    only with noise 0)."""
    top = max(abs(Fraction(v)) for v in values)
    if top == 0:
        return list(values)
    step = Fraction(2) ** (math.frexp(top)[1] - 1 + 2 - wl)
    out = []
    for v, u in zip(values, noise, strict=True):
        scaled = abs(Fraction(v)) / step
        k = min(2 ** (wl - 1) - 1, math.floor(scaled) + (Fraction(u) < scaled % 1))
        out.append(math.copysign(float(k * step), v))
    return out


@pytest.mark.parametrize("wl", [3, 6, 12])
def test_stochastic_with_given_noise_matches_fractions(wl: int) -> None:
    """Rows of random bit patterns (elements far below their row's step, whose scaled
    magnitude underflows, included), with noise of 0 at every fifth element."""
    x = random_float32(700, seed=wl, finite=True)[:600].reshape(50, 12)
    x[::7, ::3] = 0.0
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(wl))
    noise.view(-1)[::5] = 0.0
    fmt = BlockFloatingPoint(wl, dim=0)
    got = fmt.quantize_kernel(x, Rounding.STOCHASTIC, noise)
    rows = [_reference_stochastic(x[i].tolist(), noise[i].tolist(), wl) for i in range(x.shape[0])]
    assert bits_equal(got, torch.tensor(rows, dtype=torch.float32))


@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_subnormal_blocks(mode: Rounding) -> None:
    x = torch.tensor([[2.0**-149, -(2.0**-148), 3 * 2.0**-149], [2.0**-130, 2.0**-140, 0.0]])
    for wl in (2, 3, 8):
        fmt = BlockFloatingPoint(wl, dim=0)
        assert bits_equal(quantize(x, fmt, mode), reference(x, fmt, mode))


@pytest.mark.parametrize("mode", DETERMINISTIC)
def test_float64(mode: Rounding) -> None:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 40, dtype=torch.float64, generator=g) * 1e-200
    for fmt in (
        BlockFloatingPoint(8, dim=0),
        BlockFloatingPoint(40, dim=1),
        BlockFloatingPoint(53),
    ):
        got = quantize(x, fmt, mode)
        assert got.dtype == torch.float64 and bits_equal(got, reference(x, fmt, mode))


def test_stochastic_gives_a_neighbour_and_is_unbiased() -> None:
    n = 100_000
    values = [0.3, -0.7, 0.125 + 2**-9, -0.01]
    x = torch.cat([torch.tensor([1.0]), torch.tensor(values).repeat_interleave(n)])
    fmt = BlockFloatingPoint(4)  # step 0.25
    q = quantize(x, fmt, "stochastic")
    down = torch.floor(x.double() / 0.25) * 0.25  # exact in float64
    up = torch.ceil(x.double() / 0.25) * 0.25
    assert bool(((q.double() == down) | (q.double() == up)).all())
    for i, v in enumerate(values):
        chunk = q[1 + i * n : 1 + (i + 1) * n].double()
        v32 = float(np.float32(v))
        frac = (v32 - math.floor(v32 / 0.25) * 0.25) / 0.25
        ups = (chunk > math.floor(v32 / 0.25) * 0.25).double().mean().item()
        assert abs(ups - frac) <= 5 * math.sqrt(frac * (1 - frac) / n) + 1e-9, (v, ups, frac)


def test_stochastic_seeding() -> None:
    fmt = BlockFloatingPoint(6, dim=0)
    x = torch.randn(30, 40)
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


def test_properties_and_value_semantics() -> None:
    fmt = BlockFloatingPoint(8, dim=1)
    assert fmt.bits == 8 and fmt == BlockFloatingPoint(8, 1) and hash(fmt) == hash(eval(repr(fmt)))


@pytest.mark.parametrize(
    ("args", "message"),
    [((1,), "wl must be in 2..64, got 1"), ((65,), "wl must be in 2..64"), ((8, -2), "dim must")],
)
def test_bad_parameters(args: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BlockFloatingPoint(*args)


def test_dim_checked_against_the_tensor() -> None:
    with pytest.raises(ValueError, match=r"dim must be -1 or in 0..1 .* got 2"):
        quantize(torch.ones(3, 4), BlockFloatingPoint(8, dim=2))
    with pytest.raises(ValueError, match="dim must be -1 for a tensor with 0 dimensions"):
        quantize(torch.tensor(1.0), BlockFloatingPoint(8, dim=0))
    with pytest.raises(TypeError, match="wl must be an int"):
        BlockFloatingPoint(8.0)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("mode", DETERMINISTIC)
@pytest.mark.parametrize("wl", [2, 4, 8, 16, 24])
def test_sweep_random_blocks(wl: int, mode: Rounding) -> None:
    g = torch.Generator().manual_seed(wl)
    x = torch.randn(60, 70, generator=g) * 2.0 ** torch.randint(-40, 40, (60, 1), generator=g)
    x[::7] = -x[::7].abs()
    for dim in (-1, 0, 1):
        fmt = BlockFloatingPoint(wl, dim)
        assert bits_equal(quantize(x, fmt, mode), reference(x, fmt, mode))
    bits = random_float32(4200, seed=wl, finite=True)[:4000].reshape(40, 100)
    fmt = BlockFloatingPoint(wl, 0)
    assert bits_equal(quantize(bits, fmt, mode), reference(bits, fmt, mode))


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(Rounding))
@pytest.mark.parametrize("fmt", [BlockFloatingPoint(8), BlockFloatingPoint(5, dim=1)], ids=repr)
def test_compiled_kernel_is_bitwise_eager(fmt: BlockFloatingPoint, mode: Rounding) -> None:
    """torch.compile(fullgraph=True, dynamic=True) of the kernel gives the eager bits."""
    x = torch.randn(64, 50) * 2.0 ** torch.randint(-30, 30, (64, 1))
    x[3, 7] = math.nan
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


@pytest.mark.parametrize("int_loads_copy", [False, True], ids=["integer", "float"])
def test_both_compiled_block_maxima_give_the_eager_bits(
    int_loads_copy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiled for the CPU the block maximum is an integer maximum of the bits of |x|,
    or on AVX2 (whose integer vector loads go through a stack copy) a float maximum of
    |x|; each form, whatever this CPU's, against the eager kernel: blocks of two holding
    NaN, +-Inf and no NaN, subnormals, zeros, negative values only; whole-tensor blocks
    whose largest magnitude is negative, finite, -Inf or NaN."""
    from qtorch.kernels import block

    monkeypatch.setattr(block, "int_loads_copy", lambda: int_loads_copy)
    bits = torch.cat([SPECIALS_F32, random_float32(2 * 4099 - len(SPECIALS_F32), seed=5)])
    finite = random_float32(4099, seed=6, finite=True)
    finite[finite.abs().argmax()] = -finite.abs().max()
    with_inf = finite.clone()
    with_inf[7] = -math.inf
    with_nan = finite.clone()
    with_nan[-1] = math.nan  # past the rows whose maximum is taken at once (max_in_streams)
    cases = [
        (BlockFloatingPoint(8, dim=1), bits.view(2, 4099)),  # 4099 blocks of two
        (BlockFloatingPoint(8), finite),
        (BlockFloatingPoint(8), with_inf),
        (BlockFloatingPoint(8), with_nan),
    ]
    torch._dynamo.reset()
    for fmt, x in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # raised inside Inductor
            got = torch.compile(lambda a, f=fmt: f.quantize_kernel(a, Rounding.NEAREST, None))(x)
        assert bits_equal(got, fmt.quantize_kernel(x, Rounding.NEAREST, None)), fmt


@pytest.mark.parametrize("n", [1, 4095, 4096, 4097, 3 * 4096 + 5])
def test_max_in_rows_is_the_maximum(n: int) -> None:
    """The compiled Triton path's whole-tensor maximum (rows of 4096 of t zero-padded to
    whole rows and one more) against amax."""
    t = torch.randint(0, 2**31 - 1, (n,), generator=torch.Generator().manual_seed(n))
    t = t.to(torch.int32)
    for where in (0, n // 2, n - 1):  # the maximum in the first row, the middle, the tail
        u = t.clone()
        u[where] = 2**31 - 1
        assert int(max_in_rows(u)) == int(u.amax()) == 2**31 - 1
    assert int(max_in_rows(t.view(1, n))) == int(t.amax())
