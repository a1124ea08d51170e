"""Run qtorch's CUDA kernels in Triton's interpreter on the CPU, against the eager path.

``benchmarks/cuda_codegen.py`` shows the Triton code Inductor generates for each quantizer
on CUDA without a GPU. This script runs that code: the generated module's ``call`` with
its kernels executed by Triton's interpreter (``TRITON_INTERPRET=1``, numpy arithmetic on
the CPU), and compares the result bitwise (any NaN equals any NaN) with qtorch's eager
path on the CPU, for the inputs gpu_check uses: random float32 bit patterns with the
special values, blocks of exact ties (nearest), and finite values of every scale with one
fixed seed (stochastic; the noise is a function of the seed and the element's index).

What it checks is the logic of the generated code in IEEE arithmetic: a kernel that
computes something else than the eager path (as ``0 - x`` for ``-x`` once gave +0 where
the eager path gives -0) differs here. What it cannot check is what only the hardware
does differently from numpy: contraction of a multiply and an add into one FMA (Triton
contracts by default; the kernels' products are exact, by powers of two), float to
integer conversions of NaN or out-of-range values (numpy gives the most negative integer,
as x86 does; a GPU saturates), and the speed. gpu_check does those on a GPU.

The interpreter has no libdevice; the two functions the kernels call, ``floor`` and
``nearbyint``, are numpy's ``floor`` and ``rint`` (round half to even, as ``nearbyint``
in the default rounding mode).

Needs Triton (in the ``test`` extra on Linux x86-64); sets ``TRITON_INTERPRET=1`` before
importing it, so run it as its own process::

    python benchmarks/cuda_interpret.py --dynamic    # every family, both roundings, as compiled
    python benchmarks/cuda_interpret.py --formats nvfp4 mx --shape 8,40 --inplace --dynamic
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported, by torch or by us

import argparse
import contextlib
import json
import math
import re
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cuda_codegen
import gpu_check

from qtorch.kernels import eager
from qtorch.rounding import Rounding

#: Block sizes the interpreter runs each kind of kernel with (powers of two; the results do
#: not depend on them), by kind; a block parameter not named here gets 16.
BLOCKS = {
    "pointwise": {"XBLOCK": 1024},
    "persistent_reduction": {"XBLOCK": 8},
    "reduction": {"XBLOCK": 1, "R0_BLOCK": 256},
}


def _libdevice() -> types.SimpleNamespace:
    """The libdevice functions the kernels call, on the interpreter's numpy tensors."""
    import triton.language as tl
    from triton.runtime.interpreter import TensorHandle

    def unary(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Any], Any]:
        def op(x: Any) -> Any:
            return tl.tensor(TensorHandle(fn(x.handle.data), x.handle.dtype), x.type)

        return op

    return types.SimpleNamespace(floor=unary(np.floor), nearbyint=unary(np.rint))


class Kernel:
    """One generated kernel: ``run`` launches it on the interpreter as Inductor would."""

    def __init__(self, kind: str, meta: dict[str, Any], fn: Any) -> None:
        self.kind, self.meta, self.fn = kind, meta, fn

    def run(self, *args: Any, stream: Any = None) -> None:
        from torch._inductor.runtime.triton_heuristics import GridExpr

        if self.kind not in BLOCKS:
            raise NotImplementedError(f"{self.kind} kernel")
        # the launch passes every parameter but the block sizes (a size Inductor made a
        # constant, as xnumel 1, too); the grid is Inductor's own for the chosen blocks
        signature = self.meta["triton_meta"]["signature"]
        sizes = [k for k in signature if k.endswith("BLOCK")]
        blocks = {k: BLOCKS[self.kind].get(k, 16) for k in sizes}
        values = dict(zip([k for k in signature if k not in sizes], args, strict=True))
        grid = GridExpr.from_meta(self.meta["inductor_meta"], blocks)
        self.fn[grid.eval_slow({**values, **blocks})](*args, **blocks)


class _Compile:
    """Stands in for Inductor's ``AsyncCompile``: builds each kernel for the interpreter."""

    def __init__(self) -> None:
        import triton
        import triton.language as tl
        from torch._inductor.runtime import hints, triton_helpers

        def heuristic(kind: str) -> Callable[..., Callable[[Any], Kernel]]:
            def decorator(*_: Any, **meta: Any) -> Callable[[Any], Kernel]:
                return lambda fn: Kernel(kind, meta, fn)

            return decorator

        self.names = {
            "triton": triton,
            "tl": tl,
            "triton_helpers": triton_helpers,
            "tl_math": tl.math,
            "libdevice": _libdevice(),
            "triton_heuristics": types.SimpleNamespace(**{k: heuristic(k) for k in BLOCKS}),
            **{k: getattr(hints, k) for k in ("AutotuneHint", "ReductionHint", "TileHint")},
            "DeviceProperties": hints.DeviceProperties,
        }

    def triton(self, name: str, source: str, device_str: str = "cuda") -> Kernel:
        # the names the source imports are given instead (the GPU driver is not set)
        skip = r"^from torch\._inductor\.runtime\b.*$|^triton_helpers\.set_driver_to_gpu\(\)$"
        namespace = {**self.names, "__file__": f"{name}.py"}
        exec(compile(re.sub(skip, "", source, flags=re.M), name, "exec"), namespace)
        return namespace[name]

    def wait(self, scope: Any) -> None:
        pass


def _no_gpu_driver() -> None:
    """Inductor reloads a kernel it generated before from its on-disk cache, whose module
    sets Triton's driver to the GPU's (which needs libcuda); this process has none to set."""
    from torch._inductor.runtime import triton_helpers

    triton_helpers.set_driver_to_gpu = lambda: None


def _device_calls_patch_once() -> None:
    """Let calls of device functions inside a kernel launch reuse the launch's patches.

    Triton's interpreter patches ``triton.language`` for the kernel it launches, and again
    on every call of a ``@triton.jit`` function from inside it (``inspect.getmembers`` over
    its modules). Inductor's reductions with a combine function (the block maxima of block
    floating point, MX and NVFP4) call one for every pair of elements they combine: MX
    nearest on 4,104 elements patched 120,041 times. Inside a launch the modules are
    patched already (the interpreter never undoes a device call's patches), so a device
    call whose language modules the launch patched skips it; any other call patches as
    before.
    """
    from triton.runtime import interpreter

    patch = interpreter._patch_lang
    launch: list[set[int]] = []  # the language modules patched in the running launch
    found: dict[Any, frozenset[int]] = {}

    def languages(fn: Any) -> frozenset[int]:
        if fn not in found:
            modules = {id(interpreter.tl), id(interpreter.tl.core)}
            found[fn] = frozenset(id(v) for v in fn.__globals__.values()) & modules
        return found[fn]

    def patch_lang(fn: Any) -> Any:
        if launch and languages(fn) <= launch[0]:
            return interpreter._LangPatchScope()  # nothing patched, nothing to undo
        scope = patch(fn)
        if launch:  # a device call's patches stay
            launch[0] |= languages(fn)
            return scope
        launch.append(set(languages(fn)))
        restore = scope.restore

        def restore_and_end() -> None:
            launch.clear()
            restore()

        scope.restore = restore_and_end
        return scope

    interpreter._patch_lang = patch_lang


def _exact_bfloat16_casts() -> None:
    """Make the interpreter's bfloat16 <-> float32 casts the hardware's.

    Triton's interpreter converts through a generic routine that normalizes a subnormal
    input and then clamps the exponent at 0, so the bfloat16 subnormal 0x0002 became +0
    as float32 (and posit(8,2) of it 0 instead of its smallest value 2**-24, the one
    difference this script first reported for bfloat16 x); and it narrows float32 to
    bfloat16 without rounding. A GPU widens exactly (the bfloat16 bits are the float32's
    upper half) and narrows to nearest even.
    """
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    generic = builder.cast_impl

    def cast_impl(self: Any, src: Any, dst_type: Any) -> Any:
        tl = interpreter.tl
        source, target = src.dtype.scalar, dst_type.scalar
        if source == tl.bfloat16 and target == tl.float32:
            wide = src.data.astype(np.uint32) << np.uint32(16)
            return interpreter.TensorHandle(wide.view(np.float32), target)
        if source == tl.float32 and target == tl.bfloat16:
            bits = src.data.view(np.uint32)
            nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
            even = (bits >> np.uint32(16)) & np.uint32(1)
            rounded = (bits + np.uint32(0x7FFF) + even) >> np.uint32(16)
            quiet = (bits >> np.uint32(16)) | np.uint32(0x0040)
            narrow = np.where(nan, quiet, rounded).astype(np.uint16)
            return interpreter.TensorHandle(narrow, target)
        return generic(self, src, dst_type)

    builder.cast_impl = cast_impl
    builder.create_fp_ext = lambda self, src, dst_type: self.cast_impl(src, dst_type)
    builder.create_fp_trunc = lambda self, src, dst_type: self.cast_impl(src, dst_type)


def load(source: str) -> Callable[[list[torch.Tensor]], Sequence[torch.Tensor]]:
    """The ``call`` of a module cuda_codegen generated, running its kernels on the CPU."""
    replaced = {
        r"^from torch\._C import _cuda_getCurrentRawStream as get_raw_stream$": (
            "get_raw_stream = lambda index: None"
        ),
        r"^empty_strided_p2p = .*$": "",
        r"^async_compile = AsyncCompile\(\)$": "async_compile = __compile__",
    }
    for pattern, line in replaced.items():
        source = re.sub(pattern, line, source, flags=re.M)
    namespace: dict[str, Any] = {"__compile__": _Compile(), "__name__": "generated"}
    exec(compile(source, "generated", "exec"), namespace)
    namespace["empty_strided_cuda"] = lambda size, stride, dtype: torch.empty_strided(
        size, stride, dtype=dtype
    )
    call = namespace["call"]

    def run(args: list[torch.Tensor]) -> Sequence[torch.Tensor]:
        with (
            mock.patch.object(torch.cuda, "_DeviceGuard", lambda index: contextlib.nullcontext()),
            mock.patch.object(torch.cuda, "set_device", lambda index: None),
        ):
            return call(list(args))

    return run


def interpreted(
    fmt: Any,
    rounding: str,
    shape: tuple[int, ...],
    inplace: bool = False,
    dtype: torch.dtype = torch.float32,
    dynamic: bool = False,
) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """``quantize(x, fmt, rounding)`` (``quantize_`` if ``inplace``) by the CUDA kernels,
    interpreted, for x of ``shape`` and ``dtype``: a function of x and the seed, generated
    once (the kernels' argument is x as the fused path passes it: flat, or the row view).
    ``dynamic``: the kernels compiled for symbolic sizes, as qtorch compiles them."""
    view = cuda_codegen.kernel_shape(fmt, Rounding(rounding), shape)
    call = load(cuda_codegen.generate(fmt, rounding, shape, inplace, dtype, dynamic))
    constants = list(cuda_codegen.CONSTANTS)  # the codebooks' tables, lifted to inputs
    if any(c is None for c in constants):
        raise RuntimeError("a constant of the graph has no CPU value")

    def run(x: torch.Tensor, seed: torch.Tensor | None) -> torch.Tensor:
        arg = x.clone().view(view)
        out = call([*constants, arg] if seed is None else [*constants, arg, seed])
        result = out[0] if out and out[0] is not None else arg  # None: written into arg
        return result.view(x.shape)

    return run


def reference(fmt: Any, rounding: str, x: torch.Tensor, seed: torch.Tensor | None) -> torch.Tensor:
    """The eager path on the CPU, with ``seed`` for stochastic rounding."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    return eager.run(x, fmt, Rounding(rounding), seed, work, False)


def differences(got: torch.Tensor, want: torch.Tensor) -> int:
    """Elements whose bits differ (any NaN equals any NaN)."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return max(got.numel(), want.numel())
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[got.element_size()]
    nan = torch.isnan(got) & torch.isnan(want)
    return int(((got.view(ints) != want.view(ints)) & ~nan).sum())


def inputs(rounding: str, shape: tuple[int, ...], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """gpu_check's inputs in ``shape``: random bit patterns with the special values and
    blocks of exact ties (nearest), finite values of every scale (stochastic)."""
    n = math.prod(shape)
    if rounding == "stochastic":
        cases = {"finite": gpu_check.random_finite((n,), seed=3)}
    else:
        ties = gpu_check.exact_ties(-(-n // gpu_check.ROW), seed=5).reshape(-1)[:n]
        cases = {"bits": gpu_check.random_bits(0, seed=1, shape=(n,)), "ties": ties}
    return {k: v.reshape(shape).to(dtype) for k, v in cases.items()}


def check(
    fmt: Any,
    rounding: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    inplace: bool,
    dynamic: bool = False,
) -> dict[str, int]:
    """Differing elements per input, interpreted CUDA kernels against eager CPU."""
    seed = torch.tensor(gpu_check.SEED) if rounding == "stochastic" else None
    run = interpreted(fmt, rounding, shape, inplace, dtype, dynamic)
    found = {}
    for name, x in inputs(rounding, shape, dtype).items():
        found[name] = differences(run(x, seed), reference(fmt, rounding, x, seed))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", help="family names or format specs (bench's)")
    parser.add_argument(
        "--rounding",
        nargs="+",
        default=["nearest", "stochastic"],
        choices=("nearest", "stochastic"),
    )
    parser.add_argument("--shape", default="4096", help="x's shape, e.g. 4096 or 3,333")
    parser.add_argument("--inplace", action="store_true", help="quantize_ (into x)")
    parser.add_argument(
        "--dtype", default="float32", choices=sorted(cuda_codegen.DTYPES), help="x's dtype"
    )
    parser.add_argument(
        "--dynamic", action="store_true", help="sizes symbolic, as qtorch compiles its kernels"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    from qtorch.cli.bench import FAMILIES, resolve_formats

    _no_gpu_driver()
    _exact_bfloat16_casts()
    _device_calls_patch_once()

    shape = tuple(int(s) for s in args.shape.split(","))
    rows, failed = [], False
    for family, fmt in resolve_formats(args.formats or list(FAMILIES)):
        for rounding in args.rounding:
            if rounding not in {r.value for r in fmt.roundings}:
                continue
            found = check(
                fmt, rounding, shape, cuda_codegen.DTYPES[args.dtype], args.inplace, args.dynamic
            )
            failed |= any(found.values())
            variant = (" in place" if args.inplace else "") + (" dynamic" if args.dynamic else "")
            what = f"{family} {rounding}{variant}"
            words = ", ".join(
                f"{k}: {'same bits' if not v else f'{v} differ'}" for k, v in found.items()
            )
            print(f"{what:<28} {args.dtype} {args.shape}: {words}", flush=True)
            rows.append(
                {
                    "family": family,
                    "rounding": rounding,
                    "inplace": args.inplace,
                    "dtype": args.dtype,
                    "shape": list(shape),
                    "dynamic": args.dynamic,
                    "differ": found,
                }
            )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
