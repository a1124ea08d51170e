"""The compiled (fused) path against the eager reference, bitwise; kernel modes; fallback.

The oracle here is the eager path itself (``fmt.quantize_kernel`` run op by op), which the
format tests check against independent references. Compiling is slow on a small machine,
so each (format, rounding, dtype) is compiled once per process and every test reuses it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import pytest
import torch
from edge_cases import SPECIALS_F32, bits_equal, random_float32

import qtorch
from qtorch.cli.bench import FAMILIES, family_format
from qtorch.kernels import fused, mx
from qtorch.kernels.eager import run as eager_run
from qtorch.kernels.per_block import stored
from qtorch.quant import Quantizer
from qtorch.rounding import Rounding

#: One format per family (the ones the benchmark times), plus a block format with a dim.
FORMAT_NAMES = [*FAMILIES, "block(8,0)"]
DEFAULT_ROUNDINGS = (Rounding.NEAREST, Rounding.STOCHASTIC)


def _format(name: str) -> qtorch.Format:
    try:
        return family_format(name)
    except (ValueError, ImportError) as err:
        pytest.skip(f"{name} not available: {err}")


def _inputs(fmt: qtorch.Format | None = None, every_shape: bool = False) -> list[torch.Tensor]:
    """Random bit patterns with specials, in sizes and shapes this process has not seen.

    Block formats keep their shape on the compiled path and compile once per rank and
    pattern of size-1 dimensions, so by default they get 2-D inputs only.
    """
    bits = torch.cat([SPECIALS_F32, random_float32(2 * 4099 - len(SPECIALS_F32), seed=1)])
    two_d = [
        bits.view(2, 4099),  # odd sizes, every kind of float32
        (torch.randn(96, 65) * 4).t(),  # non-contiguous
        torch.randn(64, 3, 33)[:, 1] * 2,  # non-contiguous, strided rows
        torch.empty(0, 5),
    ]
    if fmt is not None and not fmt.elementwise and not every_shape:
        return two_d
    return [*two_d, bits, torch.randn(10007) * 8, torch.randn(1), torch.empty(0)]


def _both(
    x: torch.Tensor, fmt: qtorch.Format, rounding: Rounding, seed: int = 7
) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for mode in ("eager", "compiled"):
        torch.manual_seed(seed)
        with qtorch.kernel_mode(mode):
            out.append(qtorch.quantize(x, fmt, rounding))
    return out[0], out[1]


#: Families whose eager path writes each NaN result without a NaN-by-NaN operation (whose
#: payload is the compiler's choice of operand order: block floating point, MX and NVFP4
#: multiply a NaN by a NaN factor in NaN blocks), compared NaN payloads and signs included.
SAME_NANS = ("fixed", "float", "posit", "codebook16", "codebook256")


def _check_family(name: str, rounding: Rounding, every_shape: bool = False) -> None:
    fmt = _format(name)
    for x in _inputs(fmt, every_shape):
        before = x.clone()
        eager, compiled = _both(x, fmt, rounding)
        assert bits_equal(eager, compiled), (name, rounding, tuple(x.shape))
        if name in SAME_NANS:
            assert torch.equal(eager.view(torch.int32), compiled.view(torch.int32)), name
        assert bits_equal(x, before)  # input untouched


#: The default run samples the family x rounding matrix (each compile costs 5-30 s on two
#: busy cores): both roundings of fixed point, one of each other family; MX and NVFP4
#: (the slowest compiles) and the rest of the matrix are in the slow run.
SAMPLED = [
    ("fixed", Rounding.NEAREST),
    ("fixed", Rounding.STOCHASTIC),
    ("float", Rounding.STOCHASTIC),
    ("block(8,0)", Rounding.NEAREST),
    ("posit", Rounding.STOCHASTIC),
    ("codebook16", Rounding.NEAREST),
    ("codebook256", Rounding.STOCHASTIC),
]


@pytest.mark.parametrize(("name", "rounding"), SAMPLED, ids=lambda v: getattr(v, "value", v))
def test_fused_matches_eager(name: str, rounding: Rounding) -> None:
    _check_family(name, rounding)


@pytest.mark.parametrize("rounding", DEFAULT_ROUNDINGS, ids=lambda r: r.value)
@pytest.mark.parametrize("name", ["block(8,0)", "mx"])
def test_fused_per_block_factors_match_eager(name: str, rounding: Rounding) -> None:
    """The kernels that store per-block factors (qtorch.kernels.per_block) on 1-D inputs,
    where block(8,0) makes every element its own block (a layout Inductor once
    miscompiled), and on rows that end in a padded MX block."""
    fmt = _format(name)
    for x in (torch.randn(100) * 4, torch.randn(8198), torch.randn(3, 45) * 100):
        eager, compiled = _both(x, fmt, rounding)
        assert bits_equal(eager, compiled), (name, rounding, tuple(x.shape))


@pytest.mark.parametrize("rounding", DEFAULT_ROUNDINGS, ids=lambda r: r.value)
@pytest.mark.parametrize("name", ["mx", "nvfp4"])
def test_fused_factors_in_kernel_match_eager(
    name: str, rounding: Rounding, fresh_fused: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MX and NVFP4 as they run on CUDA (the per-block factors left inside the element
    kernel: qtorch.kernels.mx.factors_in_kernel), compiled here on the CPU: the same bits
    as eager, on whole blocks and on rows that end in a padded block, where both store
    their factors (MX's in one piece did not compile for a 1-D x of symbolic length on
    CUDA: benchmarks/cuda_interpret.py)."""
    fmt = _format(name)
    monkeypatch.setattr(mx, "factors_in_kernel", lambda x: True)
    stores: list[int] = []

    def counted(*factors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stores.append(len(factors))
        return stored(*factors)

    monkeypatch.setattr(mx, "stored", counted)
    bits = torch.cat([SPECIALS_F32, random_float32(2 * 4096 - len(SPECIALS_F32), seed=5)])
    for x, padded in ((bits.view(4, 2048), False), (torch.randn(3, 45) * 100, True)):
        eager, compiled = _both(x, fmt, rounding)
        assert bits_equal(eager, compiled), (name, rounding, tuple(x.shape))
        del stores[:]
        with qtorch.kernel_mode("eager"):
            qtorch.quantize(x, fmt, rounding)
        assert len(stores) == padded, (name, tuple(x.shape))


@pytest.mark.parametrize("name", ["codebook16", "codebook256", "block"])
def test_fused_rows_layout_of_cuda_matches_eager(
    name: str, fresh_fused: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The formats that compute flat on the CPU (``Format.row_view_noise`` off) compute on
    the (n / 16, 16) view on CUDA (``fused.computes_on_rows``); compiled here on the CPU in
    that layout: the same bits as eager, out of place and in place (``quantize_``)."""
    fmt = _format(name)
    seen: list[bool] = []

    def on_rows(fmt: qtorch.Format, x: torch.Tensor) -> bool:
        seen.append(True)
        return True

    monkeypatch.setattr(fused, "computes_on_rows", on_rows)
    bits = torch.cat([SPECIALS_F32, random_float32(4096 - len(SPECIALS_F32), seed=9)])
    for x in (bits.view(16, 256), torch.randn(5, 48) * 3):
        eager, compiled = _both(x, fmt, Rounding.STOCHASTIC)
        assert bits_equal(eager, compiled), (name, tuple(x.shape))
        into = x.clone()
        torch.manual_seed(7)
        with qtorch.kernel_mode("compiled"):
            qtorch.quantize_(into, fmt, "stochastic")
        assert bits_equal(eager, into), (name, tuple(x.shape), "in place")
    assert seen  # the kernels asked (at trace time)


@pytest.mark.slow
@pytest.mark.parametrize("rounding", DEFAULT_ROUNDINGS, ids=lambda r: r.value)
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_fused_matches_eager_all_families(name: str, rounding: Rounding) -> None:
    _check_family(name, rounding, every_shape=True)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def _check_zero_signs(name: str, device: str) -> None:
    """Stochastic results keep x's sign, zeros included (the oracle: x's own sign bit)."""
    fmt = _format(name)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(16, 64, generator=g) * 2.0**-40  # far below every format's step
    # a scale for every block of the block formats (blocks of 16 or 32 along rows, columns)
    x[:, ::16] = torch.tensor([1.0, -1.0]).repeat(8).unsqueeze(1)
    x[0] = torch.tensor([1.0, -1.0]).repeat(32)
    x = x.to(device)
    for mode in ("eager", "compiled"):
        torch.manual_seed(3)
        with qtorch.kernel_mode(mode):
            q = qtorch.quantize(x, fmt, "stochastic")
        assert torch.equal(torch.signbit(q), torch.signbit(x)), (name, mode, device)
        if not isinstance(fmt, qtorch.Posit):  # posits have one zero, and never round to it
            assert int((q == 0).sum()) > 500, (name, mode, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["fixed", "float", "codebook256"])
def test_stochastic_zeros_keep_the_sign(name: str, device: str) -> None:
    """Negative values that round to zero give -0 on every path. Compiled for CUDA, fixed
    point gave +0 for x = -0.05062705650925636 (fixed(8,4), noise 0.8196...): Triton
    compiles unary minus as 0 - v, and -(+0) came out +0 (benchmarks/gpu_check.py)."""
    _check_zero_signs(name, device)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_stochastic_zeros_keep_the_sign_all_families(name: str, device: str) -> None:
    _check_zero_signs(name, device)


@pytest.mark.parametrize("name", ["fixed", "block(8,0)"])
def test_fused_in_place_matches_eager(name: str) -> None:
    fmt = _format(name)
    for x in _inputs(fmt):
        with qtorch.kernel_mode("eager"):
            expected = qtorch.quantize(x, fmt)
        y = x.clone() if x.is_contiguous() else x.t().clone().t()
        ptr = y.data_ptr()
        with qtorch.kernel_mode("compiled"):
            result = qtorch.quantize_(y, fmt)
        assert result is y and y.data_ptr() == ptr
        assert bits_equal(y, expected), (name, tuple(x.shape))


@pytest.mark.parametrize("rounding", DEFAULT_ROUNDINGS, ids=lambda r: r.value)
@pytest.mark.parametrize("name", ["block", "block(8,1)", "mx", "nvfp4"])
def test_fused_in_place_block_formats_match_eager(
    name: str, rounding: Rounding, fresh_fused: None
) -> None:
    """Block floating point's kernel writes into x (a reduction, then the element pass
    writing its input); MX and NVFP4 compute out of place and copy in
    (``Format.writes_into_x``). The same bits as eager either way, on whole and padded
    blocks, with and without the stochastic row view (16 dividing n or not)."""
    fmt = _format(name)
    for x in (random_float32(64 * 256, seed=2).view(64, 256), torch.randn(3, 45) * 9):
        torch.manual_seed(4)
        with qtorch.kernel_mode("eager"):
            expected = qtorch.quantize(x, fmt, rounding)
        y = x.clone()
        torch.manual_seed(4)
        with qtorch.kernel_mode("compiled"):
            result = qtorch.quantize_(y, fmt, rounding)
        assert result is y and bits_equal(y, expected), (name, tuple(x.shape))
    writes = {key.write_into_arg for key in fused._cache if key.fmt == fmt}
    assert writes == {isinstance(fmt, qtorch.BlockFloatingPoint)}, name


def test_fused_in_place_stochastic_matches_eager() -> None:
    """In place on the (n / 16, 16) view (16 divides n) and on the flat one (it does not)."""
    fmt = _format("fixed")
    for shape in ((64, 1000), (4096,), (3, 4111)):
        x = torch.randn(shape) * 4
        with qtorch.kernel_mode("eager"):
            seeded = torch.Generator().manual_seed(1)
            expected = qtorch.quantize(x, fmt, "stochastic", generator=seeded)
        y = x.clone()
        ptr = y.data_ptr()
        with qtorch.kernel_mode("compiled"):
            seeded = torch.Generator().manual_seed(1)
            result = qtorch.quantize_(y, fmt, "stochastic", generator=seeded)
        assert result is y and y.data_ptr() == ptr
        assert bits_equal(y, expected), shape


@pytest.mark.parametrize(
    ("dtype", "rounding", "in_place"),
    [
        (torch.float64, Rounding.NEAREST, False),
        (torch.float16, Rounding.STOCHASTIC, True),
        (torch.bfloat16, Rounding.NEAREST, False),
    ],
    ids=str,
)
def test_fused_other_dtypes(dtype: torch.dtype, rounding: Rounding, in_place: bool) -> None:
    fmt = _format("fixed")
    x = (torch.randn(3001) * 4).to(dtype)
    torch.manual_seed(7)
    with qtorch.kernel_mode("eager"):
        eager = qtorch.quantize(x, fmt, rounding)
    torch.manual_seed(7)
    with qtorch.kernel_mode("compiled"):
        compiled = (
            qtorch.quantize_(x.clone(), fmt, rounding)
            if in_place
            else qtorch.quantize(x, fmt, rounding)
        )
    assert compiled.dtype == dtype
    assert bits_equal(eager.float(), compiled.float())


@pytest.mark.parametrize(("name", "first", "shapes"), [
    ("fixed", (5000,), [(5001, 3), (7, 3), (123457, 3), (2**16 + 1, 3), (99, 3)]),
    ("block(8,0)", (40, 70), [(41, 70), (3, 1000), (257, 2), (40, 70)]),
])  # fmt: skip
def test_new_sizes_do_not_recompile(
    name: str, first: tuple[int, ...], shapes: list[tuple[int, ...]]
) -> None:
    from torch._dynamo.utils import counters

    fmt = _format(name)
    with qtorch.kernel_mode("compiled"):
        qtorch.quantize(torch.randn(first), fmt)
        graphs = counters["stats"]["unique_graphs"]
        for shape in shapes:
            x = torch.randn(shape)
            with qtorch.kernel_mode("eager"):
                expected = qtorch.quantize(x, fmt)
            assert bits_equal(qtorch.quantize(x, fmt), expected)
        assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("rounding", [Rounding.NEAREST, Rounding.STOCHASTIC], ids=str)
@pytest.mark.parametrize("name", ["block(7)", 'NVFP4(tensor_scale="amax")'])
def test_whole_tensor_maxima_take_two_kernels_by_size(name: str, rounding: Rounding) -> None:
    """Block floating point with one block per tensor, and NVFP4's "amax" tensor scale,
    take the tensor's maximum in rows read at once from ``STREAMED_MIN`` elements on the
    CPU (``max_in_streams``), a choice their key carries (the last of
    ``Format.shape_branches``): sizes on either side of it, the largest magnitude (or a
    NaN, or +Inf) in the first row, the last, or the tail past the rows, give the eager
    bits, and each kernel is compiled once (no graph behind the cache). Off the CPU the
    code makes no such choice, and the key none."""
    from torch._dynamo.utils import counters

    from qtorch.kernels.block import STREAMED_MIN, STREAMS

    fmt = _format(name)
    graphs = counters["stats"]["unique_graphs"]
    kernels = len(fused._cache)
    sizes = [5003, STREAMED_MIN, STREAMED_MIN - 1, 2, STREAMED_MIN + 1, 3 * STREAMS - 1]
    sizes += [3 * STREAMS, 16, 100_003, 3 * STREAMS + 1]
    with qtorch.kernel_mode("compiled"):
        for n in sizes:
            x = torch.randn(n, generator=torch.Generator().manual_seed(n))
            for where in {0, n // STREAMS * (STREAMS - 1), n - 1}:
                for top in (7.5, math.nan, math.inf):
                    y = x.clone()
                    y[where] = top
                    eager, compiled = _both(y, fmt, rounding)
                    assert bits_equal(eager, compiled), (n, where, top)
    assert counters["stats"]["unique_graphs"] - graphs == len(fused._cache) - kernels
    keys = [key for key in fused._cache if key.fmt == fmt]
    assert {key.branches[-1] for key in keys} == {False, True}
    for n in sizes:  # off the CPU, the same key without that choice
        on = {
            device: fused._key(torch.empty(n), fmt, rounding, False, device)
            for device in ("cpu", "cuda")
        }
        assert on["cuda"].branches == on["cpu"].branches[:-1], n


def _one_block(name: str, dim: int, shapes: list[tuple[int, ...]], rounding: Rounding) -> None:
    """Compiled = eager on shapes whose blocks' dimension is one whole block, the first
    compiled once, the others (the same static sizes) without a new graph."""
    from torch._dynamo.utils import counters

    fmt = dataclasses.replace(_format(name), dim=dim)
    with qtorch.kernel_mode("compiled"):
        for i, shape in enumerate(shapes):
            x = torch.randn(shape) * 3
            eager, compiled = _both(x, fmt, rounding)
            assert bits_equal(eager, compiled), shape
            if i == 0:
                graphs = counters["stats"]["unique_graphs"]
        assert counters["stats"]["unique_graphs"] == graphs
    assert not [key for key in fused._broken if key.fmt == fmt]


@pytest.mark.parametrize(
    ("name", "shapes"),
    [("mx", [(8, 32), (24, 32), (3, 32)]), ("nvfp4", [(5, 16), (40, 16)])],
)
def test_one_block_along_the_blocks_dimension_compiles(
    name: str, shapes: list[tuple[int, ...]]
) -> None:
    """A dimension that is exactly one block (an (n, 32) tensor under MX, (n, 16) under
    NVFP4) failed to compile: Dynamo specialized the block count 1 and with it the size
    marked dynamic. The kernel was marked broken for every shape of that rank (a warning,
    then eager for the rest of the process)."""
    _one_block(name, -1, shapes, Rounding.NEAREST)


@pytest.mark.slow
@pytest.mark.parametrize("rounding", DEFAULT_ROUNDINGS, ids=lambda r: r.value)
@pytest.mark.parametrize(
    ("name", "dim", "shapes"),
    [
        ("mx", 0, [(32,), (32, 7)]),
        ("mx", 1, [(4, 32, 8), (2, 32, 3)]),
        ("nvfp4", 0, [(16, 5), (16, 9)]),
        ("nvfp4", -1, [(16,), (3, 2, 16)]),
    ],
)
def test_one_block_along_any_dimension_compiles(
    name: str, dim: int, shapes: list[tuple[int, ...]], rounding: Rounding
) -> None:
    for shape in shapes:
        _one_block(name, dim, [shape], rounding)


#: Shapes of whole blocks, padded (several blocks) and short of one block, in each order.
_BRANCHES = [
    ("mx", -1, [(6, 64), (6, 70), (5, 7), (3, 96), (4, 40), (2, 31), (5, 3)]),
    ("mx", 0, [(33, 3), (8, 5), (64, 2), (4, 4), (100, 6)]),
    ("nvfp4", -1, [(5,), (4099,), (48,), (17,), (3,), (4096,)]),
]


@pytest.mark.usefixtures("fresh_fused")
@pytest.mark.parametrize(
    ("name", "dim", "shapes", "rounding"),
    [
        # three compiles each (seconds with a cold cache): the default run samples two
        pytest.param(*case, rounding, marks=() if sample else pytest.mark.slow)
        for case, rounding, sample in [
            (_BRANCHES[0], Rounding.NEAREST, True),
            (_BRANCHES[2], Rounding.STOCHASTIC, True),
            (_BRANCHES[0], Rounding.STOCHASTIC, False),
            (_BRANCHES[1], Rounding.NEAREST, False),
            (_BRANCHES[1], Rounding.STOCHASTIC, False),
            (_BRANCHES[2], Rounding.NEAREST, False),
        ]
    ],
)
def test_blocks_dimension_never_recompiles_behind_the_cache(
    name: str, dim: int, shapes: list[tuple[int, ...]], rounding: Rounding
) -> None:
    """MX and NVFP4 kernels branch on the blocks' dimension: padded to whole blocks or
    not, one block or several. Dynamo guarded on the branch its first shape took and
    compiled again, behind qtorch's cache (unchecked on a probe, outside its compile lock),
    for a shape taking another: each branch is now a kernel of its own, one graph each."""
    from torch._dynamo.utils import counters

    fmt = dataclasses.replace(_format(name), dim=dim)
    with qtorch.kernel_mode("compiled"):
        graphs = counters["stats"]["unique_graphs"]
        for shape in shapes:
            x = torch.randn(shape) * 3
            eager, compiled = _both(x, fmt, rounding)
            assert bits_equal(eager, compiled), shape
    assert len(fused._cache) == 3  # one kernel per branch (the cache was empty)
    assert counters["stats"]["unique_graphs"] - graphs == 3
    assert not fused._broken


@pytest.mark.usefixtures("fresh_fused")
def test_tensors_requiring_grad_without_grad_mode_run_the_plain_tensors_graph() -> None:
    """Parameters rounded in place under no_grad (the optimizer's steps) and a non-leaf
    that requires grad with grad mode off (a Quantizer's input inside its autograd
    Function). Dynamo guards on the type and on requires_grad: it compiled more graphs
    for them, the first with static sizes (OptimLP on three Linear layers: five graphs
    for one kernel), and for a non-leaf it read .grad there, which warns (under
    ``-W error`` the quantizer fell back to eager). They run the graph compiled for plain
    tensors: one per kernel."""
    from torch._dynamo.utils import counters

    fmt = qtorch.FixedPoint(8, 6)
    graphs = counters["stats"]["unique_graphs"]
    for n in (1000, 1001, 5000):
        p = torch.nn.Parameter(torch.randn(n) * 3)
        with qtorch.kernel_mode("eager"):
            want = qtorch.quantize(p.detach(), fmt)
        with qtorch.kernel_mode("compiled"), torch.no_grad():
            qtorch.quantize_(p, fmt)
        assert bits_equal(p.detach(), want) and p.requires_grad
    for n in (3, 300, 301):
        y = torch.randn(n, 64, requires_grad=True) * 3  # a non-leaf
        with qtorch.kernel_mode("eager"):
            want = qtorch.quantize(y.detach(), fmt)
        with qtorch.kernel_mode("compiled"), torch.no_grad():
            assert bits_equal(qtorch.quantize(y, fmt), want)
        with qtorch.kernel_mode("compiled"):
            got = Quantizer(forward_number=fmt, forward_rounding="nearest")(y)
        assert bits_equal(got, want) and got.requires_grad
    keys = [fused._key(x, fmt, Rounding.NEAREST, i, "cpu") for x, i in [(p, True), (y, False)]]
    assert list(fused._cache) == keys  # quantize_ and quantize: a graph each
    assert counters["stats"]["unique_graphs"] - graphs == 2
    assert not fused._broken


@pytest.mark.parametrize(("name", "rounding"), [("fixed", "stochastic"), ("block", "nearest")])
def test_inference_mode_and_inference_tensors_match_eager(name: str, rounding: str) -> None:
    """Inside ``torch.inference_mode()``, and on its tensors outside it, the compiled path
    gives the eager bits (a kernel's first call there compiles a graph of its own:
    docs/performance.md); ``quantize_`` writes into an inference tensor inside the mode."""
    fmt = family_format(name)
    with torch.inference_mode():
        made = torch.randn(40, 70) * 3
    for x, inside in [(torch.randn(50, 70) * 3, True), (made, False), (made, True)]:
        with qtorch.kernel_mode("eager"):
            want = qtorch.quantize(x, fmt, rounding, torch.Generator().manual_seed(3))
        with qtorch.kernel_mode("compiled"), torch.inference_mode(inside):
            got = qtorch.quantize(x, fmt, rounding, torch.Generator().manual_seed(3))
            assert bits_equal(got, want)
            if inside:
                y = x.clone()
                qtorch.quantize_(y, fmt, rounding, torch.Generator().manual_seed(3))
                assert bits_equal(y, want)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Inductor's own, on import
@pytest.mark.parametrize("name", ["fixed(8,4)", "mx(float8_e4m3fn, 32, 0)"])
def test_more_than_2_to_the_32_elements_get_a_wide_kernel(name: str) -> None:
    """Stochastic kernels for more than 2**32 elements make the noise with the high word
    of each index (a kernel of their own): the default kernel's noise has a guard on the
    size, and past it Dynamo compiled a graph concatenating a piece per run of 2**32, a
    float32 noise buffer of the tensor's size (4,294,967,344 float16 took more than 24 GiB
    and were killed). The wide kernel gives the eager bits on any size."""
    fmt = _format(name)
    huge = torch.empty(2, 1).expand(2, 2**31 + 8)  # 2**32 + 16 elements, no storage
    assert fused._key(huge, fmt, Rounding.STOCHASTIC, False, "cpu").wide
    assert not fused._key(huge, fmt, Rounding.NEAREST, False, "cpu").wide
    assert not fused._key(huge[:, : 2**31], fmt, Rounding.STOCHASTIC, False, "cpu").wide
    for rows in (False, True) if fmt.flat_kernel else (False,):
        kernel = fused._make_kernel(fmt, Rounding.STOCHASTIC, torch.float32, False, rows, True)
        for shape in [(4099,), (64, 48)] if fmt.flat_kernel else [(70, 3), (64, 5)]:
            x = torch.randn(shape) * 3
            if rows and x.numel() % fused.ROW:
                continue
            arg = x.view(-1, fused.ROW) if rows else x.view(-1) if fmt.flat_kernel else x
            seed = torch.tensor(-12345)
            got = kernel(arg, seed)
            assert got is not None
            expected = eager_run(x, fmt, Rounding.STOCHASTIC, seed, torch.float32, inplace=False)
            assert bits_equal(got.view(shape), expected), (rows, shape)


@pytest.mark.parametrize(
    ("spec", "shape", "index_class"),
    [
        ("fixed(8,4)", (2**31 - 1,), 0),
        ("fixed(8,4)", (2**31,), 2),
        ("fixed(8,4)", (2, 2**30 + 1), 2),
        # MX (blocks of 32) and NVFP4 (16) pad the blocks' dimension to whole blocks
        ("mxfp8_e4m3", (2**31 - 32,), 0),
        ("mxfp8_e4m3", (2**31 - 31,), 1),  # padded to 2**31
        ("mxfp8_e4m3", (2**31 + 32,), 2),
        ("mx(float8_e4m3fn, 32, 0)", (2**26 - 1, 31), 0),  # dim 0 padded to 2**26 rows
        ("mx(float8_e4m3fn, 32, 0)", (2**26 - 1, 32), 1),  # 2**31 - 32, padded 2**31
        ("nvfp4", (2**31 - 8,), 1),
        ("nvfp4", (2**31 - 16,), 0),
        # block floating point pads to whole rows of 4096 and one more (4097-8192 elements)
        ("block(8)", (2**31 - 8193,), 0),  # 4097 elements of padding: 2**31 - 4096
        ("block(8)", (2**31 - 8192,), 1),  # 8192 of padding: 2**31
        # a block per slice: four factors per block stored (none for 1-D x)
        ("block(8,0)", (2**29 - 1, 2), 0),
        ("block(8,0)", (2**29, 2), 1),  # 2**31 factors
        ("block(8,0)", (2**31 - 1,), 0),
    ],
)
def test_the_key_keeps_triton_index_widths_apart(
    spec: str, shape: tuple[int, ...], index_class: int
) -> None:
    """Off the CPU the key counts which of x's size and the kernel's largest tensor pass
    2**31 - 1 elements: Inductor's Triton code indexes loops up to that size in 32 bits,
    with a guard, larger ones in 64 (``benchmarks/cuda_codegen.py --key-classes`` checks
    the guards of each class). The CPU's C++ indexes in 64 bits everywhere."""
    fmt = _format(spec)
    x = torch.empty(shape, device="meta")
    for rounding in (Rounding.NEAREST, Rounding.STOCHASTIC):
        assert fused._key(x, fmt, rounding, False, "cuda").long_index == index_class
        assert fused._key(x, fmt, rounding, False, "cpu").long_index == 0


def test_formats_of_one_family_do_not_share_state() -> None:
    # Two formats of one family with the same rounding compile separately; Dynamo must not
    # see the second one's parameters as "changed constants" of the first and make them
    # symbolic (which broke the kernel's Python arithmetic on them).
    with qtorch.kernel_mode("compiled"):
        for spec in ("fixed(8,4)", "fixed(12,3,symmetric=true)"):
            fmt = _format(spec)
            for n in (5000, 1, 7001):
                x = torch.randn(n) * 50
                with qtorch.kernel_mode("eager"):
                    expected = qtorch.quantize(x, fmt)
                assert bits_equal(qtorch.quantize(x, fmt), expected), (spec, n)


def test_stochastic_generator_and_seed_reproduce() -> None:
    fmt = _format("fixed")
    x = torch.randn(20000)
    with qtorch.kernel_mode("compiled"):
        a = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(3))
        b = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(3))
        c = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(4))
    with qtorch.kernel_mode("eager"):
        d = qtorch.quantize(x, fmt, "stochastic", generator=torch.Generator().manual_seed(3))
    assert bits_equal(a, b) and bits_equal(a, d)
    assert not bits_equal(a, c)


DIRECTED = [r for r in Rounding if r not in DEFAULT_ROUNDINGS]


@pytest.mark.slow
@pytest.mark.parametrize("rounding", DIRECTED, ids=lambda r: r.value)
@pytest.mark.parametrize("name", ["fixed", "fixed(12,3,symmetric=true)", "float", "block(8,0)"])
def test_fused_matches_eager_directed(name: str, rounding: Rounding) -> None:
    fmt = _format(name)
    if rounding not in fmt.roundings:
        pytest.skip(f"{name} has no {rounding.value} rounding")
    _check_family(name, rounding)


@pytest.mark.slow
@pytest.mark.parametrize("rounding", DEFAULT_ROUNDINGS, ids=lambda r: r.value)
@pytest.mark.parametrize("name", ["fixed", "float", "float8_e4m3fn", "posit", "codebook256"])
def test_fused_matches_eager_float64(name: str, rounding: Rounding) -> None:
    fmt = _format(name)
    for x in _inputs(fmt):
        eager, compiled = _both(x.double() * 3, fmt, rounding)
        assert bits_equal(eager, compiled), (name, rounding, tuple(x.shape))


@pytest.mark.slow
def test_quantize_inside_user_compile() -> None:
    fmt = _format("float")

    @torch.compile(fullgraph=True)
    def step(x: torch.Tensor) -> torch.Tensor:
        return qtorch.quantize(x * 2, fmt) + 1

    x = torch.randn(5000)
    with qtorch.kernel_mode("eager"):
        expected = qtorch.quantize(x * 2, fmt) + 1
    assert bits_equal(step(x), expected)


# --- the fallback when compiling fails ------------------------------------------------------


@pytest.fixture
def fresh_fused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty kernel cache and no past warning, restored after the test."""
    monkeypatch.setattr(fused, "_cache", {})
    monkeypatch.setattr(fused, "_broken", set())
    monkeypatch.setattr(fused, "_warned", False)
    monkeypatch.setattr(fused, "_timings", {})
    monkeypatch.setattr(fused, "_faster", {})
    monkeypatch.setattr(fused, "_plans", {})


def _raise_at_compile(fn: object, backend: object) -> object:
    raise RuntimeError("no C++ compiler found")


def _raise_at_call(fn: object, backend: object) -> object:
    def broken(*args: object) -> object:
        raise RuntimeError("InductorError: C++ compile error")

    return broken


@pytest.mark.usefixtures("fresh_fused")
@pytest.mark.parametrize("failure", [_raise_at_compile, _raise_at_call])
def test_failing_compile_falls_back_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, failure: object
) -> None:
    monkeypatch.setattr(fused, "_compile", failure)
    x = torch.randn(5000) * 4
    fixed, float_ = _format("fixed"), _format("float")
    with qtorch.kernel_mode("eager"):
        expected = [qtorch.quantize(x, f, r) for f in (fixed, float_) for r in DEFAULT_ROUNDINGS]
    torch.manual_seed(0)
    with qtorch.kernel_mode("eager"):
        expected_sr = qtorch.quantize(x, fixed, "stochastic")
    with qtorch.kernel_mode("compiled"), pytest.warns(fused.CompileFallbackWarning) as record:
        got = [qtorch.quantize(x, f, r) for f in (fixed, float_) for r in ("nearest",)]
        torch.manual_seed(0)
        got_sr = qtorch.quantize(x, fixed, "stochastic")  # same noise as eager
        y = x.clone()
        qtorch.quantize_(y, fixed)
        qtorch.quantize(x, fixed)  # a known-broken key: not tried again
    assert len(record) == 1
    assert "eager" in str(record[0].message)
    assert bits_equal(got[0], expected[0]) and bits_equal(got[1], expected[2])
    assert bits_equal(got_sr, expected_sr)
    assert bits_equal(y, expected[0])


@dataclasses.dataclass(frozen=True)
class _TwoDimensional(qtorch.Format):
    """A format that refuses inputs that are not 2-D (a user error, not a compile error)."""

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError("_TwoDimensional: x must be 2-D")
        return torch.round(x)


@pytest.mark.usefixtures("fresh_fused")
def test_kernel_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "_compile", _raise_at_call)
    fmt = _TwoDimensional()
    with qtorch.kernel_mode("compiled"):
        with pytest.raises(ValueError, match="must be 2-D"):
            qtorch.quantize(torch.randn(5000), fmt)  # and no warning: that would be an error
        with pytest.warns(fused.CompileFallbackWarning):
            assert bits_equal(
                qtorch.quantize(torch.full((2, 3), 2.5), fmt), torch.full((2, 3), 2.0)
            )


# --- kernel modes ---------------------------------------------------------------------------


def test_kernel_mode_switching() -> None:
    assert qtorch.get_kernel_mode() == "auto"
    qtorch.set_kernel_mode("eager")
    try:
        assert qtorch.get_kernel_mode() == "eager"
        with qtorch.kernel_mode("compiled"):
            assert qtorch.get_kernel_mode() == "compiled"
            with pytest.raises(RuntimeError), qtorch.kernel_mode("auto"):
                assert qtorch.get_kernel_mode() == "auto"
                raise RuntimeError("restored on errors too")
            assert qtorch.get_kernel_mode() == "compiled"
        assert qtorch.get_kernel_mode() == "eager"
    finally:
        qtorch.set_kernel_mode("auto")
    assert qtorch.get_kernel_mode() == "auto"


@pytest.mark.parametrize("bad", ["fast", "", "EAGER", None, 1])
def test_kernel_mode_rejects_unknown(bad: object) -> None:
    with pytest.raises(ValueError, match="kernel mode must be one of"):
        qtorch.set_kernel_mode(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError), qtorch.kernel_mode(bad):  # type: ignore[arg-type]
        pass
    assert qtorch.get_kernel_mode() == "auto"


def test_which_path_each_mode_takes() -> None:
    big, tiny = torch.randn(1024), torch.randn(fused.EAGER_BELOW["cpu"] - 1)
    assert tiny.numel() == 1  # auto: only one-element tensors stay eager on the CPU
    with qtorch.kernel_mode("eager"):
        assert not fused.wants_compiled(big)
    with qtorch.kernel_mode("compiled"):
        assert fused.wants_compiled(big) and fused.wants_compiled(tiny)
        assert not fused.wants_compiled(torch.empty(0))
        assert not fused.wants_compiled(big.clone().requires_grad_())
        with torch.no_grad():
            assert fused.wants_compiled(big.clone().requires_grad_())
    with qtorch.kernel_mode("auto"):
        assert not fused.wants_compiled(tiny)
        assert fused.wants_compiled(big) == fused.compile_available("cpu")
        assert fused.wants_compiled(torch.randn(3)) == fused.compile_available("cpu")


@pytest.mark.usefixtures("fresh_fused")
def test_auto_compiles_only_hot_quantizers(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[str] = []

    def record_compile(fn: Callable[..., object], backend: object) -> Callable[..., object]:
        compiled.append(fn.__code__.co_name)
        return fn  # run the kernel uncompiled: this test is about the dispatch only

    monkeypatch.setattr(fused, "_compile", record_compile)
    monkeypatch.setattr(fused, "compile_available", lambda device_type: True)
    monkeypatch.setattr(fused, "AUTO_COMPILE_AFTER_S", 0.02)
    fmt = _format("fixed")
    x = torch.randn(1024) * 4
    with qtorch.kernel_mode("eager"):
        expected = qtorch.quantize(x, fmt)
    with qtorch.kernel_mode("auto"):
        for _ in range(100):
            qtorch.quantize(x[:1], fmt)  # one-element tensors never count (nor compile)
        assert bits_equal(qtorch.quantize(x, fmt), expected)
        assert compiled == []  # one call is not worth a compile
        for _ in range(100_000):
            assert bits_equal(qtorch.quantize(x, fmt), expected)
            if compiled:
                break
    assert len(compiled) == 1 and compiled[0].startswith("quantize_FixedPoint_nearest")


@pytest.mark.usefixtures("fresh_fused")
@pytest.mark.parametrize("faster", ["eager", "compiled"])
def test_auto_keeps_the_faster_path_per_size_class(
    monkeypatch: pytest.MonkeyPatch, faster: str
) -> None:
    """A fake clock makes one path 10x faster; "auto" must settle on it for each size class
    it timed (and only below MEASURE_BELOW), with the same bits on every call."""
    now = [0.0]
    ran: list[str] = []
    cost = {"eager": 1.0, "compiled": 1.0}
    cost["compiled" if faster == "eager" else "eager"] = 10.0
    eager_run, compiled_run = qtorch.kernels.eager.run, fused.quantize_compiled

    def timed(path: str, run: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
            ran.append(path)
            now[0] += cost[path]
            return run(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(fused, "_compile", lambda fn, backend: fn)  # dispatch only: run uncompiled
    monkeypatch.setattr(fused, "compile_available", lambda device_type: True)
    monkeypatch.setattr(fused, "_clock", lambda: now[0])
    monkeypatch.setattr(qtorch.kernels.eager, "run", timed("eager", eager_run))
    monkeypatch.setattr(fused, "quantize_compiled", timed("compiled", compiled_run))
    fmt = _format("fixed")
    sizes = (40, 3000, 70_000, fused.MEASURE_BELOW["cpu"])  # 40: small tensors are timed too
    tiny, small, other, large = (torch.randn(n) * 4 for n in sizes)
    with qtorch.kernel_mode("eager"):
        expected = [qtorch.quantize(t, fmt) for t in (tiny, small, other, large)]
    with qtorch.kernel_mode("compiled"):
        qtorch.quantize(small, fmt)  # the quantizer is compiled now
    with qtorch.kernel_mode("auto"):
        for t, want in zip((tiny, small, other, large), expected, strict=True):
            ran.clear()
            for _ in range(6):
                assert bits_equal(qtorch.quantize(t, fmt), want)
            if t is large:
                assert ran == ["compiled"] * 6  # never timed
            elif faster == "compiled":  # eager 10x slower: decided after one call each
                assert ran == ["compiled", "eager", *["compiled"] * 4], ran
            else:  # three calls each, alternating; then only eager
                assert ran == ["compiled", "eager"] * 3, ran
                assert bits_equal(qtorch.quantize(t, fmt), want) and ran[-1] == "eager"


@pytest.mark.usefixtures("fresh_fused")
def test_auto_timing_waits_for_queued_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each timed call starts and stops its clock after waiting for the device's queued
    work (a no-op on the CPU; on CUDA the kernels run asynchronously), untimed calls don't."""
    events: list[str] = []
    eager_run, compiled_run = qtorch.kernels.eager.run, fused.quantize_compiled

    def logged(path: str, run: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def wrapper(*args: object, **kwargs: object) -> torch.Tensor:
            events.append(path)
            return run(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(fused, "_compile", lambda fn, backend: fn)
    monkeypatch.setattr(fused, "compile_available", lambda device_type: True)
    monkeypatch.setattr(fused, "_finish_queued", lambda x: events.append("wait"))
    monkeypatch.setattr(fused, "_clock", lambda: 0.0)  # a tie: all calls are timed
    monkeypatch.setattr(qtorch.kernels.eager, "run", logged("eager", eager_run))
    monkeypatch.setattr(fused, "quantize_compiled", logged("compiled", compiled_run))
    fmt, x = _format("fixed"), torch.randn(3000)
    with qtorch.kernel_mode("compiled"):
        qtorch.quantize(x, fmt)
    events.clear()
    with qtorch.kernel_mode("auto"):
        for _ in range(2 * fused.MEASURE_CALLS + 2):
            qtorch.quantize(x, fmt)
    timed = 2 * fused.MEASURE_CALLS
    assert events[: 3 * timed] == ["wait", "compiled", "wait", "wait", "eager", "wait"] * (
        timed // 2
    ), events
    assert "wait" not in events[3 * timed :] and len(events) == 3 * timed + 2, events


def test_autograd_input_keeps_eager_graph() -> None:
    x = torch.randn(2048, requires_grad=True)
    with qtorch.kernel_mode("compiled"):
        q = qtorch.quantize(x, _format("fixed"))
    with qtorch.kernel_mode("eager"):
        expected = qtorch.quantize(x, _format("fixed"))
    assert q.requires_grad == expected.requires_grad
    assert bits_equal(q.detach(), expected.detach())


def test_clear_cache_forgets_compiled_kernels() -> None:
    x = torch.randn(2048)
    with qtorch.kernel_mode("compiled"):
        qtorch.quantize(x, qtorch.FixedPoint(8, 4))
        qtorch.quantize(x, qtorch.FixedPoint(8, 4))
        assert fused._cache and fused._plans
        fused.clear_cache()
        assert not fused._cache and not fused._broken and not fused._eager_seconds
        assert not fused._plans
        again = qtorch.quantize(x, qtorch.FixedPoint(8, 4))
    with qtorch.kernel_mode("eager"):
        assert torch.equal(again, qtorch.quantize(x, qtorch.FixedPoint(8, 4)))
