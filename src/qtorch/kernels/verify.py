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

The kernel compiled on the probe (its sizes symbolic) is the one the call then runs: the
probe has the call's shape, or where that holds more than :data:`PROBE_MAX` elements a
smaller shape with the same cache key (:func:`probe_shape`; the key names everything about
a shape that the kernel's code depends on). A full-size probe and its result held the
call's input twice more: 4,294,967,344 float16 (8 GiB), which later calls round in 16 GiB,
took 24 GiB in the first compiled call, and the process was killed on a 24 GiB machine. A
large probe is compared at its two ends (the vector loop's body and its masked tail) where
the eager path can round it in pieces, and whole otherwise. First calls on 1e8 float32,
compile included, 2 threads, Inductor's cache warm, nearest (with the full-size probe in
brackets): posit(8,2) 4.5 s (5.1), block(8) 4.2 (5.1), MX E4M3 on a 1-D tensor 4.3 (5.0),
NVFP4 4.7 (5.6); the peak above x 0.59-0.66 GiB (0.96-1.03), the result being 0.37.
CUDA kernels are not probed: Triton brings its own compiler, and the eager probe of a
large CUDA tensor would need full-size temporaries on the device.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

from qtorch.formats.base import Format
from qtorch.kernels.eager import CHUNK, piece_length, round_piece
from qtorch.kernels.eager import run as eager_run
from qtorch.rounding import Rounding

__all__ = [
    "COMPARED",
    "DEVICES",
    "PATTERN",
    "PERIOD",
    "PROBE_MAX",
    "MiscompiledKernel",
    "check",
    "probe_like",
    "probe_shape",
]

#: Device types whose kernels are checked on their first run.
DEVICES = frozenset({"cpu"})

#: Length of the probe's repeating pattern.
PATTERN = 4096

#: Elements compared at each end of a large probe that the eager path rounds in pieces.
COMPARED = 16 * PATTERN

#: Most elements in a probe, where the call's shape allows a smaller one (:func:`probe_shape`).
PROBE_MAX = 2**20

#: A shrunk size of a probe keeps its remainder modulo this (:func:`probe_shape`).
PERIOD = 4096

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


def probe_like(arg: torch.Tensor, shape: Sequence[int] | None = None) -> torch.Tensor:
    """A new contiguous tensor of ``shape`` (default: ``arg``'s), with ``arg``'s dtype and
    device, holding the probe values (:data:`PATTERN` of them, repeated)."""
    shape = arg.shape if shape is None else tuple(shape)
    n = math.prod(shape)
    pattern = _pattern(arg.dtype).to(arg.device)
    return pattern.repeat(-(-n // PATTERN))[:n].view(shape)


def probe_shape(
    shape: Sequence[int], keep: set[int], same: Callable[[tuple[int, ...]], bool]
) -> tuple[int, ...]:
    """``shape``, or where it holds more than :data:`PROBE_MAX` elements a smaller shape
    that ``same`` accepts (its compiled kernel is ``shape``'s: the same cache key).

    The dimensions in ``keep`` (constants of the kernel) and the sizes of 0, 1 and 2 are
    kept; the others shrink, the largest first, to no less than 2 (so Dynamo keeps them
    symbolic) and, where ``same`` allows, to the largest size that fits keeping the
    remainder modulo :data:`PERIOD`, so that a masked vector tail and the padding of
    blocks (of any power-of-two size up to it) come out as in the call. A dimension that
    no candidate size keeps ``same`` stays whole.
    """
    out = tuple(shape)
    for dim in sorted(range(len(out)), key=lambda d: -out[d]):
        n = math.prod(out)
        if n <= PROBE_MAX:
            break
        size = out[dim]
        if dim in keep or size <= 2:
            continue
        target = PROBE_MAX // (n // size)
        for candidate in _smaller_sizes(size, target):
            trial = (*out[:dim], candidate, *out[dim + 1 :])
            if same(trial):
                out = trial
                break
    return out


def _smaller_sizes(size: int, target: int) -> list[int]:
    """Sizes below ``size`` for :func:`probe_shape` to try, the likeliest first: the largest
    of at most ``target`` (or the smallest) with ``size``'s remainder modulo :data:`PERIOD`
    and at least 2, that plus :data:`PERIOD`, ``target`` itself, and 2."""
    low = size % PERIOD
    if low < 2:
        low += PERIOD
    fit = max(low, low + (target - low) // PERIOD * PERIOD)
    candidates = (fit, low + PERIOD, max(target, 2), 2)
    return [c for c in dict.fromkeys(candidates) if c < size]


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
