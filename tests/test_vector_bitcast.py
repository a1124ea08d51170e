"""Register bit casts in Inductor's C++ vector code (qtorch.kernels.vector_bitcast).

While qtorch compiles, casts between float32 and int32 (float64 and int64) held in one or
two vectors are generated as ``at::vec::cast``; other casts keep Inductor's code; the
user's own compiles, and qtorch's under a post-grad pass of the user's, keep Inductor's
code; and the code generator is part of the cache key. Every compiled result is checked
against the same function run eagerly, bit for bit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from edge_cases import bits_equal, random_float32
from inductor_code import COMPILE_NOTES, needs_vectors

import qtorch
from qtorch.cli.bench import family_format
from qtorch.kernels import compiled_call, vector_bitcast
from qtorch.rounding import Rounding

REGISTER_CAST = "at::vec::cast<"

pytestmark = COMPILE_NOTES


def _code(fn: Callable[..., Any], *args: torch.Tensor) -> tuple[Any, str]:
    """fn compiled with Inductor (no cache), its result and its generated code."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    with config.patch(force_disable_caches=True):
        result, code = run_and_get_code(torch.compile(fn, backend="inductor"), *args)
    return result, "\n".join(code)


def _exponent_f32(x: torch.Tensor) -> torch.Tensor:
    return (x.view(torch.int32) & 0x7F800000).view(torch.float32) * x


def _exponent_f32_again(x: torch.Tensor) -> torch.Tensor:  # a code object of its own
    return (x.view(torch.int32) & 0x7F800000).view(torch.float32) * x


def _mixed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A float64 bit cast in a kernel that steps by float32 vectors (several per value)."""
    magnitude = (y.view(torch.int64) & 0x7FFFFFFFFFFFFFFF).view(torch.float64)
    return magnitude.to(torch.float32) + (x.view(torch.int32) | 1).view(torch.float32)


def _exponent_f64(y: torch.Tensor) -> torch.Tensor:
    return (y.view(torch.int64) & 0x7FF0000000000000).view(torch.float64) * y


def _values64(n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(64)
    return torch.randn(n, generator=gen, dtype=torch.float64) * 1e3


@needs_vectors
def test_one_vector_casts_become_register_casts() -> None:
    x = random_float32(1003)
    with vector_bitcast.register_bitcasts():
        result, code = _code(_exponent_f32, x)
    assert "at::vec::cast<int32_t>(" in code and "at::vec::cast<float>(" in code, code
    assert bits_equal(result, _exponent_f32(x))


@needs_vectors
def test_float64_casts_and_casts_of_several_vectors() -> None:
    x, y = random_float32(1001), _values64(1001)
    with vector_bitcast.register_bitcasts():
        mixed, _ = _code(_mixed, x, y)
        wide, code = _code(_exponent_f64, y)
    assert bits_equal(mixed, _mixed(x, y))
    assert bits_equal(wide, _exponent_f64(y))
    assert "at::vec::cast<int64_t>(" in code, code


@needs_vectors
def test_the_users_own_compiles_keep_inductors_code() -> None:
    """Outside qtorch's compiles, Inductor's code generator is its own again (if Inductor
    ever writes vector bit casts itself, this module has done its job and can go)."""
    from torch._inductor.codegen.cpp import CppVecOverrides

    before = CppVecOverrides.__dict__["to_dtype_bitcast"]
    fmt = dataclasses.replace(family_format("float(5,2)"), exp=4)  # a kernel of its own
    x = random_float32(2001)
    with qtorch.kernel_mode("compiled"):
        qtorch.quantize(x, fmt, "nearest")
    assert CppVecOverrides.__dict__["to_dtype_bitcast"] is before
    result, code = _code(_exponent_f32_again, x)
    assert REGISTER_CAST not in code
    assert bits_equal(result, _exponent_f32_again(x))


@needs_vectors
def test_qtorch_kernels_are_generated_with_register_casts() -> None:
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    fmt = dataclasses.replace(family_format("float(5,2)"), exp=6)  # a kernel of its own
    x = random_float32(3001)
    with qtorch.kernel_mode("compiled"), config.patch(force_disable_caches=True):
        result, code = run_and_get_code(qtorch.quantize, x, fmt, "nearest")
    assert any(REGISTER_CAST in source for source in code), code
    with qtorch.kernel_mode("eager"):
        assert bits_equal(result, qtorch.quantize(x, fmt, Rounding.NEAREST))


def test_nested_uses_restore_the_code_generator_once() -> None:
    from torch._inductor.codegen.cpp import CppVecOverrides

    original = CppVecOverrides.__dict__["to_dtype_bitcast"]
    with vector_bitcast.register_bitcasts():
        patched = CppVecOverrides.__dict__["to_dtype_bitcast"]
        assert patched is not original
        with vector_bitcast.register_bitcasts():
            assert CppVecOverrides.__dict__["to_dtype_bitcast"] is patched
        assert CppVecOverrides.__dict__["to_dtype_bitcast"] is patched
    assert CppVecOverrides.__dict__["to_dtype_bitcast"] is original


def test_the_code_generator_is_in_the_cache_key() -> None:
    """qtorch's configuration sets the key pass, which leaves a graph as it is; where the
    user has a post-grad pass of their own, it stays and the casts are Inductor's."""
    from torch._inductor import config
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class UsersPass(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            return None

        def uuid(self) -> str:
            return "the user's"

    key = compiled_call.config_patches()["post_grad_custom_post_pass"]
    assert isinstance(key, vector_bitcast.CacheKey)
    assert key.uuid() == vector_bitcast.CacheKey().uuid() != UsersPass().uuid()
    assert compiled_call.bitcasts() is vector_bitcast

    users = UsersPass()
    with config.patch(post_grad_custom_post_pass=users):
        assert "post_grad_custom_post_pass" not in compiled_call.config_patches()
        assert compiled_call.bitcasts() is None

    graph = torch.fx.symbolic_trace(_exponent_f32).graph
    before = [(n.op, n.target, n.args) for n in graph.nodes]
    key(graph)
    assert [(n.op, n.target, n.args) for n in graph.nodes] == before


@needs_vectors
def test_a_users_post_grad_pass_keeps_inductors_casts() -> None:
    from torch._inductor import config
    from torch._inductor.custom_graph_pass import CustomGraphPass
    from torch._inductor.utils import run_and_get_code

    calls = []

    class UsersPass(CustomGraphPass):
        def __call__(self, graph: torch.fx.Graph) -> None:
            calls.append(graph)

        def uuid(self) -> str:
            return "the user's, counting"

    fmt = dataclasses.replace(family_format("float(5,2)"), exp=3)  # a kernel of its own
    x = random_float32(4001)
    with (
        qtorch.kernel_mode("compiled"),
        config.patch(force_disable_caches=True, post_grad_custom_post_pass=UsersPass()),
    ):
        result, code = run_and_get_code(qtorch.quantize, x, fmt, "nearest")
    assert calls, "the user's pass ran on qtorch's graph"
    source = "\n".join(code)
    assert "c10::bit_cast" in source and REGISTER_CAST not in source, source
    with qtorch.kernel_mode("eager"):
        assert bits_equal(result, qtorch.quantize(x, fmt, Rounding.NEAREST))


def test_an_unexpected_code_generator_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose scalar bit cast takes other arguments keeps its own vector code."""
    from torch._inductor.codegen.cpp import CppOverrides, CppVecOverrides

    original = CppVecOverrides.__dict__["to_dtype_bitcast"]
    monkeypatch.setattr(CppOverrides, "to_dtype_bitcast", staticmethod(lambda x, dtype: x))
    with vector_bitcast.register_bitcasts():
        assert CppVecOverrides.__dict__["to_dtype_bitcast"] is original
