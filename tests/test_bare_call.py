"""Inductor's function called without AOTAutograd's wrappers (qtorch.kernels.bare_call).

The results are checked against the eager reference bit for bit. Also checked: which
function ran, the version counter that autograd reads after an in-place kernel, and the
wrappers that must not be skipped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from edge_cases import bits_equal, random_float32

import qtorch
from qtorch.cli.bench import family_format
from qtorch.kernels import bare_call, fused
from qtorch.kernels.compiled_call import Captured, CompiledKernel
from qtorch.rounding import Rounding

#: The structure bare_call reads is torch 2.13's; on another release it may find nothing,
#: which leaves every call on compile_fx's function (the other tests cover that path).
KNOWN_TORCH = pytest.mark.skipif(
    not torch.__version__.startswith("2.13."),
    reason="reads the wrappers of torch 2.13",
)


#: A Dynamo graph for find's first argument: it only reads whether grad mode changes.
_GM = torch.fx.symbolic_trace(lambda x: x * 2)


@pytest.fixture(autouse=True)
def _compiled_mode() -> Iterator[None]:
    with qtorch.kernel_mode("compiled"):
        yield


def _fmt(wl: int) -> qtorch.Format:
    """fixed(wl, 3): a kernel of its own per test (the cache is keyed by the format; other
    test files use fixed(wl, 4))."""
    return dataclasses.replace(family_format("fixed(8,4)"), wl=wl, fl=3)


def _eager(x: torch.Tensor, fmt: qtorch.Format, rounding: str = "nearest") -> torch.Tensor:
    torch.manual_seed(0)
    with qtorch.kernel_mode("eager"):
        return qtorch.quantize(x, fmt, rounding)


def _captured(
    fmt: qtorch.Format, x: torch.Tensor, in_place: bool = False, rounding: str = "nearest"
) -> Captured:
    """The function that later calls on x's shape run, after one call learnt it."""
    (kern,) = [
        k
        for key, k in fused._cache.items()
        if key.fmt == fmt and key.rounding == Rounding(rounding) and key.write_into_arg == in_place
    ]
    assert isinstance(kern, CompiledKernel)
    captured = kern.shapes[x.shape]
    return captured


def _count(monkeypatch: pytest.MonkeyPatch, captured: Captured) -> list[int]:
    """Count the calls of compile_fx's function (the wrapped path) from now on."""
    calls = [0]
    fn = captured.fn

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return fn(*args)

    monkeypatch.setitem(vars(captured), "fn", counted)  # (a frozen dataclass)
    return calls


def _repeats_skip_the_wrappers(
    monkeypatch: pytest.MonkeyPatch,
    captured: Captured,
    fmt: qtorch.Format,
    x: torch.Tensor,
    rounding: str,
) -> None:
    """Repeated calls match eager without calling compile_fx's function."""
    calls = _count(monkeypatch, captured)
    for _ in range(3):
        torch.manual_seed(0)
        assert bits_equal(qtorch.quantize(x, fmt, rounding), _eager(x, fmt, rounding))
    assert calls[0] == 0


@KNOWN_TORCH
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_repeats_call_inductors_function_and_match_eager(
    monkeypatch: pytest.MonkeyPatch, rounding: str
) -> None:
    fmt = _fmt(9 if rounding == "nearest" else 10)
    x = random_float32(5001, seed=1)
    torch.manual_seed(0)
    qtorch.quantize(x, fmt, rounding)  # compiles, learns the shape
    captured = _captured(fmt, x, rounding=rounding)
    assert captured.bare is not None and not captured.bare.writes
    _repeats_skip_the_wrappers(monkeypatch, captured, fmt, x, rounding)


@KNOWN_TORCH
def test_an_in_place_kernel_bumps_the_version_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor that autograd saved and a compiled kernel then rewrote: backward must
    refuse, as it does after any in-place operation. The write goes through a raw pointer,
    so only the version bump tells autograd."""
    fmt = _fmt(11)
    x = random_float32(3001, seed=2)
    expected = _eager(x, fmt)
    qtorch.quantize_(x.clone(), fmt)  # compiles, learns the shape
    captured = _captured(fmt, x, in_place=True)
    assert captured.bare is not None and captured.bare.writes
    calls = _count(monkeypatch, captured)
    weight = torch.ones(3001, requires_grad=True)
    a = x.clone()
    loss = (weight * a).sum()  # saves a for backward
    version = a._version
    assert qtorch.quantize_(a, fmt) is a
    assert calls[0] == 0 and a._version > version
    assert bits_equal(a, expected)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_with_a_frame_hook_set_the_call_keeps_the_wrappers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a Dynamo frame hook the generated module could be traced; the call goes
    through compile_fx's function, whose wrapper turns the hook off."""
    fmt = _fmt(12)
    x = random_float32(2001, seed=3)
    qtorch.quantize(x, fmt)
    captured = _captured(fmt, x)
    calls = _count(monkeypatch, captured)
    monkeypatch.setattr(bare_call, "_frame_hook", lambda: object())
    assert not bare_call.may_skip()
    assert bits_equal(qtorch.quantize(x, fmt), _eager(x, fmt))
    assert calls[0] == 1


def _wrapper_parts(fn: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(AOTAutograd's forward, its runtime wrapper, the globals of the wrapper's code)."""
    forward = bare_call._cell(fn, "fn")
    wrapper = bare_call._cell(forward, "compiled_fn")
    if not hasattr(wrapper, "__code__"):  # after a cache hit: the serializable record first
        wrapper = wrapper.compiled_fn
    return forward, wrapper, bare_call._cell(wrapper, "_codegen_runtime_wrapper").__globals__


@KNOWN_TORCH
@pytest.mark.parametrize(
    "step",
    [
        "_apply_mutations_",  # an input's mutation applied outside the graph
        "_replay_aliases_",  # an output that is a view of an input, rebuilt
        "_DisableAutocast_",  # autocast turned off around the call
        "_a_step_of_another_torch_",
    ],
)
def test_wrappers_with_other_work_are_kept(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    fmt = _fmt(13)
    x = random_float32(2001, seed=4)
    qtorch.quantize(x, fmt)
    fn = _captured(fmt, x).fn
    assert bare_call.find(_GM, fn) is not None
    _, _, names = _wrapper_parts(fn)
    monkeypatch.setitem(names, step, object())
    assert bare_call.find(_GM, fn) is None


@KNOWN_TORCH
def test_writes_after_parameters_cuda_graphs_and_other_structures_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fmt = _fmt(14)
    x = random_float32(2001, seed=5)
    qtorch.quantize(x, fmt)
    fn = _captured(fmt, x).fn
    forward, wrapper, names = _wrapper_parts(fn)
    graph = bare_call._cell(wrapper, "_inner_compiled_fn")
    graph = getattr(graph, "compiled_fn", graph)  # a fresh compile: the serializable record
    params = bare_call._cell(forward, "params_buffers_flat")
    assert bare_call.find(_GM, fn) == bare_call.Bare(graph, params, False) and params == []
    with monkeypatch.context() as m:  # parameters first, and a version bump: not known of x
        m.setitem(names, "_increment_version_", object())
        assert bare_call.find(_GM, fn) == bare_call.Bare(graph, params, True)
        cell = forward.__closure__[forward.__code__.co_freevars.index("params_buffers_flat")]
        m.setattr(cell, "cell_contents", [torch.zeros(1)])
        assert bare_call.find(_GM, fn) is None
    with monkeypatch.context() as m:  # Inductor's CUDA code keeps the full call
        m.setattr(graph, "device_types", {"cuda"})
        assert bare_call.find(_GM, fn) is None
    graph_mode = torch.fx.Graph()  # a graph that turns grad mode off, as Dynamo records it
    graph_mode.call_function(torch._C._set_grad_enabled, (False,))
    graph_mode.output(graph_mode.placeholder("x"))
    assert bare_call.find(torch.fx.GraphModule(torch.nn.Module(), graph_mode), fn) is None
    assert bare_call.find(_GM, forward) is None  # not the structure (no "fn" in its closure)
    assert bare_call.find(_GM, lambda: None) is None
    assert bare_call.find(_GM, len) is None  # no closure at all


@KNOWN_TORCH
def test_a_fresh_compile_and_a_cache_hit_are_both_read() -> None:
    """The two records differ: a fresh compile's forward holds the runtime wrapper, whose
    graph sits in a serializable record; a cache hit's forward holds the serializable
    record, which holds the runtime wrapper."""
    from torch._functorch._aot_autograd.runtime_wrappers import SerializableCompiledFunction
    from torch._inductor import config

    fmt = _fmt(15)
    x = random_float32(2001, seed=6)
    expected = _eager(x, fmt)
    qtorch.quantize(x, fmt)  # either; the caches hold it now
    records = []
    for fresh in (True, False):
        fused.clear_cache()
        with config.patch(force_disable_caches=fresh):
            assert bits_equal(qtorch.quantize(x, fmt), expected)
        captured = _captured(fmt, x)
        assert captured.bare is not None
        assert bits_equal(qtorch.quantize(x, fmt), expected)  # the direct call
        forward = bare_call._cell(captured.fn, "fn")
        records.append(type(bare_call._cell(forward, "compiled_fn")))
    assert records[0] is not SerializableCompiledFunction
    assert records[1] is SerializableCompiledFunction


@KNOWN_TORCH
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_lifted_tables_come_first(monkeypatch: pytest.MonkeyPatch, rounding: str) -> None:
    """Codebook 256's kernel reads its tables as tensor constants, which AOTAutograd lifts
    into parameters that its forward puts before the arguments."""
    fmt = family_format("codebook256")
    x = random_float32(4001, seed=7)
    torch.manual_seed(0)
    qtorch.quantize(x, fmt, rounding)
    captured = _captured(fmt, x, rounding=rounding)
    assert captured.bare is not None and captured.bare.params
    _repeats_skip_the_wrappers(monkeypatch, captured, fmt, x, rounding)


@KNOWN_TORCH
def test_under_a_profiler_the_call_is_labelled(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = _fmt(16)
    x = random_float32(2001, seed=8)
    qtorch.quantize(x, fmt)
    captured = _captured(fmt, x)
    calls = _count(monkeypatch, captured)
    assert bare_call.may_skip()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert bits_equal(qtorch.quantize(x, fmt), _eager(x, fmt))
    assert calls[0] == 1
    assert any("CompiledFxGraph" in event.name for event in prof.events())
