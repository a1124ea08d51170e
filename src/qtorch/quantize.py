"""The one entry point: ``qtorch.quantize(x, fmt, rounding, generator)``."""

from __future__ import annotations

import torch

from qtorch.formats.base import Format
from qtorch.rounding import Rounding

_ACCEPTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def working_tensor(x: torch.Tensor, caller: str = "quantize") -> torch.Tensor:
    """Check the input contract and return x in its working dtype (float32 or float64).

    float16 and bfloat16 are widened to float32 (exactly); other dtypes raise ``TypeError``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{caller}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _ACCEPTED:
        raise TypeError(f"{caller}: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def uniform_noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0, 1) noise shaped like ``x`` from ``generator`` or the device's torch RNG."""
    return torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def quantize(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding | str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return a new tensor holding x rounded to the format ``fmt``.

    Args:
        x: float32 (primary), float64, float16 or bfloat16 tensor of any shape, never
            modified; the result has x's dtype, shape and device.
        fmt: any :class:`qtorch.formats.Format` (FixedPoint, FloatingPoint, ...).
        rounding: ``"nearest"`` (ties to even) or ``"stochastic"``; some formats accept the
            directed modes ``"toward_zero"``, ``"down"``, ``"up"``.
        generator: source of randomness for stochastic rounding; the device's default torch
            RNG when ``None``, so ``torch.manual_seed`` reproduces results.

    What NaN, ±Inf and overflow do is the format's choice and is documented on each format.
    For float16/bfloat16 inputs the rounded float32 value is cast back to x's dtype.
    """
    if not isinstance(fmt, Format):
        raise TypeError(f"quantize: fmt must be a qtorch format, got {type(fmt).__name__}")
    mode = fmt.check_rounding(rounding)
    work = working_tensor(x)
    noise = uniform_noise(work, generator) if mode is Rounding.STOCHASTIC else None
    q = fmt.quantize_kernel(work, mode, noise)
    if q is x:
        q = q.clone()
    return q.to(x.dtype)


def quantize_(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding | str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """In-place :func:`quantize`: overwrite x with its rounding to ``fmt`` and return x.

    Same contract as :func:`quantize` (x must be a floating tensor of an accepted dtype).
    """
    x.copy_(quantize(x, fmt, rounding, generator))
    return x
