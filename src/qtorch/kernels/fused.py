"""Compiled dispatch: one fused ``torch.compile`` kernel per (format, rounding, dtype).

The eager reference is ``fmt.quantize_kernel``; this module runs the same code compiled by
Inductor (vectorized C++ with OpenMP on CPU, Triton on CUDA) as one fused kernel. How it
avoids the known traps:

* **Sizes.** Elementwise formats (and block floating point with one block per tensor:
  ``Format.flat_kernel``) see every contiguous input as one flat 1-D tensor whose
  length is marked dynamic, so the kernel is compiled once for a symbolic length. On
  torch 2.13 that kernel vectorizes on CPU like a static one (a vector loop plus a masked
  tail; measured in docs/performance.md), so a new size never recompiles and shapes of any
  rank share one kernel (or one per choice the code makes on the length:
  ``Format.shape_branches``; on the CPU block floating point takes its maximum in rows
  from 18 elements on). Only the sizes are symbolic: ``dynamic=True`` would also turn the
  format's integer parameters into symbols. The other formats (block floating point with
  a block per slice, MX, NVFP4) keep their shape; their kernel is compiled once per rank
  and pattern of the sizes it takes as constants (``Format.static_sizes``: those of 1,
  which Dynamo specializes, and for MX and NVFP4 a blocks' dimension of one block), and
  per choice its code makes on the shape (``Format.shape_branches``: for MX and NVFP4,
  whether that dimension is padded to whole blocks, and whether it is one block), so
  Dynamo never recompiles one behind the cache.
* **Index width.** Off the CPU, Inductor's Triton code indexes loops over at most
  2**31 - 1 elements in 32 bits, guarded, and larger ones in 64: the key keeps the calls
  on each side of that size apart (:class:`KernelKey`), so neither a large call after
  small ones compiles behind the cache nor a large first call leaves 64-bit indices to
  every later size.
* **Recompile limit.** Dynamo caches compiled graphs per Python code object and allows
  ``recompile_limit`` (8) of them. Each cache key here gets its own copy of the kernel's
  code object, so every code object holds one graph and the global limit is never reached
  and never changed.
* **Compile time.** Compiled kernels are cached in this process (and Inductor caches the
  generated code on disk across processes). In ``"auto"`` mode tensors smaller than
  :data:`EAGER_BELOW` elements run eagerly, and a quantizer is compiled only once its eager
  calls have taken :data:`AUTO_COMPILE_AFTER_S` seconds: a one-off call never waits for
  the compiler, a training loop gets the fused kernel after a few steps.
* **Small tensors.** A compiled call has a fixed cost (10-15 µs for a shape seen before,
  30-60 µs through Dynamo), so on small tensors a cheap eager kernel can be faster (it was
  at 4,096 elements for fixed-point nearest: 30 against 56 µs through Dynamo). Once a
  quantizer is compiled, ``"auto"`` mode therefore times both paths on the first calls of
  each size class (a power of two) below :data:`MEASURE_BELOW` elements (2**20 on the
  CPU, 2**27 on CUDA, where a compiled call costs more and a timed call waits for its
  kernels), :data:`MEASURE_CALLS` calls each (fewer when eager is more than twice as
  slow), and then keeps the faster for that class. The calls being timed are the user's
  own calls: both paths give the same bits, so only their speed differs.
* **Call overhead.** Each kernel is compiled through :class:`qtorch.kernels.compiled_call.
  Capture`, which keeps the function Inductor made; after the first call of a shape, calls
  on the CPU and CUDA go straight to it instead of through Dynamo's per-call machinery, and the
  dispatch here avoids operations that are slow once a large kernel has flushed the caches
  (a view costs 25-45 µs then, ``x.device`` 20 µs). Together, on 4,194,304 float32
  elements at 2 threads, a call takes 0.80-0.91 of its former time with nearest rounding
  and 0.91-0.94 with stochastic rounding (docs/performance.md).
* **Plans.** A call that settled on the compiled kernel and ran it straight leaves a
  :class:`Plan`, keyed by the format object, the rounding argument, in place or not, and
  x's shape and device; a later call with the same key that passes the checks that chose
  that path (dtype, kernel mode, a plain contiguous tensor, no mode, not tracing) runs the
  plan's function at once (:func:`run_planned`). After a large kernel each step of the full
  dispatch costs microseconds (parsing the rounding about 20, the path 20, the cache key
  and lookup 20); with a plan a call costs about 25 µs more than Inductor's function
  instead of 70. A/B of ``qtorch.quantize``, 2 threads: fixed(8,4) nearest 0.78 at 10,000
  elements, 0.82 at 100,000, 0.95 at 1,000,000, 0.96-0.98 at 4,194,304.
* **OpenMP threads.** Kernels are compiled with Inductor's ``cpp.dynamic_threads``
  (:data:`qtorch.kernels.compiled_call.CONFIG`), so a kernel first compiled on a small
  tensor or under one thread is not serial for every later size.
* **Dispatch modes.** Under a ``TorchDispatchMode`` the eager path runs: the mode is there
  to see the operations, and Dynamo would skip the frame.
* **Python threads.** The first call of a key (the compile) holds a lock: first compiles
  in two threads at once could deadlock in torch's lazy imports. Later calls run
  concurrently.
* **Failures.** If compiling fails (no C++ compiler, no Triton, an unsupported op), the
  eager reference runs instead; the first failure in the process warns once
  (:class:`CompileFallbackWarning`) and the failing key is never tried again. A CPU
  kernel is compiled on a probe of the call's shape and must give the eager reference's
  bits there before it serves a call (:mod:`qtorch.kernels.verify`: GCC 12.2 miscompiles
  Inductor's AVX2 code on an AVX-512 CPU); one that does not is a failure too.
* **Randomness.** Stochastic noise is made inside the kernel: :func:`qtorch.quantize` draws
  one int64 seed per call from the torch generator (a 0-d tensor on x's device, no host
  sync) and passes it as a kernel input, so a new seed never recompiles; the kernel computes
  the counter-based noise of each element's logical row-major index
  (:func:`qtorch.kernels.noise.uniform_from_counter`: a keyed 32-bit hash for float32, 24
  bits) fused with the format's rounding, and the eager path calls the same function, so
  both give the same bits for the same seed and ``torch.manual_seed`` reproduces them. No
  full-size noise tensor is drawn serially, written or read.
* **Noise index per row.** Inductor's CPU code builds a flat loop's index vector from 16
  scalars, at about the cost of the hash itself. An elementwise format's stochastic kernel
  therefore makes the noise in rows of 16, reading the 16 lane numbers from a small buffer,
  when 16 divides n (its own cache key), and gets x as the ``(n / 16, 16)`` view; MX and
  NVFP4 make it per block (:meth:`qtorch.formats.base.Format.noise_layout`). Same numbers;
  fixed(8,4) stochastic takes 0.71 of its time with SplitMix64 and the flat index, MX 0.88
  (docs/performance.md). Codebooks and block floating point compute on x flat on the CPU
  (``Format.row_view_noise``): on the view, Inductor split a small table's kernel into a
  2-D and a flat loop joined by a buffer of bools, 10x slower. They too get the view as
  the argument and flatten it inside the kernel, so that the row count is the symbol
  (block floating point stochastic: A/B 0.93). On CUDA they compute on the view
  (:func:`computes_on_rows`).
"""

from __future__ import annotations

import functools
import itertools
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from qtorch.formats.base import Format
from qtorch.kernel_mode import get_kernel_mode
from qtorch.kernels import verify
from qtorch.kernels.compiled_call import (
    DIRECT,
    Capture,
    Captured,
    CompiledKernel,
    dispatch_mode_active,
    plain,
    transform_active,
)
from qtorch.kernels.eager import run as eager_run
from qtorch.kernels.noise import LANES_MIN, draw_seed, uniform_from_counter
from qtorch.rounding import Rounding

#: In ``"auto"`` mode, tensors with fewer elements than this run eagerly (per device type).
#: On the CPU only tensors of one element (Dynamo would compile a graph of their own, as it
#: specializes a size of 1): a compiled call of a shape seen before costs about 10 µs, and
#: eager kernels on small tensors took longer (64 float32 elements, 2 threads, Zen 2,
#: eager / compiled µs: fixed nearest 46 / 9, float nearest 113 / 9, posit nearest 230 /
#: 9, block nearest 338 / 17, codebook 16 nearest 91 / 9, fixed stochastic 261 / 33).
#: Larger tensors of a compiled quantizer are then timed on both paths (:data:`MEASURE_BELOW`),
#: and their eager calls count towards compiling a quantizer (:data:`AUTO_COMPILE_AFTER_S`).
#: On CUDA 1024: a compiled call there cost 0.15-0.40 ms of host time through Dynamo (H200).
EAGER_BELOW: dict[str, int] = {"cpu": 2, "cuda": 1024}

#: In ``"auto"`` mode a quantizer is compiled once its eager calls on tensors of at least
#: :data:`EAGER_BELOW` elements have taken this many seconds in total: about what a compile
#: costs, so a one-off call (a script, a test) never waits for the compiler, and a training
#: loop switches to the fused kernel after its first few steps.
AUTO_COMPILE_AFTER_S = 1.0

#: In ``"auto"`` mode, tensors of a compiled quantizer with fewer elements than this (per
#: device type) run on whichever path was faster for their size class (see the module
#: docstring). On CUDA the bound is high: on an H200 a compiled call cost 0.15-0.40 ms at
#: every size from 1e4 to 1e7 elements, and eager fixed-point nearest was faster up to 1e7.
MEASURE_BELOW: dict[str, int] = {"cpu": 1 << 20, "cuda": 1 << 27}

#: Calls timed on each path, per quantizer and size class, before ``"auto"`` chooses.
MEASURE_CALLS = 3

_WORKING = (torch.float32, torch.float64)

KernelFn = Callable[[torch.Tensor, "torch.Tensor | None"], "torch.Tensor | None"]


class CompileFallbackWarning(RuntimeWarning):
    """Compiling a quantizer failed; the eager reference (same results, slower) runs instead."""


_lock = threading.Lock()
_compile_lock = threading.Lock()
_cache: dict[KernelKey, KernelFn] = {}
_broken: set[KernelKey] = set()
_eager_seconds: dict[KernelKey, float] = {}
#: per (key, size class): the (eager, compiled) seconds timed, then the faster path
_timings: dict[tuple[KernelKey, int], tuple[list[float], list[float]]] = {}
_faster: dict[tuple[KernelKey, int], str] = {}  # "eager" or "compiled"
_clock = time.perf_counter
_warned = False
_serial = itertools.count()


@functools.cache
def compile_available(device_type: str) -> bool:
    """Whether ``torch.compile`` can be expected to work on this device type.

    CPU needs a C++ compiler that Inductor finds (Windows is left to eager), CUDA needs
    Triton; other devices are not tried in ``"auto"`` mode.
    """
    if device_type == "cpu":
        if sys.platform == "win32":
            return False
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            return shutil.which(get_cpp_compiler()) is not None
        except Exception:
            return False
    if device_type == "cuda":
        try:
            from torch.utils._triton import has_triton

            return bool(has_triton())
        except Exception:
            return False
    return False


def wants_compiled(x: torch.Tensor) -> bool:
    """Whether the current kernel mode may send ``x`` to the compiled path.

    In ``"auto"`` mode the quantizer must also be hot (see :data:`AUTO_COMPILE_AFTER_S`).
    """
    return _path(x, get_kernel_mode(), _device_type(x)) != "eager"


def _device_type(x: torch.Tensor) -> str:
    return "cpu" if x.is_cpu else x.device.type  # is_cpu: x.device builds an object


def _path(x: torch.Tensor, mode: str, device_type: str) -> str:
    """The path for x: "eager", or the mode ("compiled" or "auto") if it may be compiled."""
    if mode == "eager":
        return mode
    n = x.numel()
    if n == 0 or torch.compiler.is_compiling():
        return "eager"  # inside the user's own torch.compile: the eager code gets fused there
    if x.requires_grad and torch.is_grad_enabled():
        return "eager"  # a direct call keeps the eager graph (quantize rounds x.detach())
    if dispatch_mode_active():
        return "eager"  # the mode is there to see the operations (and Dynamo skips them)
    if transform_active():
        return "eager"  # torch.func's wrappers: compiled code can neither take nor trace them
    if mode == "auto":
        if n < EAGER_BELOW.get(device_type, EAGER_BELOW["cpu"]):
            return "eager"
        if not compile_available(device_type):
            return "eager"
    return mode


def _compile(fn: Callable[..., torch.Tensor | None], backend: Capture) -> KernelFn:
    """Compile one kernel; tests replace this to simulate a failing compiler."""
    return torch.compile(fn, backend=backend, fullgraph=True)


def computes_on_rows(fmt: Format, x: torch.Tensor) -> bool:
    """Whether a stochastic kernel handed the ``(n / ROW, ROW)`` view of x computes on it
    (else on x flattened inside the kernel; the same numbers either way).

    On the CPU as the format says (``Format.row_view_noise``: on the view, Inductor's C++
    for a codebook split into loops joined by a buffer). Off the CPU always: Triton indexes
    the view as flat anyway (row i // 16, lane i % 16), and a kernel computing flat that
    writes into the view in place (``quantize_``) was not fused there: codebook 16
    stochastic made two kernels and three full-size buffers, against one kernel and none
    on the view (Inductor's code for CUDA, read with benchmarks/cuda_codegen.py).
    """
    return fmt.row_view_noise or not x.is_cpu


def _make_kernel(
    fmt: Format,
    rounding: Rounding,
    out_dtype: torch.dtype,
    inplace: bool,
    rows: bool,
    wide: bool = False,
) -> KernelFn:
    """A compiled kernel computing ``fmt.quantize_kernel`` on x, with the dtype casts fused.

    ``seed`` (stochastic rounding; None otherwise) is a 0-d int64 tensor; the noise is made
    from it inside the kernel. In place the kernel writes the result into x and returns
    None; otherwise it returns a new tensor. ``rows``: 16 divides x's size, and the noise is
    made in rows of ``ROW`` (x is the ``(n / ROW, ROW)`` view, which the kernel computes on
    or flattens: :func:`computes_on_rows`). ``wide``: x has more than 2**32 elements; the
    noise takes the high word of each index (or row) in the graph, which then has no guard
    on the size (``uniform_from_counter``).
    """

    def kernel(x: torch.Tensor, seed: torch.Tensor | None) -> torch.Tensor | None:
        work = x if x.dtype in _WORKING else x.float()
        noise = None
        if seed is not None:
            # made in the format's layout (the same numbers; see Format.noise_layout), or
            # in rows of ROW elements (elementwise formats, 16 dividing the size)
            shape, row = (work.shape, ROW) if rows else fmt.noise_layout(work.shape)
            noise = uniform_from_counter(seed, shape, work.dtype, row=row, wide=wide)
            noise = noise.view(work.shape)
            if rows and not computes_on_rows(fmt, x):
                # x comes as the (n / ROW, ROW) view all the same: with the row count as
                # the symbol, Inductor indexes the flattened noise's row as i // 16, not
                # (i // 16) % (n // 16) (an integer division by a variable per vector)
                work, noise = work.view(-1), noise.view(-1)
        q = fmt.quantize_kernel(work, rounding, noise).to(out_dtype)
        if inplace:
            x.copy_(q.view(x.shape))
            return None
        return q

    # A code object of its own, so Dynamo's per-code-object cache holds only this key, and a
    # name of its own: Dynamo's automatic-dynamic memory is keyed by (file, line, name), and
    # a shared name would make the next format's parameters symbolic ("changed constants").
    name = f"quantize_{type(fmt).__name__}_{rounding.value}_{next(_serial)}"
    kernel.__code__ = kernel.__code__.replace(co_name=name)
    capture = Capture()
    return CompiledKernel(_compile(kernel, capture), capture)


def _fail(key: KernelKey, fmt: Format, err: Exception) -> None:
    global _warned
    with _lock:
        _broken.add(key)
        first = not _warned
        _warned = True
    if first:
        warnings.warn(
            f"qtorch: compiling the quantizer for {fmt!r} failed "
            f"({type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}); "
            "using the eager kernels (same results, slower). Further failures are silent; "
            'qtorch.set_kernel_mode("eager") avoids trying.',
            CompileFallbackWarning,
            stacklevel=6,
        )


def quantize(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding,
    seed: torch.Tensor | None,
    inplace: bool,
    eager: Callable[[], torch.Tensor],
    plan_key: PlanKey | None = None,
) -> torch.Tensor:
    """Quantize x on the path the kernel mode picks: the compiled kernel or ``eager()``.

    ``eager()`` runs the reference on the same x and seed and returns its result (written
    into x when ``inplace``). ``seed`` (stochastic rounding; None otherwise) is the 0-d int64
    tensor from which both paths make the noise of x's logical row-major element indices.
    ``plan_key``: ``(id(fmt), the caller's rounding argument, inplace)``; given, a call that
    settles on the compiled kernel leaves a :class:`Plan` for the next one (:func:`run_planned`).
    """
    mode = _path(x, kernel_mode := get_kernel_mode(), device_type := _device_type(x))
    if mode == "eager":
        return eager()
    key = _key(x, fmt, rounding, inplace, device_type)
    kern = _cache.get(key)
    if mode == "auto":
        timed = x.numel() < MEASURE_BELOW.get(device_type, 0)  # both paths timed at this size
        if kern is None:
            spent = _eager_seconds.get(key, 0.0)
            if spent < AUTO_COMPILE_AFTER_S:
                start = _clock()
                result = eager()
                _eager_seconds[key] = spent + _clock() - start
                return result
            if timed:
                plan_key = None  # the first compile: this size's path is still to be timed
        elif timed:
            return _faster_path(x, fmt, rounding, seed, inplace, eager, key, plan_key)
    plan = None if plan_key is None else (plan_key, kernel_mode)
    return quantize_compiled(x, fmt, rounding, seed, inplace, eager, key, kern, plan)


def _faster_path(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding,
    seed: torch.Tensor | None,
    inplace: bool,
    eager: Callable[[], torch.Tensor],
    key: KernelKey,
    plan_key: PlanKey | None = None,
) -> torch.Tensor:
    """Run x on the path that was faster for its size class, timing both paths first.

    Until the class is decided, each call runs on the path with fewer timings so far
    (compiled first); the class is decided once both have :data:`MEASURE_CALLS` timings
    (the smaller minimum wins), or for the compiled path as soon as the eager minimum is
    more than twice the compiled one.
    """
    slot = (key, x.numel().bit_length())
    path = _faster.get(slot)
    if path == "eager":
        return eager()
    if path == "compiled":
        plan = None if plan_key is None else (plan_key, "auto")
        return quantize_compiled(x, fmt, rounding, seed, inplace, eager, key, plan=plan)
    with _lock:
        eager_s, compiled_s = _timings.setdefault(slot, ([], []))
    timed_eager = len(eager_s) < len(compiled_s)
    _finish_queued(x)
    start = _clock()
    if timed_eager:
        result = eager()
    else:
        result = quantize_compiled(x, fmt, rounding, seed, inplace, eager, key)
    _finish_queued(x)
    (eager_s if timed_eager else compiled_s).append(_clock() - start)
    if eager_s and compiled_s:
        fast_eager, fast_compiled = min(eager_s), min(compiled_s)
        # a stray slow call can only make a path look slower: stop early only for compiled
        hopeless = fast_eager > 2 * fast_compiled
        if hopeless or min(len(eager_s), len(compiled_s)) >= MEASURE_CALLS:
            with _lock:
                _faster[slot] = "eager" if fast_eager < fast_compiled else "compiled"
                _timings.pop(slot, None)
    return result


def _finish_queued(x: torch.Tensor) -> None:
    """Wait for the work queued on x's device (CUDA runs asynchronously; timing a call
    means timing its kernels too). Nothing to wait for on the CPU."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)


class KernelKey(NamedTuple):
    """The cache key: one compiled kernel (and one Dynamo code object) per key.

    It names everything the kernel's traced code depends on, so that Dynamo's guards on
    the first call hold for every later call with the same key, and Dynamo never compiles
    a second graph behind the cache (outside its compile lock, unchecked).
    """

    fmt: Format
    rounding: Rounding
    #: x's dtype
    dtype: torch.dtype
    device_type: str
    #: "flat", "rows" (the ``(n / ROW, ROW)`` view, elementwise stochastic), or a format's
    #: static sizes (``Format.static_sizes``)
    shape: Hashable
    #: the kernel's choices on x's shape (``Format.shape_branches``)
    branches: tuple[bool, ...]
    #: stochastic, more than :data:`WIDE` elements: the noise takes each index's high word
    wide: bool
    #: off the CPU, how many of x's element count and the kernel's extent (the largest
    #: tensor it makes or reads: ``Format.kernel_extent``) pass :data:`INDEX_MAX`: 0, 1
    #: (only the extent) or 2. Inductor's Triton code indexes the loops over more elements
    #: in 64 bits, the others in 32 with a guard on their size, which a call in another
    #: class would fail.
    long_index: int
    #: the kernel writes its result into x (``quantize_``, ``Format.writes_into_x``, x
    #: contiguous)
    write_into_arg: bool


def _key(
    x: torch.Tensor, fmt: Format, rounding: Rounding, inplace: bool, device_type: str
) -> KernelKey:
    """x's cache key (:class:`KernelKey`)."""
    shape_key: Hashable
    if not fmt.flat_kernel:
        shape_key = fmt.static_sizes(x.shape)
    else:
        shape_key = "rows" if rounding is Rounding.STOCHASTIC and x.numel() % ROW == 0 else "flat"
    # Past 2**32 elements the noise's indices have a high word: a kernel of its own
    wide = rounding is Rounding.STOCHASTIC and x.numel() > WIDE
    # Inductor's C++ indexes in 64 bits at every size; Triton's in 32 where it can
    long_index = 0
    if device_type != "cpu":
        long_index = (x.numel() > INDEX_MAX) + (fmt.kernel_extent(x.shape) > INDEX_MAX)
    # In place, the kernel writes into x where the format allows it (Format.writes_into_x)
    write_into_arg = inplace and fmt.writes_into_x and x.is_contiguous()
    return KernelKey(
        fmt,
        rounding,
        x.dtype,
        device_type,
        shape_key,
        fmt.shape_branches(x.shape, device_type),
        wide,
        long_index,
        write_into_arg,
    )


#: Elements past which a stochastic kernel takes the high word of each noise index
#: (``wide`` in :func:`_make_kernel`); a kernel for fewer has a guard on the size instead
#: (:func:`qtorch.kernels.noise.uniform_range`), which calls past it never meet.
WIDE = 2**32

#: The most elements a loop of Inductor's Triton code indexes in 32 bits: where a kernel's
#: tensors have at most this many, its indices are 32-bit with a guard on the size
#: (``s0 <= 2147483647``: read with benchmarks/cuda_codegen.py), else 64-bit with no
#: guard. The key's ``long_index`` keeps calls of each class to kernels compiled in it.
INDEX_MAX = 2**31 - 1


#: Row length of the view that elementwise stochastic kernels see (its noise index is built
#: per row: :func:`qtorch.kernels.noise.uniform_from_counter`).
ROW = LANES_MIN


def quantize_compiled(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding,
    seed: torch.Tensor | None,
    inplace: bool,
    eager: Callable[[], torch.Tensor],
    key: KernelKey | None = None,
    kern: KernelFn | None = None,
    plan: tuple[PlanKey, str] | None = None,
) -> torch.Tensor:
    """Quantize x with the compiled kernel, or with ``eager()`` if compiling fails.

    With ``inplace`` the result is written into x, which is returned. When the compiled
    kernel fails, ``eager()`` (the reference on the same seed) decides: if it fails too,
    its error is the user's error and propagates; otherwise the failure is remembered and
    warned about once. ``key`` is ``_key(...)`` and ``kern`` its cached kernel when the
    caller has them. ``plan``: (plan key, kernel mode) under which this call's dispatch is
    remembered (:func:`run_planned`) if the kernel ran straight.
    """
    if key is None:
        key = _key(x, fmt, rounding, inplace, _device_type(x))
    if kern is None:
        kern = _cache.get(key)
    if kern is None and key in _broken:
        return eager()
    write_into_arg = key.write_into_arg
    src = x if x.is_contiguous() else x.contiguous()
    # The flat view of a row-major tensor (and its (n / ROW, ROW) view, for elementwise
    # stochastic kernels) keeps each element's row-major index, so the noise made from the
    # seed inside the kernel is the eager path's. (Views are avoided
    # where they are not needed: after a large kernel each costs 25-45 µs, the caches
    # holding tensor data; see qtorch.kernels.compiled_call.)
    rows = key.shape == "rows"
    if rows:
        arg = src.view(-1, ROW)
    elif fmt.flat_kernel and src.dim() != 1:
        arg = src.view(-1)
    else:
        arg = src
    reshaped = arg is not src
    try:
        if kern is None:
            # One first call at a time: first compiles in two threads at once can deadlock
            # in torch's lazy imports (a failure that would mark the key broken).
            with _compile_lock:
                kern = _cache.get(key)  # another thread may have compiled it meanwhile
                if kern is None:
                    # The first call compiles, on a tensor with arg's cache key and its
                    # sizes marked (not x itself): the graph it makes has symbolic sizes,
                    # and later inputs of any size (unmarked) match it without recompiling.
                    # On the CPU that tensor is a probe (of arg's shape, or smaller), on
                    # which the kernel must give the eager bits (qtorch.kernels.verify);
                    # elsewhere arg detached.
                    static = _static_dims(key.shape, arg.dim())
                    verifying = _device_type(x) in verify.DEVICES
                    if verifying:
                        shape = verify.probe_shape(
                            arg.shape, static, lambda s: _same_kernel(s, fmt, key)
                        )
                        first = verify.probe_like(arg, shape)
                    else:
                        first = arg.detach()  # (a plain tensor: compiled_call.CompiledKernel)
                    _mark_dynamic(first, static)
                    # Inductor's own deprecation notices are not the user's business (and
                    # under ``-W error`` they would make every compile fail).
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        kern = _make_kernel(
                            fmt, rounding, x.dtype, write_into_arg, rows, wide=key.wide
                        )
                        if verifying:
                            verify.check(kern, first, fmt, rounding, seed)
                            out = kern(arg, seed)
                        else:
                            out = kern(first, seed)
                    with _lock:
                        _cache[key] = kern
                else:
                    out = kern(arg, seed)
        else:
            out = kern(arg, seed)
    except Exception as err:
        result = eager()  # raises the real error if the input, not the compiler, is at fault
        _fail(key, fmt, err)
        return result
    if plan is not None and src is x:
        view = 2 if rows else 1 if reshaped else 0
        _remember(plan, x, fmt, rounding, kern, arg, view)
    if write_into_arg or out is None:
        return x
    if out is arg or out is src:
        out = out.clone()
    if reshaped:
        out = out.view(x.shape)
    if inplace:
        return x.copy_(out)
    return out


#: ``(id(fmt), the caller's rounding argument, inplace)``: which call a :class:`Plan` is for,
#: with x's place (:func:`run_planned`).
PlanKey = tuple[int, "Rounding | str", bool]


@dataclass(frozen=True)
class Plan:
    """A call's dispatch, settled: the compiled function that a later call with the same
    format object, rounding argument, in-place flag, shape, device, dtype and kernel mode
    runs straight (:func:`run_planned`).

    After a kernel that streams a few MiB, the caches hold tensor data, and each step of
    the dispatch (parsing the rounding, hashing the format for the cache key, choosing the
    path, the views) costs microseconds: ``qtorch.quantize`` took 85-120 µs more than the
    function Inductor made on 4,194,304 float32 elements (2 threads, fixed(8,4) nearest),
    about a tenth of ``torch.mul`` there. A plan's checks take about 25 µs.
    """

    #: held, so that while the plan exists ``id(fmt)`` in its key is this format's
    fmt: Format
    mode: Rounding
    #: x's dtype
    dtype: torch.dtype
    kernel_mode: str
    device_type: str
    call: Captured
    #: what the function takes: x itself (0), x flat (1), the (n / ROW, ROW) view (2); a
    #: function that writes the result into x returns None
    view: int


#: Plans by (plan key, x's place): its shape on the CPU, (shape, device) elsewhere.
_plans: dict[Hashable, Plan] = {}

#: Plans kept; more start the collection again (a caller making a new format object per
#: call makes a plan per call).
MAX_PLANS = 4096


def _remember(
    plan: tuple[PlanKey, str],
    x: torch.Tensor,
    fmt: Format,
    mode: Rounding,
    kern: object,
    arg: torch.Tensor,
    view: int,
) -> None:
    """Keep the plan of a call on x (contiguous) that ran ``kern`` on ``arg`` straight."""
    call = kern.direct_call(arg) if isinstance(kern, CompiledKernel) else None
    if call is None or not plain(x):
        return
    plan_key, kernel_mode = plan
    device_type = _device_type(x)
    with _lock:
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        _plans[(plan_key, x.shape if x.is_cpu else (x.shape, x.device))] = Plan(
            fmt, mode, x.dtype, kernel_mode, device_type, call, view
        )


def run_planned(
    x: torch.Tensor,
    fmt: object,
    rounding: object,
    generator: torch.Generator | None,
    inplace: bool,
) -> torch.Tensor | None:
    """``quantize(x, fmt, rounding, generator)`` (``quantize_`` if ``inplace``) by its plan,
    or None when it has none (the full dispatch then runs).

    A plan applies when an earlier call with the same format object, the same rounding
    argument (equal), in-place flag, shape and device settled on the compiled kernel and
    ran it straight, and nothing that chose that path has changed since: x is a plain
    contiguous tensor of the same dtype (no autograd graph to build, no torch function or
    dispatch mode), the kernel mode is the same, calls on x's device type still go straight
    to the compiled function (:data:`qtorch.kernels.compiled_call.DIRECT`), and no
    ``torch.compile`` is tracing the call. Those are what decided the path, its cache key
    and the function Dynamo ran, so the plan runs what the full dispatch would run. The
    seed of stochastic rounding is drawn as the full dispatch draws it. If the function
    fails, the plans are forgotten and the full dispatch runs with the same seed.
    """
    if torch.compiler.is_compiling():
        return None  # tracing the user's graph: the eager code is fused there (first: Dynamo
        # must not guard on the plans)
    kernel_mode = get_kernel_mode()
    if not _plans or kernel_mode == "eager":
        return None
    if (type(rounding) is not str and type(rounding) is not Rounding) or not plain(x):
        return None  # (the full dispatch rejects what is not a tensor or not a rounding)
    shape = x.shape
    plan = _plans.get(((id(fmt), rounding, inplace), shape if x.is_cpu else (shape, x.device)))
    if (
        plan is None
        or x.dtype is not plan.dtype
        or kernel_mode != plan.kernel_mode
        or not DIRECT.get(plan.device_type, False)
        or not x.is_contiguous()
    ):
        return None
    seed = draw_seed(generator, x.device) if plan.mode is Rounding.STOCHASTIC else None
    arg = x if plan.view == 0 else x.view(-1) if plan.view == 1 else x.view(-1, ROW)
    try:
        out = plan.call(arg, seed, arg.shape)
    except Exception:
        with _lock:
            _plans.clear()
        mode, work = plan.mode, x.dtype if x.dtype in _WORKING else torch.float32

        def eager() -> torch.Tensor:
            return eager_run(x, plan.fmt, mode, seed, work, inplace)

        return quantize(x, plan.fmt, mode, seed, inplace, eager)
    if out is None:  # written into x
        return x
    if plan.view:
        out = out.view(x.shape)
    return x.copy_(out) if inplace else out


def _static_dims(shape_key: Hashable, ndim: int) -> set[int]:
    """The dimensions of a kernel's argument that stay static, by its key's shape part:
    the rows' length of the stochastic ``(n / ROW, ROW)`` view, or those a non-flat
    format's :meth:`~qtorch.formats.base.Format.static_sizes` flags."""
    if shape_key == "rows":
        return {ndim - 1}
    if isinstance(shape_key, tuple):
        return {dim for dim, static in enumerate(shape_key) if static}
    return set()


def _same_kernel(shape: tuple[int, ...], fmt: Format, key: KernelKey) -> bool:
    """Whether an argument of ``shape`` has the kernel of ``key`` (an argument of the same
    rank, its static dimensions unchanged).

    Its shape makes the key's choices (``Format.shape_branches``; a flat kernel's argument,
    x flat or its ``(n / ROW, ROW)`` view, makes them on its element count), and a non-flat
    format's has the key's static sizes."""
    if fmt.shape_branches(shape, key.device_type) != key.branches:
        return False
    return not isinstance(key.shape, tuple) or fmt.static_sizes(shape) == key.shape


def _mark_dynamic(arg: torch.Tensor, static: set[int]) -> None:
    """Compile for symbolic sizes (the format's own parameters stay constants).

    ``dynamic=True`` would also turn the format's integer parameters into symbols, which
    breaks kernels that do Python arithmetic on them; marking the sizes keeps them apart.
    Dimensions of size 1 stay static (Dynamo specializes them), and so do those in
    ``static`` (:func:`_static_dims`).
    """
    for dim, size in enumerate(arg.shape):
        if size > 1 and dim not in static:
            torch._dynamo.mark_dynamic(arg, dim)


def clear_cache() -> None:
    """Forget every compiled kernel and past failure (for tests and after changing config)."""
    global _warned
    with _lock:
        _cache.clear()
        _broken.clear()
        _eager_seconds.clear()
        _timings.clear()
        _faster.clear()
        _plans.clear()
        _warned = False
