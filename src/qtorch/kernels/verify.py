"""A compiled kernel's first run is checked against the eager reference, on a probe input.

Inductor builds a CPU kernel with whatever C++ compiler the machine has, and loads it from
an on-disk cache that other processes (and machines sharing the directory) write. Either
can hand back a kernel that computes something else, silently:

* **A compiler's wrong code.** GCC 12.2 (Debian 12) compiles Inductor's AVX2 kernels wrongly
  on a CPU with AVX-512: ``-march=native`` adds AVX-512VL and BW to the AVX2 flags, and GCC
  then turns ``blendv(a, b, ~(c > a))`` (ATen's AVX2 ``where`` of integers on an integer
  ``>=``, ``<=`` or ``!=``) into a blend with its operands swapped, so the mask acts
  inverted. Inductor uses AVX2 there when told to (``ATEN_CPU_CAPABILITY=avx2``, or
  ``cpp.simdlen = 256``); every posit came out NaN (posit(8,2), (16,1) and (32,2), both
  roundings, on 131,072 of 131,072 inputs; their specials test is now a ``>``), while the
  other families gave the same bits.
* **A cached kernel built for another instruction set.** Inductor's graph cache key does
  not hold the instruction set its C++ was generated for: after a run with
  ``ATEN_CPU_CAPABILITY=avx2``, a run without it loaded the AVX2 kernels' source and built
  it for AVX-512 (vectors of 16 in a loop that steps by 8): garbage results, and once
  ``corrupted size vs. prev_size`` from glibc. qtorch now puts the instruction set in its
  kernels' configuration (:func:`qtorch.kernels.compiled_call.config_patches`), so each
  has its own cache entries. This check covers the garbage, not a corrupted heap.

So before a CPU kernel first serves a call, it runs on a probe of the call's shape and
dtype (:func:`probe_like`: ±0, ±Inf, NaN, subnormals, the extremes, values at every scale
from 2**-24 to 2**24, multiples of 2**-6, random bit patterns; :data:`PATTERN` values
repeated), and its result must equal the eager reference's bit for bit (NaN payloads
aside), with the call's seed for stochastic rounding (the noise is the same on both
paths). A difference raises :class:`MiscompiledKernel`, and the caller falls back to the
eager kernels with one warning (:class:`qtorch.kernels.fused.CompileFallbackWarning`), as
for a compile that fails.

The probe has the shape of the call's input, so the kernel compiled on it (its sizes
symbolic) is the one the call then runs. A large probe is compared at its two ends (the
vector loop's body and its masked tail) where the eager path can round it in pieces, and
whole otherwise. Measured first calls, compile included, 2 threads, cache warm: at
4,194,304 float32 no difference in the noise (posit(8,2) nearest 3.73-3.76 s either way);
at 1e8, posit(8,2) 4.5 s against 3.9 s, block(8) 4.7 against 3.9 s, MX E4M3 on a 1-D
tensor 5.3-5.6 against 4.2-4.6 s (10.0 s while the eager path rounded 1-D MX whole), NVFP4
5.1-7.6 against 4.2 s. CUDA kernels are not probed: Triton brings its own compiler, and
the eager probe of a large CUDA tensor would need full-size temporaries on the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from qtorch.formats.base import Format
from qtorch.kernels.eager import CHUNK, piece_length, round_piece
from qtorch.kernels.eager import run as eager_run
from qtorch.rounding import Rounding

__all__ = ["COMPARED", "DEVICES", "PATTERN", "MiscompiledKernel", "check", "probe_like"]

#: Device types whose kernels are checked on their first run.
DEVICES = frozenset({"cpu"})

#: Length of the probe's repeating pattern.
PATTERN = 4096

#: Elements compared at each end of a large probe that the eager path rounds in pieces.
COMPARED = 16 * PATTERN

_INT = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


class MiscompiledKernel(RuntimeError):
    """A compiled kernel gave other bits than the eager reference on the probe input."""


@functools.cache
def _pattern(dtype: torch.dtype) -> torch.Tensor:
    """:data:`PATTERN` values of ``dtype`` on the CPU: specials, every scale, random bits."""
    info = torch.finfo(dtype)
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, info.max, -info.max, info.tiny]
    specials += [-info.tiny, info.smallest_normal / 2, info.tiny * info.eps, 1.0, -1.0]
    g = torch.Generator().manual_seed(0x5EED)
    third = (PATTERN - len(specials)) // 3
    scales = torch.exp2(torch.randint(-24, 25, (third,), generator=g).double())
    scaled = torch.randn(third, generator=g, dtype=torch.float64) * scales
    grid = torch.randint(-64, 65, (third,), generator=g).double() / 2**6  # ties of many formats
    int_dtype = _INT[dtype]
    rest = PATTERN - len(specials) - 2 * third
    high, low = torch.randint(-(2**31), 2**31, (2, rest), generator=g, dtype=torch.int64)
    bits = (high << 32) | (low & 0xFFFFFFFF)  # 64 random bits; narrower types keep the low ones
    return torch.cat(
        [
            torch.tensor(specials, dtype=dtype),
            scaled.to(dtype),
            grid.to(dtype),
            bits.to(int_dtype).view(dtype),
        ]
    )


def probe_like(arg: torch.Tensor) -> torch.Tensor:
    """A new contiguous tensor of ``arg``'s shape, dtype and device holding the probe values
    (:data:`PATTERN` of them, repeated)."""
    n = arg.numel()
    pattern = _pattern(arg.dtype).to(arg.device)
    return pattern.repeat(-(-n // PATTERN))[:n].view(arg.shape)


def _differ(a: torch.Tensor, b: torch.Tensor) -> int:
    """How many elements of a and b differ in their bits (any NaN equals any NaN)."""
    int_dtype = _INT[a.dtype]
    if torch.equal(a.view(int_dtype), b.view(int_dtype)):
        return 0  # one pass, no temporaries: the usual case
    nan_a, nan_b = a.isnan(), b.isnan()
    same = (a.view(int_dtype) == b.view(int_dtype)) | (nan_a & nan_b)
    return int((~same).sum())


def _expected(
    probe: torch.Tensor,
    fmt: Format,
    rounding: Rounding,
    seed: torch.Tensor | None,
) -> list[tuple[int, int, torch.Tensor]]:
    """The eager reference on the probe, as (start, stop, result) spans of its flat view.

    All of it, or for a large probe whose format rounds it in pieces (the eager path's
    :meth:`~qtorch.formats.base.Format.eager_pieces`) the first and the last piece of about
    :data:`COMPARED` elements: the vector loop's body and its tail, the pattern repeating.
    """
    work = torch.float64 if probe.dtype == torch.float64 else torch.float32
    n = probe.numel()
    plan = fmt.eager_pieces(probe, work, CHUNK) if n > 2 * COMPARED else None
    if plan is not None:
        step = piece_length(plan, COMPARED)
        if 2 * step < n:
            flat = probe.view(-1)
            cut = math.prod(plan.unit[1:]) * plan.align  # pieces start at multiples of cut
            spans = []
            for start, stop in ((0, step), ((n - step) // cut * cut, n)):
                q = round_piece(flat, start, stop, plan, rounding, seed, work)
                # a new tensor, never the probe itself (which the kernel may write into)
                spans.append((start, stop, q.to(probe.dtype, copy=True)))
            return spans
    return [(0, n, eager_run(probe, fmt, rounding, seed, work, inplace=False).reshape(-1))]


def check(
    kernel: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor | None],
    probe: torch.Tensor,
    fmt: Format,
    rounding: Rounding,
    seed: torch.Tensor | None,
) -> None:
    """Run ``kernel(probe, seed)`` and compare with the eager reference on the probe.

    ``kernel`` returns the result, or writes it into ``probe`` and returns None. The
    eager reference runs first, on all of the probe or on its two ends (:func:`_expected`).
    Raises :class:`MiscompiledKernel` when any compared element's bits differ (NaN
    payloads aside).
    """
    expected = _expected(probe, fmt, rounding, seed)
    out = kernel(probe, seed)
    got = (probe if out is None else out).reshape(-1)
    bad = sum(_differ(want, got[a:b]) for a, b, want in expected)
    if bad:
        compared = sum(b - a for a, b, _ in expected)
        raise MiscompiledKernel(
            f"the compiled kernel gave other bits than the eager reference for {bad} of "
            f"{compared} probe values (a C++ compiler's wrong code, or a kernel cached "
            "for another instruction set)"
        )
