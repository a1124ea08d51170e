"""Counter-based uniform noise for stochastic rounding: a keyed hash of each element's index.

Stochastic rounding needs one uniform number in [0, 1) per element. Instead of a serial
generator (``torch.rand`` on the CPU is mt19937, one thread), the noise of element ``i``
(its logical row-major flat index) is a hash of ``i`` and a per-call 64-bit seed, computed
by plain integer tensor code, so eager PyTorch, Inductor's vectorized C++ and Triton compute
the same bits (tests/test_noise.py checks eager and compiled code against Python integers).

**float32 noise** (24 bits; also the noise of float16 and bfloat16 inputs, which are rounded
in float32) is 32-bit arithmetic: 16 lanes per AVX-512 vector, no 64-bit multiplies. With
``k0`` and ``k1`` the low and high words of the seed, and ``c`` and ``h`` those of ``i``::

    z = c + k0                                  (mod 2**32)
    z ^= z >> 17;  z *= 0xED5AD4BB              (mod 2**32, >> logical)
    z ^= k1 ^ (h * 0x9E3779B9)
    z ^= z >> 11;  z *= 0xAC4C1B51
    z ^= z >> 15;  z *= 0x31848BAB
    z ^= z >> 14
    u  = (z >> 8) * 2**-24                      (the top 24 bits)

that is Chris Wellons' ``triple32`` integer hash (hash-prospector; avalanche bias 0.021, the
lowest of its form that he found, https://nullprogram.com/blog/2018/07/31/) of ``c + k0``,
with a key XORed in after its first multiplication. For one seed, ``c`` maps to ``z`` one to
one: within each run of 2**32 elements no two share a 32-bit word. The key makes seeds that
differ in their high word give different permutations, not shifts of one stream (seeds that
share the high word are offsets into one stream: seed ``s + 1`` gives the noise of seed
``s`` shifted by one element, as before). ``h`` is non-zero past 2**32 elements only, and
gives each run of 2**32 elements its own permutation.

Checked (tests/test_noise.py; the 2**24 versions are marked slow): the top bytes of
neighbours at lags 1-4096, of indices one bit apart (bits 0-31), and of the same low word in
different runs of 2**32 are independent (256 x 256 chi-square within six standard
deviations), as are triples of neighbours (top 5 bits each). A single xorshift-multiply
round (``lowbias32``, of ``c + k0`` or keyed) fails these checks by tens to thousands of
standard deviations at 2**24 samples, which is why there are three. A known weakness, not a
use: two seeds whose high words differ in one bit give correlated streams (|z| in the
thousands at 2**26 samples); qtorch's seeds are independent 64-bit draws.

**float64 noise** (53 bits) is output number ``seed + i`` of SplitMix64 (Steele, Lea and
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014; the finalizer
constants are Stafford's "Mix13", as in Vigna's ``splitmix64.c``), which passes BigCrush and
PractRand as a sequence::

    z = (seed + i + 1) * 0x9E3779B97F4A7C15          (mod 2**64)
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9          (mod 2**64, >> logical)
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    z =  z ^ (z >> 31)

keeping the top 53 bits times 2**-53. A 32-bit word cannot give 53 bits. (float32 noise was
SplitMix64's top 24 bits until the compiled kernels below made the 32-bit hash worth its
change of every stochastic result.)

**How the index is built matters as much as the hash.** Inductor's CPU code builds the index
vector of a flat loop from 16 scalars (``Vectorized<int>::arange``), which costs about as
much as the whole 32-bit hash. Given ``row=`` (the length of the last dimension, a Python
int while the compiler traces symbolic sizes) that is a power of two of at least 16, the
index is computed as (the row's start + the seed's low word, a scalar per row) + (a lane
number read from a small buffer, stored as float32 and converted: see below): one
broadcast, one conversion and one add per vector. qtorch's compiled
kernels use it (elementwise formats on an ``(n / 16, 16)`` view of x, MX and NVFP4 on
their blocks); the numbers are the same either way. Measured on a 2-core AVX-512 machine,
4,194,304 float32, 2 threads, through ``qtorch.quantize`` against the SplitMix64 kernels
(A/B, same run): fixed(8,4) stochastic 0.72, float(5,2) 0.75, posit(8,2) 0.81, MX 0.90,
NVFP4 0.88 of the time; without the row index the 32-bit hash was no faster than
SplitMix64 (1.02-1.10). Adding the seed per row: 0.96-0.98 more.

**The lane buffer is float32.** On an AVX2 CPU, Inductor's load of an int32 vector
(``Vectorized<int32_t>::loadu(ptr, count)`` in torch 2.13's AVX2 code; its float32 load
reads memory directly) copies the lanes into a stack buffer in two 16-byte pieces and
reads the buffer as one 32-byte vector: a failed store-to-load forwarding per vector, which
stalled the whole hash. Measured on a 2-core AMD EPYC (Zen 2, AVX2), 4,194,304 float32, 2
threads, through ``qtorch.quantize``: fixed(8,4) stochastic 7.3 ms with an int32 buffer,
3.1 ms with the float32 one (``torch.mul(x, 2.0)``: about 1 ms); posit(8,2) 6.9 and 3.7,
float(5,2) 7.2 and 2.9. The lanes convert exactly (rows of at most 2**24 elements are
built so; qtorch's are 16, MX and NVFP4 blocks at most 2**20), so the numbers are the same.

All arithmetic is on signed tensors whose additions and multiplications wrap (int32 or
int64); ``>>`` on them is arithmetic, so the logical shifts mask off the copied sign bits.
Compiled for x86, qtorch writes each shift and its mask as one instruction
(:mod:`qtorch.kernels.vector_shift`; stochastic kernels took 0.67-0.80 of their former
time). No floor division, no bit-cast views: Inductor vectorizes every op.

The seed is one int64 drawn from the torch generator per call (:func:`draw_seed`), kept
as a 0-d tensor on the device (no host synchronization), so ``torch.manual_seed`` or an
explicit ``generator=`` reproduces the noise, and a compiled kernel takes it as an input
(a new seed never recompiles). The noise of an element does not depend on the strides of
the tensor, nor on the shape it is made in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qtorch.kernels.per_block import stored

__all__ = [
    "draw_seed",
    "hash32",
    "seed_at",
    "splitmix64",
    "uniform_at",
    "uniform_from_counter",
    "uniform_range",
]


def _signed(c: int) -> int:
    """The int64 with the same 64-bit pattern as the unsigned constant ``c``."""
    return c - (1 << 64) if c >= 1 << 63 else c


def _signed32(c: int) -> int:
    """The int32 with the same 32-bit pattern as the unsigned constant ``c``."""
    return c - (1 << 32) if c >= 1 << 31 else c


#: SplitMix64's increment, the odd integer nearest 2**64 / golden ratio.
GOLDEN_GAMMA = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)

#: triple32's multipliers, and the odd integer nearest 2**32 / golden ratio.
_TRIPLE1 = _signed32(0xED5AD4BB)
_TRIPLE2 = _signed32(0xAC4C1B51)
_TRIPLE3 = _signed32(0x31848BAB)
GOLDEN32 = _signed32(0x9E3779B9)

#: The noise's dtypes: float32 (24 random bits) and float64 (53).
_NOISE_DTYPES = (torch.float32, torch.float64)

#: Eagerly, the noise is made in chunks of this many elements: integer temporaries of 1-2
#: MiB stay in the cache and are reused by the allocator (full-size temporaries cost a
#: page-faulting allocation each, 10x the arithmetic). Compiled code, and other devices
#: (whose allocators cache), make it in one pass.
EAGER_CHUNK = 2**18

#: The smallest ``row=`` length for which float32 indices are built per row (see above).
LANES_MIN = 16
#: The largest: the lane numbers, kept as float32, are exact below 2**24 (see above).
LANES_MAX = 1 << 24


def _shift_right_logical(z: torch.Tensor, n: int) -> torch.Tensor:
    """``z >> n`` on the bit pattern (torch's signed ``>>`` copies the sign bit): the
    arithmetic shift and a mask, which qtorch's compiled x86 code writes as one logical
    shift (:mod:`qtorch.kernels.vector_shift`)."""
    width = 64 if z.dtype == torch.int64 else 32
    return (z >> n).bitwise_and_((1 << (width - n)) - 1)  # z >> n is a new tensor


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
    # The seed is added to the index before the multiplication, so that Inductor cannot
    # fold ``index * constant`` into its (non-wrapping) index arithmetic.
    z = (index + seed).add_(1).mul_(GOLDEN_GAMMA)
    z = z.bitwise_xor_(_shift_right_logical(z, 30)).mul_(_MIX1)
    z = z.bitwise_xor_(_shift_right_logical(z, 27)).mul_(_MIX2)
    return z.bitwise_xor_(_shift_right_logical(z, 31))


def hash32(seed: torch.Tensor, index: torch.Tensor, high: torch.Tensor | int) -> torch.Tensor:
    """The 32-bit noise words of the indices ``index`` (int32 or int64), as int32 bit patterns.

    ``seed`` is the 0-d int64 seed; ``high`` the indices' bits 32..63 (an int32 tensor that
    broadcasts with ``index``, or one int for all); of an int64 ``index`` only the low word
    is read. The word is Wellons' ``triple32`` of ``c + k0`` (``c`` the index's low word),
    with ``k1 ^ high * GOLDEN32`` XORed in after its first multiplication (see the module
    docstring).

    >>> hex(hash32(torch.tensor(0), torch.tensor(1), 0).item() % 2**32)  # triple32(1)
    '0x42741d6'
    """
    if index.dtype == torch.int64:
        # c + k0 (mod 2**32) is the low word of index + seed. (Converted to int32 first, an
        # index becomes an int32 index vector in Inductor's CPU code, which builds it from
        # 16 scalars: slower than the whole hash.)
        z = (index + seed).to(torch.int32)
    else:
        z = index + seed.to(torch.int32)
    return _triple32_keyed(z, _key(seed, high))


def _key(seed: torch.Tensor, high: torch.Tensor | int) -> torch.Tensor:
    """``k1 ^ high * GOLDEN32`` (int32): what :func:`hash32` XORs in after its first round."""
    k1 = (seed >> 32).to(torch.int32)
    if isinstance(high, int):
        return k1 ^ _signed32(high * (GOLDEN32 % 2**32) % 2**32)
    return (high * GOLDEN32).bitwise_xor_(k1)


def _triple32_keyed(z: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """:func:`hash32` of the words ``z = c + k0`` (int32, overwritten) with its ``key``."""
    z = z.bitwise_xor_(_shift_right_logical(z, 17)).mul_(_TRIPLE1)
    z = z.bitwise_xor_(key)
    z = z.bitwise_xor_(_shift_right_logical(z, 11)).mul_(_TRIPLE2)
    z = z.bitwise_xor_(_shift_right_logical(z, 15)).mul_(_TRIPLE3)
    return z.bitwise_xor_(_shift_right_logical(z, 14))


def _noise_from_words(z: torch.Tensor) -> torch.Tensor:
    """float32 noise: the top 24 bits of the words z, times 2**-24 (exact)."""
    return _shift_right_logical(z, 8).to(torch.float32).mul_(2.0**-24)


def uniform_from_counter(
    seed: torch.Tensor,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    *,
    row: int | None = None,
    wide: bool = False,
) -> torch.Tensor:
    """Uniform [0, 1) noise of ``shape``: element i (row-major flat index) hashed with ``seed``.

    Args:
        seed: 0-d int64 tensor (from :func:`draw_seed`); the noise is on its device.
        shape: the shape of the result.
        dtype: float32 (24 random bits, multiples of 2**-24) or float64 (53 bits).
        row: the length of the last dimension, when the caller knows it to be that
            constant (a Python int even while ``torch.compile`` traces symbolic sizes). If
            it is a power of two from :data:`LANES_MIN` to :data:`LANES_MAX`, float32
            indices are built per row (faster compiled; the numbers are the same either
            way).
        wide: for compiled code that may see more than 2**32 elements: float32 indices
            get the high word of each index, or of each row's start, in the graph; by
            default they are made in a piece per run of 2**32 (:func:`uniform_range`).

    Returns:
        a new contiguous tensor; the same seed and shape give the same bits on every path,
        and an element the same number whatever the shape it is made in.

    >>> u = uniform_from_counter(torch.tensor(42), (2, 3))
    >>> bool(((u >= 0) & (u < 1)).all()), u.shape
    (True, torch.Size([2, 3]))
    """
    if dtype not in _NOISE_DTYPES:
        raise ValueError(f"uniform_from_counter: dtype must be float32 or float64, got {dtype}")
    numel = 1
    for size in shape:
        numel *= size
    if row is not None and dtype == torch.float32 and _built_per_row(row):
        return _uniform_rows(seed, numel // row, row, wide=wide).view(tuple(shape))
    return uniform_range(seed, 0, numel, dtype, wide=wide).view(tuple(shape))


def _built_per_row(length: int) -> bool:
    """Whether float32 indices of rows of ``length`` elements are built per row."""
    return LANES_MIN <= length <= LANES_MAX and length & (length - 1) == 0


def _uniform_rows(
    seed: torch.Tensor, rows: int, length: int, first: int = 0, wide: bool = False
) -> torch.Tensor:
    """float32 noise of rows ``first .. first + rows - 1`` of ``length`` (a power of two)
    elements each, the index built per row.

    Rows start at multiples of ``length``, which divides 2**32, so a row lies in one run of
    2**32 indices (one high word). The seed's low word is added to each row's start, so
    that the per-element work is one add before the hash. By default the rows are made in
    pieces of one run each, so that the high word is a number per piece (as in
    :func:`_uniform`); with ``wide`` each row's high word is computed from its start, and
    one compiled graph serves every row count (see :func:`uniform_range`).
    """
    if not wide:
        per_run = (1 << 32) // length
        room = per_run - first % per_run  # rows left in the run of the first row
        if rows > room:  # never below 2**32 elements (a guard on the size when compiled)
            rest = _uniform_rows(seed, rows - room, length, first + room)
            return torch.cat([_uniform_rows(seed, room, length, first), rest])
    start = torch.arange(first, first + rows, dtype=torch.int64, device=seed.device)
    begin = start.mul_(length)
    # a buffer of the lanes 0..length-1 (the zeros only make stored() a stack), float32:
    # an int32 one is read through a stack copy on AVX2 CPUs (see the module docstring)
    lanes, _ = stored(
        torch.arange(length, dtype=torch.float32, device=seed.device),
        torch.zeros(length, dtype=torch.float32, device=seed.device),
    )
    # c + k0 = (row start + k0) + lane (mod 2**32): no carry between them matters
    z = (begin + seed).to(torch.int32).unsqueeze(1) + lanes.to(torch.int32)
    high = (begin >> 32).to(torch.int32).unsqueeze(1) if wide else (first * length) >> 32
    return _noise_from_words(_triple32_keyed(z, _key(seed, high)))


def uniform_range(
    seed: torch.Tensor,
    start: int,
    stop: int,
    dtype: torch.dtype = torch.float32,
    *,
    wide: bool = False,
) -> torch.Tensor:
    """The noise of the flat indices ``start .. stop - 1`` (a slice of the full noise), 1-D.

    ``uniform_range(seed, a, b)`` equals ``uniform_from_counter(seed, (n,))[a:b]`` bit for
    bit, so a tensor can be quantized piece by piece with the noise of the whole.

    float32 noise takes one high word (bits 32..63 of the index) per run of 2**32 indices.
    By default the indices are made in a piece per run: traced with symbolic sizes, that
    is a guard on ``stop`` (at most the end of ``start``'s run), and past it a graph that
    concatenates the pieces (a full-size noise buffer). With ``wide`` each index's high
    word is computed with it: one graph for every size, at a shift, a conversion and a
    multiplication more per element (1.04-1.14 times the time of a flat compiled kernel on
    4,194,305 float32, fixed, posit, float stochastic), which is why it is not the
    default. The numbers are the same.

    >>> s = torch.tensor(7)
    >>> torch.equal(uniform_range(s, 3, 9), uniform_from_counter(s, (12,))[3:9])
    True
    """
    if dtype not in _NOISE_DTYPES:
        raise ValueError(f"uniform_range: dtype must be float32 or float64, got {dtype}")
    if not 0 <= start <= stop:
        raise ValueError(f"uniform_range: need 0 <= start <= stop, got {start}, {stop}")
    if torch.compiler.is_compiling() or stop - start <= EAGER_CHUNK or seed.device.type != "cpu":
        return _uniform(seed, start, stop, dtype, wide)
    out = torch.empty(stop - start, dtype=dtype, device=seed.device)
    for begin in range(start, stop, EAGER_CHUNK):
        end = min(begin + EAGER_CHUNK, stop)
        out[begin - start : end - start] = _uniform(seed, begin, end, dtype, wide)
    return out


def _uniform(
    seed: torch.Tensor, start: int, stop: int, dtype: torch.dtype, wide: bool
) -> torch.Tensor:
    """The noise of the flat indices start..stop-1 (``wide``: see :func:`uniform_range`)."""
    if dtype == torch.float64:
        index = torch.arange(start, stop, dtype=torch.int64, device=seed.device)
        top = _shift_right_logical(splitmix64(seed, index), 64 - 53)
        return top.to(dtype).mul_(2.0**-53)
    if wide:
        index = torch.arange(start, stop, dtype=torch.int64, device=seed.device)
        return _noise_from_words(hash32(seed, index, (index >> 32).to(torch.int32)))
    # one piece per run of 2**32 indices, so that the high word is one number per piece
    high = start >> 32
    end = (high + 1) << 32
    if stop > end:
        rest = _uniform(seed, end, stop, dtype, wide)
        return torch.cat([_uniform(seed, start, end, dtype, wide), rest])
    index = torch.arange(start, stop, dtype=torch.int64, device=seed.device)
    return _noise_from_words(hash32(seed, index, high))


def uniform_at(seed: torch.Tensor, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The noise of the row-major flat indices ``index`` (int64, any shape, any order).

    Element for element what :func:`uniform_from_counter` gives at those indices, so the
    stored values of a sparse tensor get the noise of their places in the dense tensor.

    >>> s = torch.tensor(7)
    >>> i = torch.tensor([9, 2, 2])
    >>> torch.equal(uniform_at(s, i, torch.float32), uniform_from_counter(s, (12,))[i])
    True
    """
    if dtype not in _NOISE_DTYPES:
        raise ValueError(f"uniform_at: dtype must be float32 or float64, got {dtype}")
    if dtype == torch.float64:
        top = _shift_right_logical(splitmix64(seed, index), 64 - 53)
        return top.to(dtype).mul_(2.0**-53)
    return _noise_from_words(hash32(seed, index, (index >> 32).to(torch.int32)))


def seed_at(seed: torch.Tensor, start: int, count: int, dtype: torch.dtype) -> torch.Tensor | None:
    """A seed whose noise is ``seed``'s from flat index ``start`` on: for ``count``
    elements, ``uniform_from_counter(seed_at(seed, start, count, dtype), (count,))``
    equals ``uniform_range(seed, start, start + count)`` bit for bit, so a part of a tensor
    holding the consecutive elements ``start ..`` of a whole one is rounded by the plain
    tensor's path with the whole one's noise. None where no seed does that: float32 noise
    of indices that cross a multiple of 2**32 (the high word of the index changes).

    float64 (SplitMix64 of ``seed + i``): ``seed + start``. float32: the low word of the
    seed is added to the index's (``c + k0``), so it becomes ``k0 + low(start)``; the high
    word of every index is ``high(start)``, XORed into the key as ``high * GOLDEN32``, so
    the new seed's high word is ``k1 ^ high(start) * GOLDEN32`` (its own indices, below
    2**32, have high word 0). Tensor arithmetic on the 0-d seed: no host synchronization.

    >>> s = torch.tensor(-5)
    >>> u = uniform_from_counter(seed_at(s, 2**32 - 3, 3, torch.float32), (3,))
    >>> torch.equal(u, uniform_range(s, 2**32 - 3, 2**32))
    True
    """
    if dtype not in _NOISE_DTYPES:
        raise ValueError(f"seed_at: dtype must be float32 or float64, got {dtype}")
    if start < 0 or count < 0:
        raise ValueError(f"seed_at: need start, count >= 0, got {start}, {count}")
    if dtype == torch.float64:
        return seed + _signed(start % 2**64)
    low, high = start & 0xFFFFFFFF, start >> 32
    if low + count > 2**32:
        return None
    key = (seed >> 32) ^ (high * (GOLDEN32 % 2**32) % 2**32)
    return (key << 32) | ((seed + low) & 0xFFFFFFFF)


def draw_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """One int64 seed from ``generator`` (or ``device``'s default torch RNG), 0-d on ``device``.

    Drawn on the device itself, so CUDA never waits for the host.
    """
    return torch.randint(
        -(2**63), 2**63 - 1, (), dtype=torch.int64, device=device, generator=generator
    )
