"""Bit casts in Inductor's C++ vector code as register casts, while qtorch compiles.

qtorch's kernels read and build float bit patterns (``x.view(torch.int32)`` and back:
exponents, signs, powers of two). Inductor (torch 2.13) has no vector form of that cast
for its C++ kernels: it stores the vector to a stack array, copies it lane by lane into a
second array and loads that one (``CppVecOverrides._scalarize``). Eight 4-byte stores
read back by one 32-byte load cannot be forwarded from the store buffer, so each cast
waits for its stores to reach the cache.

While :func:`register_bitcasts` is active, a cast between float32 and int32 (or float64
and int64) is generated as ``at::vec::cast<dst>(x)``, which ATen defines for every vector
instruction set (``vec_base.h``; a register cast on AVX2 and AVX-512 from int to float,
elsewhere one full-width store and load, which the store buffer forwards). A value held in
two vectors (float64 in a kernel that steps by as many lanes as float32 does, float32 next
to float16) is cast vector by vector. Other widths, and values of more vectors, keep
Inductor's code. A bit cast has one answer, so the bits are the same (NaN payloads, ±Inf,
±0 and subnormals pass through as the patterns they are); every compiled kernel is also
checked against the eager path on its first call (:mod:`qtorch.kernels.verify`) and in
the tests.

Measured on a 2-core AMD EPYC (Zen 2, AVX2, 16 MiB L3), 4,194,304 float32, 2 threads,
``benchmarks/bench.py --path fused``, three runs each way alternating (fresh Inductor
caches), fused time with / without: float(5,2) nearest 0.83; fixed(8,4), block(8) and
posit(8,2) nearest 0.90-0.91; MX nearest 0.93, stochastic 0.91; NVFP4 nearest 0.92,
stochastic 0.97; the other stochastic rows and the codebooks 0.97-1.01 (their time is the
noise's hash or the table search). On float16 and bfloat16 inputs, rounded in float32 in
vectors of two halves, Inductor's scalarized cast was far slower: float(5,2) nearest 8.4-8.5
ms without, 0.99-1.38 with; posit(8,2) 4.5-4.7 against 2.0-2.5; block(8) 3.8-4.0 against
1.4-1.8 (4,194,304 elements, cold caches, medians of 21, two processes each way).

Scope. :class:`qtorch.kernels.compiled_call.Capture` compiles qtorch's kernels inside
:func:`register_bitcasts`. Inductor's code generator is restored when the last compile
leaves it (a count under a lock, for threads that compile at once), so the user's own
``torch.compile`` calls get Inductor's code (one that compiles in another thread during a
qtorch compile gets the register casts, the same bits, the clamps of
:mod:`qtorch.kernels.vector_clamp`, eager's NaN bits, and the shifts by immediates of
:mod:`qtorch.kernels.vector_shift`, the same bits). Generated code is cached under a key
that does not see this change, so qtorch's compiles also set :class:`CacheKey` as
Inductor's ``post_grad_custom_post_pass``: a pass that does nothing but name the source of
this module, :mod:`qtorch.kernels.vector_clamp` and :mod:`qtorch.kernels.vector_shift`,
so that a kernel cached without these changes (or with another version of them) is not
served in their place. This module imports Inductor's custom passes, which older torch
releases lack; :func:`qtorch.kernels.compiled_call.bitcasts` imports it when qtorch first
compiles, and leaves Inductor's code alone where that import fails or where the user has
set a post-grad pass of their own, which the key would replace.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from qtorch.kernels import vector_clamp, vector_shift
from qtorch.kernels.vector_clamp import constant_clamp
from qtorch.kernels.vector_shift import immediate_shift, logical_shift

__all__ = ["CacheKey", "register_bitcasts", "vector_bitcast"]

#: The casts made in registers: (source, destination) dtypes of one width.
_SAME_WIDTH = {
    (torch.float32, torch.int32),
    (torch.int32, torch.float32),
    (torch.float64, torch.int64),
    (torch.int64, torch.float64),
}

_lock = threading.Lock()
_active = 0
#: Inductor's own functions, while patched
_original: dict[str, Any] = {}


def vector_bitcast(fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Inductor's vector ``to_dtype_bitcast``, casting float32 / int32 and float64 / int64
    values of one or two vectors in registers.

    ``fallback`` is Inductor's own (scalarized) function, used for every other cast.
    """
    from torch._inductor.codegen.cpp_utils import DTYPE_TO_CPP
    from torch._inductor.virtualized import V

    def to_dtype_bitcast(x: Any, dtype: torch.dtype, src_dtype: torch.dtype) -> Any:
        count = getattr(V.kernel, "_get_num_vectors", None)
        if (
            count is None
            or (src_dtype, dtype) not in _SAME_WIDTH
            or getattr(x, "dtype", None) != src_dtype
            or count(src_dtype) != count(dtype)
        ):
            return fallback(x, dtype, src_dtype)
        cpp_type = DTYPE_TO_CPP[dtype]
        n = count(src_dtype)
        if n == 1:
            return f"at::vec::cast<{cpp_type}>({x})"
        if n == 2:  # a VectorizedN of two
            halves = ", ".join(f"at::vec::cast<{cpp_type}>({x}[{i}])" for i in range(2))
            return f"at::vec::VectorizedN<{cpp_type}, 2>({halves})"
        return fallback(x, dtype, src_dtype)

    return to_dtype_bitcast


@contextmanager
def register_bitcasts() -> Iterator[None]:
    """Inside this block, Inductor generates the bit casts of :func:`vector_bitcast`, the
    clamps against constants of :func:`qtorch.kernels.vector_clamp.constant_clamp` and the
    shifts of :func:`qtorch.kernels.vector_shift.immediate_shift` and
    :func:`~qtorch.kernels.vector_shift.logical_shift`.

    Where this torch's Inductor has no C++ vector code generator of the expected form (a
    scalarized ``to_dtype_bitcast(x, dtype, src_dtype)``; static ``maximum``, ``minimum``,
    ``bitwise_and`` and the shifts), that part does not change.
    """
    global _active, _original
    try:
        from torch._inductor.codegen.cpp import CppOverrides, CppVecOverrides
    except ImportError:  # pragma: no cover - a torch without Inductor's C++ backend
        yield
        return
    with _lock:
        if _active == 0:
            _original = {}
            wrappers: dict[str, Callable[[Any], Any]] = {
                "bitwise_and": logical_shift,
                "bitwise_right_shift": functools.partial(immediate_shift, ">>"),
                "bitwise_left_shift": functools.partial(immediate_shift, "<<"),
                "maximum": functools.partial(constant_clamp, "min"),
                "minimum": functools.partial(constant_clamp, "max"),
            }
            if _expected(CppOverrides):
                wrappers["to_dtype_bitcast"] = vector_bitcast
            for name, wrap in wrappers.items():
                current = CppVecOverrides.__dict__.get(name)
                if isinstance(current, staticmethod):
                    _original[name] = current
                    setattr(CppVecOverrides, name, staticmethod(wrap(current.__func__)))
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for name, original in _original.items():
                    setattr(CppVecOverrides, name, original)
                _original = {}


def _expected(scalar_overrides: Any) -> bool:
    """Whether Inductor's scalar ``to_dtype_bitcast`` (the function its vector code
    scalarizes) takes the arguments :func:`vector_bitcast` is written for."""
    try:
        parameters = inspect.signature(scalar_overrides.to_dtype_bitcast).parameters
    except (AttributeError, TypeError, ValueError):
        return False
    return list(parameters) == ["x", "dtype", "src_dtype"]


class CacheKey(CustomGraphPass):
    """A post-grad pass that leaves the graph as it is and puts the source of this module,
    :mod:`qtorch.kernels.vector_clamp` and :mod:`qtorch.kernels.vector_shift` (their hash:
    ``uuid``) in Inductor's cache key."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        return None

    def uuid(self) -> bytes:
        return get_hash_for_files(
            (__file__, vector_clamp.__file__, vector_shift.__file__),
            "qtorch.kernels.vector_bitcast",
        )
