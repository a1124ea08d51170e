"""The Triton code Inductor makes for qtorch's CUDA kernels, on a machine without a GPU.

A diagnostic for GPU work on a CPU-only machine: it shows how many kernels each quantizer
compiles to on CUDA, what each one reads and writes, and (``--code``) their source, so a
change aimed at the GPU can be read before a GPU runs it. It times nothing and runs
nothing on a device; ``benchmarks/gpu_check.py`` does that.

How: the kernel function that ``qtorch.quantize`` compiles (``fused._make_kernel``, with its
dtype casts and noise) is traced with ``make_fx`` on fake tensors whose device is CUDA, and
the graph goes through Inductor's ``compile_fx`` up to the generated module's source, which
is printed instead of loaded. CPU-only torch has no CUDA runtime, so the script stands in a
device (an H100's properties) where Inductor asks for one, and replaces the few Python
bindings that open a CUDA device guard (``__invert__``, ``copy_``) with the ATen calls
they make; codebook tables are built on the CPU (they are
made from Python values) and then faked onto CUDA. The code is Inductor's own. The shapes
are static unless ``--dynamic`` makes x's length a symbol, as qtorch compiles it (a
reduction compiled for a symbolic size keeps the split it chose for the compiling size;
static sizes are easier to read). The reaching into torch's internals is written against
torch 2.13.

Needs ``pip install triton`` (Inductor's Triton code generator imports it; it is not a
qtorch dependency) in an environment with qtorch installed::

    python benchmarks/cuda_codegen.py                       # every family, nearest, 1e8
    python benchmarks/cuda_codegen.py --formats block nvfp4 --rounding stochastic
    python benchmarks/cuda_codegen.py --formats codebook16 --code
    python benchmarks/cuda_codegen.py --dynamic --formats block --size 1048576
    python benchmarks/cuda_codegen.py --formats mx nvfp4 --shape 4096,4096 --dynamic
    python benchmarks/cuda_codegen.py --key-classes --formats block --rounding stochastic

``--key-classes`` checks qtorch's cache key against the guards of the graphs: the shapes of
:data:`KEY_SHAPES` grouped by key, each group's kernel generated (symbolic sizes) for one of
them, its guards evaluated for the others; a guard that fails is a second graph Dynamo
would compile behind the cache on a GPU. Exit code 1 if any does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import re
import sys
import types
from collections.abc import Iterator, Sequence
from typing import Any
from unittest import mock

import torch

#: What the stand-in device reports (an H100 SXM's properties, as torch.cuda gives them).
H100 = types.SimpleNamespace(
    name="NVIDIA H100 80GB HBM3",
    major=9,
    minor=0,
    multi_processor_count=132,
    max_threads_per_multi_processor=2048,
    max_threads_per_block=1024,
    regs_per_multiprocessor=65536,
    warp_size=32,
    total_memory=80 << 30,
    shared_memory_per_block_optin=232448,
    max_shared_memory_per_block_optin=232448,
    L2_cache_size=50 << 20,
    gcnArchName="",
    type="cuda",
    index=0,
)


#: The dtypes of x the script generates for (``--dtype``).
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


class _Generated(Exception):
    """Carries the generated module's source out of Inductor (which would load it next)."""

    def __init__(self, source: str) -> None:
        super().__init__("generated")
        self.source = source


@contextlib.contextmanager
def fake_cuda(mode: Any) -> Iterator[None]:
    """Make torch and Inductor believe in one CUDA device (see the module docstring)."""
    from torch._dynamo.device_interface import CudaInterface
    from torch._inductor.fx_passes import joint_graph, post_grad

    import qtorch.formats.codebook as codebook

    build_tables = codebook._build_tables

    def tables_on_cpu(fields: Any, dtype: torch.dtype, device: torch.device) -> Any:
        from torch.utils._python_dispatch import _disable_current_modes

        with _disable_current_modes():
            tables = build_tables(fields, dtype, torch.device("cpu"))
        return _faked(tables, mode)

    aten = torch.ops.aten
    patches: list[tuple[Any, str, Any]] = [
        (torch.cuda, "is_available", lambda: True),
        (torch.cuda, "device_count", lambda: 1),
        (torch.cuda, "current_device", lambda: 0),
        (torch.cuda, "set_device", lambda *a, **k: None),
        (torch.cuda, "get_device_properties", lambda *a, **k: H100),
        (torch.cuda, "get_device_capability", lambda *a, **k: (H100.major, H100.minor)),
        (torch.cuda, "get_device_name", lambda *a, **k: H100.name),
        (torch.cuda, "get_rng_state", lambda *a, **k: torch.zeros(16, dtype=torch.uint8)),
        (torch.cuda, "set_rng_state", lambda *a, **k: None),
        (torch.cuda, "_exchange_device", lambda idx: 0),
        (torch.cuda, "_maybe_exchange_device", lambda idx: 0),
        (CudaInterface, "get_device_properties", staticmethod(lambda *a, **k: H100)),
        (CudaInterface, "get_compute_capability", staticmethod(lambda *a, **k: 90)),
        (CudaInterface, "current_device", staticmethod(lambda: 0)),
        (CudaInterface, "is_available", staticmethod(lambda: True)),
        (CudaInterface, "device_count", staticmethod(lambda: 1)),
        (CudaInterface, "get_raw_stream", staticmethod(lambda *a: 0)),
        # the backend hash asks Triton's CUDA driver for its target (libcuda)
        (torch.utils._triton, "triton_hash_with_backend", lambda: "no-device"),
        # pattern passes build example tensors on the device to trace their patterns
        (joint_graph, "lazy_init", lambda *a, **k: None),
        (post_grad, "lazy_init", lambda *a, **k: None),
        (torch._inductor.config, "pattern_matcher", False),
        (torch._inductor.config, "joint_graph_constant_folding", False),
        (torch.Tensor, "__invert__", lambda self: torch.bitwise_not(self)),
        (torch.Tensor, "copy_", lambda self, src, non_blocking=False: aten.copy_(self, src)),
        (codebook, "_build_tables", tables_on_cpu),
    ]
    with contextlib.ExitStack() as stack:
        for owner, name, value in patches:
            stack.enter_context(mock.patch.object(owner, name, value, create=True))
        yield


#: The real CPU tensor behind each fake made by :func:`_faked` (by the fake's id): the
#: values of the constants a generated module takes as inputs (codebook tables).
REAL: dict[int, torch.Tensor] = {}


def _faked(value: Any, mode: Any) -> Any:
    """value with every tensor in it replaced by a fake CUDA tensor of its shape and dtype."""
    if isinstance(value, torch.Tensor):
        fake = _fake_cuda_tensor(value, mode)
        REAL[id(fake)] = value
        return fake
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        return dataclasses.replace(
            value, **{f.name: _faked(getattr(value, f.name), mode) for f in fields if f.init}
        )
    if isinstance(value, tuple):
        items = [_faked(v, mode) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    return value


def _fake_cuda_tensor(t: torch.Tensor, mode: Any, dynamic: set[int] | None = None) -> torch.Tensor:
    """A fake CUDA tensor of t's shape and dtype; the dimensions in ``dynamic`` symbolic."""
    from torch.fx.experimental.symbolic_shapes import DimDynamic, StatelessSymbolicContext

    dynamic = dynamic or set()
    sizes = [DimDynamic.DYNAMIC if d in dynamic else DimDynamic.STATIC for d in range(t.dim())]
    fake = mode.from_tensor(t, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))
    fake.fake_device = torch.device("cuda", 0)
    return fake


def kernel_shape(fmt: Any, rounding: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the argument fused.quantize_compiled hands the kernel for a contiguous
    x of ``shape``: x flat for the elementwise formats, or its ``(n / ROW, ROW)`` view with
    stochastic rounding where ROW divides n (the key's "rows"); x itself for the formats
    with blocks."""
    from qtorch.kernels import fused
    from qtorch.rounding import Rounding

    if not fmt.flat_kernel:
        return shape
    key = fused._key(torch.empty(shape, device="meta"), fmt, Rounding(rounding), False, "cuda")
    n = math.prod(shape)
    return (n // fused.ROW, fused.ROW) if key.shape == "rows" else (n,)


def generate(
    fmt: Any,
    rounding: str,
    shape: int | tuple[int, ...],
    inplace: bool = False,
    dtype: torch.dtype = torch.float32,
    dynamic: bool = False,
) -> str:
    """The source of the module Inductor generates for ``quantize(x, fmt, rounding)`` on
    CUDA, x a contiguous tensor of ``shape`` (an int: that many elements, 1-D) and
    ``dtype`` (``quantize_`` with ``inplace``; ``dynamic``: sizes as fused marks them)."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.graph import GraphLowering
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from qtorch.kernels import compiled_call, fused
    from qtorch.rounding import Rounding

    rnd = Rounding(rounding)
    x_shape = (shape,) if isinstance(shape, int) else tuple(shape)
    shape = kernel_shape(fmt, rnd, x_shape)
    # the dimensions fused.quantize_compiled marks dynamic: those of a size above 1 that the
    # key's shape part does not keep static (the row view's width, a format's static sizes)
    key = fused._key(torch.empty(x_shape, device="meta"), fmt, rnd, inplace, "cuda")
    static = fused._static_dims(key.shape, len(shape))
    rows = key.shape == "rows"
    symbolic = {d for d, size in enumerate(shape) if size > 1 and d not in static}
    with mock.patch.object(fused, "_compile", lambda fn, backend: fn):
        # as fused._key decides (MX and NVFP4 compute out of place and copy into x)
        kernel = fused._make_kernel(fmt, rnd, dtype, key.write_into_arg, rows, key.wide)
        kernel = kernel.dynamo_fn
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x = _fake_cuda_tensor(torch.empty(shape, dtype=dtype), mode, symbolic if dynamic else set())
    inputs = [x]
    if rnd is Rounding.STOCHASTIC:
        inputs.append(_fake_cuda_tensor(torch.zeros((), dtype=torch.int64), mode))

    def traced(*args: torch.Tensor) -> tuple[torch.Tensor | None]:
        return (kernel(args[0], args[1] if len(args) > 1 else None),)

    def capture(graph: GraphLowering) -> None:
        code = graph.codegen()
        source = code[0] if isinstance(code, tuple) else code
        raise _Generated(str(getattr(source, "value", source)))

    with fake_cuda(mode):
        with mock.patch.object(torch.compiler, "is_compiling", lambda: True):
            gm = make_fx(traced, tracing_mode="symbolic" if dynamic else "fake")(*inputs)
        CONSTANTS[:] = [
            REAL.get(id(getattr(gm, node.target)))
            for node in gm.graph.nodes
            if node.op == "get_attr" and isinstance(getattr(gm, node.target), torch.Tensor)
        ]
        with mock.patch.object(GraphLowering, "compile_to_module", capture):
            try:
                compile_fx(gm, inputs, config_patches=compiled_call.CONFIG)
            except _Generated as done:
                source = done.source
            except Exception as err:  # Inductor wraps errors raised inside it
                cause: BaseException | None = err
                while cause is not None and not isinstance(cause, _Generated):
                    cause = cause.__cause__ or cause.__context__
                if cause is None:
                    raise
                source = cause.source
            else:
                raise RuntimeError("Inductor generated no module")
    SIZE_SYMBOLS.clear()
    SIZE_GUARDS.clear()
    if dynamic:
        SIZE_SYMBOLS.update({d: x.shape[d].node.expr for d in symbolic})
        SIZE_GUARDS.extend(guard.expr for guard in mode.shape_env.guards)
    return source


#: The size symbols of the kernel argument of the graph :func:`generate` compiled last (by
#: dimension; empty unless ``dynamic``), and the guards on them that tracing and Inductor
#: installed (for Dynamo, the condition under which the compiled graph serves a call).
SIZE_SYMBOLS: dict[int, Any] = {}
SIZE_GUARDS: list[Any] = []


def guards_hold(fmt: Any, rounding: str, shape: tuple[int, ...]) -> bool:
    """Whether the size guards of the graph :func:`generate` compiled last (with
    ``dynamic``, for ``fmt`` and ``rounding``) hold for a contiguous x of ``shape``: whether
    Dynamo would run that graph for it rather than compile another."""
    import sympy

    from qtorch.rounding import Rounding

    arg = kernel_shape(fmt, Rounding(rounding), shape)
    values = {symbol: sympy.Integer(arg[d]) for d, symbol in SIZE_SYMBOLS.items()}
    return all(bool(guard.xreplace(values)) for guard in SIZE_GUARDS)


#: The tensor constants of the graph :func:`generate` compiled last, in the order of the
#: graph (their CPU values; None where one was not made by :func:`_faked`). The generated
#: ``call`` takes them as its first inputs.
CONSTANTS: list[torch.Tensor | None] = []


_KERNEL = re.compile(r"^(\w+) = async_compile\.triton\('\w+', '''(.*?)''', device_str", re.S | re.M)


def kernels(source: str) -> list[dict[str, Any]]:
    """The Triton kernels of a generated module, in launch order: kind (Inductor's
    heuristics), sizes (``xnumel`` and, for reductions, ``r0_numel``; None where symbolic
    or absent), the number of ``tl.load`` / ``tl.store`` calls in the source (small tables
    and per-block factors count as loads too), of float divisions by Triton's ``/`` and by
    ``div_rn``, and whether libdevice keeps subnormals (``disable_ftz``)."""
    found = {name: src for name, src in _KERNEL.findall(source)}
    launched = re.findall(r"^\s*(\w+)\.run\(", source, re.M)
    out = []
    for name in launched:
        src = found.get(name, "")
        kind = re.search(r"@triton_heuristics\.(\w+)\(", src)
        numels = {k: int(v) for k, v in re.findall(r"^\s*(xnumel|r0_numel) = (\d+)$", src, re.M)}
        out.append(
            {
                "name": name,
                "kind": kind[1] if kind else "?",
                "xnumel": numels.get("xnumel"),
                "r0_numel": numels.get("r0_numel"),
                "loads": src.count("tl.load("),
                "stores": src.count("tl.store("),
                # float divisions: Triton's ``/`` (div.full.f32, within 2 ulp) and the
                # correctly rounded ``div_rn`` (compiled_call.CONFIG asks for it)
                "approximate_divisions": len(re.findall(r"\(\w+ / \w+\)", src)),
                "rounded_divisions": src.count("div_rn("),
                # libdevice calls flush subnormal arguments unless this is set
                "disable_ftz": "'disable_ftz': True" in src,
                "source": src,
            }
        )
    return out


def buffers(source: str) -> list[list[int | None]]:
    """The shapes of the device buffers the generated ``call`` allocates (None: a size
    given by a symbol)."""
    shapes = re.findall(r"empty_strided_cuda\(\(([^()]*)\)", source)
    return [
        [int(d) if d.strip().isdigit() else None for d in shape.split(",") if d.strip()]
        for shape in shapes
    ]


#: Shapes of x for ``--key-classes``: around the sizes where a kernel's traced code
#: branches (blocks of 16 and 32, rows of 4096, sizes of 1), where Inductor's Triton code
#: changes its index width (2**31 - 1 elements: ``fused.INDEX_MAX``, of x or of the padded
#: tensors of block formats, and the per-block factors of block floating point) and where
#: the stochastic noise gets a high word (2**32).
KEY_SHAPES: tuple[tuple[int, ...], ...] = (
    *[(n,) for n in (5, 16, 32, 33, 4096, 4097, 4098, 8192, 8193, 100_017, 1 << 20)],
    *[(2**31 + d,) for d in (-8192 - 4096, -8192 - 16, -8192, -64, -48, -32, -16, -4, 4)],
    *[(2**31 + d,) for d in (32, 4096 * 3)],
    *[(2**32 + d,) for d in (-16, 16, 48, 49)],
    (3, 33_339),
    (2, 4096),
    (7, 4099),
    (64, 32),
    (64, 33),
    (5, 16),
    (1, 4096),
    (4096, 1),
    (2, 2**30 + 16),
    (2**26 + 1, 32),
    # block floating point with a block per slice stores four factors per block
    (2**29 - 1, 2),
    (2**29, 2),
    (715_827_883, 3),
    (3, 5, 64),
    (2, 3, 4096),
)


def key_classes(
    fmt: Any, rounding: str, shapes: Sequence[tuple[int, ...]] = KEY_SHAPES
) -> list[dict[str, Any]]:
    """Whether each CUDA kernel serves every shape of its cache key, as qtorch promises
    (one graph per kernel: Dynamo compiles no other behind the cache).

    ``shapes`` are grouped by ``fused._key`` (for CUDA); each group's kernel is generated
    for its first shape with symbolic sizes, as ``fused.quantize_compiled`` compiles it,
    and the size guards of that graph are evaluated for every shape of the group (they
    must hold) and of the other groups of the same rank (``others_failing``: where the key
    keeps a shape away from that kernel, and rightly so if its guards fail there).
    """
    from qtorch.kernels import fused
    from qtorch.rounding import Rounding

    rnd = Rounding(rounding)
    groups: dict[Any, list[tuple[int, ...]]] = {}
    for shape in shapes:
        key = fused._key(torch.empty(shape, device="meta"), fmt, rnd, False, "cuda")
        groups.setdefault(key, []).append(tuple(shape))
    rows = []
    for key, members in groups.items():
        try:
            generate(fmt, rounding, members[0], dynamic=True)
        except (ValueError, TypeError) as err:  # a shape the format rejects (its rank)
            rows.append({"key": _key_fields(key), "shapes": members, "rejected": str(err)})
            continue
        others = [
            shape
            for other, group in groups.items()
            if other != key
            for shape in group
            if len(shape) == len(members[0])
        ]
        rows.append(
            {
                "key": _key_fields(key),
                "compiled_on": list(members[0]),
                "shapes": [list(shape) for shape in members],
                "failing": [list(s) for s in members if not guards_hold(fmt, rounding, s)],
                "others_failing": [list(s) for s in others if not guards_hold(fmt, rounding, s)],
                "guards": [str(guard) for guard in SIZE_GUARDS],
            }
        )
    return rows


def _key_fields(key: Any) -> dict[str, str]:
    """The parts of a kernel's cache key that vary with x's shape, as strings."""
    fields = ("shape", "branches", "wide", "long_index")
    return {name: str(getattr(key, name)) for name in fields}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", help="family names or format specs (bench's)")
    parser.add_argument(
        "--rounding", nargs="+", default=["nearest"], choices=("nearest", "stochastic")
    )
    parser.add_argument("--size", type=float, default=1e8, help="elements (default 1e8)")
    parser.add_argument("--shape", help="x's shape instead, e.g. 4096,4096 (contiguous)")
    parser.add_argument("--inplace", action="store_true", help="quantize_ (into x)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="x's dtype")
    parser.add_argument(
        "--dynamic", action="store_true", help="x's length symbolic, as qtorch compiles it"
    )
    parser.add_argument("--code", action="store_true", help="print each kernel's source")
    parser.add_argument(
        "--key-classes",
        action="store_true",
        help="check that each kernel's size guards admit every shape of its cache key",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the kernels' summary here")
    args = parser.parse_args(argv)
    try:
        import triton
    except ImportError:
        print("cuda_codegen needs Triton: pip install triton", file=sys.stderr)
        return 2
    from qtorch.cli.bench import FAMILIES, resolve_formats

    print(f"torch {torch.__version__}, triton {triton.__version__}; device: {H100.name} (stood in)")
    shape = tuple(int(s) for s in args.shape.split(",")) if args.shape else (int(args.size),)
    n = math.prod(shape)
    rows = []
    if args.key_classes:
        failed = 0
        for family, fmt in resolve_formats(args.formats or list(FAMILIES)):
            for rounding in args.rounding:
                for row in key_classes(fmt, rounding):
                    row.update(family=family, rounding=rounding)
                    rows.append(row)
                    what = " ".join(f"{k}={v}" for k, v in row["key"].items())
                    if "rejected" in row:
                        print(f"{family} {rounding} {what}: rejected ({row['rejected'][:80]})")
                        continue
                    failed += bool(row["failing"])
                    print(
                        f"{family} {rounding} {what}: compiled on {row['compiled_on']}, "
                        f"{len(row['shapes'])} shape(s), guards fail for {row['failing']}"
                    )
        print(f"{failed} kernel(s) whose guards fail for a shape of their key")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return 1 if failed else 0
    for family, fmt in resolve_formats(args.formats or list(FAMILIES)):
        for rounding in args.rounding:
            source = generate(fmt, rounding, shape, args.inplace, DTYPES[args.dtype], args.dynamic)
            found, allocated = kernels(source), buffers(source)
            what = f"{family} {rounding}{' in place' if args.inplace else ''}"
            size = f"{n:,}" if len(shape) == 1 else "x".join(map(str, shape))
            print(f"\n{what}, {size} {args.dtype}: {len(found)} kernel(s), buffers {allocated}")
            for k in found:
                r0 = "-" if k["kind"] == "pointwise" else k["r0_numel"]
                print(
                    f"  {k['kind']:<22} xnumel {k['xnumel']!s:<10} r0_numel {r0!s:<6}"
                    f" loads {k['loads']} stores {k['stores']}  {k['name']}"
                )
                if args.code:
                    print(k["source"])
            summary = [{key: v for key, v in k.items() if key != "source"} for k in found]
            rows.append(
                {
                    "family": family,
                    "rounding": rounding,
                    "inplace": args.inplace,
                    "dtype": args.dtype,
                    "dynamic": args.dynamic,
                    "n": n,
                    "shape": list(shape),
                    "kernels": summary,
                    "buffers": allocated,
                }
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
