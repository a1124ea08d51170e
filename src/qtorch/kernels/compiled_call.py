"""Calling a compiled kernel: through Dynamo, then straight into what Inductor made.

A ``torch.compile``'d function runs, on every call, Dynamo's frame hook, its guards and
AOTAutograd's runtime wrappers before Inductor's generated code. On a warm cache that is
about 20 µs; but after a kernel that streams a few MiB, the caches hold the tensor data and
that machinery runs from DRAM. Measured on 4,194,304 float32 elements, 2 threads, fixed(8,4)
nearest: Inductor's function called directly 0.67 ms, the same function through Dynamo 0.80
ms, ``torch.mul(x, 2.0)`` 0.69 ms.

So :class:`Capture`, the Dynamo backend of every qtorch kernel, compiles with Inductor as
``backend="inductor"`` does and keeps each compiled function with the map from its graph's
inputs to the kernel's arguments (x, the seed, and x's sizes for symbolic dimensions).
:class:`CompiledKernel` runs the first call of each shape of x through Dynamo, which checks
its guards (and compiles when none passes), and remembers which function Dynamo ran; later
calls with that shape (on CUDA: and device index) go straight to it. Anything else that
Dynamo's guards look at is fixed by the caller's cache key (format, rounding, dtype, device
type, contiguity, writing into x) or checked here on every call (a plain tensor or
parameter, no autograd graph to build, no torch function or dispatch mode). A graph whose
inputs do not fit the map always runs through Dynamo, as do devices other than the CPU and
CUDA (:data:`DIRECT`).

The function Dynamo ran is ``compile_fx``'s, itself AOTAutograd's wrappers around
Inductor's. On the CPU, where those wrappers do nothing the kernel needs beyond a version
bump, :class:`Captured` calls Inductor's function inside them (:mod:`qtorch.kernels.bare_call`:
cold, 0.07 ms less per call; warm at 2,048 elements, fixed nearest 19 → 11 µs).

On CUDA a compiled call through Dynamo took 0.15-0.40 ms at every size from 1e4 to 1e7
elements on an H200, each call waited for (a copy of the same tensor: 0.02-0.04 ms), so
most of it was the host's work (docs/performance.md). The direct call there is checked and
timed against the call through Dynamo by ``benchmarks/gpu_check.py`` (same function, so
the same bits); it was written without a GPU, from the CPU path and Inductor's generated
CUDA code, which runs on the device index it was compiled for.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
from torch.autograd.graph import increment_version

from qtorch.kernels import bare_call

#: Dynamo's names of the graph inputs a kernel may have: its arguments x and seed, and the
#: sizes of x's symbolic dimensions.
_SOURCE = re.compile(r"L\['(x|seed)'\](?:\.size\(\)\[(\d+)\])?")

#: Inductor settings for qtorch's kernels. ``cpp.dynamic_threads``: the generated C++ opens
#: an OpenMP parallel region for any size and leaves the thread count to the runtime.
#: Without it, Inductor decides at compile time from the compiling call's size and
#: ``torch.get_num_threads()``: a kernel first compiled on 1,000 elements (below 512 per
#: thread) or under one thread came out serial, and Inductor's on-disk cache then served
#: that serial kernel for every size, in later processes too (``qtorch bench --quick``
#: compiles on 1,000 elements first).
#:
#: ``eager_numerics`` (Triton only): float32 ``a / b`` is ``div_rn``, the correctly rounded
#: division of the eager path and the CPU, where Triton's ``/`` is ``div.full.f32``
#: (within 2 ulp, and 1 ulp off even where the quotient is exact: 4.6875 / 0.9375 gave
#: 5.0000005 in a report on Triton's issue tracker; not seen here, without a GPU). NVFP4
#: divides x by its block's E4M3 scale and rounds the quotient to FP4, so one ulp moves an
#: exact tie: the block (5.625, 4.6875) has the scale 0.9375 and the quotient 5.0, which
#: rounds to 4 (to even), and 5.0000005 to 6. ``disable_ftz``: the libdevice functions the
#: kernels call (floor, nearbyint) keep subnormal arguments, as the eager path does,
#: instead of flushing them to zero.
CONFIG = {
    "cpp.dynamic_threads": True,
    "eager_numerics.division_rounding": True,
    "eager_numerics.disable_ftz": True,
}


def config_patches() -> dict[str, Any]:
    """:data:`CONFIG`; ``post_grad_custom_post_pass``: the
    :class:`~qtorch.kernels.vector_bitcast.CacheKey` of the register bit casts and the
    constant clamps, where they apply (:func:`bitcasts`); and ``cpp.simdlen``: the vector
    width of the instruction set Inductor picks for the CPU's C++ (``ATEN_CPU_CAPABILITY``
    included), unless one is set already.

    Inductor's graph cache key holds its configuration but not that instruction set, so a
    process that picks another one (``ATEN_CPU_CAPABILITY=avx2`` on an AVX-512 CPU, or
    another machine sharing the cache directory) loaded kernels generated for the first and
    built them for its own: garbage results, once a corrupted heap
    (:mod:`qtorch.kernels.verify`). With the width in the configuration each instruction
    set has its own cache entries, and the kernel's code is what it was: the first
    instruction set of that width, which is the one picked.
    """
    from torch._inductor import config

    patches: dict[str, Any] = dict(CONFIG)
    casts = bitcasts()
    if casts is not None:
        patches["post_grad_custom_post_pass"] = casts.CacheKey()
    if config.cpp.simdlen is None:
        width = _picked_width()  # None on an unknown platform: Inductor's own choice, unkeyed
        if width:
            patches["cpp.simdlen"] = width
    return patches


def bitcasts() -> Any:
    """:mod:`qtorch.kernels.vector_bitcast` (the register bit casts, the clamps of
    :mod:`qtorch.kernels.vector_clamp` and the shifts by immediates of
    :mod:`qtorch.kernels.vector_shift`) where qtorch's compiles use it; None where this
    torch's Inductor has no custom graph passes to key it with (older releases), or where
    the user has set a ``post_grad_custom_post_pass`` of their own (the key would replace
    that pass): there Inductor's own code is generated."""
    from torch._inductor import config

    if config.post_grad_custom_post_pass is not None:
        return None
    try:
        from qtorch.kernels import vector_bitcast
    except ImportError:
        return None
    return vector_bitcast


def _picked_width() -> int | None:
    """The vector width in bits of the instruction set Inductor picks for the CPU's C++
    (``ATEN_CPU_CAPABILITY`` included); None where it cannot tell (an unknown platform)."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    try:
        return int(pick_vec_isa().bit_width())
    except Exception:
        return None


F = TypeVar("F", bound=Callable[..., Any])


def compile_constant(fn: F) -> F:
    """Mark ``fn`` for ``torch.compile`` as returning a constant (run at trace time).

    This sets the attribute that ``torch.compiler.assume_constant_result`` sets (a test checks
    that they agree), because calling that function imports ``torch._dynamo``, which would
    add about two seconds to ``import qtorch``.
    """
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


@compile_constant
def int_loads_copy() -> bool:
    """Whether Inductor's C++ for this CPU reads integer vectors through a stack copy: its
    vectors are 256 bits wide (AVX2; ``cpp.simdlen`` when set), where torch 2.13's
    ``Vectorized<int32_t>::loadu(ptr, count)`` copies the data into a buffer in two 16-byte
    pieces and reads it as one vector, a failed store-to-load forwarding per vector. Its
    float32 load reads memory directly. A constant to code that ``torch.compile`` traces.
    """
    from torch._inductor import config

    width = config.cpp.simdlen if config.cpp.simdlen is not None else _picked_width()
    return width == 256


#: Shapes remembered per kernel; a kernel that sees more starts again (they are only a
#: shortcut past Dynamo's guards, which the next call of each shape runs again).
MAX_SHAPES = 4096


@dataclass(frozen=True)
class Captured:
    """One Inductor function and how to call it with a kernel's (x, seed) arguments."""

    fn: Callable[..., Sequence[torch.Tensor]]
    #: per graph input: the argument ("x" or "seed") and, for a size of x, its dimension
    inputs: tuple[tuple[str, int | None], ...]
    #: graph outputs: 1 (the result) or 0 (the kernel wrote into x)
    outputs: int
    #: Inductor's function inside fn, called without AOTAutograd's wrappers where it may be
    #: (CPU; :mod:`qtorch.kernels.bare_call`); None: always fn
    bare: bare_call.Bare | None = None

    def __call__(
        self, x: torch.Tensor, seed: torch.Tensor | None, shape: torch.Size
    ) -> torch.Tensor | None:
        args = [
            (x if name == "x" else seed) if dim is None else shape[dim] for name, dim in self.inputs
        ]
        bare = self.bare
        if bare is not None and bare_call.may_skip():
            out = bare.graph.current_callable([*bare.params, *args] if bare.params else args)
            if bare.writes:
                increment_version(x)  # as AOTAutograd's wrapper does after an in-place write
        else:
            out = self.fn(*args)
        return out[0] if self.outputs else None


def plan(gm: torch.fx.GraphModule, fn: Callable[..., Any]) -> Captured | None:
    """How to call ``fn``, compiled from Dynamo's graph ``gm``; None if it does not fit.

    Reads Dynamo's record of where each graph input comes from (``node.meta["grapharg"]``);
    where a torch version records it differently, the answer is None: that kernel always
    runs through Dynamo.
    """
    try:
        return _plan(gm, fn)
    except Exception:
        return None


def _plan(gm: torch.fx.GraphModule, fn: Callable[..., Any]) -> Captured | None:
    inputs: list[tuple[str, int | None]] = []
    nodes = list(gm.graph.nodes)
    for node in nodes:
        if node.op != "placeholder":
            continue
        source = getattr(node.meta.get("grapharg"), "source", None)
        name = getattr(source, "name", None)
        name = name() if callable(name) else name
        match = _SOURCE.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            return None
        inputs.append((match[1], None if match[2] is None else int(match[2])))
    (output,) = [node for node in nodes if node.op == "output"]
    results = output.args[0]
    if not isinstance(results, (tuple, list)) or len(results) > 1:
        return None
    if any(getattr(r, "op", None) == "placeholder" for r in results):
        return None  # an input returned as it is: Dynamo's code returns that object
    return Captured(fn, tuple(inputs), len(results), bare_call.find(gm, fn))


class Capture:
    """A Dynamo backend: Inductor (as ``backend="inductor"``), keeping what it compiled."""

    def __init__(self) -> None:
        self.graphs: list[Captured | None] = []
        self._ran = threading.local()

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        from torch._inductor.compile_fx import compile_fx

        casts = bitcasts()
        patches = config_patches()
        with casts.register_bitcasts() if casts is not None else contextlib.nullcontext():
            # a callable here (the str / list / Weights results are for ahead-of-time mode)
            fn = cast(Callable[..., Any], compile_fx(gm, example_inputs, config_patches=patches))
        captured = plan(gm, fn)
        self.graphs.append(captured)
        if captured is None:
            return fn

        def run(*args: Any) -> Any:
            self._ran.fn = captured
            return fn(*args)

        return run

    def forget_ran(self) -> None:
        self._ran.fn = None

    def ran(self) -> Captured | None:
        """The function this thread ran last since :meth:`forget_ran` (None: none, or one
        that did not fit a plan)."""
        return getattr(self._ran, "fn", None)


try:
    _dispatch_modes: Callable[[], int] = torch._C._len_torch_dispatch_stack
    _function_modes: Callable[[], bool] = torch._C._is_torch_function_mode_enabled
    _transforms: Callable[[], bool] = torch._C._are_functorch_transforms_active
except AttributeError:  # another torch: never skip Dynamo
    _dispatch_modes, _function_modes = (lambda: 1), (lambda: True)
    _transforms = lambda: True  # noqa: E731


def dispatch_mode_active() -> bool:
    """Whether a ``TorchDispatchMode`` is on (it must see the eager ops; Dynamo skips)."""
    return bool(_dispatch_modes())


def transform_active() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``, ``jvp``, ...) is on.

    Its tensors are wrappers without storage of their own: a compiled function handed one
    fails ("Cannot access data pointer"), and so does compiling for one ("Unsupported
    functorch tracing attempt"). The transform's rules apply to the eager operations.
    """
    return _transforms()


def plain(x: torch.Tensor) -> bool:
    """Whether the function Dynamo ran for x's shape computes what Dynamo would run now.

    x is a plain tensor or a parameter (not nested), no autograd graph is to be built (a
    tensor that requires grad, with grad mode off: the optimizer's in-place steps), and no
    torch function mode, dispatch mode or ``torch.func`` transform is on (a transform's
    tensors are of type ``torch.Tensor`` too). Dynamo's guards on the type and on ``requires_grad``
    would compile the same kernel again; the caller's key fixes dtype, device type and
    contiguity.
    """
    return (
        (type(x) is torch.Tensor or type(x) is torch.nn.Parameter)
        and not x.is_nested  # (whose shape raises)
        and not (x.requires_grad and torch.is_grad_enabled())
        and not _function_modes()
        and not _dispatch_modes()
        and not _transforms()
    )


#: Device types whose calls go straight to the function Dynamo ran for the shape (and, on
#: CUDA, the device index) seen before. ``benchmarks/gpu_check.py`` turns CUDA off to time
#: the calls through Dynamo against it.
DIRECT = {"cpu": True, "cuda": True}


class CompiledKernel:
    """A kernel compiled with :class:`Capture`: ``kernel(x, seed)`` runs it (without grad).

    ``shapes`` maps each shape of x that ran through Dynamo (as a plain tensor) to the
    captured function that Dynamo ran for it; on CUDA the key is (shape, device index),
    since Inductor's code for a CUDA graph runs on the device it was compiled for (Dynamo
    guards on the index and compiles again for another device).
    """

    def __init__(self, dynamo_fn: Callable[..., Any], capture: Capture) -> None:
        self.dynamo_fn = dynamo_fn
        self.capture = capture
        self.shapes: dict[Hashable, Captured] = {}

    def __call__(self, x: torch.Tensor, seed: torch.Tensor | None) -> torch.Tensor | None:
        shape = x.shape
        direct = self.shapes.get(shape)  # a CPU kernel's keys (CUDA ones are never sizes)
        if direct is None and not x.is_cpu:
            direct = self.shapes.get(_device_key(x, shape))
        if direct is not None and plain(x):
            # no graph to build: the result does not require grad, no grad mode needed
            return direct(x, seed, shape)
        self.capture.forget_ran()
        # Dynamo guards on the type (a Parameter) and on requires_grad, which x may have
        # with grad mode off (the optimizer's in-place steps, an autograd Function's
        # forward): it compiled a second graph for them, and for a non-leaf it read .grad
        # there, which warns (under ``-W error`` the compile failed). A detached x (same
        # storage) runs the graph of plain tensors. (A first call's x is plain: detached,
        # it would lose the dimensions marked dynamic.)
        arg = x if type(x) is torch.Tensor and not x.requires_grad else x.detach()
        with torch.no_grad():
            out = self.dynamo_fn(arg, seed)
        ran = self.capture.ran()
        cpu = x.is_cpu
        device_type = "cpu" if cpu else x.device.type  # x.device builds an object
        if ran is not None and DIRECT.get(device_type, False) and plain(x):
            if len(self.shapes) >= MAX_SHAPES:
                self.shapes.clear()
            self.shapes[shape if cpu else _device_key(x, shape)] = ran
        return out

    def direct_call(self, x: torch.Tensor) -> Captured | None:
        """The function a call on x (a plain tensor) goes straight to, if its shape (and, off
        the CPU, its device index) ran through Dynamo before; else None."""
        return self.shapes.get(x.shape if x.is_cpu else _device_key(x, x.shape))


def _device_key(x: torch.Tensor, shape: torch.Size) -> tuple[torch.Size, int]:
    """The ``shapes`` key off the CPU: the shape and the device index (an int, no object)."""
    return shape, x.get_device()
