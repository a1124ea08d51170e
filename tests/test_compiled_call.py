"""The direct call of captured Inductor functions (qtorch.kernels.compiled_call).

The first call of each shape runs through Dynamo; later calls of that shape skip it. Each
test checks the results against the eager reference bit for bit, and which path ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from edge_cases import SPECIALS_F32, RecordingMode, bits_equal, random_float32

import qtorch
from qtorch.cli.bench import family_format
from qtorch.kernels import compiled_call, fused
from qtorch.kernels.compiled_call import CompiledKernel
from qtorch.rounding import Rounding


@pytest.fixture(autouse=True)
def _compiled_mode() -> Iterator[None]:
    with qtorch.kernel_mode("compiled"):
        yield


def _kernel(
    fmt: qtorch.Format, rounding: Rounding, in_place: bool = False, shape_key: object = None
) -> CompiledKernel:
    """The one compiled kernel of fmt and rounding (key: fmt, rounding, ..., in place).

    ``shape_key`` picks one of the kernels of a format with ``flat_kernel``: "flat" or
    "rows" (its stochastic kernel when 16 divides the size).
    """
    (kern,) = [
        k
        for key, k in fused._cache.items()
        if key.fmt == fmt
        and key.rounding == rounding
        and key.write_into_arg == in_place
        and (shape_key is None or key.shape == shape_key)
    ]
    assert isinstance(kern, CompiledKernel)
    return kern


def _count_dynamo(monkeypatch: pytest.MonkeyPatch, kern: CompiledKernel) -> list[int]:
    """Count the calls that go through Dynamo from now on."""
    calls = [0]
    dynamo_fn = kern.dynamo_fn

    def counted(*args: Any) -> Any:
        calls[0] += 1
        return dynamo_fn(*args)

    monkeypatch.setattr(kern, "dynamo_fn", counted)
    return calls


def _eager(x: torch.Tensor, fmt: qtorch.Format, rounding: Rounding, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with qtorch.kernel_mode("eager"):
        return qtorch.quantize(x, fmt, rounding)


def _compiled(x: torch.Tensor, fmt: qtorch.Format, rounding: Rounding, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return qtorch.quantize(x, fmt, rounding)


def _values(*shape: int) -> torch.Tensor:
    n = 1
    for size in shape:
        n *= size
    bits = torch.cat([SPECIALS_F32, random_float32(n - len(SPECIALS_F32), seed=3)])
    return bits.view(shape)


@pytest.mark.parametrize(
    ("name", "rounding", "length"),
    [
        ("fixed(8,4)", Rounding.NEAREST, 2000),
        ("fixed(8,4)", Rounding.STOCHASTIC, 2001),  # flat: 16 does not divide the sizes
        ("fixed(8,4)", Rounding.STOCHASTIC, 4096),  # the (n / 16, 16) view
        ("posit(8,2)", Rounding.STOCHASTIC, 4096),
        ("block(8,0)", Rounding.NEAREST, 2000),
        ("codebook16", Rounding.NEAREST, 2000),
        ("mx", Rounding.STOCHASTIC, 4096),  # noise made per block
        ("block", Rounding.NEAREST, 2000),  # one block per tensor: flattened
        ("block", Rounding.STOCHASTIC, 4096),  # flattened, noise in rows of 16
    ],
    ids=str,
)
def test_repeated_shapes_skip_dynamo_and_match_eager(
    monkeypatch: pytest.MonkeyPatch, name: str, rounding: Rounding, length: int
) -> None:
    fmt = family_format(name)
    first = 4111 if length % 16 else 4128  # MX: whole blocks, as in (5, 4096)
    shapes = [(3, first), (5, length), (3, first), (5, length), (3, first)]
    qtorch.quantize(_values(*shapes[0]), fmt, rounding)  # compiled now
    rows = rounding is Rounding.STOCHASTIC and length % 16 == 0
    kern = _kernel(
        fmt, rounding, shape_key=("rows" if rows else "flat") if fmt.flat_kernel else None
    )
    calls = _count_dynamo(monkeypatch, kern)
    for seed, shape in enumerate(shapes):
        x = _values(*shape)
        got = _compiled(x, fmt, rounding, seed)
        assert bits_equal(got, _eager(x, fmt, rounding, seed)), (name, shape)
        assert got.shape == x.shape and got.data_ptr() != x.data_ptr()
    # the compiling call learnt (3, 4111); (5, 2000) went through Dynamo once
    assert calls[0] == 1


def test_in_place_repeats_write_into_x(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = family_format("fixed(8,4)")
    x = _values(7, 1501)
    expected = _eager(x, fmt, Rounding.NEAREST, 0)
    qtorch.quantize_(x.clone(), fmt)
    kern = _kernel(fmt, Rounding.NEAREST, in_place=True)
    calls = _count_dynamo(monkeypatch, kern)
    for _ in range(3):
        y = x.clone()
        ptr = y.data_ptr()
        assert qtorch.quantize_(y, fmt) is y and y.data_ptr() == ptr
        assert bits_equal(y, expected)
    assert calls[0] == 0  # the compiling call learnt the shape


def test_parameters_in_place_under_no_grad(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer's step: quantize_ on parameters (which require grad) under no_grad.
    Repeats skip Dynamo, write into the parameter and bump its version counter."""
    fmt = dataclasses.replace(family_format("fixed(8,4)"), wl=10)  # a kernel of its own
    weight, bias = torch.nn.Parameter(_values(40, 70)), torch.nn.Parameter(_values(333))
    expected = {id(p): _eager(p.detach(), fmt, Rounding.NEAREST, 0) for p in (weight, bias)}
    with torch.no_grad():
        qtorch.quantize_(weight.detach().clone(), fmt)  # compiled now
        kern = _kernel(fmt, Rounding.NEAREST, in_place=True)
        calls = _count_dynamo(monkeypatch, kern)
        for step in range(3):
            for p in (weight, bias):
                version, ptr = p._version, p.data_ptr()
                assert qtorch.quantize_(p, fmt) is p
                assert p._version > version and p.data_ptr() == ptr
                assert bits_equal(p.detach(), expected[id(p)]), step
    assert calls[0] == 1  # the bias's first call (compiling learnt the weight's shape)
    assert isinstance(bias, torch.nn.Parameter) and bias.requires_grad


class _Tagged(torch.Tensor):
    """A tensor subclass that adds nothing."""


def test_inputs_dynamo_must_see_take_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = family_format("fixed(8,4)")
    x = _values(9001)
    expected = _eager(x, fmt, Rounding.NEAREST, 0)
    qtorch.quantize(x, fmt)  # the shape is known now
    kern = _kernel(fmt, Rounding.NEAREST)
    calls = _count_dynamo(monkeypatch, kern)

    with torch.no_grad():  # requires grad, but no graph to build: the direct call
        assert bits_equal(qtorch.quantize(x.clone().requires_grad_(), fmt), expected)
    assert calls[0] == 0

    with torch.device("cpu"):  # a torch function mode
        assert bits_equal(qtorch.quantize(x, fmt), expected)
    assert calls[0] == 1

    assert bits_equal(qtorch.quantize(x.as_subclass(_Tagged), fmt), expected)
    assert calls[0] == 2

    assert bits_equal(qtorch.quantize(x, fmt), expected)
    assert calls[0] == 2


def test_dispatch_modes_see_the_eager_operations() -> None:
    """Under a TorchDispatchMode the eager path runs (Dynamo would skip the frame, and the
    mode is there to see the operations), without a fallback warning."""
    fmt = family_format("fixed(8,4)")
    x = _values(9001)
    expected = _eager(x, fmt, Rounding.NEAREST, 0)
    qtorch.quantize(x, fmt)
    mode = RecordingMode()
    with mode:
        got = qtorch.quantize(x, fmt)
    assert bits_equal(got, expected)
    assert any("round" in op for op in mode.ops)
    assert not fused._broken


#: One format of each family (the names of qtorch.cli.bench.family_format).
FAMILIES = ["fixed", "float", "float8_e4m3fn", "block", "posit", "codebook16", "mx", "nvfp4"]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")  # torch's, jvp
@pytest.mark.parametrize("rounding", [Rounding.NEAREST, Rounding.STOCHASTIC])
@pytest.mark.parametrize("name", FAMILIES)
def test_torch_func_transforms_run_the_eager_operations(name: str, rounding: Rounding) -> None:
    """Under ``torch.func.vmap``, ``grad`` and ``jvp`` the eager path runs, with the bits of
    a plain call; the compiled kernel and its plan stay in use afterwards. A plan handed
    the transform's wrapper to the compiled function ("Cannot access data pointer") and
    the full dispatch then tried to compile for it: the format's kernel was marked broken
    for the rest of the process, with a fallback warning; posit under vmap raised."""
    fmt = family_format(name)
    xs = _values(3, 8, 256)
    x = xs[1].clone()
    for _ in range(2):  # compiled, then planned
        assert bits_equal(_compiled(x, fmt, rounding, 4), _eager(x, fmt, rounding, 4))
    assert fused._plans
    want = [_eager(xs[i], fmt, rounding, 4) for i in range(3)]  # one seed for each example

    torch.manual_seed(4)
    got = torch.func.vmap(lambda a: qtorch.quantize(a, fmt, rounding), randomness="same")(xs)
    assert all(bits_equal(got[i], want[i]) for i in range(3))

    def weighted(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = qtorch.quantize(a, fmt, rounding)
        return (torch.nan_to_num(q) * 3).sum(), q

    torch.manual_seed(4)
    grad, q = torch.func.grad(weighted, has_aux=True)(x)
    assert bits_equal(q, want[1]) and torch.equal(grad, torch.zeros_like(x))
    torch.manual_seed(4)
    q, tangent = torch.func.jvp(lambda a: qtorch.quantize(a, fmt, rounding), (x,), (x,))
    assert bits_equal(q, want[1]) and torch.equal(tangent, torch.zeros_like(x))

    assert not fused._broken
    assert bits_equal(_compiled(x, fmt, rounding, 4), want[1])
    assert any(key[0][0] == id(fmt) for key in fused._plans)


def test_each_shape_runs_the_graph_dynamo_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamo compiles a one-element input separately (it specializes sizes 0 and 1); each
    shape must then go to its own graph."""
    fmt = dataclasses.replace(family_format("fixed(8,4)"), wl=9)  # a kernel of its own
    x, one = _values(5003), torch.tensor([0.3])
    qtorch.quantize(x, fmt)
    kern = _kernel(fmt, Rounding.NEAREST)
    assert bits_equal(qtorch.quantize(one, fmt), _eager(one, fmt, Rounding.NEAREST, 0))
    assert len(kern.capture.graphs) == 2
    assert kern.shapes[x.shape] is not kern.shapes[one.shape]
    calls = _count_dynamo(monkeypatch, kern)
    for _ in range(2):
        assert bits_equal(qtorch.quantize(x, fmt), _eager(x, fmt, Rounding.NEAREST, 0))
        assert bits_equal(qtorch.quantize(one, fmt), _eager(one, fmt, Rounding.NEAREST, 0))
    assert calls[0] == 0


@dataclasses.dataclass(frozen=True)
class _Table(qtorch.Format):
    """A format whose kernel reads a tensor that is not an argument: an extra graph input."""

    def quantize_kernel(
        self, x: torch.Tensor, rounding: Rounding, noise: torch.Tensor | None
    ) -> torch.Tensor:
        return torch.round(x * _STEP) / _STEP


_STEP = torch.tensor(4.0)


def test_graphs_with_other_inputs_always_use_dynamo(monkeypatch: pytest.MonkeyPatch) -> None:
    fmt = _Table()
    x = _values(4097)
    expected = torch.round(x * 4.0) / 4.0
    assert bits_equal(qtorch.quantize(x, fmt), expected)
    kern = _kernel(fmt, Rounding.NEAREST)
    assert kern.capture.graphs == [None]  # the tensor constant has no place in the plan
    calls = _count_dynamo(monkeypatch, kern)
    assert bits_equal(qtorch.quantize(x, fmt), expected)
    assert calls[0] == 1


def test_device_types_off_the_direct_list_always_use_dynamo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``DIRECT`` (which gpu_check turns off for CUDA to time the call through Dynamo):
    with the CPU off, no shape is remembered and every call goes through Dynamo."""
    monkeypatch.setitem(compiled_call.DIRECT, "cpu", False)
    fmt = dataclasses.replace(family_format("fixed(8,4)"), wl=10)  # a kernel of its own
    x = _values(3001)
    assert bits_equal(qtorch.quantize(x, fmt), _eager(x, fmt, Rounding.NEAREST, 0))
    kern = _kernel(fmt, Rounding.NEAREST)
    calls = _count_dynamo(monkeypatch, kern)
    for _ in range(2):
        assert bits_equal(qtorch.quantize(x, fmt), _eager(x, fmt, Rounding.NEAREST, 0))
    assert calls[0] == 2 and not kern.shapes


def test_remembered_shapes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled_call, "MAX_SHAPES", 2)
    fmt = family_format("fixed(8,4)")
    sizes = [2001, 2002, 2003, 2001, 2002, 2003]
    for n in sizes:
        x = _values(n)
        assert bits_equal(qtorch.quantize(x, fmt), _eager(x, fmt, Rounding.NEAREST, 0))
    assert 1 <= len(_kernel(fmt, Rounding.NEAREST).shapes) <= 2


@pytest.mark.parametrize("threads", [1, 2])
def test_kernels_compiled_on_small_tensors_stay_parallel(threads: int) -> None:
    """Inductor decides serial or parallel code from the compiling call's size and thread
    count, and its disk cache then serves that code for every size: a kernel first compiled
    on 1,000 elements, or under one thread, must still open an OpenMP parallel region."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    fmt = dataclasses.replace(family_format("fixed(8,4)"), wl=13 + threads)  # a new key
    x = _values(1000)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with config.patch(force_disable_caches=True):
            _, code = run_and_get_code(qtorch.quantize, x, fmt, "stochastic")
    finally:
        torch.set_num_threads(previous)
    assert any("#pragma omp parallel" in source for source in code), code
    assert bits_equal(
        _compiled(x, fmt, Rounding.STOCHASTIC, 0), _eager(x, fmt, Rounding.STOCHASTIC, 0)
    )


def test_threads_each_learn_their_own_shapes() -> None:
    """Two threads quantizing different shapes at once: a shape learnt must map to a graph
    compiled for it (the record of which graph ran is per thread). While one thread
    compiles, torch.compiler.is_compiling() is true in every thread, so the other one runs
    eagerly (same bits): not every shape need be learnt here."""
    from concurrent.futures import ThreadPoolExecutor

    fmt = dataclasses.replace(family_format("fixed(8,4)"), wl=12)  # a kernel of its own
    inputs = [_values(3001), torch.tensor([0.3]), _values(2, 1501), torch.tensor([-1.7])]
    expected = [_eager(x, fmt, Rounding.NEAREST, 0) for x in inputs]

    def run(i: int) -> bool:
        x = inputs[i % len(inputs)]
        return bits_equal(qtorch.quantize(x, fmt), expected[i % len(inputs)])

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert all(pool.map(run, range(40)))
    for _ in range(2):  # learnt or not before, each shape is learnt now, then called directly
        for x, want in zip(inputs, expected, strict=True):
            assert bits_equal(qtorch.quantize(x, fmt), want)
    shapes = _kernel(fmt, Rounding.NEAREST).shapes
    assert set(shapes) == {torch.Size([3001]), torch.Size([1]), torch.Size([3002])}
    for shape, captured in shapes.items():
        symbolic = any(dim is not None for _, dim in captured.inputs)
        assert symbolic == (shape != torch.Size([1]))  # Dynamo specializes size 1


def test_inference_mode_tensors() -> None:
    fmt = family_format("fixed(8,4)")
    with torch.inference_mode():
        x = _values(4097)
        expected = _eager(x, fmt, Rounding.NEAREST, 0)
        for _ in range(2):
            assert bits_equal(qtorch.quantize(x, fmt), expected)
    for _ in range(2):  # an inference tensor outside inference mode
        assert bits_equal(qtorch.quantize(x, fmt), expected)


_FIRST_COMPILES_IN_THREADS = """
import warnings
from concurrent.futures import ThreadPoolExecutor
import torch, qtorch
warnings.simplefilter("error")
qtorch.set_kernel_mode("compiled")
fmt = qtorch.FixedPoint(8, 4)
xs = [torch.randn(3001) * 4, torch.tensor([0.3]), torch.randn(2, 1501) * 4, torch.tensor([-2.0])]
with qtorch.kernel_mode("eager"):
    expected = [qtorch.quantize(x, fmt) for x in xs]
with ThreadPoolExecutor(max_workers=2) as pool:
    got = list(pool.map(lambda i: qtorch.quantize(xs[i % 4], fmt), range(40)))
assert all(torch.equal(g, expected[i % 4]) for i, g in enumerate(got))
print("ok")
"""


def test_first_compiles_in_two_threads_of_a_fresh_process() -> None:
    """Two threads making a process's first compile at once deadlocked in torch's lazy
    imports (and the key was marked broken, with a warning); first calls are serialized."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FIRST_COMPILES_IN_THREADS],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
