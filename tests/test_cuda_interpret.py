"""The fused path's CUDA kernels, run in Triton's interpreter on the CPU, against eager.

``benchmarks/cuda_interpret.py`` generates Inductor's Triton code for a stood-in CUDA
device (as ``benchmarks/cuda_codegen.py`` does), runs it with Triton's interpreter (numpy
arithmetic) and compares the result bitwise with the eager path on the CPU: random bit
patterns with the special values and blocks of exact ties (nearest), finite values of
every scale with one fixed seed (stochastic). It checks the code that only CUDA runs (the
sign flips on bit patterns, block floating point's maximum in rows, MX and NVFP4 scales
inside the kernel, the codebooks on the row view) and what Inductor makes of it, in IEEE
arithmetic; not what only the hardware does (FMA contraction, saturating conversions of
NaN to integers, speed), which ``benchmarks/gpu_check.py`` checks on a GPU.

Each run is a subprocess: the script sets ``TRITON_INTERPRET=1`` before Triton is
imported and stands in a CUDA device by patching torch. Needs Triton (a test dependency on
Linux x86-64).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from script_runs import run_all

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/cuda_interpret.py"
FAMILIES = ("fixed", "float", "block", "posit", "codebook16", "codebook256", "mx", "nvfp4")


#: All families in two groups that take about as long, for two processes run at once.
HALVES = [["mx", "nvfp4", "float"], ["fixed", "block", "posit", "codebook16", "codebook256"]]


def _run(tmp_path: Path, groups: list[list[str]], *args: str) -> list[dict[str, Any]]:
    """The script's rows for ``args``, run once for each group of ``--formats``, two
    groups at a time."""
    outs = [tmp_path / f"out{i}.json" for i in range(len(groups))]
    commands = [
        [sys.executable, str(SCRIPT), *args, "--formats", *group, "--json", str(out)]
        for group, out in zip(groups, outs, strict=True)
    ]
    rows = []
    for out, done in zip(outs, run_all(commands, timeout=1200), strict=True):
        rows += json.loads(out.read_text()) if out.exists() else []
        assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-4000:])
    return rows


def _all_same(rows: list[dict[str, Any]]) -> None:
    assert rows
    for row in rows:
        assert not any(row["differ"].values()), row


def test_every_family_and_rounding_matches_eager(tmp_path: Path) -> None:
    """As qtorch compiles them (sizes symbolic), on 4,104 float32: block floating point's
    maximum over one row of 4,096 and a tail, no multiple of 16 (flat stochastic kernels,
    padded MX and NVFP4 blocks, whose 1-D kernel in one piece once failed to compile)."""
    rows = _run(tmp_path, HALVES, "--dynamic", "--shape", "4104")
    assert {(r["family"], r["rounding"]) for r in rows} == {
        (f, r) for f in FAMILIES for r in ("nearest", "stochastic")
    }
    for row in rows:
        inputs = {"bits", "ties"} if row["rounding"] == "nearest" else {"finite"}
        assert set(row["differ"]) == inputs and row["dynamic"]
    _all_same(rows)


@pytest.mark.parametrize(
    ("options", "families"),
    [
        # (each family in a process of its own, two at a time: 18-31 s each on 2 cores;
        # the default run samples the odd shape)
        # quantize_ on whole rows of 16 (the stochastic row view) and whole NVFP4 blocks
        pytest.param(
            ("--inplace", "--shape", "4128"),
            ("codebook16", "block", "nvfp4"),
            marks=pytest.mark.slow,
            id="in-place",
        ),
        # 2-D, no dimension a multiple of 16: padded MX and NVFP4 blocks along the rows
        pytest.param(("--shape", "3,333"), ("mx", "nvfp4"), id="odd-shape"),
        # the casts to and from float32 inside the kernels
        pytest.param(
            ("--dtype", "bfloat16"), ("posit", "nvfp4"), marks=pytest.mark.slow, id="bfloat16"
        ),
    ],
)
def test_in_place_shapes_and_dtypes_match_eager(
    tmp_path: Path, options: tuple[str, ...], families: tuple[str, ...]
) -> None:
    rows = _run(tmp_path, [[family] for family in families], "--dynamic", *options)
    assert {row["family"] for row in rows} == set(families)
    _all_same(rows)


@pytest.mark.slow  # about 5 minutes on 2 cores
@pytest.mark.parametrize(
    "args",
    [
        ("--dynamic", "--shape", "10016"),
        ("--dynamic", "--shape", "3,3333"),
        ("--dynamic", "--shape", "4128", "--inplace"),
        ("--dynamic", "--shape", "8,40", "--inplace"),
        ("--dynamic", "--dtype", "bfloat16"),
        ("--dynamic", "--dtype", "float16"),
        ("--dynamic", "--dtype", "float64"),
        ("--shape", "4096"),  # static shapes: the code is simpler to read, and checked too
        ("--shape", "3,333", "--inplace"),
    ],
)
def test_every_family_in_every_variant_matches_eager(tmp_path: Path, args: tuple[str, ...]) -> None:
    rows = _run(tmp_path, HALVES, *args)
    assert {row["family"] for row in rows} == set(FAMILIES)
    _all_same(rows)


_MUTANT = """
import sys
sys.path.insert(0, {benchmarks!r})
import cuda_interpret
import torch
from qtorch.kernels import bits

correct = bits.flip_sign_bits

def faulty(v, b):  # a fault only the CUDA branch has: zeros keep their sign
    return torch.where(v == 0, v, correct(v, b))

bits.flip_sign_bits = faulty
sys.exit(cuda_interpret.main(["--formats", "fixed", "--rounding", "stochastic"]))
"""


def test_a_fault_of_the_cuda_branch_is_found() -> None:
    """The check is not vacuous: a fault in code only CUDA runs (the bit form of the sign
    flip, :func:`qtorch.kernels.bits.flip_sign_bits`; the CPU takes ``torch.where``) makes
    the interpreted kernel differ from eager, and the script fail."""
    code = _MUTANT.format(benchmarks=str(ROOT / "benchmarks"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-4000:]
    assert "differ" in done.stdout


_CASTS = """
import sys
sys.path.insert(0, {benchmarks!r})
import cuda_interpret
import torch
import triton
import triton.language as tl

cuda_interpret._exact_bfloat16_casts()

@triton.jit
def narrow(src, dst, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + i, tl.load(src + i, mask=i < n).to(tl.bfloat16), mask=i < n)

@triton.jit
def widen(src, dst, n, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + i, tl.load(src + i, mask=i < n).to(tl.float32), mask=i < n)

g = torch.Generator().manual_seed(0)
f32 = torch.randint(-2**31, 2**31, (1 << 16,), generator=g, dtype=torch.int64).to(torch.int32)
f32 = f32.view(torch.float32)
bf16 = torch.arange(-2**15, 2**15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
out16, out32 = torch.empty(f32.shape, dtype=torch.bfloat16), torch.empty(bf16.shape)
narrow[(f32.numel() // 1024,)](f32, out16, f32.numel(), BLOCK=1024)
widen[(bf16.numel() // 1024,)](bf16, out32, bf16.numel(), BLOCK=1024)

def same(a, b):
    nan = torch.isnan(a) & torch.isnan(b)
    ints = torch.int16 if a.element_size() == 2 else torch.int32
    return bool(((a.view(ints) == b.view(ints)) | nan).all())

print(same(out16, f32.to(torch.bfloat16)), same(out32, bf16.float()))
"""


def test_the_interpreters_bfloat16_casts_are_torchs() -> None:
    """The patched casts against torch's: every bfloat16 widened, 65,536 random float32
    bit patterns (subnormals, NaN, ties) narrowed to nearest even."""
    code = _CASTS.format(benchmarks=str(ROOT / "benchmarks"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split()[-2:] == ["True", "True"]
