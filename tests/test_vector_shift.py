"""Logical right shifts in Inductor's C++ vector code (qtorch.kernels.vector_shift).

While qtorch compiles, ``(z >> s) & (2**(w - s) - 1)`` of int32 or int64 vectors (the
noise hash's unsigned shifts) is generated as one logical shift instruction. Every result
is checked against Python's unsigned shift of the same words (an independent oracle) and
against the same function run eagerly; other shifts and masks, and the user's own
compiles, keep Inductor's code.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from inductor_code import COMPILE_NOTES, generated, needs_vectors, same_bits

import qtorch
from qtorch.cli.bench import family_format
from qtorch.kernels import vector_bitcast, vector_shift
from qtorch.rounding import Rounding

pytestmark = COMPILE_NOTES

SHIFTS_32 = (1, 8, 11, 17, 31)
SHIFTS_64 = (1, 27, 30, 33, 63)


def _words(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """n random words of every bit (negative ones included), and the extremes."""
    info = torch.iinfo(dtype)
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(info.min, info.max, (n,), generator=g, dtype=dtype)
    z[:4] = torch.tensor([info.min, info.max, -1, 0], dtype=dtype)
    return z


def _unsigned_shifts(z: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """Python's shifts of the words read as unsigned, stored back as signed words."""
    width = torch.iinfo(z.dtype).bits
    rows = [[((v % 2**width) >> s) for v in z.tolist()] for s in shifts]
    return torch.tensor(rows, dtype=z.dtype)


def _shifts_32(z: torch.Tensor) -> torch.Tensor:
    return torch.stack([(z >> s) & ((1 << (32 - s)) - 1) for s in SHIFTS_32])


def _shifts_64(z: torch.Tensor) -> torch.Tensor:
    return torch.stack([(z >> s) & ((1 << (64 - s)) - 1) for s in SHIFTS_64])


def _shift_64_beside_32(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """An int64 shift in a kernel that steps by as many lanes as int32 needs: two vectors."""
    return ((z >> 30) & ((1 << 34) - 1)) ^ w


def _other_masks(z: torch.Tensor) -> torch.Tensor:
    """Masks that are not the shift's: Inductor's code, which keeps them."""
    return torch.stack([(z >> 5) & 0xFF, (z >> 5) & ((1 << 28) - 1), (z << 3) & 0x7FFFFFF])


@needs_vectors
def test_unsigned_shifts_of_int32_are_logical_shifts() -> None:
    z = _words(4099, torch.int32)
    result, code = generated(_shifts_32, z)
    assert code.count("srli_epi32(") >= 2 * len(SHIFTS_32), code  # an AVX2 and an AVX-512 form
    assert same_bits(result, _unsigned_shifts(z, SHIFTS_32))
    assert same_bits(result, _shifts_32(z))


@needs_vectors
def test_unsigned_shifts_of_int64_are_logical_shifts() -> None:
    z = _words(4099, torch.int64, seed=1)
    result, code = generated(_shifts_64, z)
    assert code.count("srli_epi64(") >= 2 * len(SHIFTS_64), code
    assert same_bits(result, _unsigned_shifts(z, SHIFTS_64))
    assert same_bits(result, _shifts_64(z))


@needs_vectors
def test_int64_in_two_vectors() -> None:
    z, w = _words(4099, torch.int64, seed=2), _words(4099, torch.int32, seed=3)
    result, code = generated(_shift_64_beside_32, z, w)
    assert "srli_epi64(" in code, code
    assert same_bits(result, _unsigned_shifts(z, (30,))[0] ^ w)


@needs_vectors
def test_other_masks_keep_inductors_code() -> None:
    z = _words(2053, torch.int32, seed=4)
    result, code = generated(_other_masks, z)
    assert "srli_epi" not in code
    assert same_bits(result, _other_masks(z))


@needs_vectors
def test_the_portable_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no instruction set macro of the list is defined (ARM, POWER, s390x), the
    generated code keeps the shift and the mask: compiled here with names never defined."""
    never = (("QTORCH_NEVER_DEFINED_A", "_mm512_srli_epi"), ("QTORCH_NEVER_DEFINED_B", "no_"))
    monkeypatch.setattr(vector_shift, "_INTRINSICS", never)
    z = _words(1031, torch.int32, seed=5)
    result, code = generated(_shifts_32, z)
    assert "QTORCH_NEVER_DEFINED_A" in code
    assert same_bits(result, _unsigned_shifts(z, SHIFTS_32))


def test_the_users_compiles_keep_inductors_shifts() -> None:
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    with config.patch(force_disable_caches=True):
        _, code = run_and_get_code(torch.compile(_shifts_32), _words(1024, torch.int32))
    assert "srli_epi" not in "\n".join(code)


@needs_vectors
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_qtorch_noise_is_generated_with_logical_shifts(dtype: torch.dtype) -> None:
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    fmt = dataclasses.replace(family_format("fixed"), fl=3)  # a kernel of its own
    x = torch.randn(4096, generator=torch.Generator().manual_seed(6), dtype=dtype)
    with qtorch.kernel_mode("compiled"), config.patch(force_disable_caches=True):
        gen = torch.Generator().manual_seed(7)
        result, code = run_and_get_code(qtorch.quantize, x, fmt, "stochastic", generator=gen)
    assert any(f"srli_epi{32 if dtype == torch.float32 else 64}(" in c for c in code), code
    with qtorch.kernel_mode("eager"):
        gen = torch.Generator().manual_seed(7)
        assert same_bits(result, qtorch.quantize(x, fmt, Rounding.STOCHASTIC, generator=gen))


def test_the_patched_function_keeps_inductors_name() -> None:
    from torch._inductor.codegen.cpp import CppVecOverrides

    original = CppVecOverrides.__dict__["bitwise_and"]
    with vector_bitcast.register_bitcasts():
        assert CppVecOverrides.__dict__["bitwise_and"] is not original
        assert CppVecOverrides.bitwise_and.__name__ == "bitwise_and"
    assert CppVecOverrides.__dict__["bitwise_and"] is original
