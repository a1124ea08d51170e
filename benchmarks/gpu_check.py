"""Check and time every quantizer on a CUDA GPU (one prepared script for a GPU machine).

For each format family (the formats of ``qtorch bench``):

1. nearest: the CUDA result of the eager and of the compiled (Triton) path, and of
   ``quantize_`` compiled (in place), is compared bitwise (any NaN equals any NaN) with the
   CPU eager result, on random float32 bit patterns (subnormals, ±0, ±Inf, NaN) plus the
   named special values;
2. nearest on an odd shape (no dimension a multiple of 16), 2-D and 1-D: compiled CUDA ==
   CPU eager;
   and nearest on exact ties (``exact_ties``: blocks whose NVFP4 quotients x / scale are
   E2M1 midpoints; Triton's own ``/`` is within 2 ulp and can move such ties, which
   ``qtorch.kernels.compiled_call.CONFIG`` now avoids), eager, compiled and in place;
3. stochastic: with the same ``torch.manual_seed`` the compiled CUDA path gives the same
   result twice and the same as the eager CUDA path; and with one fixed seed (the seed a
   call draws is replaced) the eager and compiled CUDA results equal the CPU eager result,
   on the 2-D input (``quantize_`` too) and on the odd shape (the noise is a function of
   the seed and the element's index, on every device);
4. no compiled call fell back to eager (a fallback would make the checks compare eager
   with eager);
5. timing: the compiled nearest and stochastic kernels at 1e8 elements against a
   device-to-device copy of the same tensor, two ways: the device's time (CUDA events
   around each of calls issued back to back, the host running ahead, as in a training
   step: what the kernels take) and the wall time of each call on its own (the host's
   dispatch work included: what a synchronizing caller waits). The target for nearest, at
   least 60 % of the copy bandwidth (copy/fused >= 0.6), is checked on the device's time;
   the per-call ratio is printed beside it, and stochastic is printed, not checked;
6. "auto" mode (fixed and posit nearest, 1e4, 1e6 and 1e7 elements): after its timed
   first calls of a size class it keeps one path; the check is that its results equal
   eager's and that it kept the faster path where medians timed here differ by more
   than 25 % (the eager and compiled medians are printed; the CPU dry run, which the
   test suite runs, checks the results and that one path was kept, not the timings);
7. an experiment, timed and printed: the 16-entry codebook by the bucket lookup of the
   large tables (gathers) instead of 15 unrolled comparisons (on the CPU: nearest 2.59
   against 2.15 ms, stochastic 3.83 against 3.79 ms at 4,194,304 float32, 2 threads; a
   GPU gathers from its cache); the check is that both give the same bits;
8. past 2**31 - 1 elements (CUDA only): fixed point and block floating point nearest on
   2**31 + 17 float16 after a small call: a kernel of its own (64-bit indices), one graph
   each, the eager CUDA path's bits (``check_index_widths``);
9. an experiment, timed and printed: the direct call (qtorch.kernels.compiled_call) against
   the call through Dynamo, per call (wall, synchronized), for fixed and posit nearest at
   1e4, 1e6 and 1e8 elements (written without a GPU; on the CPU it cut a call's host work
   from 30-60 to 10-15 µs); the check is that both give the same bits and that only the
   direct run remembered shapes.

Without CUDA it prints a message and exits 0. ``--cpu-dry-run`` runs the same logic with the
CPU standing in for the GPU (compiled CPU vs eager CPU, small sizes), to test the script.
Exit code 1 if any check fails. ``--json FILE`` writes every check and timing.

    python benchmarks/gpu_check.py                 # on the GPU machine
    # keeping every line (the report runs past 12,000 characters), e.g. under a folder $OUT:
    python benchmarks/gpu_check.py --json $OUT/gpu.json 2>&1 | tee $OUT/gpu.txt | tail -40
    python benchmarks/gpu_check.py --cpu-dry-run --size 3000 --formats fixed block
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

import qtorch
from qtorch.cli.bench import FAMILIES, family_format, median_time, resolve_formats
from qtorch.kernels import fused
from qtorch.rounding import Rounding

SPECIALS = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 2.0**-149, -(2.0**-149)]
SPECIALS += [2.0**-126, 3.4028234663852886e38, -3.4028234663852886e38, 1.0, -1.0, 0.5, 448.0]
ROW = 128  # inputs are 2-D (n / ROW, ROW), so block formats with a dim see real blocks
ODD = (3, 33_339)  # no dimension a multiple of 16: masked tails, partial blocks
SEED = 0x1234_5678_9ABC_DEF0 - 2**63  # the fixed seed of the cross-device checks


def random_bits(n: int, seed: int, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """float32 values from uniformly random bit patterns, the specials first, on the CPU.

    The shape is ``shape`` if given, else (n / ROW, ROW) with n rounded down to rows.
    """
    if shape is None:
        n = max(ROW, n - n % ROW)
        shape = (n // ROW, ROW)
    else:
        n = int(torch.Size(shape).numel())
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    x[: len(SPECIALS)] = torch.tensor(SPECIALS)
    return x.view(shape)


def random_finite(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The stochastic checks' input, on the CPU: normal values times 2**k, k uniform in
    -30..5 (so that many round to zero or below a format's smallest value), ±0 first."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp2(torch.randint(-30, 6, shape, generator=g).to(torch.float32))
    x = torch.randn(shape, generator=g) * scale
    x.view(-1)[:2] = torch.tensor([0.0, -0.0])
    return x


@contextlib.contextmanager
def fixed_seed(seed: int) -> Iterator[None]:
    """Every quantize call in the block uses ``seed`` instead of drawing one (in the full
    dispatch and in a call's plan)."""
    modules = [importlib.import_module(m) for m in ("qtorch.quantize", "qtorch.kernels.fused")]
    draws = [getattr(module, "draw_seed") for module in modules]  # noqa: B009 (replaced below)
    for module in modules:
        setattr(module, "draw_seed", lambda generator, device: torch.tensor(seed, device=device))  # noqa: B010
    try:
        yield
    finally:
        for module, draw in zip(modules, draws, strict=True):
            setattr(module, "draw_seed", draw)  # noqa: B010


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, any NaN equal to any NaN."""
    a, b = a.cpu(), b.cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):
        return False
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a[~nan].view(bits), b[~nan].view(bits))


def record(
    log: list[dict[str, Any]], family: str, what: str, ok: bool | None, extra: str = ""
) -> None:
    """Print one check's line (ok None: it does not apply) and log it."""
    word = "n/a" if ok is None else "ok" if ok else "FAIL"
    print(f"{family:<12} {what:<44} {word} {extra}", flush=True)
    log.append({"family": family, "check": what, "ok": ok, "extra": extra})


#: Timed calls per median.
REPEATS = 30


def busy(fns: Sequence[Callable[[], object]], device: torch.device, seconds: float = 0.3) -> None:
    """Call fns in turn for about ``seconds``: after the compiles the GPU idles at a low
    clock, and short timings that start there vary by ±30 % (seen on an H200)."""
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for fn in fns:
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def device_time(fn: Callable[[], object], device: torch.device, repeats: int = REPEATS) -> float:
    """Median seconds the device spends per ``fn()`` with calls issued back to back.

    On CUDA: an event is recorded before and after each call and the host is not made to
    wait in between, so it runs ahead and the events time the kernels (and any gap between
    the kernels of one call); as ``triton.testing.do_bench`` does. On the CPU (the dry
    run): the wall time of each call.
    """
    if device.type != "cuda":
        return median_time(fn, device, repeats, 3)
    for _ in range(3):
        fn()
    events = [
        (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        for _ in range(repeats)
    ]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


#: E2M1's midpoints: x / scale at one of these is an exact tie of NVFP4's rounding.
MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def exact_ties(rows: int, seed: int) -> torch.Tensor:
    """Rows of 128 in blocks of 16, on the CPU, whose values are exact ties of rounding.

    Each block is ``6 d`` and ± E2M1 midpoints times ``d``, d an E4M3 value (1 + m / 8) 2**e:
    NVFP4 takes d as its scale, so x / d is a midpoint exactly, and a division that is off
    by one ulp (Triton's ``/``: div.full.f32) rounds the other way. The values have at most
    seven significant bits, so they are ties of the coarser formats' roundings too.
    """
    g = torch.Generator().manual_seed(seed)
    blocks = rows * ROW // 16
    d = (1 + torch.randint(0, 8, (blocks, 1), generator=g) / 8) * torch.exp2(
        torch.randint(-6, 7, (blocks, 1), generator=g).to(torch.float32)
    )
    pick = torch.randint(0, len(MIDPOINTS), (blocks, 16), generator=g)
    sign = torch.randint(0, 2, (blocks, 16), generator=g) * 2 - 1
    values = torch.tensor(MIDPOINTS)[pick] * sign
    values[:, 0] = 6.0  # the block's maximum: its scale is d exactly
    return (values * d).reshape(rows, ROW)


def quantize_in(mode: str, x: torch.Tensor, fmt: qtorch.Format, rounding: str) -> torch.Tensor:
    with qtorch.kernel_mode(mode):
        return qtorch.quantize(x, fmt, rounding)


def check_format(
    family: str,
    fmt: qtorch.Format,
    device: torch.device,
    size: int,
    time_size: int,
    log: list[dict[str, Any]],
) -> list[bool]:
    """Run the checks of one format; print a line per check; return their outcomes."""
    results = []

    def report(what: str, ok: bool | None, extra: str = "") -> None:
        """ok None: the check does not apply to this format."""
        if ok is not None:
            results.append(ok)
        record(log, family, what, ok, extra)

    def against_cpu(what: str, x_cpu: torch.Tensor, rounding: str, modes: Sequence[str]) -> None:
        try:
            reference = quantize_in("eager", x_cpu, fmt, rounding)
        except (ValueError, TypeError) as err:  # a shape the format does not take
            report(what, None, f"({type(err).__name__}: {str(err)[:80]})")
            return
        x = x_cpu.to(device)
        for mode in modes:
            if mode == "in place":  # quantize_, compiled: the optimizer's path
                got = x.clone()
                with qtorch.kernel_mode("compiled"):
                    qtorch.quantize_(got, fmt, rounding)
            else:
                got = quantize_in(mode, x, fmt, rounding)
            report(f"{what} {mode} {device.type} == cpu", same_bits(got, reference))

    broken = len(fused._broken)
    # in place: elementwise formats and block floating point write into x from the kernel
    modes = ("eager", "compiled", "in place")
    against_cpu("nearest", random_bits(size, seed=1), "nearest", modes)
    against_cpu("nearest odd", random_bits(0, seed=2, shape=ODD), "nearest", ("compiled",))
    # 1-D with a padded last block: MX's kernel in one piece did not compile there
    against_cpu(
        "nearest odd 1-d", random_bits(0, seed=6, shape=(ODD[1],)), "nearest", ("compiled",)
    )
    against_cpu("nearest exact ties", exact_ties(max(1, size // ROW), seed=5), "nearest", modes)

    stochastic = "stochastic" in {r.value for r in fmt.roundings}
    if stochastic:
        finite = random_finite((max(1, size // ROW), ROW), seed=3).to(device)
        runs = []
        for mode in ("compiled", "compiled", "eager"):
            torch.manual_seed(1234)
            runs.append(quantize_in(mode, finite, fmt, "stochastic"))
        report("stochastic seeded: compiled twice", same_bits(runs[0], runs[1]))
        report("stochastic seeded: compiled == eager", same_bits(runs[0], runs[2]))
        with fixed_seed(SEED):
            # in place on CUDA, codebooks and block floating point compute on the row view
            # (fused.computes_on_rows), on the CPU flat
            against_cpu("stochastic seed", finite.cpu(), "stochastic", modes)
            odd = random_finite(ODD, seed=4)
            against_cpu("stochastic seed odd", odd, "stochastic", ("eager", "compiled"))
    fell_back = len(fused._broken) - broken
    report("compiled calls did not fall back", fell_back == 0, f"({fell_back} keys broken)")

    big = torch.randn(time_size, device=device)
    out = torch.empty_like(big)
    copy = functools.partial(out.copy_, big)
    for rounding in ("nearest", "stochastic") if stochastic else ("nearest",):
        with qtorch.kernel_mode("compiled"):
            run = functools.partial(qtorch.quantize, big, fmt, rounding)
            busy((copy, run), device)
            t_copy, t_fused = device_time(copy, device), device_time(run, device)
            call_copy = median_time(copy, device, REPEATS, 3)
            call_fused = median_time(run, device, REPEATS, 3)
        fraction = t_copy / t_fused
        gbs = 2 * big.numel() * 4 / t_fused / 1e9
        extra = (
            f"device: copy {t_copy * 1e3:.3f} ms, fused {t_fused * 1e3:.3f} ms, {gbs:.0f} GB/s; "
            f"per call: copy {call_copy * 1e3:.3f} ms, fused {call_fused * 1e3:.3f} ms "
            f"({call_copy / call_fused:.2f})"
        )
        what = f"{rounding} bandwidth vs copy {fraction:.2f}"
        if device.type == "cuda" and rounding == "nearest":
            report(f"{what} (>= 0.60)", fraction >= 0.6, extra)
        else:
            report(what, None, extra)
    return results


#: x's size for the check past 32-bit indices: 2**31 + 17 elements (float16, 4 GiB).
HUGE = 2**31 + 17


def check_index_widths(device: torch.device, log: list[dict[str, Any]]) -> list[bool]:
    """Calls past 2**31 - 1 elements after smaller ones (fixed point, block floating point
    nearest, float16): Inductor's Triton code indexes those in 64 bits and the smaller
    ones in 32 with a guard on the size, so they must get a kernel of their own
    (``fused.KernelKey.long_index``), each one graph, and the eager CUDA path's bits."""
    if device.type != "cuda":
        record(log, "index", "past 2**31 - 1 elements", None, "(CUDA only)")
        return []
    results = []
    big = torch.randn(HUGE, device=device, dtype=torch.float16)
    for family in ("fixed", "block"):
        fmt = family_format(family)
        with qtorch.kernel_mode("compiled"):
            small = qtorch.quantize(big[:100_017], fmt, "nearest")  # the 32-bit kernel
            got = qtorch.quantize(big, fmt, "nearest")
        expected = quantize_in("eager", big, fmt, "nearest")
        same = torch.equal(got.view(torch.int16), expected.view(torch.int16))
        del got, expected
        same_small = same_bits(small, quantize_in("eager", big[:100_017], fmt, "nearest"))
        keys = [k for k in fused._cache if k.fmt == fmt and k.dtype == torch.float16]
        classes = sorted(k.long_index for k in keys)
        graphs = [len(fused._cache[k].capture.graphs) for k in keys]
        ok = same and same_small and classes == [0, 2] and graphs == [1, 1]
        extra = f"(equal {same}, {same_small}; index classes {classes}; graphs {graphs})"
        what = f"nearest past 2**31 - 1 ({HUGE} float16)"
        record(log, family, what, ok, extra)
        results.append(ok)
    return results


#: Sizes of the "auto" checks on the GPU, and in the dry run.
AUTO_SIZES = (10_000, 1_000_000, 10_000_000)
AUTO_SIZES_DRY = (3_000, 30_000, 300_000)


def check_auto(device: torch.device, sizes: Sequence[int], log: list[dict[str, Any]]) -> list[bool]:
    """Check which path "auto" keeps per size class against timings of both paths."""
    results = []
    formats = [("fixed", qtorch.FixedPoint(8, 4)), ("posit", qtorch.Posit(8, 2))]
    old_after = fused.AUTO_COMPILE_AFTER_S
    fused.AUTO_COMPILE_AFTER_S = 0.0  # compile at once: this checks the choice after it
    try:
        for family, fmt in formats:
            for n in sizes:
                x = torch.randn(n, device=device) * 4
                expected = quantize_in("eager", x, fmt, "nearest")
                same = all(
                    same_bits(quantize_in("auto", x, fmt, "nearest"), expected)
                    for _ in range(2 * fused.MEASURE_CALLS + 2)
                )
                # this call's key only: other checks (stochastic, in place) of the same
                # format leave their own decisions at this size
                key = fused._key(x, fmt, Rounding.NEAREST, False, device.type)
                kept_here = {fused._faster.get((key, n.bit_length()))} - {None}
                times = {}
                for mode in ("eager", "compiled"):
                    run = functools.partial(quantize_in, mode, x, fmt, "nearest")
                    busy((run,), device, 0.1)
                    times[mode] = median_time(run, device, REPEATS, 3)
                faster = min(times, key=lambda m: times[m])
                clear = max(times.values()) > 1.25 * min(times.values())
                ok = same and len(kept_here) == 1
                if device.type == "cuda":  # the dry run (a test) must not depend on timings
                    ok = ok and (not clear or kept_here == {faster})
                extra = (
                    f"kept {sorted(kept_here) or '-'}; eager {times['eager'] * 1e3:.3f} ms, "
                    f"compiled {times['compiled'] * 1e3:.3f} ms"
                )
                results.append(ok)
                what = f"auto keeps the faster path at {n}"
                record(log, family, what, ok, extra)
    finally:
        fused.AUTO_COMPILE_AFTER_S = old_after
    return results


def experiment_codebook_buckets(
    device: torch.device, time_size: int, log: list[dict[str, Any]]
) -> list[bool]:
    """Time codebook 16 with unrolled comparisons and with the bucket lookup; same bits?"""
    from qtorch.formats import codebook as codebook_format
    from qtorch.kernels import codebook_search

    fmt = family_format("codebook16")
    x = torch.randn(time_size, device=device) * 4
    unroll_max = codebook_search.UNROLL_MAX
    outs, times = {}, {}
    try:
        for unroll in (unroll_max, 0):
            codebook_search.UNROLL_MAX = unroll  # 0: every table goes to the buckets
            codebook_format._build_tables.cache_clear()
            fused.clear_cache()
            with qtorch.kernel_mode("compiled"):
                for rounding in ("nearest", "stochastic"):
                    with fixed_seed(SEED):
                        outs[unroll, rounding] = qtorch.quantize(x, fmt, rounding)
                        run = functools.partial(qtorch.quantize, x, fmt, rounding)
                        busy((run,), device, 0.1)
                        times[unroll, rounding] = median_time(run, device, REPEATS, 3)
    finally:
        codebook_search.UNROLL_MAX = unroll_max
        codebook_format._build_tables.cache_clear()
        fused.clear_cache()
    results = []
    for rounding in ("nearest", "stochastic"):
        ok = same_bits(outs[unroll_max, rounding], outs[0, rounding])
        extra = (
            f"unrolled {times[unroll_max, rounding] * 1e3:.3f} ms, "
            f"buckets {times[0, rounding] * 1e3:.3f} ms at {time_size}"
        )
        what = f"{rounding} by buckets: same bits"
        record(log, "codebook16", what, ok, extra)
        results.append(ok)
    return results


#: Sizes of the direct-call experiment on the GPU, and in the dry run.
DIRECT_SIZES = (10_000, 1_000_000, 100_000_000)
DIRECT_SIZES_DRY = (3_000, 100_000)


def experiment_direct_call(
    device: torch.device, sizes: Sequence[int], log: list[dict[str, Any]]
) -> list[bool]:
    """Time compiled calls straight into Inductor's function against calls through Dynamo."""
    from qtorch.kernels import compiled_call

    formats = [("fixed", qtorch.FixedPoint(8, 4)), ("posit", qtorch.Posit(8, 2))]
    inputs = {n: torch.randn(n, device=device) * 4 for n in sizes}
    outs, times, remembered = {}, {}, {}
    direct = compiled_call.DIRECT[device.type]
    try:
        for on in (True, False):
            compiled_call.DIRECT[device.type] = on
            fused.clear_cache()  # the shapes remembered go with the kernels
            for family, fmt in formats:
                for n, x in inputs.items():
                    run = functools.partial(quantize_in, "compiled", x, fmt, "nearest")
                    outs[family, n, on] = run()
                    busy((run,), device, 0.1)
                    times[family, n, on] = median_time(run, device, REPEATS, 3)
            remembered[on] = sum(len(getattr(k, "shapes", ())) for k in fused._cache.values())
    finally:
        compiled_call.DIRECT[device.type] = direct
        fused.clear_cache()
    results = []
    for family, _ in formats:
        for n in sizes:
            ok = same_bits(outs[family, n, True], outs[family, n, False])
            ok = ok and remembered[True] > 0 and remembered[False] == 0
            on, off = times[family, n, True], times[family, n, False]
            extra = f"direct {on * 1e3:.3f} ms, through Dynamo {off * 1e3:.3f} ms ({on / off:.2f})"
            what = f"direct call at {n}: same bits"
            record(log, family, what, ok, extra)
            results.append(ok)
    return results


def guarded(
    label: str, log: list[dict[str, Any]], check: Callable[..., list[bool]], *args: Any
) -> list[bool]:
    """``check(*args, log)``'s outcomes, or one failure if it raised (with the traceback):
    one check's error must not hide the others' results. Prints the seconds the group took
    (compiles included), for planning a run within a GPU session's time."""
    start = time.perf_counter()
    try:
        return check(*args, log)
    except Exception:
        traceback.print_exc()
        print(f"{label:<12} {'raised':<44} FAIL", flush=True)
        log.append({"family": label, "check": "raised", "ok": False})
        return [False]
    finally:
        print(f"{label:<12} {'took':<44} {time.perf_counter() - start:.1f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="use the CPU as the device")
    parser.add_argument("--formats", nargs="+", default=list(FAMILIES), help="families or specs")
    parser.add_argument("--size", type=int, default=1 << 20, help="elements of the bit checks")
    parser.add_argument("--time-size", type=int, default=0, help="elements timed (default 1e8)")
    parser.add_argument("--json", metavar="FILE", help="also write the checks as JSON")
    parser.add_argument("--no-auto", action="store_true", help="skip the auto-mode checks")
    parser.add_argument("--no-experiments", action="store_true", help="skip the experiments")
    args = parser.parse_args(argv)
    if args.cpu_dry_run:
        device = torch.device("cpu")
        time_size = args.time_size or 100_000
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        time_size = args.time_size or 100_000_000
    else:
        print("gpu_check: no CUDA device here; nothing to check (use --cpu-dry-run to test)")
        return 0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (dry run)"
    triton = _version("triton")
    print(
        f"device={name} torch={torch.__version__} triton={triton} "
        f"size={args.size} time_size={time_size}"
    )
    results: list[bool] = []
    log: list[dict[str, Any]] = []
    for family, fmt in resolve_formats(args.formats):
        results += guarded(family, log, check_format, family, fmt, device, args.size, time_size)
    results += guarded("index", log, check_index_widths, device)
    if not args.no_auto:
        sizes = AUTO_SIZES_DRY if args.cpu_dry_run else AUTO_SIZES
        results += guarded("auto", log, check_auto, device, sizes)
    if not args.no_experiments:
        results += guarded("codebook16", log, experiment_codebook_buckets, device, time_size)
        sizes = DIRECT_SIZES_DRY if args.cpu_dry_run else DIRECT_SIZES
        results += guarded("direct", log, experiment_direct_call, device, sizes)
    failed = results.count(False)
    print(f"{len(results) - failed} checks ok, {failed} failed")
    if args.json:
        env = {"device": name, "torch": torch.__version__, "triton": triton}
        with open(args.json, "w") as f:
            json.dump({"environment": env, "checks": log}, f, indent=1)
    return 1 if failed else 0


def _version(package: str) -> str | None:
    """The installed version of ``package``, None if it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
