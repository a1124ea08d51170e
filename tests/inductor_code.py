"""Shared pieces of the tests that read Inductor's generated C++ (qtorch.kernels.vector_*)."""

from __future__ import annotations

import pytest


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
