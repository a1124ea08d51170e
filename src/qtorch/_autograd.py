"""What the forward of qtorch's ``torch.autograd.Function`` classes returns."""

from __future__ import annotations

import torch


def function_output(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it while ``torch.compile`` traces: the forward's result.

    Dynamo in torch 2.11 loses the gradient through an autograd Function whose forward
    returns the result of an in-place operation (qtorch's kernels end in several): the
    inputs got zero gradients (with ``backend="eager"`` too; torch 2.13 is not affected).
    A copy made while tracing avoids that and costs nothing once Inductor fuses it; eager
    calls return ``t`` itself.
    """
    return t.clone() if torch.compiler.is_compiling() else t
