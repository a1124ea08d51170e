"""``qtorch bench``: time every quantizer against the memory-bound limit.

For each format family and rounding mode, at each size, the median time of the eager and
the fused (compiled) path after warm-up, in elements per second, as ratios to two passes
over the same tensor timed in the same run: the cheapest elementwise pass,
``torch.mul(x, 2.0)`` on the CPU (a quantizer that returns a new tensor cannot beat it) or
a device-to-device copy on CUDA, and ``x.clone()``; and the fused path's speedup over the
eager one.

Where x and the reference's output together take at least half the largest cache, every
timed call starts with cold caches by default (``--cache auto``: a buffer several times the
largest cache is read before it, :mod:`qtorch.cli.cold_cache`): there a warm cache holds a
varying part of them, and the reference runs at memory speed, the limit it stands for,
only when cold. Smaller tensors are timed warm, as they run in a training step (a cold
call there times the interpreter's own data coming back from memory). ``--cache cold``
and ``--cache warm`` apply one state to every size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from qtorch.cli.cold_cache import Evictor, eviction_bytes, largest_cache_bytes


def _spec(text: str) -> Callable[[], Any]:
    def build() -> Any:
        from qtorch.formats.parse import format_from_string

        return format_from_string(text)

    return build


def _codebook(entries: int) -> Callable[[], Any]:
    def build() -> Any:
        from qtorch.formats.codebook import Codebook

        step = 8 / entries  # magnitudes 0, step, ..., 8 - step, mirrored by sign
        return Codebook(tuple(k * step for k in range(entries)))

    return build


#: The formats timed by default: one per family (codebooks at 16 and 256 entries).
#: A family whose module does not exist in this installation is skipped with a note.
FAMILIES: dict[str, Callable[[], Any]] = {
    "fixed": _spec("fixed(8,4)"),
    "float": _spec("float(5,2)"),
    "block": _spec("block(8)"),
    "posit": _spec("posit(8,2)"),
    "codebook16": _codebook(16),
    "codebook256": _codebook(256),
    "mx": _spec("mxfp8_e4m3"),
    "nvfp4": _spec("nvfp4"),
}


def family_format(name: str) -> Any:
    """The format timed for a family name of :data:`FAMILIES`, or the format of a spec."""
    build = FAMILIES.get(name, _spec(name))
    return build()


SIZES = (10_000, 1_000_000, 4_194_304, 10_000_000)
QUICK_SIZES = (1_000, 5_003)
ROUNDINGS = ("nearest", "stochastic")
#: ``--cache``: evict the caches before each timed call at large sizes, always, or never.
CACHE_STATES = ("auto", "cold", "warm")


@dataclass
class Row:
    """One measurement: a format and rounding at one size on one device."""

    family: str
    format: str
    rounding: str
    device: str
    n: int
    reference: str
    reference_ms: float
    clone_ms: float
    eager_ms: float | None
    fused_ms: float | None
    eager_ratio: float | None
    fused_ratio: float | None
    #: quartiles of the per-triple ratios behind eager_ratio and fused_ratio: their spread
    eager_ratio_q1: float | None
    eager_ratio_q3: float | None
    fused_ratio_q1: float | None
    fused_ratio_q3: float | None
    eager_clone_ratio: float | None
    fused_clone_ratio: float | None
    #: "cold" (the caches evicted before each timed call) or "warm"
    cache: str
    #: eager ms / fused ms: how many times faster the fused path is
    fused_speedup: float | None
    fused_melem_s: float | None
    first_call_s: float | None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: The clock of :func:`median_time`: wall time, or (``--timer cpu``) the CPU time of the
#: calling thread, which a busy shared machine disturbs much less (used with one thread).
_clock: Callable[[], float] = time.perf_counter


def median_time(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median time of ``fn()`` in seconds over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = _clock()
        fn()
        _sync(device)
        times.append(_clock() - start)
    return statistics.median(times)


def resolve_formats(names: Sequence[str]) -> list[tuple[str, Any]]:
    """(family, format) pairs for family names of :data:`FAMILIES` or format specs.

    Names that this installation cannot build are skipped with a note on stderr.
    """
    found = []
    for name in names:
        try:
            found.append((name, family_format(name)))
        except (ValueError, ImportError, AttributeError, TypeError) as err:
            print(f"note: skipping {name!r}: {str(err)[:200]}", file=sys.stderr)
    return found


#: At least this many (reference, clone, quantizer) triples are timed per measurement.
MIN_TRIPLES = 3


Triple = tuple[float, float, float]  # seconds of (reference, clone, quantizer) in one go


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile of ``values`` (not empty), within their range.

    Linear interpolation between the sorted values ("inclusive"); one value is all three.
    """
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


@dataclass
class Timing:
    """One kernel mode of one row: medians over the timed triples (reference, clone, run)."""

    seconds: float
    reference_s: float
    clone_s: float
    ratio: float  # median of the per-triple ratios run / reference
    ratio_q1: float  # their first and third quartiles
    ratio_q3: float
    clone_ratio: float  # median of the per-triple ratios run / clone
    first_call_s: float

    @classmethod
    def of(cls, times: Sequence[Triple], first_call_s: float) -> Timing:
        """Medians (and the ratio's quartiles) of the triples ``times`` (from every round)."""
        ratios = [t / ref for ref, _, t in times]
        q1, _, q3 = quartiles(ratios)
        return cls(
            seconds=statistics.median(t for _, _, t in times),
            reference_s=statistics.median(ref for ref, _, _ in times),
            clone_s=statistics.median(clone for _, clone, _ in times),
            ratio=statistics.median(ratios),
            ratio_q1=q1,
            ratio_q3=q3,
            clone_ratio=statistics.median(t / clone for _, clone, t in times),
            first_call_s=first_call_s,
        )


def _time_path(
    mode: str,
    x: torch.Tensor,
    fmt: Any,
    rounding: str,
    references: tuple[Callable[[], Any], Callable[[], Any]],
    repeats: int,
    warmup: int,
    budget_s: float,
    evict: Callable[[], None] | None = None,
) -> tuple[list[Triple], float]:
    """Time ``qtorch.quantize`` in one kernel mode against the two reference passes.

    Returns the timed triples and the time of the first call (the compile, in the first
    round). ``warmup`` untimed calls of each come first; at most ``repeats`` triples are
    timed, fewer when the quantizer would take more than ``budget_s`` for them, never
    fewer than :data:`MIN_TRIPLES`. ``evict`` (cold caches) runs before each timed call.
    """
    import qtorch

    def run() -> Any:
        return qtorch.quantize(x, fmt, rounding)

    ref_fn, clone_fn = references
    with qtorch.kernel_mode(mode):
        start = time.perf_counter()
        run()
        _sync(x.device)
        first = time.perf_counter() - start
        # slow eager kernels on large tensors: fewer triples, never fewer than MIN_TRIPLES
        second = median_time(run, x.device, 1, max(0, warmup - 1))
        median_time(ref_fn, x.device, 1, warmup)
        median_time(clone_fn, x.device, 1, warmup)
        count = max(MIN_TRIPLES, min(repeats, int(budget_s / max(second, 1e-9))))
        # The references and the quantizer alternate call by call, and each ratio is the
        # median of the per-triple ratios: the three calls see the same state of the machine.
        # The order changes from triple to triple (ORDERS).
        times = [_triple((ref_fn, clone_fn, run), i, x.device, evict) for i in range(count)]
    return times, first


#: The orders of one timed triple: all six, in turn, so that each call runs equally often
#: after each of the others (a call runs in the state the previous one leaves: its freed
#: output, the cache).
ORDERS = tuple(itertools.permutations(range(3)))


def _triple(
    fns: tuple[Callable[[], Any], Callable[[], Any], Callable[[], Any]],
    index: int,
    device: torch.device,
    evict: Callable[[], None] | None = None,
) -> tuple[float, float, float]:
    """One call of each of ``fns``, in order ``ORDERS[index % 6]``; their times in fns's order.

    ``evict``, given, runs (untimed) before each call: every call starts with cold caches.
    """
    seconds = [0.0, 0.0, 0.0]
    for j in ORDERS[index % len(ORDERS)]:
        if evict is not None:
            evict()
        seconds[j] = median_time(fns[j], device, 1, 0)
    return seconds[0], seconds[1], seconds[2]


def _reference(x: torch.Tensor) -> tuple[str, Callable[[], Any], Callable[[], Any]]:
    """The reference passes on x: (name, the memory-bound pass, ``x.clone()``).

    The memory-bound pass is a device-to-device copy on CUDA, ``torch.mul(x, 2.0)`` else.
    """
    clone = x.clone
    if x.device.type == "cuda":
        out = torch.empty_like(x)
        return "copy", lambda: out.copy_(x), clone
    return "mul", lambda: torch.mul(x, 2.0), clone


def measure(
    formats: list[tuple[str, Any]],
    sizes: Sequence[int],
    device: torch.device,
    repeats: int,
    warmup: int,
    paths: Sequence[str] = ("eager", "fused"),
    budget_s: float = 2.0,
    rounds: int = 1,
    cache: str = "warm",
) -> list[Row]:
    """Time every (format, rounding) at every size; print a line per row as it is done.

    Every fused measurement (all sizes) comes before every eager one: the eager path's
    large temporaries change the state of the C allocator, after which the reference's own
    output may page-fault on every call (``torch.mul`` at 4,194,304 elements took 0.35 to
    8 ms depending on what ran before), which would distort the fused ratios.

    Each size is measured in ``rounds`` rounds over its rows, each round timing about
    ``repeats / rounds`` triples of every row within ``budget_s / rounds``; a row's medians
    are over its triples from all rounds, so that they sample the machine's state over
    all the rows of its size rather than over the fraction of a second one row takes.

    ``cache``: "cold" evicts the data caches before every timed call
    (:class:`qtorch.cli.cold_cache.Evictor`), so that each one reads x from memory; "auto"
    does so where x and the reference's output take at least half the largest cache (every
    size if that cache's size is unknown); "warm" never.
    """
    cases = [
        (family, fmt, rounding)
        for family, fmt in formats
        for rounding in ROUNDINGS
        if rounding in {r.value for r in fmt.roundings}
    ]
    inputs = {}
    for n in sizes:
        x = torch.randn(n, generator=torch.Generator().manual_seed(n)).to(device)
        inputs[n] = (x, *_reference(x))
    if cache not in CACHE_STATES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_STATES)}, got {cache!r}")
    start = _cold_from(cache, device)
    cold = {n: start is not None and n >= start for n in sizes}
    evict = Evictor(device) if any(cold.values()) else None
    per_round = -(-repeats // rounds)
    timed: dict[tuple[str, int, int], Timing] = {}
    rows = []
    last = "eager" if "eager" in paths else "fused"  # rows are complete after this phase
    for path in ("fused", "eager"):
        if path not in paths:
            continue
        mode = "compiled" if path == "fused" else "eager"
        triples: dict[tuple[int, int], list[Triple]] = {}
        first_call: dict[tuple[int, int], float] = {}
        for n, (x, _, ref_fn, clone_fn) in inputs.items():
            # rounds within a size: one run with rounds over all sizes gave 4,194,304-element
            # ratios 20-60 % above the runs before and after it (cause not pinned down; the
            # 1e7 rows page-fault on every call), so each size keeps to itself
            for round_ in range(rounds):
                for i, (_, fmt, rounding) in enumerate(cases):
                    times, first = _time_path(
                        mode,
                        x,
                        fmt,
                        rounding,
                        (ref_fn, clone_fn),
                        per_round,
                        warmup if round_ == 0 else 1,
                        budget_s / rounds,
                        evict if cold[n] else None,
                    )
                    triples.setdefault((n, i), []).extend(times)
                    first_call.setdefault((n, i), first)  # the first round's: the compile
                    if round_ < rounds - 1:
                        continue
                    timed[path, n, i] = Timing.of(triples[n, i], first_call[n, i])
                    if path == last:
                        state = "cold" if cold[n] else "warm"
                        rows.append(_row(cases[i], n, device, inputs[n][1], timed, i, state))
                        print(format_row(rows[-1]), flush=True)
    return rows


def _row(
    case: tuple[str, Any, str],
    n: int,
    device: torch.device,
    reference: str,
    timed: dict[tuple[str, int, int], Timing],
    i: int,
    cache: str,
) -> Row:
    """The row of case i at size n from the timings of its paths."""
    family, fmt, rounding = case
    eager, fused = timed.get(("eager", n, i)), timed.get(("fused", n, i))
    done = [t for t in (eager, fused) if t is not None]
    return Row(
        family=family,
        format=repr(fmt),
        rounding=rounding,
        device=str(device),
        n=n,
        reference=reference,
        reference_ms=statistics.median(t.reference_s for t in done) * 1e3,
        clone_ms=statistics.median(t.clone_s for t in done) * 1e3,
        eager_ms=None if eager is None else eager.seconds * 1e3,
        fused_ms=None if fused is None else fused.seconds * 1e3,
        eager_ratio=None if eager is None else eager.ratio,
        fused_ratio=None if fused is None else fused.ratio,
        eager_ratio_q1=None if eager is None else eager.ratio_q1,
        eager_ratio_q3=None if eager is None else eager.ratio_q3,
        fused_ratio_q1=None if fused is None else fused.ratio_q1,
        fused_ratio_q3=None if fused is None else fused.ratio_q3,
        eager_clone_ratio=None if eager is None else eager.clone_ratio,
        fused_clone_ratio=None if fused is None else fused.clone_ratio,
        cache=cache,
        fused_speedup=None if eager is None or fused is None else eager.seconds / fused.seconds,
        fused_melem_s=None if fused is None else n / fused.seconds / 1e6,
        first_call_s=None if fused is None else fused.first_call_s,
    )


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _spread(low: float | None, high: float | None) -> str:
    return "-" if low is None or high is None else f"{low:.2f}-{high:.2f}"


HEADER = (
    f"{'family':<12} {'rounding':<10} {'n':>10} {'ref ms':>8} {'clone ms':>8} {'eager ms':>9} "
    f"{'fused ms':>9} {'eager/ref':>9} {'fused/ref':>9} {'(quartiles)':>11} "
    f"{'eager/clone':>11} {'fused/clone':>11} {'eager/fused':>11} {'fused Me/s':>10} "
    f"{'1st call s':>10}"
)


def format_row(row: Row) -> str:
    """One line of the printed table."""
    return (
        f"{row.family:<12} {row.rounding:<10} {row.n:>10} {row.reference_ms:>8.3f} "
        f"{row.clone_ms:>8.3f} {_num(row.eager_ms, '9.3f')} {_num(row.fused_ms, '9.3f')} "
        f"{_num(row.eager_ratio, '9.2f')} {_num(row.fused_ratio, '9.2f')} "
        f"{_spread(row.fused_ratio_q1, row.fused_ratio_q3):>11} "
        f"{_num(row.eager_clone_ratio, '11.2f')} {_num(row.fused_clone_ratio, '11.2f')} "
        f"{_num(row.fused_speedup, '11.2f')} "
        f"{_num(row.fused_melem_s, '10.0f')} {_num(row.first_call_s, '10.2f')}"
    )


def environment(device: torch.device, cache: str = "warm") -> dict[str, Any]:
    """What the numbers depend on: device, dtype, versions, threads, load, the caches."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "device": str(device),
        "device_name": name,
        "dtype": "float32",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": load,
        "timer": "cpu (thread_time)" if _clock is time.thread_time else "wall",
        "cache": cache,
        "cold_from_n": _cold_from(cache, device),
        "eviction_mib": eviction_bytes(device) >> 20 if cache != "warm" else None,
    }


def _cold_from(cache: str, device: torch.device) -> int | None:
    """The smallest size timed cold under ``cache`` ("auto", "cold" or "warm"); None: none.

    "auto": x and the output of the reference, 8 bytes an element, fill at least half the
    largest cache; every size where that size is unknown.
    """
    if cache == "warm":
        return None
    largest = largest_cache_bytes(device)
    return 0 if cache == "cold" or largest is None else -(-largest // 16)


def _cache_line(env: dict[str, Any]) -> str:
    """A line saying which calls the header's ``env`` times with cold caches."""
    start = env["cold_from_n"]
    if start is None:
        return "caches: warm (each call in the state the previous one left)"
    cold = f"cold ({env['eviction_mib']} MiB read before each timed call)"
    return (
        f"caches: {cold} at every size"
        if start == 0
        else f"caches: {cold} from n = {start:,}; warm below"
    )


def run(args: argparse.Namespace) -> int:
    """Run the benchmark described by the parsed ``args``; return the exit code."""
    global _clock
    _clock = time.thread_time if args.timer == "cpu" else time.perf_counter
    if args.timer == "cpu":
        args.threads, args.device = 1, "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK_SIZES if args.quick and not args.sizes else tuple(args.sizes or SIZES)
    repeats = 2 if args.quick else args.repeats
    warmup = 1 if args.quick else args.warmup
    names = args.formats or list(FAMILIES)
    formats = resolve_formats(names)
    devices = [torch.device("cpu")]
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if args.device == "cuda":
        devices = devices[1:]
        if not devices:
            print("qtorch bench: --device cuda, but no CUDA device is available", file=sys.stderr)
            return 2
    paths = ("eager", "fused") if args.path == "both" else (args.path,)
    report: dict[str, Any] = {"runs": []}
    for device in devices:
        env = environment(device, args.cache)
        print(" ".join(f"{k}={v}" for k, v in env.items()))
        what = "device-to-device copy" if device.type == "cuda" else "torch.mul(x, 2.0)"
        print(
            f"reference (ref): {what}; clone: x.clone(); both on the same tensor, timed "
            "alternately with each quantizer call; eager/fused: the fused path's speedup"
        )
        print(_cache_line(env))
        print(HEADER)
        budget = 0.2 if args.quick else 2.0
        rounds = 1 if args.quick else args.rounds
        rows = measure(formats, sizes, device, repeats, warmup, paths, budget, rounds, args.cache)
        report["runs"].append({"environment": env, "rows": [asdict(r) for r in rows]})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"sizes must be numbers like 1e6,4194304: {text!r}"
        ) from err
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def _positive(text: str) -> int:
    """An argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``qtorch bench`` (shared with benchmarks/bench.py)."""
    families = ", ".join(FAMILIES)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (a smoke test)")
    parser.add_argument(
        "--sizes", type=_sizes, help="comma-separated element counts (default 1e4,1e6,4194304,1e7)"
    )
    parser.add_argument(
        "--formats",
        nargs="+",
        metavar="FORMAT",
        help=f"families ({families}) or format specs like 'posit(16,1)' (default: all families)",
    )
    parser.add_argument(
        "--repeats",
        type=_positive,
        default=31,
        help="timed (reference, clone, quantizer) triples per measurement",
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (compile)")
    parser.add_argument(
        "--rounds",
        type=_positive,
        default=3,
        help="rounds over the rows of each size, the repeats split among them (default 3)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    parser.add_argument(
        "--path", choices=("both", "eager", "fused"), default="both", help="which paths to time"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="all: CPU, and CUDA where a GPU is present; cuda without one is an error (exit 2)",
    )
    parser.add_argument(
        "--timer",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: CPU time of one thread (forces --threads 1; for busy shared machines)",
    )
    parser.add_argument(
        "--cache",
        choices=CACHE_STATES,
        default="auto",
        help="cold: evict the caches before each timed call, so that every call reads x from "
        "memory; warm: leave them as the previous call left them; auto (default): cold where "
        "x and its output take at least half the largest cache, warm below",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to the ``qtorch`` command."""
    parser = subparsers.add_parser(
        "bench",
        help="time the quantizers (eager and fused) against the memory-bound limit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark as a script (``python benchmarks/bench.py``)."""
    parser = argparse.ArgumentParser(prog="bench.py", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
