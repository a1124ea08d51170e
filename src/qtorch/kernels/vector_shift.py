"""Logical right shifts in Inductor's C++ vector code as one instruction, while qtorch
compiles.

The noise's hashes (:mod:`qtorch.kernels.noise`) shift words right without their sign:
``(z >> s) & (2**(w - s) - 1)`` for w-bit words, an arithmetic shift and a mask, because
torch has no unsigned shift that Inductor's C++ code vectorizes (it writes ``uint32``
code as scalar loops). Inductor writes the pair as a shift by a vector of counts
(``_mm256_srav_epi32`` on AVX2; for int64, which AVX2 cannot shift arithmetically, ATen's
sequence of about ten instructions) and an AND; x86 has the logical shift by an
immediate count as one instruction (``_mm256_srli_epi32`` / ``_epi64``). The float32
hash makes five such shifts per element, the float64 one (SplitMix64) four.

While :func:`~qtorch.kernels.vector_bitcast.register_bitcasts` is active, a vector
``bitwise_and`` of int32 or int64 values (one vector, or two: ``VectorizedN``), one
operand an arithmetic right shift by a literal ``s`` (0 < s < w) and the other the literal
``2**(w - s) - 1`` (each broadcast to a vector), is written as the logical shift:
``_mm256_srli_epi32`` / ``_epi64`` where Inductor compiles for AVX2, ``_mm512_srli_*``
for AVX-512 (chosen by the ``CPU_CAPABILITY_*`` macro the kernel is built with), and the
shift and the mask as before elsewhere (ARM, POWER, s390x). The two are the same bits for
every word (the mask clears exactly the bits the arithmetic shift filled with copies of
the sign). Other shifts, counts, masks and widths keep Inductor's code.

GCC kept the vectors of shift counts out of registers and rebuilt each in the loop (a
``mov``, a ``vmovd`` and a ``vpbroadcastd``), with the hash's multipliers: block(8)
stochastic's loop was 97 instructions per 8 float32 elements, 61 with the logical shifts.
Measured with ``benchmarks/ab.py --base 373c97d --api`` (AMD EPYC Zen 2, AVX2, 2 threads,
wall clock, 41 pairs, same bits in every row; time with / without): stochastic rounding on
4,194,304 float32, fixed(8,4) 0.74, float(5,2) 0.71, block(8) 0.67, posit(8,2) 0.69,
codebook 16 0.75, codebook 256 0.80, MX 0.75, NVFP4 0.79; on 2,097,152 float64 (31
pairs) 0.80-0.86; on float16 inputs 0.87-0.89; nearest rounding, which makes no noise,
1.00 (0.96-1.01).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["logical_shift"]

#: An integer literal of the graph (Inductor's ``value_to_cpp`` of an int).
_INT_LITERAL = re.compile(r"static_cast<int(32|64)_t>\((-?[0-9]+)L{0,2}\)")
#: A scalar broadcast to one integer vector, or to two (``VectorizedN``).
_BROADCAST = re.compile(r"at::vec::Vectorized(?:N)?<int(32|64)_t(?:,\s*2)?>\((\w+)\)")
#: An arithmetic right shift of one variable by another.
_SHIFT = re.compile(r"(\w+) >> (\w+)")
#: The logical shift by an immediate count, per instruction set macro, for 32 and 64 bits.
_INTRINSICS = (
    ("CPU_CAPABILITY_AVX512", "_mm512_srli_epi"),
    ("CPU_CAPABILITY_AVX2", "_mm256_srli_epi"),
)
_WIDTHS = {torch.int32: 32, torch.int64: 64}


def logical_shift(fallback: Callable[..., Any]) -> Callable[..., Any]:
    """Inductor's vector ``bitwise_and``, writing ``(z >> s) & (2**(w - s) - 1)`` of int32
    or int64 vectors (w = 32 or 64) as one logical shift; ``fallback`` (Inductor's own
    function, whose name it keeps) for every other call."""

    @functools.wraps(fallback)
    def bitwise_and(a: Any, b: Any) -> Any:
        code = _expressions()
        for shifted, mask in ((a, b), (b, a)):
            found = _shift_and_mask(shifted, mask, code)
            if found is not None:
                return _logical_shift_code(*found, fallback(a, b))
        return fallback(a, b)

    return bitwise_and


def _expressions() -> dict[str, str]:
    """Variable name -> expression, from the current kernel's common-subexpression table."""
    from torch._inductor.virtualized import V

    table = getattr(getattr(V.kernel, "cse", None), "_cache", None)
    if not isinstance(table, dict):
        return {}
    return {str(v): k for k, v in table.items() if isinstance(k, str)}


def _literal(var: Any, width: int, code: dict[str, str]) -> int | None:
    """The integer literal that ``var`` broadcasts to a vector of ``width``-bit lanes."""
    broadcast = _BROADCAST.fullmatch(code.get(str(var), ""))
    if broadcast is None or int(broadcast.group(1)) != width:
        return None
    literal = _INT_LITERAL.fullmatch(code.get(broadcast.group(2), ""))
    if literal is None or int(literal.group(1)) != width:
        return None
    return int(literal.group(2))


def _shift_and_mask(
    shifted: Any, mask: Any, code: dict[str, str]
) -> tuple[str, int, int, int] | None:
    """(z, s, w, n) where ``shifted`` is ``z >> s`` of n (1 or 2) vectors of w-bit integers
    and ``mask`` is ``2**(w - s) - 1``, both literals broadcast; else None."""
    from torch._inductor.virtualized import V

    dtype = getattr(shifted, "dtype", None)
    width = _WIDTHS.get(dtype) if isinstance(dtype, torch.dtype) else None
    count = getattr(V.kernel, "_get_num_vectors", None)
    if width is None or count is None or count(dtype) not in (1, 2):
        return None
    if not (
        getattr(shifted, "is_vec", False)
        and getattr(mask, "is_vec", False)
        and getattr(mask, "dtype", None) == dtype
    ):
        return None
    shift = _SHIFT.fullmatch(code.get(str(shifted), ""))
    if shift is None:
        return None
    s = _literal(shift.group(2), width, code)
    if s is None or not 0 < s < width or _literal(mask, width, code) != (1 << (width - s)) - 1:
        return None
    return shift.group(1), s, width, count(dtype)


def _logical_shift_code(z: str, s: int, width: int, vectors: int, portable: str) -> Any:
    """The logical shift of ``z`` (``vectors`` vectors of ``width``-bit lanes) by ``s``, by
    the intrinsic of the kernel's instruction set, else ``portable`` (Inductor's shift and
    mask)."""
    from torch._inductor.codegen.common import BracesBuffer

    lane = f"int{width}_t"
    code = BracesBuffer()
    code.writeline("[&]()")
    with code.indent():
        for i, (macro, intrinsic) in enumerate(_INTRINSICS):
            code.writeline(f"#{'el' if i else ''}if defined({macro})")
            if vectors == 1:
                code.writeline(f"return at::vec::Vectorized<{lane}>({intrinsic}{width}({z}, {s}));")
            else:
                halves = ", ".join(
                    f"at::vec::Vectorized<{lane}>({intrinsic}{width}({z}[{h}], {s}))"
                    for h in range(vectors)
                )
                code.writeline(f"return at::vec::VectorizedN<{lane}, {vectors}>({halves});")
        code.writeline("#else")
        code.writeline(f"return {portable};")
        code.writeline("#endif")
    code.writeline("()")
    return code
