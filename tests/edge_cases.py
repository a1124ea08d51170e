"""Named edge cases shared by the tests (one place, STYLE item 9)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

INF = float("inf")
NAN = float("nan")

#: Special float32 values every quantizer test should include.
SPECIALS_F32 = torch.tensor(
    [
        0.0,
        -0.0,
        INF,
        -INF,
        NAN,
        2.0**-149,  # smallest float32 subnormal
        -(2.0**-149),
        2.0**-126,  # smallest float32 normal
        3.4028234663852886e38,  # float32 max
        -3.4028234663852886e38,
        1.0,
        -1.0,
    ],
    dtype=torch.float32,
)


def random_float32(n: int, seed: int = 0, finite: bool = False) -> torch.Tensor:
    """n float32 values from uniformly random bit patterns (subnormals, ±0, ±Inf, NaN)."""
    g = torch.Generator().manual_seed(seed)
    bits = torch.randint(-(2**31), 2**31, (n,), generator=g, dtype=torch.int64)
    x = bits.to(torch.int32).view(torch.float32)
    return x[torch.isfinite(x)] if finite else x


def neighbours_f32(x: torch.Tensor) -> torch.Tensor:
    """x together with its float32 neighbours one ulp below and above (x must be finite)."""
    x = x.to(torch.float32)
    up = torch.nextafter(x, torch.full_like(x, INF))
    down = torch.nextafter(x, torch.full_like(x, -INF))
    return torch.cat([down, x, up])


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two float tensors, NaN payloads ignored (any NaN equals any NaN)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    if not torch.equal(nan_a, nan_b):
        return False
    int_dtype = {torch.float64: torch.int64, torch.float32: torch.int32}.get(a.dtype, torch.int16)
    ia, ib = a[~nan_a].view(int_dtype), b[~nan_b].view(int_dtype)
    return torch.equal(ia, ib)


class RecordingMode(TorchDispatchMode):
    """A dispatch mode that records the operations it sees (``ops``) and runs them."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))
