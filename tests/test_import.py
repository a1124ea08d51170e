"""Importing qtorch stays cheap and compiles nothing."""

from __future__ import annotations

import subprocess
import sys

import torch


def test_import_does_not_load_the_compiler() -> None:
    code = "import sys, qtorch; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_eager_quantizers_do_not_load_the_compiler() -> None:
    """In "eager" mode, every family's first calls (its tables, its checks) stay clear of
    torch.compile: a codebook once asked Inductor about the CPU while building its tables,
    which imported the compiler and took 1.8 s instead of 0.03."""
    code = (
        "import sys, torch, qtorch\n"
        "from qtorch.cli.bench import FAMILIES, family_format\n"
        "qtorch.set_kernel_mode('eager')\n"
        "x = torch.randn(4096)\n"
        "for name in [*FAMILIES, 'block(8,0)']:\n"
        "    for rounding in ('nearest', 'stochastic'):\n"
        "        qtorch.quantize(x.view(64, 64), family_format(name), rounding)\n"
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_constant_marker_matches_torch() -> None:
    """qtorch marks the functions it calls while traced as constants (the codebooks' table
    builder, the CPU's vector-load test) the way torch.compiler does."""
    from qtorch.formats import codebook
    from qtorch.kernels import compiled_call

    def probe() -> int:
        return 0

    torch.compiler.assume_constant_result(probe)
    marked = {k: v for k, v in vars(probe).items()}
    assert marked == {"_dynamo_marked_constant": True}
    assert codebook._tables._dynamo_marked_constant is True
    assert compiled_call.int_loads_copy._dynamo_marked_constant is True
