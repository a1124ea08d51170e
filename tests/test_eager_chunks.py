"""The eager path in pieces (qtorch.kernels.eager) against the eager path on the whole tensor.

The oracle is ``fmt.quantize_kernel`` on the whole tensor with the whole tensor's noise
(which the format tests check against independent references); the pieces must give the
same bits, stochastic rounding included. ``CHUNK`` is made small so that small tensors are
split at odd places.
"""

from __future__ import annotations

import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, random_float32

import qtorch
from qtorch.cli.bench import family_format
from qtorch.kernels import eager
from qtorch.kernels.noise import uniform_from_counter, uniform_range
from qtorch.rounding import Rounding

ELEMENTWISE = [
    "fixed",
    "float",
    "posit",
    "codebook16",
    "float8_e4m3fn",
    "fixed(12,3,symmetric=true)",
]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(eager, "CHUNK", 1000)
    return 1000


def _whole(x: torch.Tensor, fmt: qtorch.Format, rounding: Rounding, seed: int) -> torch.Tensor:
    """The reference: the kernel on all of x at once, in x's working dtype."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = torch.tensor(seed)
    noise = uniform_from_counter(s, x.shape, work) if rounding is Rounding.STOCHASTIC else None
    return fmt.quantize_kernel(x.to(work), rounding, noise).to(x.dtype)


def _inputs() -> list[torch.Tensor]:
    bits = torch.cat([SPECIALS_F32, random_float32(4567 - len(SPECIALS_F32), seed=3)])
    return [
        bits,  # 4.6 pieces, every kind of float32
        bits.view(4567, 1)[:, 0],
        (torch.randn(97, 53) * 4).t(),  # non-contiguous
        torch.randn(3, 1001).double() * 3,
        (torch.randn(2500) * 2).half(),
    ]


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("rounding", [Rounding.NEAREST, Rounding.STOCHASTIC], ids=str)
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_pieces_match_the_whole(name: str, rounding: Rounding) -> None:
    fmt = family_format(name)
    for x in _inputs():
        assert eager.splits(x, fmt)
        before = x.clone()
        got = eager.run(x, fmt, rounding, torch.tensor(99), _work(x), inplace=False)
        assert bits_equal(got, _whole(x, fmt, rounding, 99)), (name, x.shape, x.dtype)
        assert bits_equal(x, before)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("name", ["posit", "codebook16"])
def test_pieces_in_place(name: str) -> None:
    fmt = family_format(name)
    for x in _inputs():
        expected = _whole(x, fmt, Rounding.STOCHASTIC, 5)
        y = x.clone()
        out = eager.run(y, fmt, Rounding.STOCHASTIC, torch.tensor(5), _work(x), inplace=True)
        assert out is y
        assert bits_equal(y, expected), (name, x.shape, x.dtype)
        t = x.clone().t() if x.dim() == 2 else x.clone()
        out = eager.run(t, fmt, Rounding.NEAREST, None, _work(x), inplace=True)
        assert bits_equal(out, _whole(t, fmt, Rounding.NEAREST, 0))


def test_public_quantize_splits_large_cpu_tensors() -> None:
    fmt = qtorch.Posit(8, 1)
    x = torch.randn(2 * eager.CHUNK + 17)
    assert eager.splits(x, fmt)
    with qtorch.kernel_mode("eager"):
        torch.manual_seed(0)
        got = qtorch.quantize(x, fmt, "stochastic")
        torch.manual_seed(0)
        in_place = qtorch.quantize_(x.clone(), fmt, "stochastic")
    torch.manual_seed(0)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    expected = _whole(x, fmt, Rounding.STOCHASTIC, seed)
    assert bits_equal(got, expected)
    assert bits_equal(in_place, expected)


BLOCKED = [
    "mxfp8_e4m3",
    "mxfp4_e2m1",
    "MX(element=float8_e5m2, block_size=16, dim=2)",  # dim the last, as a positive index
    "MX(element=float8_e4m3fn, block_size=8, dim=0)",  # down the columns: whole groups of rows
    "MX(element=float8_e4m3fn, block_size=4, dim=1)",  # a middle dim: whole x[i]
    "NVFP4(dim=0)",
    "nvfp4",
    "NVFP4(tensor_scale=0.01)",
    "NVFP4(tensor_scale='amax')",  # the tensor's maximum, taken piece by piece first
    "BlockFloatingPoint(wl=6, dim=0)",
    "BlockFloatingPoint(wl=8)",  # one block: its maximum taken piece by piece first
]


def _blocked_inputs() -> list[torch.Tensor]:
    bits = torch.cat([SPECIALS_F32, random_float32(53 * 61 - len(SPECIALS_F32), seed=4)])
    return [
        bits.view(61, 53) * 1.0,  # rows of 53: MX and NVFP4 pad each row's last block
        bits * 1.0,  # 1-D: MX and NVFP4 cut at whole blocks, the last one padded
        torch.randn(4096).double() * 3,  # 1-D, whole blocks only
        (torch.randn(7, 9, 64) * 3).view(7, 9, 64),
        torch.randn(3, 1500),  # one row per piece: a row is longer than CHUNK
        (torch.randn(64, 40) * 5).t(),  # non-contiguous
        torch.randn(40, 2, 32).double(),
    ]


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("rounding", [Rounding.NEAREST, Rounding.STOCHASTIC], ids=str)
@pytest.mark.parametrize("name", BLOCKED)
def test_pieces_of_whole_blocks_match_the_whole(name: str, rounding: Rounding) -> None:
    fmt = qtorch.format_from_string(name)
    for x in _blocked_inputs():
        if fmt.dim >= x.dim():  # type: ignore[attr-defined]
            continue
        assert eager.splits(x, fmt), (name, x.shape)
        got = eager.run(x, fmt, rounding, torch.tensor(17), _work(x), inplace=False)
        assert bits_equal(got, _whole(x, fmt, rounding, 17)), (name, x.shape, x.dtype)
        y = x.clone()
        out = eager.run(y, fmt, rounding, torch.tensor(17), _work(x), inplace=True)
        assert out is y
        assert bits_equal(y, _whole(x, fmt, rounding, 17)), (name, x.shape, x.dtype)


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("rounding", [Rounding.NEAREST, Rounding.STOCHASTIC], ids=str)
def test_one_block_in_pieces_matches_the_whole(rounding: Rounding) -> None:
    fmt = qtorch.BlockFloatingPoint(5)
    x = torch.randn(4567) * 3
    for top in (0, 2300, 4566):  # the largest magnitude in the first, a middle, the last piece
        y = x.clone()
        y[top] = 1000.0
        assert eager.splits(y, fmt)
        got = eager.run(y, fmt, rounding, torch.tensor(3), torch.float32, inplace=False)
        assert bits_equal(got, _whole(y, fmt, rounding, 3)), top
    y[4000] = torch.nan  # NaN in the last piece: every element NaN
    got = eager.run(y, fmt, rounding, torch.tensor(3), torch.float32, inplace=False)
    assert torch.isnan(got).all()


def test_what_is_not_split(small_chunks: int) -> None:
    x = torch.randn(3 * small_chunks)
    rows = x.view(60, 50)
    assert not eager.splits(rows, qtorch.BlockFloatingPoint(8, dim=1))  # blocks down columns
    assert not eager.splits(x[: 2 * small_chunks], qtorch.Posit(8, 1))  # small
    w = x.clone().requires_grad_()
    assert not eager.splits(w, qtorch.Posit(8, 1))  # autograd graph
    with torch.no_grad():
        assert eager.splits(w, qtorch.Posit(8, 1))


def test_uniform_range_is_a_slice_of_the_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from qtorch.kernels import noise

    monkeypatch.setattr(noise, "EAGER_CHUNK", 100)
    s = torch.tensor(-12345)
    for dtype in (torch.float32, torch.float64):
        whole = uniform_from_counter(s, (1000,), dtype)
        for start, stop in [(0, 0), (0, 1000), (7, 450), (999, 1000), (250, 251)]:
            assert bits_equal(uniform_range(s, start, stop, dtype), whole[start:stop])
    with pytest.raises(ValueError, match="start"):
        uniform_range(s, 5, 4)
    with pytest.raises(ValueError, match="dtype"):
        uniform_range(s, 0, 4, torch.float16)


def _work(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32
