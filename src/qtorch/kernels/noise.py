"""Counter-based uniform noise for stochastic rounding: SplitMix64 of (seed, element index).

Stochastic rounding needs one uniform number in [0, 1) per element. Instead of a serial
generator (``torch.rand`` on the CPU is mt19937, one thread), the noise of element ``i``
is a hash of a per-call seed and ``i``: output number ``seed + i`` of the SplitMix64
generator (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014; the finalizer constants are Stafford's "Mix13", as in Vigna's reference
``splitmix64.c``, https://prng.di.unimi.it/splitmix64.c)::

    z = (seed + i + 1) * 0x9E3779B97F4A7C15          (mod 2**64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9          (mod 2**64, >> logical)
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z =  z ^ (z >> 31)

that is, the ``i``-th output of SplitMix64 started in the state ``seed * 0x9E37...7C15``
(the increment is odd, so every state belongs to exactly one seed). The seed is added to
the index *before* the multiplication so that Inductor cannot fold ``index * constant``
into its (non-wrapping, Python-integer) index arithmetic, which overflows for multi-
dimensional shapes. Seeds are offsets into one stream of period 2**64: seed ``s + 1``
gives the noise of seed ``s`` shifted by one element. The seeds qtorch draws are uniform
64-bit numbers, so two calls on n elements share a number with probability about
n / 2**63.

float32 noise is the top 24 bits of z times 2**-24, float64 noise the top 53 bits times
2**-53: every value is a multiple of the resolution in [0, 1), as from ``torch.rand``.
SplitMix64 passes BigCrush and PractRand as a sequence; its outputs for consecutive
counters are what is used here.

The code is plain int64 tensor arithmetic, so eager PyTorch, Inductor's vectorized C++ and
Triton compute the same bits: int64 multiplication and addition wrap modulo 2**64 there
(tests/test_noise.py checks this against Python integers, eager and compiled). int64 ``>>``
is arithmetic, so the logical shifts mask off the copied sign bits. No floor division, no
bit-cast views: Inductor vectorizes every op (16 float32 lanes on AVX-512).

The seed is one int64 drawn from the torch generator per call (:func:`draw_seed`), kept
as a 0-d tensor on the device (no host synchronization), so ``torch.manual_seed`` or an
explicit ``generator=`` reproduces the noise, and a compiled kernel takes it as an input
(a new seed never recompiles). The index is the logical row-major flat index, so the noise
of an element does not depend on the strides of the tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["draw_seed", "splitmix64", "uniform_from_counter", "uniform_range"]


def _signed(c: int) -> int:
    """The int64 with the same 64-bit pattern as the unsigned constant ``c``."""
    return c - (1 << 64) if c >= 1 << 63 else c


#: SplitMix64's increment, the odd integer nearest 2**64 / golden ratio.
GOLDEN_GAMMA = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)

_RESOLUTION_BITS = {torch.float32: 24, torch.float64: 53}

#: Eagerly, the noise is made in chunks of this many elements: int64 temporaries of 2 MiB
#: stay in the cache and are reused by the allocator (full-size 32 MiB int64 temporaries
#: cost a page-faulting allocation each, 10x the arithmetic). Compiled code, and other
#: devices (whose allocators cache), make it in one pass.
EAGER_CHUNK = 2**18


def _shift_right_logical(z: torch.Tensor, n: int) -> torch.Tensor:
    """``z >> n`` on the 64-bit pattern (torch's int64 ``>>`` copies the sign bit)."""
    return (z >> n).bitwise_and_((1 << (64 - n)) - 1)


def splitmix64(seed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """SplitMix64 output number ``seed + index`` (0-based), as int64 bit patterns.

    Args:
        seed: int64 tensor (usually 0-d): the generator starts in state
            ``seed * GOLDEN_GAMMA`` (mod 2**64).
        index: int64 tensor of counters; the result has its shape (``seed`` broadcasts).

    Returns:
        a new int64 tensor whose two's-complement bits are the unsigned 64-bit outputs.

    >>> hex(splitmix64(torch.tensor(0), torch.tensor(0)).item() % 2**64)  # state 0
    '0xe220a8397b1dcdaf'
    """
    z = _unfinished(seed, index)
    return z.bitwise_xor_(_shift_right_logical(z, 31))


def _unfinished(seed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """SplitMix64 without its last step ``z ^= z >> 31``, which changes only the low 33 bits."""
    z = (index + seed).add_(1).mul_(GOLDEN_GAMMA)
    z = z.bitwise_xor_(_shift_right_logical(z, 30)).mul_(_MIX1)
    return z.bitwise_xor_(_shift_right_logical(z, 27)).mul_(_MIX2)


def uniform_from_counter(
    seed: torch.Tensor, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Uniform [0, 1) noise of ``shape``: element i (row-major) from ``splitmix64(seed, i)``.

    Args:
        seed: 0-d int64 tensor (from :func:`draw_seed`); the noise is on its device.
        shape: the shape of the result.
        dtype: float32 (24 random bits, multiples of 2**-24) or float64 (53 bits).

    Returns:
        a new contiguous tensor; the same seed and shape give the same bits on every path.

    >>> u = uniform_from_counter(torch.tensor(42), (2, 3))
    >>> bool(((u >= 0) & (u < 1)).all()), u.shape
    (True, torch.Size([2, 3]))
    """
    if dtype not in _RESOLUTION_BITS:
        raise ValueError(f"uniform_from_counter: dtype must be float32 or float64, got {dtype}")
    numel = 1
    for size in shape:
        numel *= size
    return uniform_range(seed, 0, numel, dtype).view(tuple(shape))


def uniform_range(
    seed: torch.Tensor, start: int, stop: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The noise of the flat indices ``start .. stop - 1`` (a slice of the full noise), 1-D.

    ``uniform_range(seed, a, b)`` equals ``uniform_from_counter(seed, (n,))[a:b]`` bit for
    bit, so a tensor can be quantized piece by piece with the noise of the whole.

    >>> s = torch.tensor(7)
    >>> torch.equal(uniform_range(s, 3, 9), uniform_from_counter(s, (12,))[3:9])
    True
    """
    if dtype not in _RESOLUTION_BITS:
        raise ValueError(f"uniform_range: dtype must be float32 or float64, got {dtype}")
    if not 0 <= start <= stop:
        raise ValueError(f"uniform_range: need 0 <= start <= stop, got {start}, {stop}")
    if torch.compiler.is_compiling() or stop - start <= EAGER_CHUNK or seed.device.type != "cpu":
        return _uniform(seed, start, stop, dtype)
    out = torch.empty(stop - start, dtype=dtype, device=seed.device)
    for begin in range(start, stop, EAGER_CHUNK):
        end = min(begin + EAGER_CHUNK, stop)
        out[begin - start : end - start] = _uniform(seed, begin, end, dtype)
    return out


def _uniform(seed: torch.Tensor, start: int, stop: int, dtype: torch.dtype) -> torch.Tensor:
    """The noise of the flat indices start..stop-1."""
    bits = _RESOLUTION_BITS[dtype]
    index = torch.arange(start, stop, dtype=torch.int64, device=seed.device)
    # The top 24 bits of SplitMix64's output are those of the value before its last step
    # (z ^ (z >> 31) keeps bits 33..63), so float32 noise skips that step: the same bits.
    z = _unfinished(seed, index) if bits <= 31 else splitmix64(seed, index)
    top = _shift_right_logical(z, 64 - bits)
    return top.to(dtype).mul_(2.0**-bits)


def draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """One int64 seed from ``generator`` (or ``device``'s default torch RNG), 0-d on ``device``.

    Drawn on the device itself, so CUDA never waits for the host.
    """
    return torch.randint(
        -(2**63), 2**63 - 1, (), dtype=torch.int64, device=device, generator=generator
    )
