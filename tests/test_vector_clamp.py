"""Clamps against constants in Inductor's C++ vector code (qtorch.kernels.vector_clamp).

While qtorch compiles, a float maximum / minimum against a number literal is generated as
ATen's ``clamp_min`` / ``clamp_max``, the instruction the eager clamp runs; a maximum of
two tensors, or against a value loaded from memory (which may be NaN), keeps Inductor's
NaN-propagating code. Each compiled result is compared with the same function run
eagerly, all bits of every element (NaN payloads and signs too), and qtorch's compiled
kernels with its eager ones on NaNs of random payloads.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from edge_cases import random_float32
from inductor_code import COMPILE_NOTES, generated, needs_vectors, same_bits

import qtorch
from qtorch.formats.parse import format_from_string
from qtorch.kernels import fused, vector_bitcast

pytestmark = COMPILE_NOTES


def _with_nans(x: torch.Tensor, every: int = 7) -> torch.Tensor:
    """x (float32) with every ``every``-th element a NaN of random sign and payload."""
    g = torch.Generator().manual_seed(every)
    n = x[::every].numel()
    payload = torch.randint(1, 1 << 23, (n,), generator=g, dtype=torch.int64)
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64) << 31
    x = x.clone()
    x[::every] = (sign | 0x7F800000 | payload).to(torch.int32).view(torch.float32)
    return x


def _clamp_both(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-2.5, 3.0)


def _clamp_ends(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(0.0).clamp_max(float("inf")) * 2


def _clamp_to_tensor(x: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(lower)


def _maximum(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(x, y)


@needs_vectors
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clamps_against_numbers_are_atens_clamps(dtype: torch.dtype) -> None:
    x = _with_nans(random_float32(4099, seed=7)).to(dtype)
    x[:4] = torch.tensor([-0.0, 0.0, -0.0, 0.0], dtype=dtype)
    both, code_both = generated(_clamp_both, x)
    ends, code_ends = generated(_clamp_ends, x)
    assert "at::vec::clamp_min(" in code_both and "at::vec::clamp_max(" in code_both
    assert "at::vec::maximum(" not in code_both and "at::vec::minimum(" not in code_both
    assert "at::vec::clamp_min(" in code_ends, code_ends
    # eager's clamps keep x's NaN and, at a bound of zero, x's zero
    assert same_bits(both, _clamp_both(x))
    assert same_bits(ends, _clamp_ends(x))
    assert torch.isnan(x).sum() > 500


@needs_vectors
def test_maxima_of_tensors_keep_inductors_code() -> None:
    """Against a tensor, or a 0-d tensor read from memory (NaN here), the clamp must
    propagate the bound's NaN: Inductor's code (whose NaN bits are its own)."""
    x, y = random_float32(2053, seed=1), random_float32(2053, seed=2)
    nan = torch.tensor(float("nan"))
    to_tensor, code_tensor = generated(_clamp_to_tensor, x, nan)
    maximum, code_maximum = generated(_maximum, x, y)
    assert "at::vec::clamp_min(" not in code_tensor + code_maximum
    assert "at::vec::maximum(" in code_maximum, code_maximum
    assert torch.isnan(to_tensor).all()  # as a clamp to a number, x would come back
    assert same_bits(maximum, torch.maximum(x, y))


def test_the_users_compiles_keep_inductors_clamp() -> None:
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    with config.patch(force_disable_caches=True):
        _, code = run_and_get_code(torch.compile(_clamp_both), random_float32(1024))
    assert "at::vec::clamp_min(" not in "\n".join(code)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("spec", ["fixed(8,4)", "float(5,2)", "float8_e4m3fn", "bfloat16"])
def test_compiled_nans_are_the_eager_nans(spec: str, rounding: str, dtype: torch.dtype) -> None:
    """These kernels clamp values that may be NaN; compiled, the NaN was all-ones bits."""
    fmt = format_from_string(spec)
    x = _with_nans(random_float32(4096, seed=3)).to(dtype).view(64, 64)
    x[::9, ::5] = float("inf")
    results = []
    for mode in ("eager", "compiled"):
        with qtorch.kernel_mode(mode), warnings.catch_warnings():
            warnings.simplefilter("error", fused.CompileFallbackWarning)
            gen = torch.Generator().manual_seed(11)
            results.append(qtorch.quantize(x, fmt, rounding, generator=gen))
    eager, compiled = results
    assert torch.isnan(eager).sum() > 500
    assert same_bits(eager, compiled)


def test_the_patched_functions_keep_inductors_names() -> None:
    """Inductor runs its scalar code by the vector function's name where every operand is
    a scalar (a wrong name failed MX's and NVFP4's compiles)."""
    from torch._inductor.codegen.cpp import CppVecOverrides

    with vector_bitcast.register_bitcasts():
        names = [CppVecOverrides.maximum.__name__, CppVecOverrides.minimum.__name__]
    assert names == ["maximum", "minimum"]
