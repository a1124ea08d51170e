"""A/B timing of the kernels: this working tree against an earlier commit, in one process.

On a shared machine the time of one pass over a tensor moves by 2x from minute to minute
(see docs/performance.md, "The reference is noisy"), so two benchmark runs cannot show a
10 % change. This script imports the package as it was at ``--base`` (extracted with
``git archive`` and renamed ``qtorch_base``) next to the working tree's ``qtorch``, compiles
each format's kernel from both, and times them alternately, call by call, reporting the
median and quartiles of the per-pair ratios new / base (below 1: the working tree is
faster) and whether the two give the same bits. By default one thread and CPU time
(``time.thread_time``), which other processes disturb least.

    python benchmarks/ab.py --base HEAD~3 --formats posit "float(5,2)" --rounding stochastic
    python benchmarks/ab.py --base main --eager --size 100000      # eager kernels, no compile
    python benchmarks/ab.py --base HEAD~1 --api --threads 2 --timer wall  # qtorch.quantize

``--api`` times the whole ``quantize`` call in "compiled" mode (dispatch, the call into the
compiled kernel, the result) instead of the bare kernel; ``--api --eager`` in "eager" mode
(the eager path as users run it: in pieces where it splits the tensor).
"""

from __future__ import annotations

import argparse
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import qtorch
from qtorch.cli.bench import family_format

ROOT = Path(__file__).resolve().parent.parent
_IMPORTS = re.compile(r"\bqtorch(?=[.\s,]|$)", re.MULTILINE)


def import_base(rev: str, into: Path) -> ModuleType:
    """The package ``src/qtorch`` at git revision ``rev``, importable as ``qtorch_base``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src/qtorch"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = into / "qtorch_base"
    (into / "src" / "qtorch").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(_IMPORTS.sub("qtorch_base", path.read_text()))
    sys.path.insert(0, str(into))
    return importlib.import_module("qtorch_base")


def _spec(name: str) -> str:
    """The format's constructor call (its repr) for a family name or a format spec."""
    return repr(family_format(name))


def kernel(
    package: ModuleType, spec: str, rounding: str, compiled: bool
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fmt.quantize_kernel`` of the package for one format and rounding (noise made inside)."""
    fmt = package.format_from_string(spec)
    mode = package.Rounding(rounding)
    counter = importlib.import_module(package.__name__ + ".kernels.noise").uniform_from_counter

    def run(x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        noise = counter(seed, x.shape, x.dtype) if rounding == "stochastic" else None
        return fmt.quantize_kernel(x, mode, noise)

    # a code object of its own: Dynamo's per-code cache must not mix the two packages
    run.__code__ = run.__code__.replace(co_name=f"ab_{package.__name__}_{rounding}")
    return torch.compile(run, fullgraph=True, dynamic=False) if compiled else run


def api(
    package: ModuleType, spec: str, rounding: str, mode: str = "compiled"
) -> Callable[..., torch.Tensor]:
    """``package.quantize`` for one format and rounding, in the package's kernel ``mode``."""
    fmt = package.format_from_string(spec)

    def run(x: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
        with package.kernel_mode(mode):
            return package.quantize(x, fmt, rounding)  # type: ignore[no-any-return]

    return run


#: The integer dtype of each float dtype's width, to compare bit patterns.
_BITS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bit patterns, any NaN equal to any NaN."""
    nan = torch.isnan(a) & torch.isnan(b)
    a, b = torch.where(nan, 0.0, a), torch.where(nan, 0.0, b)
    bits = _BITS[a.element_size()]
    return bool(torch.equal(a.view(bits), b.view(bits)))


def compare(
    new: Callable[..., Any],
    base: Callable[..., Any],
    args: tuple[Any, ...],
    pairs: int,
    clock: Callable[[], float],
) -> list[float]:
    """Per-pair ratios new(*args) / base(*args), the two timed alternately.

    The order within a pair alternates too (new first, then base first): the second call of
    a pair runs in the state the first leaves (its freed output, the cache), which on this
    kind of machine moves a memory-bound kernel by a few percent. With ``--base HEAD`` (the
    same code on both sides), timing new first in every pair gave 1.02 and 1.06 for
    fixed-point nearest (1 and 2 threads); alternating, 1.02 and 0.985.
    """
    ratios = []
    for i in range(pairs):
        order = (new, base) if i % 2 == 0 else (base, new)
        seconds = {}
        for fn in order:
            start = clock()
            fn(*args)
            seconds[fn] = clock() - start
        ratios.append(seconds[new] / max(seconds[base], 1e-12))
    return ratios


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare with")
    parser.add_argument("--formats", nargs="+", default=["fixed", "float", "posit"])
    parser.add_argument("--rounding", choices=("nearest", "stochastic", "both"), default="both")
    parser.add_argument("--size", type=int, default=4_194_304, help="elements")
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64", "float16", "bfloat16"),
        default="float32",
        help="x's dtype (float16 and bfloat16 with --api, which rounds them in float32)",
    )
    parser.add_argument("--pairs", type=int, default=15, help="timed pairs per format")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timer", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--eager", action="store_true", help="time the eager kernels")
    parser.add_argument(
        "--api", action="store_true", help="time qtorch.quantize (compiled; eager with --eager)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.timer == "cpu" else time.perf_counter
    roundings = ("nearest", "stochastic") if args.rounding == "both" else (args.rounding,)
    x = torch.randn(args.size, generator=torch.Generator().manual_seed(args.size))
    x = x.to(getattr(torch, args.dtype))
    seed = torch.tensor(12345)
    with tempfile.TemporaryDirectory() as tmp:
        base_pkg = import_base(args.base, Path(tmp))
        print(
            f"new=working tree base={args.base} size={args.size} {args.dtype} "
            f"threads={args.threads} "
            f"timer={args.timer} "
            f"path={'api ' if args.api else ''}{'eager' if args.eager else 'compiled'} "
            f"pairs={args.pairs}"
        )
        print(f"{'format':<40} {'rounding':<10} {'same bits':<9} new/base median [quartiles]")
        for name in args.formats:
            spec = _spec(name)
            for rounding in roundings:
                if args.api:
                    mode = "eager" if args.eager else "compiled"
                    new = api(qtorch, spec, rounding, mode)
                    old = api(base_pkg, spec, rounding, mode)
                else:
                    new = kernel(qtorch, spec, rounding, not args.eager)
                    old = kernel(base_pkg, spec, rounding, not args.eager)
                outputs = []
                for fn in (new, old):
                    torch.manual_seed(1)  # the same seed for quantize's stochastic rounding
                    outputs.append(fn(x, seed))
                equal = same_bits(*outputs)
                ratios = compare(new, old, (x, seed), args.pairs, clock)
                q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
                print(
                    f"{spec[:40]:<40} {rounding:<10} {'yes' if equal else 'NO':<9} "
                    f"{statistics.median(ratios):.3f} [{q[0]:.3f}, {q[2]:.3f}]",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
