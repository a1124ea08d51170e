"""Sparse COO tensors: the stored values rounded as the dense tensor's, the pattern kept."""

from __future__ import annotations

import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal

import qtorch
from qtorch import Codebook, FixedPoint, quantize, quantize_
from qtorch.cli.bench import family_format
from qtorch.optim import OptimLP

INF = float("inf")

#: One format of each family, the IEEE-style layouts with and without Inf.
FAMILIES = ["fixed", "float", "float8_e4m3fn", "block", "posit", "codebook16", "codebook256"]
FAMILIES += ["mx", "nvfp4"]


def _sparse(dense_dims: int = 0, specials: bool = True) -> torch.Tensor:
    """An uncoalesced 64 x 96 (x 5) sparse tensor: duplicate places (summed when
    coalesced), specials (or only the zeros among them), and a place whose duplicates
    cancel to a stored zero."""
    g = torch.Generator().manual_seed(11)
    nnz = 900
    rows = torch.randint(0, 64, (nnz,), generator=g)
    cols = torch.randint(0, 96, (nnz,), generator=g)
    values = torch.randn((nnz,) + (5,) * dense_dims, generator=g) * 3
    chosen = SPECIALS_F32 if specials else SPECIALS_F32[SPECIALS_F32 == 0]
    values.view(nnz, -1)[: len(chosen), 0] = chosen
    rows[-2:], cols[-2:] = 7, 9  # x[7, 9] = v - v: stored, zero
    values[-2] = 2.5
    values[-1] = -2.5
    shape = (64, 96) + (5,) * dense_dims
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=True)


def _dense(x: torch.Tensor) -> torch.Tensor:
    """x's dense tensor, the stored values written in (``to_dense`` adds them to zeros,
    which turns a stored -0 into +0)."""
    y = x.coalesce()
    dense = torch.zeros(y.shape, dtype=y.dtype)
    dense[tuple(y.indices())] = y.values()
    return dense


@pytest.mark.parametrize("dense_dims", [0, 1])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", FAMILIES)
def test_stored_values_round_as_in_the_dense_tensor(
    name: str, rounding: str, dense_dims: int
) -> None:
    """Bit for bit the dense tensor's rounding (same seed) at the stored places, zero at
    the others; the result is coalesced with x's places, an element rounded to 0 stays.
    (Block formats without NaN or Inf: a block holding one rounds whole to NaN.)"""
    fmt = family_format(name)
    x = _sparse(dense_dims, specials=fmt.elementwise)
    torch.manual_seed(5)
    got = quantize(x, fmt, rounding)
    torch.manual_seed(5)
    dense = quantize(_dense(x), fmt, rounding)
    places = tuple(x.coalesce().indices())
    assert got.layout == torch.sparse_coo and got.is_coalesced()
    assert torch.equal(got.indices(), x.coalesce().indices())
    assert bits_equal(got.values(), dense[places])
    dense[places] = 0.0
    assert torch.equal(dense, torch.zeros_like(dense))
    torch.manual_seed(5)
    y = x.clone()
    assert quantize_(y, fmt, rounding) is y
    assert bits_equal(y.values(), got.values()) and torch.equal(y.indices(), got.indices())


def test_float64_and_half_inputs_keep_their_dtype() -> None:
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        x = _sparse().to(dtype)
        torch.manual_seed(2)
        got = quantize(x, qtorch.Posit(8, 1), "stochastic")
        torch.manual_seed(2)
        dense = quantize(_dense(x), qtorch.Posit(8, 1), "stochastic")
        assert got.dtype == dtype and bits_equal(got.values(), dense[tuple(got.indices())])


def test_a_format_without_zero_raises() -> None:
    """A signed table without 0 rounds the unstored zeros to 0.5: the result is dense."""
    fmt = Codebook([-1.0, 0.5, 2.0], signed=True)
    assert quantize(torch.zeros(1), fmt).item() == 0.5
    with pytest.raises(ValueError, match="does not hold 0"):
        quantize(_sparse(), fmt)


@pytest.mark.parametrize("name", ["block", "mx", "nvfp4"])
def test_a_block_rounded_to_nan_whole_raises(name: str) -> None:
    """Inf in a block makes the whole block NaN, the unstored zeros too: a dense result."""
    places, values = torch.tensor([[1, 2], [3, 5]]), torch.tensor([INF, 1.0])
    x = torch.sparse_coo_tensor(places, values, (4, 32), check_invariants=True)
    assert torch.isnan(quantize(x.to_dense(), family_format(name))[1, 0])
    with pytest.raises(ValueError, match="made elements it does not store nonzero"):
        quantize(x, family_format(name))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta:UserWarning")
def test_other_layouts_raise_type_error() -> None:
    dense = torch.randn(4, 6)
    for x in (dense.to_sparse_csr(), dense.to_sparse_csc(), dense.to_sparse_bsr(2)):
        with pytest.raises(TypeError, match=r"dense \(strided\) or sparse COO"):
            quantize(x, FixedPoint(8, 4))
    nested = torch.nested.as_nested_tensor([torch.randn(3), torch.randn(5)])
    with pytest.raises(TypeError, match="nested tensors"):
        quantize(nested, FixedPoint(8, 4))


def test_optimizer_rounds_sparse_embedding_gradients() -> None:
    """OptimLP with the sparse gradients of an embedding steps as with the dense ones
    (plain SGD: only the looked-up rows move). It raised before: round_ needs coalesced
    input."""
    weights = {}
    for sparse in (True, False):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(50, 8, sparse=sparse)
        opt = OptimLP(
            torch.optim.SGD(emb.parameters(), lr=0.5),
            weight_quant=FixedPoint(8, 4),
            grad_quant=FixedPoint(8, 6),
        )
        for step in range(3):
            opt.zero_grad()
            ids = torch.tensor([[1, 4, 4, 9], [step, 4, 30, 1]])
            (emb(ids) * torch.linspace(-2, 2, 8)).sum().backward()
            assert emb.weight.grad is not None and emb.weight.grad.is_sparse == sparse
            opt.step()
        weights[sparse] = emb.weight.detach()
    assert bits_equal(weights[True], weights[False])


def test_a_sparse_tensor_that_requires_grad_gets_a_zero_gradient() -> None:
    leaf = _sparse(specials=False).coalesce().detach().requires_grad_()
    q = quantize(leaf, FixedPoint(8, 4))
    assert q.requires_grad and q.layout == torch.sparse_coo
    with torch.no_grad():
        want = quantize(leaf, FixedPoint(8, 4))
    assert bits_equal(q.detach().values(), want.values())
    torch.sparse.sum(q * 3).backward()
    assert leaf.grad is not None
    assert torch.equal(leaf.grad.to_dense(), torch.zeros(leaf.shape))
