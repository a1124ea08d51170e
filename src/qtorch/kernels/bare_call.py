"""Inductor's own function behind a compiled kernel, called without AOTAutograd's wrappers.

``compile_fx`` returns AOTAutograd's forward: ``torch._dynamo.disable``'s wrapper, the
forward that prepends lifted parameters, AOTAutograd's runtime wrapper, then Inductor's
``CompiledFxGraph``, and only then the generated module's ``call``. On a warm cache the
layers cost a few microseconds. After a kernel that streamed a few MiB, though, each runs
from DRAM. Cold, block(8) nearest on 4,096 float32 elements (2 threads, Zen 2) took
0.132 ms through AOTAutograd's forward and 0.059 ms through ``call``; ``torch.mul`` took
0.071 ms. On 4,194,304 elements: 1.543 against 1.440 ms.

:func:`find` returns the ``CompiledFxGraph`` where the layers do nothing for a qtorch
kernel that the caller cannot do itself:

* lifted parameters and buffers (tensor constants) are put first, as AOTAutograd's forward
  puts them;
* the graph is Inductor's CPU code (CUDA keeps the full call);
* the runtime wrapper's generated code (torch 2.13) uses nothing but ``torch``, the
  marking of dynamic output sizes, and the version counter bump that follows a mutation
  of an input inside the graph.

Where the runtime wrapper has any other step (mutations applied outside the graph, outputs
that alias inputs rebuilt as views, autocast turned off), or Dynamo's graph changes grad
mode (which the wrapper sets again after the call), :func:`find` gives None. The steps
are read from the names the wrapper's code uses, because the metadata behind it is not
kept: on an AOTAutograd cache hit it exists only in the pickled cache entry. Any other
structure (another torch release) gives None too, and the kernel is called through
``compile_fx``'s function as before.

What a caller of the graph must do in the runtime wrapper's place:

* after an in-place kernel, bump the version counter of x (:attr:`Bare.writes`), so that
  autograd still sees the write to a tensor that a graph saved;
* call only while no Dynamo frame hook is set (:func:`may_skip`). Dynamo's ``disable``
  wrapper is not there to keep it from tracing the generated module. And while a profiler
  runs, call through the wrappers, which label the call in the trace.

The outputs are not marked with their dynamic sizes (``_dynamo_propagated_dynamic_indices``):
a later ``torch.compile`` of the user's code treats them as it treats the eager path's
results.

Grad mode stays as the caller has it. The runtime wrapper turns grad off for the call,
but Inductor's CPU code writes through raw pointers, and the caller's tensors do not
require grad with grad mode on (:func:`qtorch.kernels.compiled_call.plain`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.autograd import profiler

#: The names the runtime wrapper's generated code may use for :func:`find` to skip it:
#: torch itself, the builtins, and the marking of dynamic output sizes (``_dyn_dims_<i>``
#: are its arguments). ``_increment_version_`` is allowed and reported (:attr:`Bare.writes`).
_SKIPPABLE = frozenset({"torch", "__builtins__", "_mark_dynamic_"})

#: The generated code's name for the version counter bump after an in-graph mutation.
_BUMP = "_increment_version_"

try:
    _frame_hook: Callable[[], Any] = torch._C._dynamo.eval_frame.get_eval_frame_callback
except AttributeError:  # another torch: never skip the wrappers

    def _frame_hook() -> Any:
        return True


@dataclass(frozen=True)
class Bare:
    """Inductor's function for one compiled kernel: ``bare.graph.current_callable(args)``
    takes the graph's arguments as a list (and empties it) and returns its outputs.

    ``args`` are the lifted :attr:`params` (tensor constants of the kernel's code, such as
    the tables of a large codebook), then the kernel's own arguments.
    """

    #: Inductor's ``CompiledFxGraph``; its ``current_callable`` is read at each call
    graph: Any
    #: AOTAutograd's lifted parameters and buffers (its list, usually empty)
    params: list[torch.Tensor]
    #: whether the graph writes into an argument, x (the runtime wrapper's version bump);
    #: never with :attr:`params`
    writes: bool


def find(gm: torch.fx.GraphModule, fn: Callable[..., Any]) -> Bare | None:
    """The :class:`Bare` function inside ``fn``, ``compile_fx``'s result for Dynamo's graph
    ``gm``, where its wrappers may be skipped (see the module's docstring); None elsewhere."""
    if any(node.target is torch._C._set_grad_enabled for node in gm.graph.nodes):
        return None
    try:
        from torch._functorch._aot_autograd.runtime_wrappers import (
            SerializableCompiledFunction,
        )
        from torch._inductor.output_code import CompiledFxGraph

        def inside(f: Any) -> Any:  # through the serializable records, which only forward
            while type(f) is SerializableCompiledFunction:
                f = f.compiled_fn
            return f

        forward = _cell(fn, "fn")  # inside torch._dynamo.disable's wrapper
        params = _cell(forward, "params_buffers_flat")  # (the list forward itself prepends)
        # a fresh compile records the graph, a cache hit the runtime wrapper
        wrapper = inside(_cell(forward, "compiled_fn"))
        graph = inside(_cell(wrapper, "_inner_compiled_fn"))
        names = set(_cell(wrapper, "_codegen_runtime_wrapper").__globals__)
    except (AttributeError, KeyError, TypeError, ValueError, ImportError):
        return None
    if type(graph) is not CompiledFxGraph or getattr(graph, "current_callable", None) is None:
        return None
    if set(getattr(graph, "device_types", ())) != {"cpu"}:
        return None
    rest = {n for n in names - _SKIPPABLE if not n.startswith("_dyn_dims_")}
    if rest - {_BUMP} or (rest and params) or not isinstance(params, list):
        return None  # (with parameters first, the bump's argument is not known to be x)
    return Bare(graph, params, _BUMP in rest)


def may_skip() -> bool:
    """Whether a call may skip the wrappers now: no Dynamo frame hook is set (as in plain
    eager code), so that Inductor's generated module runs as it is, and no profiler runs
    (``CompiledFxGraph`` labels the call in its trace)."""
    return _frame_hook() is None and not getattr(profiler, "_is_profiler_enabled", True)


def _cell(fn: Any, name: str) -> Any:
    """The value of the closure variable ``name`` of the function ``fn``."""
    code = fn.__code__
    return fn.__closure__[code.co_freevars.index(name)].cell_contents
