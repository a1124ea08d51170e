"""The input contract for fixed point, block floating point and the QPyTorch functions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from edge_cases import SPECIALS_F32, bits_equal

import qtorch
from qtorch import BlockFloatingPoint, FixedPoint, FloatingPoint, Format, quantize
from qtorch.cli.bench import family_format
from qtorch.formats.parse import format_from_string
from qtorch.quant import block_quantize, fixed_point_quantize, float_quantize
from qtorch.rounding import Rounding

FORMATS: list[Format] = [
    FixedPoint(8, 4),
    FixedPoint(8, 4, clamp=False),
    FixedPoint(6, -1, symmetric=True),
    BlockFloatingPoint(6),
    BlockFloatingPoint(6, dim=1),
    FloatingPoint(4, 3),
]

Quantizer = Callable[[torch.Tensor], torch.Tensor]

#: The QPyTorch functions, nearest rounding, as one-argument callables.
FUNCTIONS: dict[str, Quantizer] = {
    "fixed_point_quantize": lambda x: fixed_point_quantize(x, 8, 4, rounding="nearest"),
    "block_quantize": lambda x: block_quantize(x, 6, rounding="nearest"),
    "block_quantize_dim1": lambda x: block_quantize(x, 6, 1, rounding="nearest"),
    "float_quantize": lambda x: float_quantize(x, 4, 3, rounding="nearest"),
}


def _sample() -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 8, generator=g) * 4
    x[0, :4] = torch.tensor([0.0, -0.0, math.inf, math.nan])
    x[1, :3] = torch.tensor([0.03125, -0.09375, 1000.0])  # ties and overflow
    return x


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_other_float_dtypes_come_back_in_their_dtype(fmt: Format, dtype: torch.dtype) -> None:
    x = _sample().to(dtype)
    got = quantize(x, fmt)
    assert got.dtype == dtype and got.shape == x.shape
    # these inputs are float32 values: the float64 result is the float32 one, exactly;
    # float16 / bfloat16 are rounded in float32 and cast back
    expected = quantize(x.float(), fmt).to(dtype)
    assert bits_equal(got, expected)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_functions_keep_the_dtype(name: str, dtype: torch.dtype) -> None:
    x = _sample().to(dtype)
    got = FUNCTIONS[name](x)
    assert got.dtype == dtype and bits_equal(got, FUNCTIONS[name](x.float()).to(dtype))


def test_fixed_point_values_survive_half_casts() -> None:
    """FixedPoint(8, 4) values are float16 and bfloat16 numbers: no second rounding."""
    for dtype in (torch.float16, torch.bfloat16):
        x = _sample().to(dtype)
        expected = quantize(x.float(), FixedPoint(8, 4))
        assert bits_equal(quantize(x, FixedPoint(8, 4)).float(), expected)


@pytest.mark.parametrize(
    "bad", [torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64]
)
@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_non_float_tensors_raise_type_error(fmt: Format, bad: torch.dtype) -> None:
    x = torch.ones(3).to(bad)
    with pytest.raises(TypeError, match="must be float32, float64, float16 or bfloat16"):
        quantize(x, fmt)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functions_reject_non_float(name: str) -> None:
    for bad in (torch.ones(3, dtype=torch.int64), torch.ones(3, dtype=torch.bool)):
        with pytest.raises(TypeError):
            FUNCTIONS[name](bad)
    with pytest.raises(TypeError):
        FUNCTIONS[name]([1.0, 2.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4, 2)])
@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_empty_tensors(fmt: Format, shape: tuple[int, ...]) -> None:
    if isinstance(fmt, BlockFloatingPoint) and fmt.dim >= len(shape):
        with pytest.raises(ValueError, match=r"dim must be -1 or in 0\.\.0"):
            quantize(torch.empty(shape), fmt)
        return
    for rounding in ("nearest", "stochastic"):
        got = quantize(torch.empty(shape), fmt, rounding)
        assert got.shape == shape and got.dtype == torch.float32


@pytest.mark.parametrize("fmt", [f for f in FORMATS if getattr(f, "dim", -1) == -1], ids=repr)
def test_zero_dim_tensors(fmt: Format) -> None:
    x = torch.tensor(0.3)
    got = quantize(x, fmt)
    assert got.shape == () and bits_equal(got.reshape(1), quantize(x.reshape(1), fmt))


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_non_contiguous_inputs(fmt: Format) -> None:
    base = _sample()
    for x in (base.t(), base[:, ::3], base[::2].t()[1:]):
        assert not x.is_contiguous()
        got = quantize(x, fmt)
        assert got.shape == x.shape and bits_equal(got, quantize(x.contiguous(), fmt))
        torch.manual_seed(3)
        noisy = quantize(x, fmt, "stochastic")
        torch.manual_seed(3)
        assert bits_equal(noisy, quantize(x.contiguous(), fmt, "stochastic"))


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic", "down"])
def test_input_is_never_modified(fmt: Format, rounding: str) -> None:
    for x in (_sample(), _sample().double(), _sample().half(), _sample().t()):
        before = x.clone()
        got = quantize(x, fmt, rounding)
        assert bits_equal(x, before) and got.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_functions_never_modify_input(name: str) -> None:
    x = _sample()
    before = x.clone()
    FUNCTIONS[name](x)
    assert bits_equal(x, before)


@pytest.mark.parametrize("fmt", FORMATS, ids=repr)
def test_unknown_rounding_is_a_value_error(fmt: Format) -> None:
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize(_sample(), fmt, "round_half_up")


@dataclasses.dataclass(frozen=True)
class _Strict(Format):
    """A format whose accepted roundings depend on the instance (check_rounding overridden)."""

    strict: bool

    def check_rounding(self, rounding: Rounding | str) -> Rounding:
        mode = super().check_rounding(rounding)
        if self.strict and mode is not Rounding.NEAREST:
            raise ValueError("_Strict: rounding must be 'nearest' when strict")
        return mode

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        return torch.round(x)


def test_accepted_roundings_are_checked_on_every_call() -> None:
    """Whatever quantize remembers between calls must not let a format accept a rounding it
    rejects (one format type accepting it, or another instance of the same type), nor a
    non-format through."""
    x = _sample()
    quantize(x, FixedPoint(8, 4), "down")
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize(x, format_from_string("mxfp8_e4m3"), "down")  # MX: nearest or stochastic
    quantize(x, _Strict(strict=False), "stochastic")
    with pytest.raises(ValueError, match="when strict"):
        quantize(x, _Strict(strict=True), "stochastic")
    for rounding in ("nearest", "NEAREST", Rounding.NEAREST):
        quantize(x, FixedPoint(8, 4), rounding)
        with pytest.raises(TypeError, match="must be a qtorch format"):
            quantize(x, "fixed(8,4)", rounding)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize(x, FixedPoint(8, 4), ["nearest"])  # type: ignore[arg-type]


#: One format of each family, and the IEEE-style layouts with and without Inf.
GRAPH_FORMATS = ["fixed", "float", "float8_e4m3fn", "block", "posit", "codebook16"]
GRAPH_FORMATS += ["codebook256", "mx", "nvfp4"]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", GRAPH_FORMATS)
def test_a_tensor_that_requires_grad_gets_a_zero_gradient(name: str, rounding: str) -> None:
    """The result is in x's graph, with the bits of the same call without one, and its
    gradient is exactly zero (rounding is a step function). The eager operations gave
    float nearest no graph, float(5,2) stochastic a NaN gradient, and fixed point
    stochastic an error in the backward pass."""
    fmt = family_format(name)
    x = torch.cat([SPECIALS_F32, torch.randn(3000, generator=torch.Generator().manual_seed(5))])
    leaf = (x * 4).requires_grad_()
    with qtorch.kernel_mode("eager"):
        torch.manual_seed(9)
        q = quantize(leaf, fmt, rounding)
        torch.manual_seed(9)
        with torch.no_grad():
            want = quantize(leaf, fmt, rounding)
    assert q.requires_grad and q.grad_fn is not None
    assert bits_equal(q.detach(), want)
    (q * torch.arange(len(x), dtype=x.dtype)).sum().backward()
    assert leaf.grad is not None and torch.equal(leaf.grad, torch.zeros_like(x))


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", ["fixed", "float", "codebook16", "mx"])
def test_in_place_in_a_graph_gives_a_zero_gradient(name: str, rounding: str) -> None:
    fmt = family_format(name)
    x = torch.cat([SPECIALS_F32, torch.randn(3000, generator=torch.Generator().manual_seed(6))])
    leaf = x.clone().requires_grad_()
    with qtorch.kernel_mode("eager"):
        torch.manual_seed(9)
        with torch.no_grad():
            want = quantize(x * 4, fmt, rounding)
        y = leaf * 4
        torch.manual_seed(9)
        assert qtorch.quantize_(y, fmt, rounding) is y
        assert bits_equal(y.detach(), want)
        y.sum().backward()
        assert leaf.grad is not None and torch.equal(leaf.grad, torch.zeros_like(x))
        with pytest.raises(RuntimeError, match="leaf Variable"):
            qtorch.quantize_(leaf, fmt, rounding)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's forward AD
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", GRAPH_FORMATS)
def test_forward_mode_ad_gets_a_zero_tangent(name: str, rounding: str) -> None:
    """A dual tensor of forward-mode AD (which ``no_grad`` does not stop) gets the bits of
    a plain call and a zero tangent. The eager operations gave block floating point and
    codebooks NaN tangents from the special values."""
    fmt = family_format(name)
    x = torch.cat([SPECIALS_F32, torch.randn(3000, generator=torch.Generator().manual_seed(7))])
    with qtorch.kernel_mode("eager"):
        torch.manual_seed(9)
        want = quantize(x * 4, fmt, rounding)
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(x * 4, torch.ones_like(x))
            torch.manual_seed(9)
            q, tangent = forward_ad.unpack_dual(quantize(dual, fmt, rounding))
            y = dual * 1.0
            torch.manual_seed(9)
            assert qtorch.quantize_(y, fmt, rounding) is y
            in_place, in_place_tangent = forward_ad.unpack_dual(y)
    assert bits_equal(q, want) and bits_equal(in_place, want)
    assert tangent is not None and torch.equal(tangent, torch.zeros_like(x))
    assert in_place_tangent is not None and torch.equal(in_place_tangent, torch.zeros_like(x))
