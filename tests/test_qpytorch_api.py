"""The QPyTorch 0.3 functional API: names, signatures, defaults, and what the functions do."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from edge_cases import bits_equal

import qtorch
import qtorch.number
import qtorch.quant
from qtorch import BlockFloatingPoint, FixedPoint, FloatingPoint, quantize
from qtorch.quant import block_quantize, fixed_point_quantize, float_quantize

EMPTY = inspect.Parameter.empty

#: QPyTorch 0.3's signatures: (name, default) of each positional-or-keyword parameter.
QPYTORCH_SIGNATURES = {
    "fixed_point_quantize": [
        ("x", EMPTY),
        ("wl", EMPTY),
        ("fl", EMPTY),
        ("clamp", True),
        ("symmetric", False),
        ("rounding", "stochastic"),
    ],
    "block_quantize": [("x", EMPTY), ("wl", EMPTY), ("dim", -1), ("rounding", "stochastic")],
    "float_quantize": [("x", EMPTY), ("exp", EMPTY), ("man", EMPTY), ("rounding", "stochastic")],
}


@pytest.mark.parametrize("name", sorted(QPYTORCH_SIGNATURES))
def test_signature_matches_qpytorch(name: str) -> None:
    assert name in qtorch.quant.__all__
    params = inspect.signature(getattr(qtorch.quant, name)).parameters.values()
    positional = [
        (p.name, p.default) for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    ]
    assert positional == QPYTORCH_SIGNATURES[name]
    # additions are keyword-only, so positional QPyTorch calls mean the same thing
    extra = [p for p in params if p.kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [(p.name, p.kind, p.default) for p in extra] == [
        ("generator", inspect.Parameter.KEYWORD_ONLY, None)
    ]


def test_number_module_reexports_the_formats() -> None:
    from qtorch.number import BlockFloatingPoint as B
    from qtorch.number import FixedPoint as F
    from qtorch.number import FloatingPoint as P
    from qtorch.number import Number

    assert (FixedPoint, FloatingPoint, BlockFloatingPoint) == (F, P, B)
    assert Number is qtorch.Format
    assert all(isinstance(f, Number) for f in (F(8, 4), P(5, 2), B(8)))
    assert {"FixedPoint", "FloatingPoint", "BlockFloatingPoint", "Number"} <= set(
        qtorch.number.__all__
    )
    assert qtorch.formats.FixedPoint is FixedPoint
    assert qtorch.formats.BlockFloatingPoint is BlockFloatingPoint


def test_qpytorch_format_attributes() -> None:
    """QPyTorch code reads these attributes off its number objects."""
    fixed = FixedPoint(8, 4, clamp=False, symmetric=True)
    assert (fixed.wl, fixed.fl, fixed.clamp, fixed.symmetric) == (8, 4, False, True)
    block = BlockFloatingPoint(wl=6, dim=0)
    assert (block.wl, block.dim) == (6, 0)
    floating = FloatingPoint(exp=5, man=2)
    assert (floating.exp, floating.man) == (5, 2)


def _values() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(40, 50, generator=g) * 3


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_functions_are_quantize_with_the_format(rounding: str) -> None:
    x = _values()
    cases = [
        (lambda: fixed_point_quantize(x, 8, 4, rounding=rounding), FixedPoint(8, 4)),
        (
            lambda: fixed_point_quantize(x, 6, 2, False, True, rounding),
            FixedPoint(6, 2, False, True),
        ),
        (lambda: block_quantize(x, 6, rounding=rounding), BlockFloatingPoint(6)),
        (lambda: block_quantize(x, 6, 1, rounding), BlockFloatingPoint(6, 1)),
        (lambda: float_quantize(x, 4, 3, rounding=rounding), FloatingPoint(4, 3)),
    ]
    for call, fmt in cases:
        torch.manual_seed(5)
        got = call()
        torch.manual_seed(5)
        assert bits_equal(got, quantize(x, fmt, rounding)), fmt


def test_default_rounding_is_stochastic() -> None:
    x = _values()
    for call, fmt in [
        (lambda: fixed_point_quantize(x, 8, 4), FixedPoint(8, 4)),
        (lambda: block_quantize(x, 6), BlockFloatingPoint(6)),
        (lambda: float_quantize(x, 4, 3), FloatingPoint(4, 3)),
    ]:
        torch.manual_seed(9)
        got = call()
        torch.manual_seed(9)
        assert bits_equal(got, quantize(x, fmt, "stochastic"))
        assert not bits_equal(got, quantize(x, fmt, "nearest"))


def test_generator_keyword() -> None:
    x = _values()
    a = fixed_point_quantize(x, 8, 4, generator=torch.Generator().manual_seed(1))
    b = fixed_point_quantize(x, 8, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_float_quantize_nearest_is_a_half_cast() -> None:
    """Independent oracle: torch's own float16 and bfloat16 casts (in range, finite)."""
    x = torch.cat([_values().flatten(), torch.tensor([1.0 + 2**-11, 1.0 + 3 * 2**-11, -0.0])])
    assert bits_equal(float_quantize(x, 5, 10, "nearest"), x.half().float())
    assert bits_equal(float_quantize(x, 8, 7, "nearest"), x.bfloat16().float())


def test_block_quantize_issue_example() -> None:
    got = block_quantize(torch.tensor([1.0, 0.3, -0.7]), 4, rounding="nearest")
    assert got.tolist() == [1.0, 0.25, -0.75]


def test_fixed_point_quantize_ties_to_even_and_clamps() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, 200.0, -200.0, math.nan])
    got = fixed_point_quantize(x, 8, 0, rounding="nearest")
    assert bits_equal(got, torch.tensor([0.0, 2.0, 2.0, 127.0, -128.0, math.nan]))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda x: fixed_point_quantize(x, 0, 4), ValueError, "wl must be in 1..64"),
        (lambda x: fixed_point_quantize(x, 8, 4, rounding="nearst"), ValueError, "rounding"),
        (lambda x: block_quantize(x, 1), ValueError, "wl must be in 2..64"),
        (lambda x: block_quantize(x, 8, dim=3), ValueError, "dim must be -1 or in 0..1"),
        (lambda x: float_quantize(x, 9, 2), ValueError, "exp must be in 1..8"),
        (lambda x: float_quantize(x, 5, 24), ValueError, "man must be in 0..23"),
        (lambda x: fixed_point_quantize(x.int(), 8, 4), TypeError, "float32, float64"),
    ],
)
def test_bad_arguments(call, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        call(torch.ones(2, 3))


def test_functional_calls_share_one_format_object_per_argument_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So that a repeated call runs its plan (qtorch.kernels.fused.run_planned)."""
    from qtorch.kernels import fused
    from qtorch.quant.format_cache import format_of

    assert format_of(FixedPoint, 8, 4, True, False) is format_of(FixedPoint, 8, 4, True, False)
    assert format_of(FixedPoint, 8, 4, True, False) is not format_of(FixedPoint, 8, 5, True, False)
    # equal arguments of other types are other keys: the format still rejects them
    format_of(FixedPoint, 8, 4, True, False)
    with pytest.raises(TypeError, match="clamp must be True or False"):
        fixed_point_quantize(torch.ones(3), 8, 4, clamp=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="wl must be an int"):
        format_of(FixedPoint, 8.0, 4)
    with pytest.raises(TypeError, match="wl must be an int"):
        format_of(FixedPoint, [8], 4)  # unhashable: built (and rejected) as it is

    dispatches = [0]
    full = fused.quantize

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        dispatches[0] += 1
        return full(*args, **kwargs)  # type: ignore[arg-type]

    x = torch.randn(3000, generator=torch.Generator().manual_seed(3)) * 4
    calls = [
        (lambda: fixed_point_quantize(x, 7, 3, rounding="nearest"), FixedPoint(7, 3)),
        (lambda: float_quantize(x, 4, 2, rounding="nearest"), FloatingPoint(4, 2)),
        (lambda: block_quantize(x, 7, rounding="nearest"), BlockFloatingPoint(7)),
        (lambda: qtorch.quant.posit_quantize(x, 7, 1), qtorch.Posit(7, 1)),
    ]
    monkeypatch.setattr(fused, "quantize", counted)
    with qtorch.kernel_mode("eager"):
        expected = [quantize(x, fmt, "nearest") for _, fmt in calls]
    with qtorch.kernel_mode("compiled"):
        for (call, _), want in zip(calls, expected, strict=True):
            before = dispatches[0]
            for _ in range(3):
                assert bits_equal(call(), want)
            assert dispatches[0] - before == 1  # the first call only
