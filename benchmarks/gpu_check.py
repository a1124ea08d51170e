"""Check and time every quantizer on a CUDA GPU (one prepared script for a GPU machine).

For each format family (the formats of ``qtorch bench``):

1. nearest: the CUDA result of the eager and of the compiled (Triton) path is compared
   bitwise (any NaN equals any NaN) with the CPU eager result, on random float32 bit
   patterns (subnormals, ±0, ±Inf, NaN) plus the named special values;
2. stochastic: with the same ``torch.manual_seed`` the compiled CUDA path gives the same
   result twice and the same as the eager CUDA path;
3. timing: the compiled nearest kernel at 1e8 elements against a device-to-device copy of
   the same tensor (target: at least 60 % of the copy bandwidth, i.e. copy/fused >= 0.6).

Without CUDA it prints a message and exits 0. ``--cpu-dry-run`` runs the same logic with the
CPU standing in for the GPU (compiled CPU vs eager CPU, small sizes), to test the script.
Exit code 1 if any check fails.

    python benchmarks/gpu_check.py                 # on the GPU machine
    python benchmarks/gpu_check.py --cpu-dry-run --size 3000 --formats fixed block
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

import qtorch
from qtorch.cli.bench import FAMILIES, median_time, resolve_formats

SPECIALS = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 2.0**-149, -(2.0**-149)]
SPECIALS += [2.0**-126, 3.4028234663852886e38, -3.4028234663852886e38, 1.0, -1.0, 0.5, 448.0]
ROW = 128  # inputs are 2-D (n / ROW, ROW), so block formats with a dim see real blocks


def random_bits(n: int, seed: int) -> torch.Tensor:
    """n float32 values from uniformly random bit patterns, the specials first, 2-D."""
    n = max(ROW, n - n % ROW)
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    x[: len(SPECIALS)] = torch.tensor(SPECIALS)
    return x.view(-1, ROW)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, any NaN equal to any NaN."""
    a, b = a.cpu(), b.cpu()
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan = torch.isnan(a)
    if not torch.equal(nan, torch.isnan(b)):
        return False
    return torch.equal(a[~nan].view(torch.int32), b[~nan].view(torch.int32))


def quantize_in(mode: str, x: torch.Tensor, fmt: qtorch.Format, rounding: str) -> torch.Tensor:
    with qtorch.kernel_mode(mode):
        return qtorch.quantize(x, fmt, rounding)


def check_format(
    family: str, fmt: qtorch.Format, device: torch.device, size: int, time_size: int
) -> list[bool]:
    """Run the checks of one format; print a line per check; return their outcomes."""
    results = []

    def report(what: str, ok: bool, extra: str = "") -> None:
        results.append(ok)
        print(f"{family:<12} {what:<38} {'ok' if ok else 'FAIL'} {extra}", flush=True)

    x_cpu = random_bits(size, seed=1)
    reference = quantize_in("eager", x_cpu, fmt, "nearest")
    x = x_cpu.to(device)
    for mode in ("eager", "compiled"):
        got = quantize_in(mode, x, fmt, "nearest")
        report(f"nearest {mode} {device.type} == cpu eager", same_bits(got, reference))

    if "stochastic" in {r.value for r in fmt.roundings}:
        finite = torch.randn(size // ROW, ROW, device=device) * 4
        runs = []
        for mode in ("compiled", "compiled", "eager"):
            torch.manual_seed(1234)
            runs.append(quantize_in(mode, finite, fmt, "stochastic"))
        report("stochastic seeded: compiled twice", same_bits(runs[0], runs[1]))
        report("stochastic seeded: compiled == eager", same_bits(runs[0], runs[2]))

    big = torch.randn(time_size, device=device)
    out = torch.empty_like(big)
    t_copy = median_time(lambda: out.copy_(big), device, 10, 3)
    with qtorch.kernel_mode("compiled"):
        t_fused = median_time(lambda: qtorch.quantize(big, fmt), device, 10, 3)
    fraction = t_copy / t_fused
    gbs = 2 * big.numel() * 4 / t_fused / 1e9
    extra = f"copy {t_copy * 1e3:.3f} ms, fused {t_fused * 1e3:.3f} ms, {gbs:.0f} GB/s"
    print(f"{family:<12} {'nearest bandwidth vs copy':<38} {fraction:.2f} ({extra})")
    if device.type == "cuda":
        report("nearest >= 60 % of copy bandwidth", fraction >= 0.6)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="use the CPU as the device")
    parser.add_argument("--formats", nargs="+", default=list(FAMILIES), help="families or specs")
    parser.add_argument("--size", type=int, default=1 << 20, help="elements of the bit checks")
    parser.add_argument("--time-size", type=int, default=0, help="elements timed (default 1e8)")
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
    print(f"device={name} torch={torch.__version__} size={args.size} time_size={time_size}")
    results = []
    for family, fmt in resolve_formats(args.formats):
        results += check_format(family, fmt, device, args.size, time_size)
    failed = results.count(False)
    print(f"{len(results) - failed} checks ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
