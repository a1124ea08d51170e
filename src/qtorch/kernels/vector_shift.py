"""Shifts by literal counts in Inductor's C++ vector code as shifts by an immediate, and
logical right shifts as one instruction, while qtorch compiles.

qtorch's kernels shift integer vectors by constant counts: exponent fields, posit regimes,
and the noise's hashes (:mod:`qtorch.kernels.noise`), which shift words right without
their sign, ``(z >> s) & (2**(w - s) - 1)`` for w-bit words, because torch has no
unsigned shift that Inductor's C++ code vectorizes (it writes ``uint32`` code as scalar
loops). Inductor writes every vector shift as a shift by a vector of counts
(``_mm256_srav_epi32`` / ``_mm256_sllv_epi32`` on AVX2; for an arithmetic shift of int64,
which AVX2 lacks, ATen's sequence of about ten instructions), and the mask as an AND. x86
has shifts by an immediate count, and the logical right shift as one instruction
(``_mm256_srli_epi32`` / ``_epi64``). The float32 hash makes five unsigned shifts per
element, the float64 one (SplitMix64) four.

While :func:`~qtorch.kernels.vector_bitcast.register_bitcasts` is active, for int32 and
int64 values held in one vector or two (``VectorizedN``), with s a literal of the graph
broadcast to a vector and 0 < s < w:

* ``z >> s`` and ``z << s`` are written as ``_mm256_srai_epi32`` / ``_mm256_slli_*``
  where Inductor compiles for AVX2, ``_mm512_srai_*`` / ``_mm512_slli_*`` for AVX-512
  (int64 ``>>`` only there);
* ``(z >> s) & (2**(w - s) - 1)`` (a ``bitwise_and`` with that literal, either operand) as
  ``_mm256_srli_*`` / ``_mm512_srli_*``.

The instruction set is chosen by the ``CPU_CAPABILITY_*`` macro the kernel is built with;
without one (ARM, POWER, s390x) the code is Inductor's. The results are the same bits for
every word (for counts in range the immediate and the vector-count forms agree, and the
mask clears exactly the bits the arithmetic shift filled with copies of the sign). Shifts
by tensors, other masks and other widths keep Inductor's code.

GCC kept the vectors of shift counts out of registers and rebuilt each in the loop (a
``mov``, a ``vmovd`` and a ``vpbroadcastd``), with the hash's multipliers: block(8)
stochastic's loop was 97 instructions per 8 float32 elements, 61 with the logical shifts.
Measured with ``benchmarks/ab.py --api`` (AMD EPYC Zen 2, AVX2, 2 threads, wall clock, 41
pairs, same bits in every row; time with / without). The logical shifts (``--base
373c97d``): stochastic rounding on 4,194,304 float32, fixed(8,4) 0.74, float(5,2) 0.71,
block(8) 0.67, posit(8,2) 0.69, codebook 16 0.75, codebook 256 0.80, MX 0.75, NVFP4 0.79;
on 2,097,152 float64 (31 pairs) 0.80-0.86; on float16 inputs 0.87-0.89; nearest rounding,
which makes no noise, 1.00 (0.96-1.01). The shifts by immediates, on top (``--base
d6a86cd``): posit(8,2) nearest 0.91, stochastic 0.99; fixed, float(5,2), MX and NVFP4
0.99-1.00.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch

from qtorch.kernels.vector_clamp import kernel_expressions

__all__ = ["immediate_shift", "logical_shift"]

#: An integer literal of the graph (Inductor's ``value_to_cpp`` of an int).
_INT_LITERAL = re.compile(r"static_cast<int(32|64)_t>\((-?[0-9]+)L{0,2}\)")
#: A scalar broadcast to one integer vector, or to two (``VectorizedN``).
_BROADCAST = re.compile(r"at::vec::Vectorized(?:N)?<int(32|64)_t(?:,\s*2)?>\((\w+)\)")
#: An arithmetic right shift of one variable by another: Inductor's code, or the last
#: branch of the code :func:`immediate_shift` writes for it.
_RIGHT_SHIFT = re.compile(r"(\w+) >> (\w+)|.*#else\s+return (\w+) >> (\w+);.*", re.DOTALL)
_WIDTHS = {torch.int32: 32, torch.int64: 64}
_AVX512, _AVX2 = "CPU_CAPABILITY_AVX512", "CPU_CAPABILITY_AVX2"
#: The shifts by an immediate count: (instruction set macro, intrinsic without its width)
#: for each kind of shift and lane width. AVX2 has no arithmetic shift of 64-bit lanes.
_INTRINSICS: dict[tuple[str, int], tuple[tuple[str, str], ...]] = {
    ("logical", 32): ((_AVX512, "_mm512_srli_epi"), (_AVX2, "_mm256_srli_epi")),
    ("logical", 64): ((_AVX512, "_mm512_srli_epi"), (_AVX2, "_mm256_srli_epi")),
    (">>", 32): ((_AVX512, "_mm512_srai_epi"), (_AVX2, "_mm256_srai_epi")),
    (">>", 64): ((_AVX512, "_mm512_srai_epi"),),
    ("<<", 32): ((_AVX512, "_mm512_slli_epi"), (_AVX2, "_mm256_slli_epi")),
    ("<<", 64): ((_AVX512, "_mm512_slli_epi"), (_AVX2, "_mm256_slli_epi")),
}


def immediate_shift(op: str, fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Inductor's vector ``bitwise_right_shift`` (``op=">>"``) or ``bitwise_left_shift``
    (``"<<"``), writing a shift of int32 or int64 vectors by a literal count s (0 < s < w)
    as a shift by an immediate; ``fallback`` (Inductor's own function, whose name it keeps)
    for every other call."""

    def by_immediate(a: Any, b: Any, width: int, vectors: int, portable: str) -> Any:
        s = _literal(b, width, kernel_expressions())
        if s is None or not 0 < s < width:
            return None
        return _shift_code(_INTRINSICS[op, width], a, s, width, vectors, portable)

    return _integer_override(fallback, by_immediate)


def logical_shift(fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Inductor's vector ``bitwise_and``, writing ``(z >> s) & (2**(w - s) - 1)`` of int32
    or int64 vectors (w = 32 or 64) as one logical shift; ``fallback`` (Inductor's own
    function, whose name it keeps) for every other call."""

    def logical(a: Any, b: Any, width: int, vectors: int, portable: str) -> Any:
        code = kernel_expressions()
        for shifted, mask in ((a, b), (b, a)):
            found = _right_shift(shifted, width, code)
            if found is not None and _literal(mask, width, code) == (1 << (width - found[1])) - 1:
                intrinsics = _INTRINSICS["logical", width]
                return _shift_code(intrinsics, found[0], found[1], width, vectors, portable)
        return None

    return _integer_override(fallback, logical)


def _integer_override(
    fallback: Callable[..., Any], rewrite: Callable[[Any, Any, int, int, str], Any]
) -> Callable[..., Any]:
    """Inductor's binary vector function ``fallback`` (name kept), with ``rewrite(a, b, w,
    n, code)`` given the first say where a and b are w-bit integer vectors held in n
    vectors (``code``: Inductor's own code for the operation; a None answer keeps it)."""

    @functools.wraps(fallback)
    def override(a: Any, b: Any) -> Any:
        portable = fallback(a, b)
        width, vectors = _integer_vectors(a, b)
        code = rewrite(a, b, width, vectors, portable) if width else None
        return portable if code is None else code

    return override


def _integer_vectors(a: Any, b: Any) -> tuple[int, int]:
    """(w, n) where a and b are both vectors of w-bit integers (w = 32 or 64) held in n = 1
    or 2 vectors (``VectorizedN``) in the current kernel; else (0, 0)."""
    from torch._inductor.virtualized import V

    dtype = getattr(a, "dtype", None)
    width = _WIDTHS.get(dtype, 0) if isinstance(dtype, torch.dtype) else 0
    count = getattr(V.kernel, "_get_num_vectors", None)
    if not width or count is None or getattr(b, "dtype", None) != dtype:
        return 0, 0
    if not (getattr(a, "is_vec", False) and getattr(b, "is_vec", False)):
        return 0, 0
    vectors = count(dtype)
    return (width, vectors) if vectors in (1, 2) else (0, 0)


def _literal(var: Any, width: int, code: dict[str, str]) -> int | None:
    """The integer literal that ``var`` broadcasts to vectors of ``width``-bit lanes."""
    broadcast = _BROADCAST.fullmatch(code.get(str(var), ""))
    if broadcast is None or int(broadcast.group(1)) != width:
        return None
    literal = _INT_LITERAL.fullmatch(code.get(broadcast.group(2), ""))
    if literal is None or int(literal.group(1)) != width:
        return None
    return int(literal.group(2))


def _right_shift(var: Any, width: int, code: dict[str, str]) -> tuple[str, int] | None:
    """(z, s) where the kernel computes ``var`` as ``z >> s``, s a literal (0 < s < w)."""
    shift = _RIGHT_SHIFT.fullmatch(code.get(str(var), ""))
    if shift is None:
        return None
    z, by = shift.group(1, 2) if shift.group(1) else shift.group(3, 4)
    s = _literal(by, width, code)
    return (z, s) if s is not None and 0 < s < width else None


def _shift_code(
    intrinsics: tuple[tuple[str, str], ...],
    z: Any,
    s: int,
    width: int,
    vectors: int,
    portable: str,
) -> Any:
    """``z`` (``vectors`` vectors of ``width``-bit lanes) shifted by the immediate ``s``
    with the intrinsic of the instruction set the kernel is built for, else ``portable``
    (Inductor's code for the same shift)."""
    from torch._inductor.codegen.common import BracesBuffer

    lane = f"int{width}_t"
    code = BracesBuffer()
    code.writeline("[&]()")
    with code.indent():
        for i, (macro, intrinsic) in enumerate(intrinsics):
            code.writeline(f"#{'el' if i else ''}if defined({macro})")
            shifted = [
                f"at::vec::Vectorized<{lane}>({intrinsic}{width}({z}{part}, {s}))"
                for part in ([""] if vectors == 1 else [f"[{h}]" for h in range(vectors)])
            ]
            if vectors == 1:
                code.writeline(f"return {shifted[0]};")
            else:
                code.writeline(
                    f"return at::vec::VectorizedN<{lane}, {vectors}>({', '.join(shifted)});"
                )
        code.writeline("#else")
        code.writeline(f"return {portable};")
        code.writeline("#endif")
    code.writeline("()")
    return code
