"""Shared pieces of the tests that read Inductor's generated C++ (qtorch.kernels.vector_*)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from qtorch.kernels import vector_bitcast


def _vectorizes() -> bool:
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return bool(pick_vec_isa())


#: Dynamo's own note when a compile here skips the caches (to see the generated code), and
#: a deprecation that torch's first plain ``torch.compile`` in a process raises.
COMPILE_NOTES = [
    pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated"),
]

needs_vectors = pytest.mark.skipif(
    not _vectorizes(), reason="Inductor writes no vector C++ for this CPU"
)


def generated(fn: Callable[..., Any], *args: torch.Tensor) -> tuple[Any, str]:
    """fn compiled with Inductor (no cache) under qtorch's code generator
    (:func:`qtorch.kernels.vector_bitcast.register_bitcasts`), its result and its code."""
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    with vector_bitcast.register_bitcasts(), config.patch(force_disable_caches=True):
        result, code = run_and_get_code(torch.compile(fn, backend="inductor"), *args)
    return result, "\n".join(code)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Every bit of every element equal (NaN payloads and signs included)."""
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        a, b = a.view(ints[a.element_size()]), b.view(ints[b.element_size()])
    return torch.equal(a, b)
