"""NVFP4 against an independent per-block reference written here.

The reference follows NVIDIA's recipe step by step in numpy float32 arithmetic: the block
scale is ``amax / 6`` (divided by the tensor scale when there is one) cast to E4M3 with
ml_dtypes (after the saturating clamp at 448 that torchao also applies), and the elements are
rounded to E2M1 with gfloat's ``round_float``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from edge_cases import bits_equal

import qtorch
from qtorch.formats.nvfp4 import NVFP4, nvfp4

ml_dtypes = pytest.importorskip("ml_dtypes")
gfloat = pytest.importorskip("gfloat")
E2M1 = pytest.importorskip("gfloat.formats").format_info_ocp_e2m1
F32 = np.float32


def reference_block(
    vals: np.ndarray, g: float | None, dtype=F32
) -> tuple[np.ndarray, list[int], int]:
    """Values, E2M1 codes and E4M3 scale code of one block, in ``dtype`` arithmetic."""
    amax = np.abs(vals).max()
    if not np.isfinite(amax):
        nan_code = int(np.array(math.nan, dtype=ml_dtypes.float8_e4m3fn).view(np.uint8))
        return np.full(len(vals), np.nan), [0] * len(vals), nan_code & 0x7F
    raw = dtype(amax) / dtype(6.0)
    if g is not None:
        raw = raw / dtype(g)
    s8 = np.array(min(raw, 448.0), dtype=ml_dtypes.float8_e4m3fn)
    s = max(float(s8), 2.0**-9)
    s8 = np.array(s, dtype=ml_dtypes.float8_e4m3fn)
    d = dtype(s) if g is None else dtype(s) * dtype(g)
    out, codes = [], []
    for v in vals:
        e = gfloat.round_float(E2M1, float(dtype(v) / d), gfloat.RoundMode.TiesToEven, True)
        codes.append(gfloat.encode_float(E2M1, e))
        out.append(dtype(e) * d)
    return np.array(out, dtype=np.float64), codes, int(s8.view(np.uint8))


def reference(fmt: NVFP4, x: torch.Tensor, dtype=F32):
    """Blockwise reference along fmt.dim: values, element codes, scale codes."""
    g = fmt.tensor_scale
    if g == "amax":
        finite = x[torch.isfinite(x)].abs()
        amax = F32(finite.max().item()) if finite.numel() else F32(0)
        g = float(amax / F32(2688.0)) or 1.0
    dim = fmt.dim % x.dim()
    moved = x.movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1]).double().numpy()
    n, b = moved.shape[-1], fmt.block_size
    nb = -(-n // b)
    values, codes = np.zeros(rows.shape), np.zeros(rows.shape, dtype=np.int64)
    scales = np.zeros((rows.shape[0], nb), dtype=np.int64)
    for r, row in enumerate(rows):
        for k in range(nb):
            lo, hi = k * b, min(n, (k + 1) * b)
            v, c, s = reference_block(row[lo:hi], g, dtype)
            values[r, lo:hi], codes[r, lo:hi], scales[r, k] = v, c, s
    shape = moved.shape
    out = torch.from_numpy(values).reshape(shape).movedim(-1, dim).to(x.dtype)
    code_t = torch.from_numpy(codes).reshape(shape).movedim(-1, dim)
    scale_t = torch.from_numpy(scales).reshape(*shape[:-1], nb).movedim(-1, dim)
    return out, code_t, scale_t


def random_blocks(rows: int, n: int, seed: int, spread: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mag = torch.randn(rows, n, generator=g, dtype=torch.float64)
    row_exp = torch.randint(-20, 14, (rows, 1), generator=g)
    exps = row_exp + torch.randint(-spread, 2, (rows, n), generator=g)
    return torch.ldexp(mag, exps.to(torch.float64)).to(torch.float32)


def check(fmt: NVFP4, x: torch.Tensor) -> None:
    want, want_codes, want_scales = reference(fmt, x)
    got = qtorch.quantize(x, fmt)
    assert bits_equal(got, want), (x[got != want], got[got != want], want[got != want])
    codes, scales = fmt.encode(x)
    blocks_ok = (want_scales & 0x7F) != 0x7F
    assert torch.equal(scales[blocks_ok].to(torch.int64), want_scales[blocks_ok])
    assert bool((scales[~blocks_ok] & 0x7F == 0x7F).all())
    finite = torch.isfinite(want)
    assert torch.equal(codes[finite].to(torch.int64), want_codes[finite])
    g = fmt.tensor_scale_of(x)
    assert bits_equal(fmt.decode(codes, scales, g), want)


@pytest.mark.parametrize("tensor_scale", [None, 0.0625, 3.0e-3, "amax"])
def test_random_blocks_match_reference(tensor_scale) -> None:
    fmt = NVFP4(tensor_scale=tensor_scale)
    check(fmt, random_blocks(8, 64, seed=1))
    check(fmt, random_blocks(4, 48, seed=2, spread=30))  # tiny and saturating blocks


def test_single_level_is_exactly_rounded() -> None:
    """Without a tensor scale the float32 steps are exact: float64 arithmetic agrees."""
    x = random_blocks(16, 64, seed=3, spread=20)
    want64, _, _ = reference(nvfp4, x, dtype=np.float64)
    assert bits_equal(qtorch.quantize(x, nvfp4), want64)


def test_exact_ties_of_the_scaled_values_round_to_even() -> None:
    """x / scale exactly at each E2M1 midpoint (0.25 ... 5): to the even code, as the
    reference says. The scale 0.9375 is E4M3 (1.875 * 2**-1), and 6 * 0.9375 the block's
    maximum; Triton's own ``/`` (div.full.f32) gave 4.6875 / 0.9375 = 5.0000005 in a
    report on Triton's tracker, which would round to 6, so the compiled CUDA kernels divide
    with ``div_rn``."""
    d = 0.9375
    ties = [5, -5, 2.5, 3.5, 0.25, 0.75, 1.25, 1.75, -2.5, -3.5, -0.25, -0.75, -1.25, -1.75]
    x = torch.tensor([6.0, *ties, 0.0]) * d
    check(nvfp4, x.reshape(1, 16))
    # E2M1: 0, 0.5, 1, 1.5, 2, 3, 4, 6 with codes 0..7; a tie goes to the even code
    even = [6, 4, -4, 2, 4, 0, 1, 1, 2, -2, -4, -0.0, -1, -1, -2, 0]
    assert bits_equal(qtorch.quantize(x, nvfp4), torch.tensor(even) * d)


def test_dynamic_tensor_scale_is_amax_over_2688() -> None:
    x = random_blocks(4, 32, seed=4)
    x[2, 7] = math.inf
    finite = x[torch.isfinite(x)].abs().max()
    g = NVFP4(tensor_scale="amax").tensor_scale_of(x)
    assert g.dtype == torch.float32 and g.item() == (finite / torch.tensor(2688.0)).item()
    assert NVFP4(tensor_scale="amax").tensor_scale_of(torch.zeros(5)).item() == 1.0
    # the block holding the tensor maximum gets (about) the largest E4M3 scale, 448
    _, scales = NVFP4(tensor_scale="amax").encode(x.nan_to_num(posinf=0.0))
    assert int(scales.max()) in (0x7E, 0x7D)


@pytest.mark.parametrize("tensor_scale", [None, "amax"])
def test_nan_and_inf_blocks_are_nan(tensor_scale) -> None:
    fmt = NVFP4(tensor_scale=tensor_scale)
    x = random_blocks(3, 32, seed=5)
    x[0, 3], x[1, 20], x[2, 31] = math.nan, math.inf, -math.inf
    check(fmt, x)
    got = qtorch.quantize(x, fmt)
    assert bool(torch.isnan(got[0, :16]).all()) and not bool(torch.isnan(got[0, 16:]).any())
    assert bool(torch.isnan(got[1, 16:]).all()) and bool(torch.isnan(got[2, 16:]).all())


def test_all_zero_blocks_and_signed_zero() -> None:
    x = torch.zeros(2, 32)
    x[1, :16] = -0.0
    x[1, 20] = 3.0
    check(nvfp4, x)
    got = qtorch.quantize(x, nvfp4)
    assert torch.equal(torch.signbit(got), torch.signbit(x))
    assert nvfp4.encode(x)[1][0].tolist() == [1, 1]  # smallest positive E4M3, 2**-9


def test_shorter_last_block_and_other_dims() -> None:
    for dim, shape, block in ((-1, (3, 37), 16), (0, (37, 4), 16), (1, (2, 21, 3), 8)):
        fmt = NVFP4(block_size=block, dim=dim)
        x = random_blocks(1, math.prod(shape), seed=6).reshape(shape)
        check(fmt, x)
        assert fmt.encode(x)[1].shape[dim] == -(-shape[dim] // block)


def test_stochastic_rounding_unbiased_given_the_scale() -> None:
    g = torch.Generator().manual_seed(2)
    row = torch.rand(16, generator=g) * 12 - 6
    row[0] = 6.0  # scale E4M3(1.0) = 1
    x = row.expand(4000, 16).contiguous()
    with qtorch.kernel_mode("eager"):
        q = qtorch.quantize(x, nvfp4, "stochastic", generator=torch.Generator().manual_seed(7))
        again = qtorch.quantize(x, nvfp4, "stochastic", generator=torch.Generator().manual_seed(7))
    assert bits_equal(q, again)
    assert nvfp4.encode(x[:1])[1].tolist() == [[0x38]]  # E4M3 1.0
    lo = torch.tensor(
        [gfloat.round_float(E2M1, v, gfloat.RoundMode.TowardNegative, True) for v in row.tolist()]
    )
    hi = torch.tensor(
        [gfloat.round_float(E2M1, v, gfloat.RoundMode.TowardPositive, True) for v in row.tolist()]
    )
    assert bool(((q == lo) | (q == hi)).all())
    step = (hi - lo).double()
    bound = 5 * step / (2 * math.sqrt(x.shape[0])) + 1e-12
    assert bool(((q.double().mean(0) - row.double()).abs() <= bound).all())
    assert int((step > 0).sum()) >= 12


def test_parameters_properties_and_errors() -> None:
    assert nvfp4.bits == 4 and nvfp4.max == 2688.0 and nvfp4.min_positive == 2.0**-10
    # the float32 nearest 0.1 and 3.4e38 (torch's cast); 3.5e38 is beyond float32
    for g in (0.1, 3.4e38):
        assert NVFP4(tensor_scale=g).tensor_scale == torch.tensor(g, dtype=torch.float32).item()
    assert NVFP4(tensor_scale="amax").max == math.inf
    assert hash(NVFP4()) == hash(nvfp4) and NVFP4() == nvfp4
    for bad in (0.0, -1.0, math.inf, 1e-50, 3.5e38, "max", True):
        with pytest.raises(ValueError, match="tensor_scale"):
            NVFP4(tensor_scale=bad)
    with pytest.raises(ValueError, match="block_size"):
        NVFP4(block_size=0)
    with pytest.raises(ValueError, match="dim"):
        qtorch.quantize(torch.ones(3), NVFP4(dim=1))
    with pytest.raises(ValueError, match="tensor_scale"):
        NVFP4(tensor_scale="amax").decode(torch.zeros(16, dtype=torch.int32), torch.ones(1))
    x = random_blocks(2, 16, seed=8)
    before = x.clone()
    qtorch.quantize(x, nvfp4)
    assert bits_equal(x, before)
    assert bits_equal(
        qtorch.quantize(x.bfloat16(), nvfp4),
        qtorch.quantize(x.bfloat16().float(), nvfp4).bfloat16(),
    )
    assert qtorch.quantize(torch.empty(0), nvfp4).shape == (0,)


@pytest.mark.slow  # compiling takes 15-80 s on 2 cores
@pytest.mark.parametrize("tensor_scale", [None, "amax"])
@pytest.mark.parametrize("dim, cols", [(0, 130), (-1, 128)])
def test_compiled_matches_eager(tensor_scale, dim: int, cols: int) -> None:
    x = random_blocks(40, cols, seed=9)  # 5200 elements: above the eager threshold
    fmt = NVFP4(dim=dim, tensor_scale=tensor_scale)
    for rounding in ("nearest", "stochastic"):
        with qtorch.kernel_mode("eager"):
            want = qtorch.quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(3))
        with warnings.catch_warnings():
            # torch's own import-time DeprecationWarning inside Inductor is not ours
            warnings.simplefilter("ignore", DeprecationWarning)
            with qtorch.kernel_mode("compiled"):
                got = qtorch.quantize(x, fmt, rounding, generator=torch.Generator().manual_seed(3))
        assert bits_equal(got, want)
