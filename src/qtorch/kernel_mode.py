"""Which path :func:`qtorch.quantize` takes: the eager reference or the compiled kernel."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

KernelMode = Literal["auto", "eager", "compiled"]

#: The accepted modes, in the order the documentation lists them.
KERNEL_MODES: tuple[KernelMode, ...] = ("auto", "eager", "compiled")

_mode: KernelMode = "auto"


def _check(mode: str) -> KernelMode:
    if mode not in KERNEL_MODES:
        allowed = ", ".join(repr(m) for m in KERNEL_MODES)
        raise ValueError(f"kernel mode must be one of {allowed}, got {mode!r}")
    return mode


def set_kernel_mode(mode: KernelMode | str) -> None:
    """Choose how every quantizer runs from now on (process-wide).

    ``"auto"`` (the default) runs one fused ``torch.compile`` kernel per (format, rounding)
    where compiling works and pays off, and the eager reference elsewhere (tiny tensors, no
    C++ compiler or Triton, tensors that need autograd). ``"eager"`` always runs the eager
    reference. ``"compiled"`` compiles whenever the input allows it; if compiling fails,
    the eager reference runs instead, with one warning. Both paths give bit-identical results.

    >>> set_kernel_mode("eager"); get_kernel_mode()
    'eager'
    >>> set_kernel_mode("auto")
    """
    global _mode
    _mode = _check(mode)


def get_kernel_mode() -> KernelMode:
    """The current kernel mode: ``"auto"``, ``"eager"`` or ``"compiled"``."""
    return _mode


@contextlib.contextmanager
def kernel_mode(mode: KernelMode | str) -> Iterator[None]:
    """Run a block with another kernel mode, restoring the previous one afterwards.

    >>> with kernel_mode("eager"):
    ...     get_kernel_mode()
    'eager'
    >>> get_kernel_mode()
    'auto'
    """
    global _mode
    new = _check(mode)
    previous = _mode
    _mode = new
    try:
        yield
    finally:
        _mode = previous
