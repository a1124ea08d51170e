"""A compiled CPU kernel is checked against the eager reference before its first use.

The oracle is the eager path (``fmt.quantize_kernel`` op by op), which the format tests
check against independent references. The kernels under test are made wrong on purpose
(a stand-in compiler that rounds a slightly scaled x), or compiled for AVX2, which GCC 12.2
miscompiles on an AVX-512 CPU (qtorch.kernels.verify).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from edge_cases import bits_equal, random_float32

import qtorch
from qtorch.cli.bench import family_format
from qtorch.kernels import compiled_call, fused, verify
from qtorch.kernels.eager import run as eager_run
from qtorch.rounding import Rounding


@pytest.fixture
def fresh_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty kernel cache and no past warning, restored after the test."""
    for name, empty in [("_cache", {}), ("_broken", set()), ("_timings", {}), ("_faster", {})]:
        monkeypatch.setattr(fused, name, empty)
    monkeypatch.setattr(fused, "_plans", {})
    monkeypatch.setattr(fused, "_warned", False)


def _eager(x: torch.Tensor, fmt: qtorch.Format, rounding: str, inplace: bool = False) -> Any:
    torch.manual_seed(3)
    with qtorch.kernel_mode("eager"):
        if inplace:
            return qtorch.quantize_(x.clone(), fmt, rounding)
        return qtorch.quantize(x, fmt, rounding)


def _scaled_kernels(compiles: list[int]) -> Callable[..., Any]:
    """A stand-in for the compiler whose kernels run, but on x scaled by 1 + 2**-10."""

    def compile_(fn: Callable[..., Any], backend: object) -> Callable[..., Any]:
        compiles[0] += 1

        def wrong(x: torch.Tensor, seed: torch.Tensor | None) -> Any:
            # scaled in place: were x the caller's tensor and not the probe, x would show it
            return fn(x.mul_(1 + 2**-10), seed)

        return wrong

    return compile_


@pytest.mark.usefixtures("fresh_fused")
def test_a_kernel_that_computes_something_else_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiles = [0]
    monkeypatch.setattr(fused, "_compile", _scaled_kernels(compiles))
    fmt = family_format("fixed(8,4)")
    x = torch.randn(3, 5000) * 4
    before = x.clone()
    expected = [_eager(x, fmt, r) for r in ("nearest", "stochastic")]
    expected_inplace = _eager(x, fmt, "nearest", inplace=True)
    with qtorch.kernel_mode("compiled"), pytest.warns(fused.CompileFallbackWarning) as record:
        got = qtorch.quantize(x, fmt)
        torch.manual_seed(3)
        got_sr = qtorch.quantize(x, fmt, "stochastic")
        y = x.clone()
        qtorch.quantize_(y, fmt)
        again = qtorch.quantize(x, fmt)  # a known-broken key: not compiled again
    assert bits_equal(got, expected[0]) and bits_equal(again, expected[0])
    assert bits_equal(got_sr, expected[1])
    assert bits_equal(y, expected_inplace)
    assert bits_equal(x, before)  # the probe, not x, went through the wrong kernel
    assert len(record) == 1
    message = str(record[0].message)
    assert "MiscompiledKernel" in message and "eager" in message
    assert compiles[0] == 3  # nearest, stochastic, in place; each once


@pytest.mark.usefixtures("fresh_fused")
def test_a_right_kernel_serves_its_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    compiles = [0]
    real = fused._compile

    def counted(fn: Callable[..., Any], backend: Any) -> Any:
        compiles[0] += 1
        return real(fn, backend)

    monkeypatch.setattr(fused, "_compile", counted)
    fmt = family_format("fixed(7,3)")  # a kernel of its own in this file
    x = torch.randn(2, 333) * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        with qtorch.kernel_mode("compiled"):
            got = qtorch.quantize(x, fmt)
    assert bits_equal(got, _eager(x, fmt, "nearest"))
    key = fused._key(x, fmt, Rounding.NEAREST, False, "cpu")
    assert compiles[0] == 1 and key in fused._cache and not fused._broken


def _avx2_on_x86() -> bool:
    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    from torch._inductor.cpu_vec_isa import valid_vec_isa_list

    return any(isa.bit_width() == 256 for isa in valid_vec_isa_list())


@dataclasses.dataclass(frozen=True)
class _OneAtMost(qtorch.Format):
    """A test format: |x| >= 1 becomes ±1, by an integer ``>=`` on the bit pattern (the
    comparison that GCC 12.2 gets wrong in AVX2 code built with AVX-512 flags)."""

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        bits = x.view(torch.int32)
        one = (bits & -0x80000000) | 0x3F800000  # ±1.0 with x's sign
        return torch.where(bits & 0x7FFFFFFF >= 0x3F800000, one, bits).view(torch.float32)


@pytest.mark.skipif(not _avx2_on_x86(), reason="needs an x86 CPU with AVX2")
@pytest.mark.usefixtures("fresh_fused")
def test_kernels_compiled_for_avx2_give_the_eager_bits() -> None:
    """AVX2 kernels of an integer ``>=`` came out inverted with GCC 12.2 on an AVX-512 CPU:
    qtorch gives the eager bits all the same (there through the fallback); posits, written
    without that comparison, stay compiled."""
    from torch._inductor import config

    x = random_float32(4099, seed=5).view(1, 4099)
    clamp = _OneAtMost()
    expected = _eager(x, clamp, "nearest")
    assert bits_equal(expected[x.abs() < 1], x[x.abs() < 1])
    assert bits_equal(expected[x.abs() >= 1], torch.sign(x[x.abs() >= 1]))
    posit = family_format("posit(8,2)")
    expected_posit = _eager(x, posit, "nearest")
    with config.patch({"cpp.simdlen": 256}), qtorch.kernel_mode("compiled"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fused.CompileFallbackWarning)
            got = qtorch.quantize(x, clamp)
        got_posit = qtorch.quantize(x, posit)  # no warning (they are errors here)
    assert bits_equal(got, expected)
    assert bits_equal(got_posit, expected_posit)
    assert not any(key.fmt == posit for key in fused._broken)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_probe_holds_every_kind_of_value(dtype: torch.dtype) -> None:
    arg = torch.empty(3, verify.PATTERN + 5, dtype=dtype)
    probe = verify.probe_like(arg)
    assert probe.shape == arg.shape and probe.dtype == dtype and probe.is_contiguous()
    assert bits_equal(probe, verify.probe_like(arg))  # the same every time
    flat = probe.view(-1).double()
    assert bits_equal(probe.view(-1)[verify.PATTERN :], probe.view(-1)[: -verify.PATTERN])
    info = torch.finfo(dtype)
    assert flat.isnan().any() and (flat == torch.inf).any() and (flat == -torch.inf).any()
    zeros = flat[flat == 0]
    assert zeros.signbit().any() and not zeros.signbit().all()
    finite = flat[flat.isfinite() & (flat != 0)].abs()
    assert (finite < info.tiny).any()  # subnormals
    assert (finite == info.max).any()
    assert ((finite >= 2.0**-8) & (finite <= 2.0**8)).sum() > verify.PATTERN // 4  # mid-range
    halves = flat[(flat * 64 == (flat * 64).round()) & (flat.abs() <= 1) & (flat != 0)]
    assert halves.numel() > verify.PATTERN // 8  # multiples of 2**-6: the ties of many formats


def test_the_kernels_configuration_names_the_instruction_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch._inductor import config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    patches = compiled_call.config_patches()
    for name, value in compiled_call.CONFIG.items():
        assert patches[name] == value
    width = pick_vec_isa().bit_width()
    assert patches.get("cpp.simdlen") == (width or None)
    if _avx2_on_x86():
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
        assert compiled_call.config_patches()["cpp.simdlen"] == 256
    with config.patch({"cpp.simdlen": 256}):  # the user's own choice stands, unpatched
        assert "cpp.simdlen" not in compiled_call.config_patches()


def _eager_kernel(
    fmt: qtorch.Format, rounding: Rounding, change: int | None = None, into: bool = False
) -> Callable[..., Any]:
    """A stand-in compiled kernel: the eager reference, with flat element ``change`` changed,
    returned or (``into``) written into its argument."""

    def kernel(x: torch.Tensor, seed: torch.Tensor | None) -> torch.Tensor | None:
        work = torch.float64 if x.dtype == torch.float64 else torch.float32
        q = eager_run(x, fmt, rounding, seed, work, inplace=False)
        if change is not None:
            flat = q.view(-1)
            flat[change] = 0.1 if not bool(flat[change] == 0.1) else 0.2
        if into:
            x.copy_(q)
            return None
        return q

    return kernel


#: Probes larger than two compared ends, in shapes each format's eager path splits.
_LARGE = [
    ("fixed(8,4)", (2 * verify.COMPARED + 4099,)),
    ("block(8,0)", (1031, 131)),  # pieces of whole rows
    ("block(8)", (1031, 131)),  # one block: the maximum of the whole probe, then pieces
    ("mxfp8_e4m3", (1031, 160)),  # rows of blocks
    ("mxfp8_e4m3", (2 * verify.COMPARED + 4099,)),  # 1-D: whole blocks, the last one padded
    ("nvfp4", (2 * verify.COMPARED + 4099,)),
    ("mx(float8_e4m3fn, 32, 0)", (4099, 33)),  # down the columns: whole groups of 32 rows
]


@pytest.mark.parametrize(("name", "shape"), _LARGE)
@pytest.mark.parametrize("rounding", [Rounding.NEAREST, Rounding.STOCHASTIC])
def test_large_probes_compare_both_ends(
    name: str, shape: tuple[int, ...], rounding: Rounding
) -> None:
    fmt = family_format(name)
    seed = torch.tensor(12345) if rounding is Rounding.STOCHASTIC else None
    probe = verify.probe_like(torch.empty(shape))
    n = probe.numel()
    spans = verify._expected(probe, fmt, rounding, seed)
    assert len(spans) == 2 and spans[0][0] == 0 and spans[1][1] == n
    # the ends of the probe, rounded in pieces, are the ends of the whole eager result
    whole = eager_run(probe, fmt, rounding, seed, torch.float32, inplace=False).view(-1)
    for start, stop, want in spans:
        assert bits_equal(want, whole[start:stop])
    for into in (False, True):
        verify.check(_eager_kernel(fmt, rounding, into=into), probe.clone(), fmt, rounding, seed)
        for change in (0, n - 1):
            wrong = _eager_kernel(fmt, rounding, change, into)
            with pytest.raises(verify.MiscompiledKernel, match="1 of"):
                verify.check(wrong, probe.clone(), fmt, rounding, seed)


# --- the probe of a large call is smaller, with the call's kernel --------------------------


_SHAPES = [
    ("fixed(8,4)", Rounding.NEAREST, (3 * 2**20 + 4099,)),  # flat
    ("fixed(8,4)", Rounding.STOCHASTIC, (2**20 + 64, 48)),  # the (n / 16, 16) view
    ("block(8,0)", Rounding.NEAREST, (4099, 1, 513)),  # a size 1, kept
    ("mxfp8_e4m3", Rounding.NEAREST, (300, 2**13 + 70)),  # padded, several blocks
    ("mxfp8_e4m3", Rounding.STOCHASTIC, (2**17, 20)),  # short of one block
    ("mx(float8_e4m3fn, 32, 0)", Rounding.NEAREST, (2**16, 32)),  # whole blocks down dim 0
    ("nvfp4", Rounding.NEAREST, (2**21, 16)),  # one whole block: a constant size
    ("block(8)", Rounding.NEAREST, (3 * 2**20 + 11,)),  # flat, with a branch on the size
]


@pytest.mark.parametrize(("name", "rounding", "shape"), _SHAPES, ids=str)
def test_a_large_calls_probe_is_small_with_the_same_kernel(
    name: str, rounding: Rounding, shape: tuple[int, ...]
) -> None:
    fmt = family_format(name)
    x = torch.empty(shape)
    key = fused._key(x, fmt, rounding, False, "cpu")
    arg_shape = (-1, fused.ROW) if key.shape == "rows" else (-1,) if fmt.flat_kernel else shape
    arg = x.view(arg_shape)
    static = fused._static_dims(key.shape, arg.dim())
    small = verify.probe_shape(arg.shape, static, lambda s: fused._same_kernel(s, fmt, key))
    assert math.prod(small) <= verify.PROBE_MAX
    assert len(small) == arg.dim()
    for dim, (was, now) in enumerate(zip(arg.shape, small, strict=True)):
        if dim in static or was <= 2:
            assert now == was
        else:
            assert 2 <= now <= was
    # the same kernel: a tensor of the probe's shape has x's cache key
    if fmt.flat_kernel:
        assert small[-1] == arg.shape[-1] or arg.dim() == 1
        assert small[0] % verify.PERIOD == arg.shape[0] % verify.PERIOD  # the same tail
        assert fmt.shape_branches(small, "cpu") == key.branches
    else:
        assert fused._key(torch.empty(small), fmt, rounding, False, "cpu") == key


def test_probe_shape_keeps_a_dimension_no_smaller_size_serves() -> None:
    # blocks of 24 along the last dimension: no candidate keeps 10,000's remainder
    def same(candidate: tuple[int, ...]) -> bool:
        return candidate[1] % 24 == 10_000 % 24

    assert verify.probe_shape((500, 10_000), set(), same) == (104, 10_000)  # 2**20 // 10,000
    assert verify.probe_shape((500, 10_000), {0}, same) == (500, 10_000)
    assert verify.probe_shape((1000, 1000), set(), lambda s: True) == (1000, 1000)  # small
    assert verify.probe_shape((0, 10**7), set(), lambda s: True) == (0, 10**7)  # empty


@pytest.mark.usefixtures("fresh_fused")
@pytest.mark.parametrize(("name", "rounding", "shape"), _SHAPES[:5], ids=str)
def test_a_large_first_call_compiles_once_on_a_small_probe(
    monkeypatch: pytest.MonkeyPatch, name: str, rounding: Rounding, shape: tuple[int, ...]
) -> None:
    """The kernel compiled and checked on the small probe serves the call itself, with no
    second graph (PROBE_MAX made small, for sizes that compile quickly)."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(verify, "PROBE_MAX", 2**12)
    probes: list[int] = []
    real_check = verify.check

    def check(kernel: Any, probe: torch.Tensor, *args: Any) -> None:
        probes.append(probe.numel())
        real_check(kernel, probe, *args)

    monkeypatch.setattr(verify, "check", check)
    fmt = family_format(name)
    x = torch.randn(shape[0] // 64 + 3, *shape[1:]) * 4  # ~1/64 of the size, still > 2**12
    assert x.numel() > 2**12
    expected = _eager(x, fmt, rounding.value)
    graphs = counters["stats"]["unique_graphs"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning
        with qtorch.kernel_mode("compiled"):
            torch.manual_seed(3)
            got = qtorch.quantize(x, fmt, rounding)
    assert bits_equal(got, expected)
    assert len(probes) == 1 and probes[0] <= 2**12
    assert counters["stats"]["unique_graphs"] - graphs == 1  # the call ran the probe's graph
    assert len(fused._cache) == 1 and not fused._broken
