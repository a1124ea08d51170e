"""Posit sigmoid / tanh (the 16-bit-word trick) and the activation modules."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import posit_reference as ref
import pytest
import torch
from edge_cases import random_float32

import qtorch
import qtorch.nn
import qtorch.posit_activation
from qtorch import kernel_mode
from qtorch.quant import posit_sigmoid, posit_tanh, posit_tanh_enhanced


@pytest.fixture(autouse=True)
def _eager() -> Iterator[None]:
    with kernel_mode("eager"):
        yield


def reference_sigmoid(x: np.ndarray, nsize: int) -> np.ndarray:
    """The trick from its definition: posit<nsize,0> code -> 16-bit word, flip, >> 2, decode."""
    codes = ref.round_nearest_table(x, nsize, 0)
    word = ((codes & ((1 << nsize) - 1)) << (16 - nsize)) ^ 0x8000
    s = ref.value_of_codes(word >> 2, 16, 0)
    s = np.where(x == np.inf, 1.0, np.where(x == -np.inf, 0.0, s))
    return np.where(np.isnan(x), np.nan, s)


def inputs(nsize: int) -> np.ndarray:
    grid = ref.all_boundaries(nsize, 0) if nsize == 8 else np.linspace(-70, 70, 20001)
    rand = random_float32(4000, seed=nsize, finite=True).double().numpy()
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e30, -1e30, 1e-30])
    return np.concatenate([grid, grid / 2, rand, specials]).astype(np.float32).astype(np.float64)


def test_sigmoid_test_vectors() -> None:
    q = posit_sigmoid(torch.tensor([-4.0, 0.0, 1.0, 4.0]), nsize=8)
    assert q.tolist() == [0.0625, 0.5, 0.75, 0.9375]


@pytest.mark.parametrize("nsize", [8, 16])
def test_sigmoid_matches_definition(nsize: int) -> None:
    x = inputs(nsize)
    got = posit_sigmoid(torch.from_numpy(x).float(), nsize).double().numpy()
    assert np.array_equal(got, reference_sigmoid(x, nsize), equal_nan=True)


@pytest.mark.parametrize("nsize", [8, 16])
def test_tanh_matches_definition(nsize: int) -> None:
    x = inputs(nsize)
    expected = 2 * reference_sigmoid(2 * x, nsize) - 1  # exact in float64
    got = posit_tanh(torch.from_numpy(x).float(), nsize).double().numpy()
    assert np.array_equal(got, expected, equal_nan=True)


@pytest.mark.parametrize("nsize", [8, 16])
def test_tanh_enhanced_matches_definition(nsize: int) -> None:
    x = inputs(nsize)
    y = (2 * reference_sigmoid(2 * x, nsize) - 1).astype(np.float32)
    offset = np.float32(0.06795)
    y = np.where(y > 0.7583, y + offset, np.where(y < -0.7583, y - offset, y))
    expected = np.clip(y, -1, 1)
    got = posit_tanh_enhanced(torch.from_numpy(x).float(), nsize).numpy()
    assert np.array_equal(got, expected, equal_nan=True)


def test_specials() -> None:
    x = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0])
    for nsize in (8, 16):
        s = posit_sigmoid(x, nsize)
        assert s[:2].tolist() == [1.0, 0.0] and s.isnan()[2] and s[3] == 0.5
        for f in (posit_tanh, posit_tanh_enhanced):
            t = f(x, nsize)
            assert t[:2].tolist() == [1.0, -1.0] and t.isnan()[2] and t[3] == 0.0


def test_accuracy_against_exact() -> None:
    """The approximation errors qtorch+ documents (0.05, 0.10, 0.04) hold on a fine grid."""
    x = torch.linspace(-20, 20, 100_001, dtype=torch.float64)
    for nsize in (8, 16):
        assert (posit_sigmoid(x, nsize) - torch.sigmoid(x)).abs().max() < 0.06
        assert (posit_tanh(x, nsize) - torch.tanh(x)).abs().max() < 0.11
    assert (posit_tanh_enhanced(x, 16) - torch.tanh(x)).abs().max() < 0.045


def test_parameters() -> None:
    x = torch.randn(100)
    with pytest.raises(ValueError, match="nsize must be 8 or 16, got 12"):
        posit_sigmoid(x, 12)
    with pytest.raises(ValueError, match="nsize must be 8 or 16"):
        posit_tanh(x, 32)
    with pytest.raises(ValueError, match="rounding"):
        posit_tanh_enhanced(x, 16, rounding="bad")
    # es and scale are accepted for compatibility and ignored
    assert torch.equal(posit_sigmoid(x, 8, es=2, scale=3.0), posit_sigmoid(x, 8))
    assert torch.equal(posit_tanh(x, 16, 1, 0.5), posit_tanh(x, 16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    x = torch.randn(200).to(dtype)
    for f in (posit_sigmoid, posit_tanh, posit_tanh_enhanced):
        y = f(x, 16)
        assert y.dtype == dtype
    assert torch.equal(posit_tanh(x, 8).float(), posit_tanh(x.float(), 8).to(dtype).float())


# ---------------------------------------------------------------- modules


def test_import_paths() -> None:
    for name in (
        "PositTanhModule",
        "PositTanhModuleEnhanced",
        "RefTanhModule",
        "PositSigmoidModule",
    ):
        cls = getattr(qtorch, name)
        assert getattr(qtorch.posit_activation, name) is cls
        assert getattr(qtorch.nn, name) is cls


@pytest.mark.parametrize(
    ("module", "forward", "backward"),
    [
        (qtorch.PositTanhModule, lambda x: posit_tanh(x, 16), lambda g, y: g * (1 - y * y)),
        (
            qtorch.PositTanhModuleEnhanced,
            lambda x: posit_tanh_enhanced(x, 16),
            lambda g, y: g * (1 - y * y),
        ),
        (qtorch.PositSigmoidModule, lambda x: posit_sigmoid(x, 16), lambda g, y: g * y * (1 - y)),
    ],
)
def test_module_forward_and_backward(module: type, forward, backward) -> None:  # type: ignore[no-untyped-def]
    """Backward is exactly the stated formula of the forward output y (not autograd's)."""
    x = (torch.randn(300) * 3).requires_grad_()
    y = module()(x)
    assert torch.equal(y.detach(), forward(x.detach()))
    grad = torch.randn(300)
    y.backward(grad)
    assert x.grad is not None
    assert torch.equal(x.grad, backward(grad, y.detach()))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward AD
@pytest.mark.parametrize(
    ("module", "forward", "backward"),
    [
        (qtorch.PositTanhModule(8), lambda x: posit_tanh(x, 8), lambda g, y: g * (1 - y * y)),
        (
            qtorch.PositTanhModuleEnhanced(),
            lambda x: posit_tanh_enhanced(x, 16),
            lambda g, y: g * (1 - y * y),
        ),
        (qtorch.PositSigmoidModule(), lambda x: posit_sigmoid(x, 16), lambda g, y: g * y * (1 - y)),
    ],
    ids=lambda m: type(m).__name__ if isinstance(m, torch.nn.Module) else "",
)
def test_modules_under_torch_func(module: torch.nn.Module, forward, backward) -> None:  # type: ignore[no-untyped-def]
    """``torch.func.grad``, ``vmap`` of per-example gradients and ``jvp`` give the stated
    formula of the output y; the Functions raised under every transform before (no
    ``setup_context``) and under forward-mode AD (no ``jvp``)."""
    xs = torch.randn(4, 300, generator=torch.Generator().manual_seed(8)) * 3
    weights = torch.randn(300, generator=torch.Generator().manual_seed(9))
    ys = forward(xs)
    want = backward(weights, ys)

    def loss(x: torch.Tensor) -> torch.Tensor:
        return (module(x) * weights).sum()

    assert torch.equal(torch.func.grad(loss)(xs[0]), want[0])
    assert torch.equal(torch.func.vmap(torch.func.grad(loss))(xs), want)
    assert torch.equal(torch.func.vmap(module)(xs), ys)
    y, tangent = torch.func.jvp(module, (xs[1],), (weights,))
    assert torch.equal(y, ys[1]) and torch.equal(tangent, want[1])


def test_module_nsize_8() -> None:
    x = torch.randn(50)
    assert torch.equal(qtorch.PositTanhModule(8)(x), posit_tanh(x, 8))
    with pytest.raises(ValueError, match="nsize must be 8 or 16"):
        qtorch.PositSigmoidModule(10)


def test_ref_tanh_module() -> None:
    x = torch.randn(100, requires_grad=True)
    y = qtorch.RefTanhModule()(x)
    assert torch.equal(y, torch.tanh(x))
    y.sum().backward()
    assert x.grad is not None
    assert torch.allclose(x.grad, 1 - torch.tanh(x.detach()) ** 2)  # autograd's own formula


@pytest.mark.parametrize(
    "module",
    [
        qtorch.nn.PositTanhModule(8),
        qtorch.nn.PositTanhModuleEnhanced(16),
        qtorch.nn.PositSigmoidModule(8),
    ],
    ids=lambda m: type(m).__name__,
)
def test_gradients_through_torch_compile_match_eager(module: torch.nn.Module) -> None:
    """Under the user's torch.compile the layer before gets the eager gradients (torch
    2.11's Dynamo gave it zeros: the forward ends in in-place operations)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), module)
    x = torch.randn(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # raised inside Dynamo
        torch.compile(model, fullgraph=True, backend="eager")(x).sum().backward()
    compiled = model[0].weight.grad.clone()
    model.zero_grad()
    model(x).sum().backward()
    assert torch.count_nonzero(model[0].weight.grad) > 0
    assert torch.equal(compiled, model[0].weight.grad)
