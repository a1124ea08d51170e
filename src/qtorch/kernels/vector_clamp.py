"""Clamps against constants in Inductor's C++ vector code as ATen's ``clamp_min`` /
``clamp_max``, while qtorch compiles.

Inductor (torch 2.13) lowers ``x.clamp(lo, hi)``, ``clamp_min`` and ``clamp_max`` with
number bounds to its ``maximum`` / ``minimum``, which its C++ vector code writes as
``at::vec::maximum`` / ``at::vec::minimum``: the NaN-propagating form for two tensors,
three instructions on x86 (the maximum, an unordered compare of both operands, an OR that
turns a NaN lane into all-ones bits). The eager clamp that qtorch's kernels call instead
uses ``at::vec::clamp_min`` / ``clamp_max`` (one ``max`` / ``min`` instruction whose
result is x where x is NaN). So compiled, a NaN that passed a clamp came out as
0xFFFFFFFF (negative, all-ones payload) where the eager path kept x's NaN, and each clamp
cost two instructions more per vector.

While :func:`~qtorch.kernels.vector_bitcast.register_bitcasts` is active, a float32 or
float64 ``maximum`` / ``minimum`` one of whose operands is a number literal of the graph
(a clamp's bound: finite or ±Inf, never NaN; broadcast to a vector or not) is written as
``at::vec::clamp_min(x, c)`` / ``at::vec::clamp_max(x, c)``, the other operand as x:
eager's instruction and its results, NaN payloads, signs and the tie of ±0 (x is kept)
included; also for a value held in two vectors (``VectorizedN``). Any other operand (a
tensor, a value loaded per block, which may be NaN) keeps Inductor's code, as do integer
and boolean operands.

Compiled and eager results were then the same bits, NaN payloads included, for every
family and rounding on float32, float64, float16 and bfloat16 inputs with NaNs of random
payloads and ±Inf, except NVFP4 stochastic on float64 and float16 inputs (NaN blocks
only). Before, fixed point, the float formats and bfloat16 differed there on float32
inputs as well (tests/test_vector_clamp.py).

Measured with ``benchmarks/ab.py --base 51dc6fc --api`` (AMD EPYC Zen 2, AVX2, 4,194,304
float32, 2 threads, 41 pairs, same bits; time with / without): fixed(8,4) nearest 0.974,
stochastic 0.867; float(5,2) nearest 1.004, stochastic 0.953; block(8) nearest 0.990,
stochastic 0.974; MX nearest 0.985, stochastic 0.970; NVFP4 nearest 0.976, stochastic
0.967; posit(8,2) and the codebooks 0.996-1.005 (they clamp integers, or outside their hot
loop).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["constant_clamp", "kernel_expressions"]

#: The code of a number literal of the graph: Inductor's ``value_to_cpp`` of a float or int
#: (``static_cast<float>(2.5)``) and of ±Inf; NaN (``quiet_NaN()``) is not one.
_LITERAL = re.compile(
    r"static_cast<(?:float|double)>\(-?(?:[0-9][0-9.e+-]*|inf)\)"
    r"|-?std::numeric_limits<(?:float|double)>::infinity\(\)"
)
#: The code of a scalar broadcast to a vector (``at::vec::Vectorized<float>(tmp3)``) or to
#: two (``at::vec::VectorizedN<float,2>(tmp3)``).
_BROADCAST = re.compile(r"at::vec::Vectorized(?:N)?<(?:float|double)(?:,\s*2)?>\((\w+)\)")
_FLOATS = (torch.float32, torch.float64)


def constant_clamp(kind: str, fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Inductor's vector ``maximum`` (``kind="min"``: a lower bound, ATen's ``clamp_min``)
    or ``minimum`` (``kind="max"``), written as ATen's clamp where one operand is a float
    literal of the graph; ``fallback`` (Inductor's own function) for every other call.
    It keeps ``fallback``'s name: Inductor calls its scalar code by that name where every
    operand is a scalar."""

    @functools.wraps(fallback)
    def clamp(a: Any, b: Any) -> Any:
        if _is_float_vector(a) and _is_float_vector(b):
            if _is_literal(b):
                return f"at::vec::clamp_{kind}({a}, {b})"
            if _is_literal(a):
                return f"at::vec::clamp_{kind}({b}, {a})"
        return fallback(a, b)

    return clamp


def _is_float_vector(var: Any) -> bool:
    """A float32 / float64 value of one vector or of two (a ``VectorizedN``, which ATen
    clamps vector by vector: float64 in a kernel that steps by as many lanes as float32
    does, float32 next to float16)."""
    from torch._inductor.virtualized import V

    count = getattr(V.kernel, "_get_num_vectors", None)
    dtype = getattr(var, "dtype", None)
    return (
        bool(getattr(var, "is_vec", False))
        and dtype in _FLOATS
        and count is not None
        and count(dtype) in (1, 2)
    )


def kernel_expressions() -> dict[str, str]:
    """Variable name -> expression, from the current kernel's common-subexpression table
    (empty where Inductor keeps no such table)."""
    from torch._inductor.virtualized import V

    table = getattr(getattr(V.kernel, "cse", None), "_cache", None)
    if not isinstance(table, dict):
        return {}
    return {str(v): k for k, v in table.items() if isinstance(k, str)}


def _is_literal(var: Any) -> bool:
    """Whether the kernel computes ``var`` as a number literal, or broadcasts one into it:
    read from the expressions of the kernel's common-subexpression table."""
    code = kernel_expressions()
    expr = code.get(str(var))
    broadcast = _BROADCAST.fullmatch(expr) if expr is not None else None
    if broadcast is not None:
        expr = code.get(broadcast.group(1))
    return expr is not None and _LITERAL.fullmatch(expr) is not None
