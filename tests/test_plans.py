"""Plans: a call like one that settled on the compiled kernel runs it without the dispatch.

Each test checks the results against the eager reference bit for bit, and whether the full
dispatch (``fused.quantize``) ran, by counting its calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from edge_cases import SPECIALS_F32, RecordingMode, bits_equal, random_float32

import qtorch
from qtorch.cli.bench import family_format
from qtorch.kernels import compiled_call, fused
from qtorch.rounding import Rounding


@pytest.fixture(autouse=True)
def _compiled_mode() -> Iterator[None]:
    with qtorch.kernel_mode("compiled"):
        yield


@pytest.fixture
def dispatches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls outside kernel mode "eager" (the references) that go through the
    full dispatch, not by a plan."""
    calls = [0]
    full = fused.quantize

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += qtorch.get_kernel_mode() != "eager"
        return full(*args, **kwargs)

    monkeypatch.setattr(fused, "quantize", counted)
    return calls


def _values(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    n = 1
    for size in shape:
        n *= size
    bits = torch.cat([SPECIALS_F32, random_float32(n - len(SPECIALS_F32), seed=5)])
    return bits.view(shape).to(dtype)


def _eager(
    x: torch.Tensor, fmt: qtorch.Format, rounding: object, seed: int, inplace: bool = False
) -> torch.Tensor:
    torch.manual_seed(seed)
    with qtorch.kernel_mode("eager"):
        if inplace:
            return qtorch.quantize_(x.clone(), fmt, rounding)  # type: ignore[arg-type]
        return qtorch.quantize(x, fmt, rounding)  # type: ignore[arg-type]


def _call(
    x: torch.Tensor, fmt: qtorch.Format, rounding: object, seed: int, inplace: bool = False
) -> torch.Tensor:
    torch.manual_seed(seed)
    if inplace:
        return qtorch.quantize_(x, fmt, rounding)  # type: ignore[arg-type]
    return qtorch.quantize(x, fmt, rounding)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "rounding", "shape", "dtype"),
    [
        ("fixed(8,3)", "nearest", (4099,), torch.float32),  # x itself
        ("fixed(8,3)", "nearest", (7, 601), torch.float32),  # x flat
        ("fixed(8,3)", Rounding.STOCHASTIC, (3, 4096), torch.float32),  # rows of 16
        ("fixed(8,3)", "stochastic", (4099,), torch.float32),  # flat noise
        ("float(5,2)", "nearest", (33, 65), torch.float16),  # casts in the kernel
        ("posit(8,2)", "nearest", (2050,), torch.bfloat16),
        ("posit(7,1)", "stochastic", (2048,), torch.float64),
        ("block", "nearest", (9, 500), torch.float32),  # one block per tensor
        ("block(8,0)", "stochastic", (40, 64), torch.float32),  # a block per row: x's shape
        ("codebook16", "stochastic", (4096,), torch.float32),
        ("mx", "nearest", (12, 64), torch.float32),
        ("nvfp4", "stochastic", (6, 64), torch.float32),
    ],
    ids=str,
)
@pytest.mark.parametrize("inplace", [False, True], ids=["quantize", "quantize_"])
def test_repeated_calls_run_their_plan_and_match_eager(
    dispatches: list[int],
    name: str,
    rounding: object,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    inplace: bool,
) -> None:
    fmt = family_format(name)
    x = _values(*shape, dtype=dtype)
    for seed in range(3):
        y = x.clone()
        got = _call(y, fmt, rounding, seed, inplace)
        assert bits_equal(got, _eager(x, fmt, rounding, seed, inplace)), (name, seed)
        assert got.shape == x.shape and got.dtype == dtype
        assert (got is y) == inplace and bits_equal(y, got if inplace else x)
    assert dispatches[0] == 1  # the first call left the plan
    # the same stream of seeds as the eager path, with an explicit generator too
    if Rounding.parse(rounding) is Rounding.STOCHASTIC:  # type: ignore[arg-type]
        run = qtorch.quantize_ if inplace else qtorch.quantize
        a, b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
        with qtorch.kernel_mode("eager"):
            expected = [run(x.clone(), fmt, rounding, b) for _ in range(2)]  # type: ignore[arg-type]
        got_both = [run(x.clone(), fmt, rounding, a) for _ in range(2)]  # type: ignore[arg-type]
        assert all(map(bits_equal, got_both, expected)) and dispatches[0] == 1
        assert not bits_equal(got_both[0], got_both[1])


def test_plans_follow_what_chose_the_path(
    monkeypatch: pytest.MonkeyPatch, dispatches: list[int]
) -> None:
    fmt = family_format("fixed(9,5)")  # kernels of its own (in this file)
    x = _values(64, 64)
    expected = _eager(x, fmt, "nearest", 0)
    assert bits_equal(qtorch.quantize(x, fmt), expected)
    assert bits_equal(qtorch.quantize(x, fmt), expected) and dispatches[0] == 1

    def full_dispatch(call: Any, want: torch.Tensor) -> None:
        before = dispatches[0]
        assert bits_equal(call(), want)
        assert dispatches[0] == before + 1

    eager_runs = [0]
    eager_run = qtorch.kernels.eager.run

    def counted_eager(*args: Any, **kwargs: Any) -> torch.Tensor:
        eager_runs[0] += 1
        return eager_run(*args, **kwargs)

    monkeypatch.setattr(qtorch.kernels.eager, "run", counted_eager)
    with qtorch.kernel_mode("eager"):
        assert bits_equal(qtorch.quantize(x, fmt), expected)
    assert eager_runs[0] == 1
    as_double = _eager(x.double(), fmt, "nearest", 0)
    eager_runs[0] -= 1
    full_dispatch(lambda: qtorch.quantize(x.double(), fmt), as_double)
    full_dispatch(lambda: qtorch.quantize(x.t(), fmt), expected.t())  # same shape, strided
    full_dispatch(lambda: qtorch.quantize(x[:32], fmt), expected[:32])  # another shape
    full_dispatch(lambda: qtorch.quantize(x, fmt, "NEAREST"), expected)  # another argument
    full_dispatch(lambda: qtorch.quantize(x, fmt, Rounding.NEAREST), expected)
    with torch.device("cpu"):  # a torch function mode
        full_dispatch(lambda: qtorch.quantize(x, fmt), expected)
    assert eager_runs[0] == 1  # all of them compiled
    seen = RecordingMode()
    with seen:
        full_dispatch(lambda: qtorch.quantize(x, fmt), expected)
    assert any("round" in op for op in seen.ops) and eager_runs[0] == 2
    with monkeypatch.context() as m:
        m.setitem(compiled_call.DIRECT, "cpu", False)
        full_dispatch(lambda: qtorch.quantize(x, fmt), expected)
    assert eager_runs[0] == 2

    graph = x.clone().requires_grad_()
    before = dispatches[0]
    q = qtorch.quantize(graph, fmt)  # rounded without a graph (the plan), then put in it
    assert q.grad_fn is not None and bits_equal(q.detach(), expected)
    assert dispatches[0] == before and eager_runs[0] == 2
    q.sum().backward()
    assert graph.grad is not None and torch.equal(graph.grad, torch.zeros_like(x))
    with torch.no_grad():  # nothing to build: the plan
        assert bits_equal(qtorch.quantize(graph, fmt), expected)
    assert dispatches[0] == before

    with pytest.raises(ValueError, match="rounding must be one of"):
        qtorch.quantize(x, fmt, "bogus")
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor"):
        qtorch.quantize(x.tolist(), fmt)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a qtorch format"):
        qtorch.quantize(x, "fixed(11,4)")  # type: ignore[arg-type]


def test_auto_mode_plans_only_sizes_settled_on_compiled(
    monkeypatch: pytest.MonkeyPatch, dispatches: list[int]
) -> None:
    monkeypatch.setattr(fused, "AUTO_COMPILE_AFTER_S", 0.0)
    fmt = family_format("fixed(9,6)")  # kernels of its own (in this file)
    small, large = _values(3000), _values(fused.MEASURE_BELOW["cpu"] + 5)
    with qtorch.kernel_mode("auto"):
        for x in (small, large):
            qtorch.quantize(x, fmt)  # compiles: the first call
        key = fused._key(small, fmt, Rounding.NEAREST, False, "cpu")
        slot = (key, small.numel().bit_length())
        assert small.shape not in {place for (_, place), p in fused._plans.items() if p.fmt is fmt}
        assert slot not in fused._faster
        for settled in ("eager", "compiled"):
            fused._faster[slot] = settled
            before = dispatches[0]
            for _ in range(3):
                assert bits_equal(qtorch.quantize(small, fmt), _eager(small, fmt, "nearest", 0))
            assert dispatches[0] - before == (3 if settled == "eager" else 1), settled
        before = dispatches[0]
        qtorch.quantize(large, fmt)  # large sizes are never timed: planned at once
        assert dispatches[0] == before
    with qtorch.kernel_mode("compiled"):  # a plan is for the kernel mode it was made under
        qtorch.quantize(large, fmt)
        assert dispatches[0] == before + 1


def test_a_failing_plan_falls_back_with_the_same_seed(dispatches: list[int]) -> None:
    fmt = family_format("fixed(9,7)")  # kernels of its own (in this file)
    x = _values(5, 4096)
    qtorch.quantize(x, fmt, "stochastic")
    ((key, plan),) = [(k, p) for k, p in fused._plans.items() if p.fmt is fmt]

    def broken(*args: Any) -> Any:
        raise RuntimeError("a kernel that failed")

    fused._plans[key] = dataclasses.replace(plan, call=broken)
    torch.manual_seed(4)
    got = [qtorch.quantize(x, fmt, "stochastic") for _ in range(2)]
    torch.manual_seed(4)
    with qtorch.kernel_mode("eager"):
        expected = [qtorch.quantize(x, fmt, "stochastic") for _ in range(2)]
    assert all(map(bits_equal, got, expected))
    # the failing call went on with its seed; the next one made a plan again
    assert dispatches[0] == 3 and fused._plans[key].call is not broken
    assert not fused._broken  # the kernel itself still works: no fallback to remember


def test_plans_are_bounded_and_new_format_objects_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fused, "MAX_PLANS", 2)
    x = _values(2001)
    expected = _eager(x, qtorch.FixedPoint(8, 4), "nearest", 0)
    for _ in range(5):  # an equal format, a new object each call
        assert bits_equal(qtorch.quantize(x, qtorch.FixedPoint(8, 4)), expected)
        assert len(fused._plans) <= 2


def test_a_user_compile_traces_the_eager_code_past_a_plan() -> None:
    fmt = dataclasses.replace(family_format("float(5,2)"), saturate=False)  # its own kernels
    x = _values(5000)
    expected = _eager(x, fmt, "nearest", 0)
    qtorch.quantize(x, fmt)
    assert any(p.fmt is fmt for p in fused._plans.values())

    @torch.compile(fullgraph=True, backend="aot_eager")  # no graph break: the plan is skipped
    def step(t: torch.Tensor) -> torch.Tensor:
        return qtorch.quantize(t, fmt) + 1

    assert bits_equal(step(x), expected + 1)
