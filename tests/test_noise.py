"""Counter-based stochastic-rounding noise (qtorch.kernels.noise).

Oracles: for float64 noise the published SplitMix64 outputs (Rosetta Code, "Pseudo-random
numbers/Splitmix64", seed 1234567) and a pure-Python SplitMix64 with explicit ``% 2**64``;
for float32 noise a pure-Python keyed triple32 (Wellons' published function, written from its
definition with explicit ``% 2**32``), whose inverse (multiplicative inverses and inverted
xorshifts) also undoes our hash. Compared bitwise on the eager and the compiled path, and on
both ways of building the index. Statistical checks with bounds of about six standard
deviations (the seeds are fixed, so every run draws the same numbers); the larger sweeps of
the same checks are marked slow.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from edge_cases import bits_equal

import qtorch
from qtorch.kernels import noise
from qtorch.quantize import uniform_noise
from qtorch.rounding import Rounding

M64 = 2**64

#: Seeds as 64-bit patterns (int64 values), including both extremes and zero.
SEEDS = [0, 1, 1234567, -1, 2**63 - 1, -(2**63), 0x0123456789ABCDEF, -0x5DEECE66D1234567]


GAMMA = 0x9E3779B97F4A7C15


def reference_splitmix64(seed: int, index: int) -> int:
    """SplitMix64 (Vigna's splitmix64.c) from state seed * GAMMA: output ``index``, unsigned."""
    z = (seed + index + 1) * GAMMA % M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M64
    return z ^ (z >> 31)


M32 = 2**32
TRIPLE = (0xED5AD4BB, 0xAC4C1B51, 0x31848BAB)
GOLDEN32 = 0x9E3779B9


def reference_hash32(seed: int, index: int) -> int:
    """Keyed triple32 of a 64-bit index (noise.py's module docstring), unsigned 32 bits."""
    seed %= M64
    k0, k1 = seed % M32, seed >> 32
    x = (index % M32 + k0) % M32
    x ^= x >> 17
    x = x * TRIPLE[0] % M32
    x ^= k1 ^ (index >> 32) * GOLDEN32 % M32
    x ^= x >> 11
    x = x * TRIPLE[1] % M32
    x ^= x >> 15
    x = x * TRIPLE[2] % M32
    return x ^ (x >> 14)


def inverse_hash32(seed: int, word: int) -> int:
    """The low word of the index whose :func:`reference_hash32` (high word 0) is ``word``."""

    def unshift(x: int, n: int) -> int:  # inverse of x ^= x >> n on 32 bits
        y = x
        for _ in range(32 // n + 1):
            y = x ^ (y >> n)
        return y

    seed %= M64
    k0, k1 = seed % M32, seed >> 32
    x = unshift(word, 14) * pow(TRIPLE[2], -1, M32) % M32
    x = unshift(x, 15) * pow(TRIPLE[1], -1, M32) % M32
    x = unshift(x, 11) ^ k1
    x = unshift(x * pow(TRIPLE[0], -1, M32) % M32, 17)
    return (x - k0) % M32


def reference_uniform(seed: int, index: int, bits: int) -> float:
    if bits == 24:
        return (reference_hash32(seed, index) >> 8) / 2**24
    return (reference_splitmix64(seed, index) >> (64 - bits)) / 2**bits


def _unsigned(t: torch.Tensor) -> list[int]:
    return [v % M64 for v in t.tolist()]


def _signed(v: int) -> int:
    return v - M64 if v >= 2**63 else v


def test_published_splitmix64_outputs() -> None:
    # Rosetta Code: the generator started in state 1234567 outputs these five numbers.
    expected = [0x599ED017FB08FC85, 0x2C73F08458540FA5, 0x883EBCE5A3F27C77, 0x3FBEF740E9177B3F]
    expected.append(0xE3B8346708CB5ECD)
    seed = 1234567 * pow(GAMMA, -1, M64) % M64  # the seed whose state is 1234567
    got = noise.splitmix64(torch.tensor(_signed(seed)), torch.arange(5))
    assert _unsigned(got) == expected
    assert [reference_splitmix64(seed, i) for i in range(5)] == expected


def test_seeds_are_offsets_into_one_stream() -> None:
    # documented: seed s + 1 is seed s shifted by one element
    a = noise.uniform_from_counter(torch.tensor(41), (100,))
    b = noise.uniform_from_counter(torch.tensor(42), (100,))
    assert bits_equal(a[1:], b[:-1])


def _indices() -> torch.Tensor:
    """Small counters, counters near 2**31, 2**32 and 2**62, and random 62-bit counters."""
    g = torch.Generator().manual_seed(5)
    parts = [torch.arange(1500)]
    parts += [torch.arange(-20, 20) + base for base in (2**31, 2**32, 2**62 - 20)]
    parts.append(torch.randint(0, 2**62, (500,), generator=g))
    return torch.cat(parts)


#: Inductor's own deprecation notices while compiling (not ours; -W error would fail them).
INDUCTOR_NOTICES = pytest.mark.filterwarnings("ignore::DeprecationWarning")

_compiled_hash = torch.compile(noise.splitmix64, fullgraph=True, dynamic=True)


def _hash32(seed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return noise.hash32(seed, index, (index >> 32).to(torch.int32))


_compiled_hash32 = torch.compile(_hash32, fullgraph=True, dynamic=True)


@INDUCTOR_NOTICES
@pytest.mark.parametrize("path", ["eager", "compiled"])
def test_hash_wraps_like_python_integers(path: str) -> None:
    index = _indices()
    for seed in SEEDS:
        s = torch.tensor(seed, dtype=torch.int64)
        got = noise.splitmix64(s, index) if path == "eager" else _compiled_hash(s, index)
        expected = [reference_splitmix64(seed, i) for i in index.tolist()]
        assert _unsigned(got) == expected, seed
        got = _hash32(s, index) if path == "eager" else _compiled_hash32(s, index)
        expected = [reference_hash32(seed, i) for i in index.tolist()]
        assert [v % M32 for v in got.tolist()] == expected, seed


def test_hash32_is_keyed_triple32_and_inverts() -> None:
    # seed 0, high word 0: Wellons' triple32 itself, x ^= x >> 17; x *= 0xed5ad4bb; ...
    index = torch.tensor([0, 1, 2, 0x7FFFFFFF, 2**31, 2**32 - 1])
    got = noise.hash32(torch.tensor(0), index, 0)
    assert [v % M32 for v in got.tolist()] == [reference_hash32(0, i) for i in index.tolist()]
    # for every seed, a bijection of the low word: the inverse function recovers the index
    low = torch.randint(0, 2**32, (300,), generator=torch.Generator().manual_seed(1))
    for seed in SEEDS:
        words = noise.hash32(torch.tensor(seed), low, 0).tolist()
        assert [inverse_hash32(seed, w % M32) for w in words] == low.tolist(), seed


def test_high_word_is_an_int_or_a_tensor() -> None:
    s = torch.tensor(-0x5DEECE66D1234567)
    index = torch.arange(5 * 2**32 - 3, 5 * 2**32 + 3)
    whole = noise.hash32(s, index, (index >> 32).to(torch.int32))
    assert torch.equal(noise.hash32(s, index[:3], 4), whole[:3])
    assert torch.equal(noise.hash32(s, index[3:], 5), whole[3:])


def _uniform(seed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return noise.uniform_from_counter(seed, x.shape, x.dtype)


_compiled_uniform = torch.compile(_uniform, fullgraph=True)


@INDUCTOR_NOTICES
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_uniform_matches_reference_eager_and_compiled(dtype: torch.dtype) -> None:
    bits = 24 if dtype == torch.float32 else 53
    for n in (4099, 1, 37, 10007):  # odd sizes: the vector loop and its scalar tail
        x = torch.empty(n, dtype=dtype)
        if n > 1:
            torch._dynamo.mark_dynamic(x, 0)
        for seed in SEEDS[::3] if n > 1 else SEEDS:
            s = torch.tensor(seed, dtype=torch.int64)
            eager, compiled = _uniform(s, x), _compiled_uniform(s, x)
            assert eager.dtype == dtype and eager.shape == (n,)
            assert bits_equal(eager, compiled), (n, seed)
            expected = torch.tensor(
                [reference_uniform(seed, i, bits) for i in range(n)], dtype=dtype
            )
            assert bits_equal(eager, expected), (n, seed)


def test_range_across_2_to_the_32_matches_reference() -> None:
    # float32 noise is made one run of 2**32 indices at a time (one high word per run)
    for seed in SEEDS[::2]:
        s = torch.tensor(seed)
        for start, stop in ((2**32 - 40, 2**32 + 40), (3 * 2**32 - 1, 3 * 2**32 + 1)):
            got = noise.uniform_range(s, start, stop)
            expected = torch.tensor([reference_uniform(seed, i, 24) for i in range(start, stop)])
            assert bits_equal(got, expected), (seed, start)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_at_given_indices_matches_reference(dtype: torch.dtype) -> None:
    """uniform_at (the noise of a sparse tensor's stored elements): any indices, in any
    order and shape, repeated, past 2**32 and near 2**63."""
    bits = 24 if dtype == torch.float32 else 53
    indices = [5, 0, 5, 2**32 - 1, 2**32, 3 * 2**32 + 17, 2**40 + 3, 2**63 - 1, 123456789]
    for seed in SEEDS[::2]:
        got = noise.uniform_at(torch.tensor(seed), torch.tensor(indices).view(3, 3), dtype)
        expected = [reference_uniform(seed, i, bits) for i in indices]
        assert got.shape == (3, 3) and got.dtype == dtype
        assert bits_equal(got.view(-1), torch.tensor(expected, dtype=dtype)), seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_seed_at_gives_the_noise_from_an_index_on(dtype: torch.dtype) -> None:
    """seed_at (a part of a DTensor holding consecutive elements): its seed's noise at
    0, 1, ... is the reference noise of the original seed at start, start + 1, ...; no
    float32 seed does that across a multiple of 2**32."""
    bits = 24 if dtype == torch.float32 else 53
    for seed in SEEDS:
        for start in (0, 7, 2**31 + 5, 2**32 - 9, 5 * 2**32 + 3, 2**62 + 1):
            shifted = noise.seed_at(torch.tensor(seed), start, 9, dtype)
            assert shifted is not None, (seed, start)
            got = noise.uniform_from_counter(shifted, (9,), dtype)
            want = [reference_uniform(seed, start + i, bits) for i in range(9)]
            assert bits_equal(got, torch.tensor(want, dtype=dtype)), (seed, start)
    crossing = noise.seed_at(torch.tensor(3), 2**32 - 9, 10, dtype)
    assert (crossing is None) == (dtype == torch.float32)


@INDUCTOR_NOTICES
def test_rows_across_2_to_the_32_match_reference() -> None:
    # each row takes the high word of its start, eagerly and compiled
    compiled = torch.compile(noise._uniform_rows, fullgraph=True)
    for seed in SEEDS[1::2]:
        s = torch.tensor(seed)
        for first, rows, length in ((2**28 - 2, 5, 16), (3 * 2**27 - 1, 2, 32), (5, 3, 16)):
            got = noise._uniform_rows(s, rows, length, first)
            assert got.shape == (rows, length)
            start = first * length
            indices = range(start, start + rows * length)
            expected = torch.tensor([reference_uniform(seed, i, 24) for i in indices])
            assert bits_equal(got.view(-1), expected), (seed, first)
            wide = noise._uniform_rows(s, rows, length, first, wide=True)
            assert bits_equal(wide.view(-1), expected)
            if first == 2**28 - 2:  # compiled too (a graph per set of constants)
                assert bits_equal(compiled(s, rows, length, first).view(-1), expected)
                assert bits_equal(compiled(s, rows, length, first, True).view(-1), expected)


def _straddling(seed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The noise of len(x) indices across 2**32 (a symbolic range when compiled)."""
    n = x.shape[0]
    return noise.uniform_range(seed, 2**32 - n // 2, 2**32 - n // 2 + n, wide=True)


def _straddling_rows(seed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The noise of len(x) rows of 16 across 2**32."""
    n = x.shape[0]
    return noise._uniform_rows(seed, n, 16, 2**28 - n // 2, wide=True)


@INDUCTOR_NOTICES
@pytest.mark.parametrize(("make", "row"), [(_straddling, 1), (_straddling_rows, 16)])
def test_wide_noise_is_one_graph_across_2_to_the_32(
    make: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], row: int
) -> None:
    """``wide``: the high word of each index (or row), computed in the graph. Without it
    the indices are made in a piece per run of 2**32 (a guard on the size, and a graph
    concatenating the pieces, a full-size buffer, for more than 2**32 elements)."""
    from torch._dynamo.utils import counters

    compiled = torch.compile(make, fullgraph=True)
    graphs = None
    for n in (64, 37, 1000, 2):
        x = torch.empty(n)
        torch._dynamo.mark_dynamic(x, 0)
        start = (2**32 // row - n // 2) * row
        stop = start + n * row
        for seed in SEEDS[:3]:
            expected = torch.tensor([reference_uniform(seed, i, 24) for i in range(start, stop)])
            s = torch.tensor(seed)
            assert bits_equal(make(s, x).view(-1), expected), (n, seed)
            assert bits_equal(compiled(s, x).view(-1), expected), (n, seed)
            assert bits_equal(noise.uniform_range(s, start, stop), expected)  # not wide
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs


def _rows(seed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return noise.uniform_from_counter(seed, x.shape, x.dtype, row=x.shape[-1])


_compiled_rows = torch.compile(_rows, fullgraph=True)


@INDUCTOR_NOTICES
@pytest.mark.parametrize("shape", [(33, 16), (5, 32), (3, 4, 64), (7, 48), (6, 8), (100,)], ids=str)
def test_index_by_lanes_is_the_flat_index(shape: tuple[int, ...]) -> None:
    # row= builds the index per row where the row length allows it: the same numbers
    for seed in SEEDS[1::3]:
        s = torch.tensor(seed)
        flat = noise.uniform_from_counter(s, shape)
        x = torch.empty(shape)
        torch._dynamo.mark_dynamic(x, 0)
        assert bits_equal(_rows(s, x), flat), (shape, seed)
        assert bits_equal(_compiled_rows(s, x), flat), (shape, seed)
        n = math.prod(shape)
        expected = torch.tensor([reference_uniform(seed, i, 24) for i in range(n)])
        assert bits_equal(flat.view(-1), expected), (shape, seed)


def test_rows_longer_than_the_float32_lanes_take_the_flat_index() -> None:
    # the lane numbers are kept as float32 (an int32 buffer is read through a stack copy
    # on AVX2 CPUs), exact up to 2**24; a longer row would have rounded lanes
    s = torch.tensor(SEEDS[1])
    length = 2 * noise.LANES_MAX
    got = noise.uniform_from_counter(s, (1, length), row=length)
    tail = range(length - 3, length)
    expected = torch.tensor([reference_uniform(SEEDS[1], i, 24) for i in tail])
    assert bits_equal(got[0, -3:], expected)
    assert bits_equal(got.view(-1), noise.uniform_from_counter(s, (length,)))


@INDUCTOR_NOTICES
def test_rows_of_any_count_share_one_graph() -> None:
    from torch._dynamo.utils import counters

    fresh = torch.compile(_rows, fullgraph=True)
    s = torch.tensor(-3)
    graphs = None
    for rows in (64, 48, 100, 2, 7):
        x = torch.empty(rows, 32)
        torch._dynamo.mark_dynamic(x, 0)
        assert bits_equal(fresh(s, x), noise.uniform_from_counter(s, x.shape)), rows
        if graphs is None:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs


def test_eager_chunks_match_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noise, "EAGER_CHUNK", 1000)
    for seed in SEEDS[:3]:
        u = noise.uniform_from_counter(torch.tensor(seed), (41, 100), torch.float32)
        expected = torch.tensor([reference_uniform(seed, i, 24) for i in range(4100)])
        assert bits_equal(u.view(-1), expected), seed


@INDUCTOR_NOTICES
def test_eager_chunks_match_compiled() -> None:
    x = torch.empty(2 * noise.EAGER_CHUNK + 3)
    s = torch.tensor(-77)
    assert bits_equal(_uniform(s, x), _compiled_uniform(s, x))


def test_uniform_shape_is_row_major() -> None:
    s = torch.tensor(99)
    u = noise.uniform_from_counter(s, (3, 4, 5))
    assert u.shape == (3, 4, 5) and u.is_contiguous()
    assert bits_equal(u.view(-1), noise.uniform_from_counter(s, (60,)))
    assert noise.uniform_from_counter(s, (0, 3)).shape == (0, 3)
    assert noise.uniform_from_counter(s, ()).shape == ()


def test_uniform_rejects_other_dtypes() -> None:
    with pytest.raises(ValueError, match="float32 or float64"):
        noise.uniform_from_counter(torch.tensor(1), (4,), torch.float16)


# --- statistics -------------------------------------------------------------------------

N = 2**20


def _sample(seed: int, n: int = N, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return noise.uniform_from_counter(torch.tensor(seed), (n,), dtype).double()


def _chi_square(counts: torch.Tensor) -> float:
    expected = counts.sum().item() / len(counts)
    return float(((counts.double() - expected) ** 2 / expected).sum())


def _chi_square_bound(bins: int) -> float:
    df = bins - 1
    return df + 6 * math.sqrt(2 * df)  # chi-square(df) is about normal(df, 2 df)


@pytest.mark.parametrize("seed", [0, 7, -(2**63)])
def test_uniform_moments_and_bins(seed: int) -> None:
    u = _sample(seed)
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / N)
    assert abs(float(u.var()) - 1 / 12) < 6 * math.sqrt(1 / 180 / N)
    counts = torch.bincount((u * 1024).long(), minlength=1024)
    assert _chi_square(counts) < _chi_square_bound(1024)


def test_low_bits_are_uniform() -> None:
    k = (_sample(3) * 2**24).long()
    assert bits_equal(k.double() / 2**24, _sample(3))  # multiples of 2**-24 exactly
    for bit in range(24):
        ones = int(((k >> bit) & 1).sum())
        assert abs(ones - N / 2) < 6 * math.sqrt(N / 4), bit
    low_byte = torch.bincount(k & 255, minlength=256)
    assert _chi_square(low_byte) < _chi_square_bound(256)


def test_float64_uses_53_bits() -> None:
    u = _sample(11, n=2**16, dtype=torch.float64)
    k = u * 2**53
    assert bits_equal(k, torch.floor(k))
    assert int((k.long() & 1).sum()) not in (0, 2**16)  # the lowest bit is used
    assert abs(float(u.mean()) - 0.5) < 6 * math.sqrt(1 / 12 / 2**16)


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.parametrize("lag", [1, 2, 8, 16, 1024])
def test_neighbouring_indices_are_uncorrelated(lag: int) -> None:
    u = _sample(5)
    assert abs(_correlation(u[:-lag], u[lag:])) < 6 / math.sqrt(N)
    # and pairs are jointly uniform: 16 x 16 grid of (u[i], u[i + lag])
    cells = (u[:-lag] * 16).long() * 16 + (u[lag:] * 16).long()
    assert _chi_square(torch.bincount(cells, minlength=256)) < _chi_square_bound(256)


@pytest.mark.parametrize(("a", "b"), [(0, N), (7, -7), (2**40, -(2**62)), (1, 2**63 - 1)])
def test_different_seeds_are_uncorrelated(a: int, b: int) -> None:
    u, v = _sample(a), _sample(b)
    assert abs(_correlation(u, v)) < 6 / math.sqrt(N)
    assert float((u == v).double().mean()) < 1e-3  # equal 24-bit values: chance 2**-24 each


def _top_bits(words: torch.Tensor, bits: int) -> torch.Tensor:
    """The top ``bits`` bits of int32 words, as int64 in 0 .. 2**bits - 1."""
    return (words.long() % M32) >> (32 - bits)


def _pair_chi_square(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Chi-square of the 256 x 256 table of pairs (top bytes of a and b), and its bound."""
    cells = torch.bincount(_top_bits(a, 8) * 256 + _top_bits(b, 8), minlength=65536)
    return _chi_square(cells), _chi_square_bound(65536)


def _pairs_are_independent(n: int, seed: int) -> None:
    """The checks that single rounds of xorshift-multiply hashes fail on counters."""
    s, i = torch.tensor(seed), torch.arange(n)
    words = noise.hash32(s, i, 0)
    for bit in (0, 1, 4, 8, 12, 16, 20, 24, 28, 31):  # indices one bit apart
        chi, bound = _pair_chi_square(words, noise.hash32(s, i ^ (1 << bit), 0))
        assert chi < bound, ("index bit", bit, chi)
    for lag in (1, 2, 16, 256, 4096):
        chi, bound = _pair_chi_square(words[:-lag], words[lag:])
        assert chi < bound, ("lag", lag, chi)
    for high in (1, 2, 7):  # the same low words in the next runs of 2**32 indices
        chi, bound = _pair_chi_square(words, noise.hash32(s, i, high))
        assert chi < bound, ("high word", high, chi)
    t = _top_bits(words, 5)  # triples of neighbours, 32**3 cells
    cells = torch.bincount(t[:-2] * 1024 + t[1:-1] * 32 + t[2:], minlength=32768)
    assert _chi_square(cells) < _chi_square_bound(32768)


def test_neighbours_and_related_indices_are_independent() -> None:
    _pairs_are_independent(2**20, 0x0123456789ABCDEF)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, -1, 1234567, -0x5DEECE66D1234567])
def test_neighbours_and_related_indices_are_independent_2_to_the_24(seed: int) -> None:
    _pairs_are_independent(2**24, seed)


# --- the seed and the quantizers --------------------------------------------------------


def test_draw_seed_follows_the_generator() -> None:
    def seed(g: torch.Generator) -> torch.Tensor:
        return noise.draw_seed(g, torch.device("cpu"))

    a, b = seed(torch.Generator().manual_seed(3)), seed(torch.Generator().manual_seed(3))
    c = seed(torch.Generator().manual_seed(4))
    assert a.shape == () and a.dtype == torch.int64
    assert a.item() == b.item() != c.item()
    torch.manual_seed(8)
    d = noise.draw_seed(None, torch.device("cpu"))
    torch.manual_seed(8)
    assert noise.draw_seed(None, torch.device("cpu")).item() == d.item()
    g = torch.Generator().manual_seed(3)
    draws = {seed(g).item() for _ in range(64)}
    assert len(draws) == 64  # a fresh seed per call


def test_quantize_uses_the_one_helper() -> None:
    fmt = qtorch.FixedPoint(8, 4)
    x = torch.randn(3000) * 4
    for mode in ("eager", "compiled"):
        with qtorch.kernel_mode(mode):
            q = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(2))
        u = uniform_noise(x, torch.Generator().manual_seed(2))
        assert bits_equal(q, fmt.quantize_kernel(x, Rounding.STOCHASTIC, u)), mode


def test_manual_seed_reproduces_table_functions() -> None:
    x = torch.randn(5000)
    results = []
    for s in (4, 4, 5):
        torch.manual_seed(s)
        results.append(qtorch.quant.act_format_quantize(x, rounding="stochastic"))
    assert bits_equal(results[0], results[1]) and not bits_equal(results[0], results[2])


@pytest.mark.parametrize("mode", ["eager", "compiled"])
@pytest.mark.parametrize(
    "fmt", [qtorch.FixedPoint(8, 4), qtorch.BlockFloatingPoint(8, 0)], ids=repr
)
def test_noise_does_not_depend_on_strides(mode: str, fmt: qtorch.Format) -> None:
    x = (torch.randn(97, 65) * 4).t()  # non-contiguous
    with qtorch.kernel_mode(mode):
        a = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(6))
        b = qtorch.quantize(
            x.contiguous(), fmt, "stochastic", generator=torch.Generator().manual_seed(6)
        )
    assert bits_equal(a, b)
    if fmt.elementwise:  # the flat view gets the same noise as the shaped tensor
        with qtorch.kernel_mode(mode):
            c = qtorch.quantize(
                x.reshape(-1), fmt, "stochastic", generator=torch.Generator().manual_seed(6)
            )
        assert bits_equal(a.reshape(-1), c)


def test_new_seeds_do_not_recompile() -> None:
    from torch._dynamo.utils import counters

    fmt = qtorch.FixedPoint(8, 4)
    x = torch.randn(5000) * 4
    with qtorch.kernel_mode("compiled"):
        qtorch.quantize(x, fmt, "stochastic")
        graphs = counters["stats"]["unique_graphs"]
        outs = [qtorch.quantize(x, fmt, "stochastic") for _ in range(3)]
    assert counters["stats"]["unique_graphs"] == graphs
    assert not bits_equal(outs[0], outs[1])


@INDUCTOR_NOTICES
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_noise_equals_cpu_noise() -> None:
    for seed in SEEDS:
        s = torch.tensor(seed)
        for dtype in (torch.float32, torch.float64):
            cpu = noise.uniform_from_counter(s, (10007,), dtype)
            gpu = noise.uniform_from_counter(s.cuda(), (10007,), dtype)
            assert bits_equal(cpu, gpu.cpu()), (seed, dtype)
            x = torch.empty(10007, dtype=dtype, device="cuda")
            assert bits_equal(cpu, _compiled_uniform(s.cuda(), x).cpu()), (seed, dtype)
