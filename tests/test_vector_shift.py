"""Shifts by literal counts in Inductor's C++ vector code (qtorch.kernels.vector_shift).

While qtorch compiles, shifts of int32 or int64 vectors by a literal count are generated
as shifts by an immediate, and ``(z >> s) & (2**(w - s) - 1)`` (the noise hash's
unsigned shifts) as one logical shift. Every result is checked against Python's shifts
of the same words (an independent oracle) and against the same function run eagerly;
other masks, shifts by tensors and the user's own compiles keep Inductor's code.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

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


def _wrapped(values: list[int], width: int) -> list[int]:
    """Python integers wrapped to signed ``width``-bit words."""
    return [(v + 2 ** (width - 1)) % 2**width - 2 ** (width - 1) for v in values]


def _signed_shifts(z: torch.Tensor, shifts: tuple[int, ...]) -> torch.Tensor:
    """Python's arithmetic right and left shifts of the signed words, wrapped."""
    width = torch.iinfo(z.dtype).bits
    words = z.tolist()
    rows = [[v >> s for v in words] for s in shifts]
    rows += [_wrapped([v << s for v in words], width) for s in shifts]
    return torch.tensor(rows, dtype=z.dtype)


def _by_literals_32(z: torch.Tensor) -> torch.Tensor:
    return torch.stack([z >> s for s in SHIFTS_32] + [z << s for s in SHIFTS_32])


def _by_literals_64(z: torch.Tensor) -> torch.Tensor:
    return torch.stack([z >> s for s in SHIFTS_64] + [z << s for s in SHIFTS_64])


def _by_tensors(z: torch.Tensor, by: torch.Tensor) -> torch.Tensor:
    return torch.stack([z >> by, z << by])


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
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_shifts_by_literals_are_shifts_by_immediates(dtype: torch.dtype) -> None:
    width, shifts = (32, SHIFTS_32) if dtype == torch.int32 else (64, SHIFTS_64)
    fn = _by_literals_32 if dtype == torch.int32 else _by_literals_64
    z = _words(4099, dtype, seed=8)
    result, code = generated(fn, z)
    assert code.count(f"_mm512_srai_epi{width}(") >= len(shifts), code
    assert code.count(f"slli_epi{width}(") >= 2 * len(shifts), code  # AVX2 and AVX-512
    assert same_bits(result, _signed_shifts(z, shifts))
    assert same_bits(result, fn(z))


@needs_vectors
def test_shifts_by_tensors_keep_inductors_code() -> None:
    z, by = _words(2053, torch.int32, seed=9), torch.randint(0, 32, (2053,), dtype=torch.int32)
    result, code = generated(_by_tensors, z, by)
    assert "srai_epi" not in code and "slli_epi" not in code
    assert same_bits(result, _by_tensors(z, by))


@needs_vectors
def test_other_masks_keep_inductors_code() -> None:
    z = _words(2053, torch.int32, seed=4)
    result, code = generated(_other_masks, z)
    assert "srli_epi" not in code
    assert "_mm256_srai_epi32(" in code  # the shift by 5 itself, masked as it was
    assert same_bits(result, _other_masks(z))


@needs_vectors
def test_the_portable_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no instruction set macro of the list is defined (ARM, POWER, s390x), the
    generated code keeps the shift and the mask: compiled here with names never defined."""
    never = (("QTORCH_NEVER_DEFINED_A", "_mm512_srli_epi"), ("QTORCH_NEVER_DEFINED_B", "no_"))
    monkeypatch.setattr(vector_shift, "_INTRINSICS", dict.fromkeys(vector_shift._INTRINSICS, never))
    z = _words(1031, torch.int32, seed=5)
    result, code = generated(_shifts_32, z)
    shifted, code_literals = generated(_by_literals_32, z)
    assert "QTORCH_NEVER_DEFINED_A" in code and "QTORCH_NEVER_DEFINED_A" in code_literals
    assert same_bits(result, _unsigned_shifts(z, SHIFTS_32))
    assert same_bits(shifted, _signed_shifts(z, SHIFTS_32))


#: Compiler flags that select each x86 branch of the generated code (the macros Inductor
#: sets; the last branch, Inductor's code, is compiled and run by test_the_portable_branch).
BRANCHES = {
    "AVX-512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma"],
}


@needs_vectors
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to compile the code with")
@pytest.mark.parametrize("branch", list(BRANCHES))
def test_every_branch_compiles(branch: str, tmp_path: Path) -> None:
    """The code written for every instruction set type-checks, whichever this CPU runs
    (int32 and int64, one vector and two; this machine runs one of them)."""
    from torch.utils.cpp_extension import include_paths

    z32, z64 = _words(1031, torch.int32, seed=11), _words(1031, torch.int64, seed=12)
    sources = [
        generated(_by_literals_64, z64)[1],
        generated(_shifts_32, z32)[1],
        generated(_shift_64_beside_32, z64, z32)[1],
    ]
    includes = [f"-I{path}" for path in [*include_paths(), sysconfig.get_paths()["include"]]]
    for i, code in enumerate(sources):
        kernel = re.search(r"cpp_pybinding\(\[.*?\], r'''(.*?)'''\)", code, re.DOTALL)
        assert kernel is not None, code
        path = tmp_path / f"kernel{i}.cpp"
        path.write_text(kernel.group(1))
        flags = ["g++", "-std=c++17", "-fsyntax-only", *includes, *BRANCHES[branch], str(path)]
        done = subprocess.run(flags, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]


def test_the_users_compiles_keep_inductors_shifts() -> None:
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    with config.patch(force_disable_caches=True):
        _, code = run_and_get_code(torch.compile(_shifts_32), _words(1024, torch.int32))
    assert "_epi32(" not in "\n".join(code)


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


@needs_vectors
def test_qtorch_posit_kernel_is_generated_with_immediate_shifts() -> None:
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    fmt = dataclasses.replace(family_format("posit"), es=1)  # a kernel of its own
    x = torch.randn(4096, generator=torch.Generator().manual_seed(10)) * 8
    with qtorch.kernel_mode("compiled"), config.patch(force_disable_caches=True):
        result, code = run_and_get_code(qtorch.quantize, x, fmt, "nearest")
    assert any("srai_epi32(" in c for c in code), code
    with qtorch.kernel_mode("eager"):
        assert same_bits(result, qtorch.quantize(x, fmt, Rounding.NEAREST))


def test_the_patched_functions_keep_inductors_names() -> None:
    from torch._inductor.codegen.cpp import CppVecOverrides

    names = ["bitwise_and", "bitwise_right_shift", "bitwise_left_shift"]
    original = [CppVecOverrides.__dict__[name] for name in names]
    with vector_bitcast.register_bitcasts():
        assert all(
            CppVecOverrides.__dict__[n] is not o for n, o in zip(names, original, strict=True)
        )
        assert [getattr(CppVecOverrides, name).__name__ for name in names] == names
    assert [CppVecOverrides.__dict__[name] for name in names] == original
