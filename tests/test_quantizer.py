"""quantizer() / Quantizer: formats applied exactly where promised, clamping masks, hooks."""

from __future__ import annotations

import pickle

import pytest
import torch
from edge_cases import bits_equal, random_float32

import qtorch
from qtorch import FixedPoint, FloatingPoint
from qtorch.quant import Quantizer, quantizer

INF = float("inf")
NAN = float("nan")


def test_hand_computed_forward_and_backward() -> None:
    # h = w*x = 0.3*1.7; forward FixedPoint(8, 4) nearest: 0.51*16 = 8.16 -> 8 -> 0.5.
    # out = v*q with v = 0.7: the gradient reaching the quantizer is 0.7; backward
    # FixedPoint(8, 2) nearest: 0.7*4 = 2.8 -> 3 -> 0.75. So dw = 0.75*x, dv = q = 0.5.
    w = torch.tensor(0.3, requires_grad=True)
    v = torch.tensor(0.7, requires_grad=True)
    x = torch.tensor(1.7)
    q = quantizer(FixedPoint(8, 4), FixedPoint(8, 2), "nearest", "nearest")
    h = q(w * x)
    assert h.item() == 0.5
    (v * h).backward()
    assert v.grad is not None and w.grad is not None
    assert v.grad.item() == 0.5
    assert bits_equal(w.grad, torch.tensor(0.75) * x)


def test_backward_format_applies_to_the_incoming_gradient_only() -> None:
    # Forward None, backward FixedPoint(8, 1): incoming 0.3 -> 0.5 (0.6 rounds to 1),
    # then the upstream multiply by 3 happens after the quantizer: 1.5, not a grid check.
    x = torch.tensor([2.0], requires_grad=True)
    q = quantizer(None, FixedPoint(8, 1), backward_rounding="nearest")
    y = q(3 * x)
    assert y.item() == 6.0
    y.backward(torch.tensor([0.3]))
    assert x.grad is not None
    assert x.grad.item() == 1.5


def test_identity_when_formats_are_none() -> None:
    x = random_float32(1000, seed=1).requires_grad_()
    g = random_float32(1000, seed=2)
    y = quantizer()(x)
    assert bits_equal(y.detach(), x.detach())
    y.backward(g)
    assert x.grad is not None
    assert bits_equal(x.grad, g)


@pytest.mark.parametrize("fmt", [None, FixedPoint(8, 4)])
def test_inplace_op_after_the_quantizer(fmt: qtorch.Format | None) -> None:
    x = torch.tensor([1.0, -1.0], requires_grad=True)
    y = torch.relu_(quantizer(fmt, FixedPoint(8, 1), "nearest", "nearest")(x * 2))
    y.backward(torch.tensor([0.3, 0.3]))
    assert y.tolist() == [2.0, 0.0]
    assert x.grad is not None
    assert x.grad.tolist() == [1.0, 0.0]  # 0.3 -> 0.5 on the 1/2 grid, times 2


def test_stochastic_rounding_is_seeded_and_picks_a_neighbour() -> None:
    fmt = FixedPoint(8, 2)
    x = torch.linspace(-3, 3, 999)
    q = quantizer(fmt, fmt)
    torch.manual_seed(5)
    a = q(x)
    torch.manual_seed(5)
    b = q(x)
    assert torch.equal(a, b)
    assert torch.equal(torch.floor(x * 4) <= a * 4, torch.ones_like(x, dtype=torch.bool))
    assert torch.equal(a * 4 <= torch.ceil(x * 4), torch.ones_like(x, dtype=torch.bool))
    assert torch.equal(a * 4, torch.round(a * 4))


def test_hooks_run_in_order_before_backward_quantization() -> None:
    # g = 0.3: hooks (g*2 then g+1) give 1.6; FixedPoint(8, 0) nearest gives 2.
    # The other order ((g+1)*2 = 2.6 -> 3) or quantizing first (0 -> 1) would differ.
    calls: list[str] = []

    def double(g: torch.Tensor) -> torch.Tensor:
        calls.append("double")
        return g * 2

    def plus_one(g: torch.Tensor) -> torch.Tensor:
        calls.append("plus_one")
        return g + 1

    x = torch.tensor([1.0], requires_grad=True)
    q = Quantizer(
        None, FixedPoint(8, 0), backward_rounding="nearest", backward_hooks=[double, plus_one]
    )
    q(x).backward(torch.tensor([0.3]))
    assert calls == ["double", "plus_one"]
    assert x.grad is not None
    assert x.grad.item() == 2.0


#: (format, lowest, max) with ranges written from each format's definition.
BOUNDED = [
    (FixedPoint(8, 4), -8.0, 7.9375),
    (FixedPoint(6, 2, symmetric=True), -7.75, 7.75),
    (FloatingPoint(4, 3), -240.0, 240.0),  # IEEE-style e4m3: 1.875 * 2**7
    (FloatingPoint(4, 3, has_inf=False), -448.0, 448.0),  # OCP e4m3fn
    (FloatingPoint(5, 2), -57344.0, 57344.0),
]
if hasattr(qtorch, "Posit"):
    BOUNDED.append((qtorch.Posit(8, 2), -(2.0**24), 2.0**24))  # maxpos = useed**(n-2)
if hasattr(qtorch, "nf4"):
    BOUNDED.append((qtorch.nf4, -1.0, 1.0))  # NormalFloat4 codebook, normalized to [-1, 1]
if hasattr(qtorch, "nvfp4"):
    BOUNDED.append((qtorch.nvfp4, -2688.0, 2688.0))  # e2m1 max 6 times e4m3 scale max 448


@pytest.mark.parametrize(("fmt", "lowest", "top"), BOUNDED, ids=lambda v: repr(v))
def test_clamping_mask_per_bounded_format(fmt: qtorch.Format, lowest: float, top: float) -> None:
    assert fmt.max == top  # type: ignore[attr-defined]
    inside = [0.0, -0.0, 1.0, -1.0, top, lowest, top / 2, lowest / 2]
    beyond = [top * 1.5, top * 4, lowest * 1.5, lowest * 4, 3e38, -3e38]
    x = torch.tensor(inside + beyond, requires_grad=True)
    q = quantizer(fmt, None, "nearest", clamping_grad_zero=True)
    y = q(x)
    g = torch.full_like(x, 0.5)
    y.backward(g)
    expected = torch.tensor([0.5] * len(inside) + [0.0] * len(beyond))
    assert x.grad is not None
    assert bits_equal(x.grad, expected)
    # Without the flag nothing is masked.
    x.grad = None
    quantizer(fmt, None, "nearest")(x).backward(g)
    assert bits_equal(x.grad, g)
    # NaN is never saturated (alone: a NaN turns a whole block of a block format NaN).
    nan = torch.tensor([NAN], requires_grad=True)
    q(nan).backward(torch.tensor([0.5]))
    assert nan.grad is not None
    assert nan.grad.tolist() == [0.5]


def test_clamping_mask_infinities() -> None:
    # Fixed point saturates ±Inf (masked); IEEE floats keep ±Inf (not clipped: not masked).
    x = torch.tensor([INF, -INF], requires_grad=True)
    quantizer(FixedPoint(8, 4), None, "nearest", clamping_grad_zero=True)(x).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 0.0]
    x.grad = None
    quantizer(FloatingPoint(5, 2), None, "nearest", clamping_grad_zero=True)(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_clamping_with_per_block_formats() -> None:
    # BlockFloatingPoint has no global range: nothing can saturate, so the flag is refused.
    with pytest.raises(ValueError, match="finite"):
        quantizer(qtorch.BlockFloatingPoint(8), clamping_grad_zero=True)
    # MX's global range (448 * 2**127 for e4m3) is beyond float32: an element clipped to
    # its block's largest value is rounding, not saturation, and keeps its gradient.
    x = torch.tensor([1.0, 3e38, -1e30, 5.0], requires_grad=True)
    quantizer(qtorch.mxfp8_e4m3, None, "nearest", clamping_grad_zero=True)(x).sum().backward()
    assert x.grad is not None
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]


FAMILIES = [
    FixedPoint(6, 3),
    FloatingPoint(4, 3),
    qtorch.BlockFloatingPoint(6),
    qtorch.Posit(8, 1),
    qtorch.nf4,
    qtorch.mxfp6_e3m2,
    qtorch.nvfp4,
]


@pytest.mark.parametrize("fmt", FAMILIES, ids=lambda f: type(f).__name__)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_every_format_family_forward_and_backward(fmt: qtorch.Format, rounding: str) -> None:
    x = (torch.randn(4, 32) * 3).requires_grad_()
    g = torch.randn(4, 32)
    q = quantizer(fmt, fmt, rounding, rounding)
    torch.manual_seed(1)
    y = q(x)
    y.backward(g)
    torch.manual_seed(1)
    assert bits_equal(y.detach(), qtorch.quantize(x.detach(), fmt, rounding))
    assert x.grad is not None
    assert bits_equal(x.grad, qtorch.quantize(g, fmt, rounding))


def test_clamping_mask_is_applied_after_backward_quantization() -> None:
    x = torch.tensor([1.0, 100.0], requires_grad=True)
    q = quantizer(FixedPoint(8, 4), FixedPoint(8, 1), "nearest", "nearest", clamping_grad_zero=True)
    q(x).backward(torch.tensor([0.3, 0.3]))
    assert x.grad is not None
    assert x.grad.tolist() == [0.5, 0.0]


def test_clamping_needs_a_finite_range() -> None:
    with pytest.raises(ValueError, match="finite"):
        quantizer(FixedPoint(8, 4, clamp=False), clamping_grad_zero=True)
    quantizer(None, FixedPoint(8, 4), clamping_grad_zero=True)  # nothing to clamp: fine


def test_arguments_validated_at_construction() -> None:
    with pytest.raises(ValueError, match="rounding"):
        quantizer(FixedPoint(8, 4), forward_rounding="nearset")
    with pytest.raises(ValueError, match="rounding"):
        Quantizer(None, None, "stochastic", "bogus")
    with pytest.raises(TypeError, match="format"):
        quantizer(forward_number="fixed8")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callables"):
        quantizer(backward_hooks=[3])  # type: ignore[list-item]
    mx = getattr(qtorch, "mxfp8_e4m3", None)
    if mx is not None:
        with pytest.raises(ValueError, match="rounding"):
            quantizer(mx, forward_rounding="up")


def test_repr_shows_formats_and_roundings() -> None:
    text = repr(Quantizer(FixedPoint(8, 4), FloatingPoint(5, 2), "nearest", "stochastic"))
    assert text.startswith("Quantizer(")
    assert "FixedPoint(wl=8, fl=4" in text
    assert "forward_rounding='nearest'" in text
    assert "backward_rounding='stochastic'" in text
    assert "FloatingPoint(exp=5, man=2" in text


def test_module_has_no_state_and_pickles() -> None:
    q = Quantizer(FixedPoint(8, 4), FixedPoint(8, 2), "nearest", "nearest")
    assert q.state_dict() == {}
    q2 = pickle.loads(pickle.dumps(q))
    x = torch.linspace(-9, 9, 101)
    assert torch.equal(q2(x), q(x))
    assert repr(q2) == repr(q)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_keep_their_dtype(dtype: torch.dtype) -> None:
    x = torch.tensor([0.3, -1.7, 2.2], dtype=dtype, requires_grad=True)
    y = quantizer(FixedPoint(8, 2), FixedPoint(8, 1), "nearest", "nearest")(x)
    assert y.dtype == dtype
    assert y.tolist() == [0.25, -1.75, 2.25]
    y.backward(torch.tensor([0.3, 0.3, 0.8], dtype=dtype))
    assert x.grad is not None and x.grad.dtype == dtype
    assert x.grad.tolist() == [0.5, 0.5, 1.0]


def _compile_and_compare(backend: str) -> None:
    from qtorch.auto_low import lower

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8),
        Quantizer(
            FixedPoint(8, 4), FixedPoint(10, 6), "nearest", "nearest", clamping_grad_zero=True
        ),
        torch.nn.ReLU(),
        torch.nn.Linear(8, 2),
    )
    lower(model, ["activation"], FloatingPoint(4, 3), FloatingPoint(5, 2), "nearest", "nearest")
    # weights rounded in place by a pre-hook, traced too (already on the grid: unchanged)
    lower(model, ["linear"], weight_number=FixedPoint(8, 4), weight_rounding="nearest")
    # Dyadic inputs and weights of few bits: every sum is exact in float32, so a compiler
    # free to reorder the matmul reductions must still agree bitwise.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 16) / 16)
    x = torch.randint(-16, 17, (5, 6)).float() / 4
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out_c = compiled(x)
    out_c.square().sum().backward()
    grads_c = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    out_e = model(x)
    out_e.square().sum().backward()
    grads_e = [p.grad for p in model.parameters() if p.grad is not None]
    assert bits_equal(out_c.detach(), out_e.detach())
    assert len(grads_c) == len(grads_e) == 4
    assert all(bits_equal(a, b) for a, b in zip(grads_c, grads_e, strict=True))


# Dynamo instantiates torch.autograd.Function while tracing one and inductor calls
# torch.jit.script_method (torch 2.13): both warn DeprecationWarning from inside torch.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_matches_eager() -> None:
    """Quantizers and lowered layers trace into one graph (fullgraph) and match eager.

    The default run uses the ``aot_eager`` backend (dynamo + AOT autograd, no code
    generation: seconds); the inductor run is slow on 2 cores and is marked slow.
    """
    _compile_and_compare("aot_eager")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_torch_compile_inductor_matches_eager() -> None:
    _compile_and_compare("inductor")


def test_per_example_gradients_with_torch_func() -> None:
    """``vmap(grad(...))`` gives each example the gradient that autograd gives it alone
    (the Function raised under every torch.func transform before: no setup_context)."""
    q = quantizer(FixedPoint(8, 4), FixedPoint(8, 2), "nearest", "nearest", True)
    g = torch.Generator().manual_seed(4)
    w = torch.randn(64, generator=g)
    xs = torch.randn(5, 64, generator=g) * 6
    v = torch.randn(64, generator=g)

    def loss(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (q(weight * x) * v).sum()

    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, xs)
    for i in range(len(xs)):
        leaf = w.clone().requires_grad_()
        loss(leaf, xs[i]).backward()
        assert leaf.grad is not None and bits_equal(per_example[i], leaf.grad)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_torch_func_grad_matches_autograd(rounding: str) -> None:
    q = quantizer(FloatingPoint(4, 3), FloatingPoint(5, 2), rounding, rounding)
    x = torch.randn(3000, generator=torch.Generator().manual_seed(5)) * 8
    weights = torch.randn(3000, generator=torch.Generator().manual_seed(6))

    def loss(a: torch.Tensor) -> torch.Tensor:
        return (q(a) * weights).sum()

    torch.manual_seed(3)
    got = torch.func.grad(loss)(x)
    leaf = x.clone().requires_grad_()
    torch.manual_seed(3)
    loss(leaf).backward()
    assert leaf.grad is not None and bits_equal(got, leaf.grad)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward AD
@pytest.mark.parametrize("clamping", [False, True])
def test_forward_mode_passes_the_tangent_straight_through(clamping: bool) -> None:
    """The tangent of the straight-through estimator: unchanged, but zero where the forward
    pass saturated (FixedPoint(8, 4) holds [-8, 7.9375]) with clamping_grad_zero; the
    backward format does not touch it. Forward-mode AD raised NotImplementedError before."""
    q = quantizer(FixedPoint(8, 4), FixedPoint(4, 1), "nearest", "nearest", clamping)
    x = torch.tensor([0.3, -1.7, 7.9375, 7.97, 8.5, -8.0, -8.03, -100.0, INF, -INF, NAN])
    tangent = torch.linspace(0.1, 1.1, len(x))
    beyond = torch.tensor([x_ > 7.9375 or x_ < -8.0 for x_ in x.tolist()])
    want = tangent.masked_fill(beyond, 0.0) if clamping else tangent
    y, got = torch.func.jvp(q, (x,), (tangent,))
    assert bits_equal(y, qtorch.quantize(x, FixedPoint(8, 4))) and bits_equal(got, want)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(x, tangent)
        _, got = torch.autograd.forward_ad.unpack_dual(q(dual))
    assert got is not None and bits_equal(got, want)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward AD
def test_hessian_of_a_square_through_the_quantizer() -> None:
    """f(x) = sum(q(x)**2): the straight-through gradient is 2 q(x), so the Hessian
    (``torch.func.hessian``: forward over reverse) is 2 on the diagonal where the forward
    pass did not saturate, 0 where it did; rounding the gradient in the backward pass (a
    step function) makes it zero."""
    x = torch.tensor([0.3, -1.7, 9.0, -3.1, -20.0])
    inside = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0])
    q = quantizer(FixedPoint(8, 4), None, "nearest", clamping_grad_zero=True)
    hessian = torch.func.hessian(lambda a: (q(a) ** 2).sum())(x)
    assert torch.equal(hessian, torch.diag(2 * inside))
    rounded = quantizer(FixedPoint(8, 4), FixedPoint(8, 4), "nearest", "nearest")
    hessian = torch.func.hessian(lambda a: (rounded(a) ** 2).sum())(x)
    assert torch.equal(hessian, torch.zeros(5, 5))
