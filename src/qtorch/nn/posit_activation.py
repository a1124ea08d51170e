"""qtorch+'s posit activation modules: posit tanh / sigmoid forward, analytic backward."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from qtorch._autograd import function_output
from qtorch.quant.posit import posit_sigmoid, posit_tanh, posit_tanh_enhanced

__all__ = [
    "PositSigmoidFunction",
    "PositSigmoidModule",
    "PositTanhFunction",
    "PositTanhFunctionEnhanced",
    "PositTanhModule",
    "PositTanhModuleEnhanced",
    "RefTanhModule",
]


def _check_nsize(owner: str, nsize: int) -> int:
    if isinstance(nsize, bool) or nsize not in (8, 16):
        raise ValueError(f"{owner}: nsize must be 8 or 16, got {nsize!r}")
    return nsize


class PositTanhFunction(torch.autograd.Function):
    """Forward: y = posit_tanh(x, nsize). Backward: grad_x = grad_y * (1 - y**2).

    The backward is tanh's derivative written in terms of the (posit) output y, as in
    qtorch+; it is not the derivative of the piecewise-constant forward.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, nsize: int = 16) -> torch.Tensor:
        y = posit_tanh(x, nsize)
        ctx.save_for_backward(y)
        return function_output(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y), None


class PositTanhFunctionEnhanced(PositTanhFunction):
    """Forward: y = posit_tanh_enhanced(x, nsize). Backward (inherited): grad_y * (1 - y**2)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, nsize: int = 16) -> torch.Tensor:
        y = posit_tanh_enhanced(x, nsize)
        ctx.save_for_backward(y)
        return function_output(y)


class PositSigmoidFunction(torch.autograd.Function):
    """Forward: y = posit_sigmoid(x, nsize). Backward: grad_x = grad_y * y * (1 - y)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, nsize: int = 16) -> torch.Tensor:
        y = posit_sigmoid(x, nsize)
        ctx.save_for_backward(y)
        return function_output(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad * y * (1 - y), None


class _PositActivation(torch.nn.Module):
    """A module applying ``function`` (an autograd Function of (x, nsize)) with nsize 8 or 16."""

    function: ClassVar[type[torch.autograd.Function]]

    def __init__(self, nsize: int = 16) -> None:
        super().__init__()
        self.nsize = _check_nsize(type(self).__name__, nsize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function.apply(x, self.nsize)

    def extra_repr(self) -> str:
        return f"nsize={self.nsize}"


class PositTanhModule(_PositActivation):
    """tanh through posit<16,0> (``nsize`` 8 also allowed): :class:`PositTanhFunction`.

    >>> PositTanhModule()(torch.tensor([0.5, 2.0]))
    tensor([0.5000, 0.8750])
    """

    function = PositTanhFunction


class PositTanhModuleEnhanced(_PositActivation):
    """Enhanced posit tanh (:func:`~qtorch.quant.posit_tanh_enhanced`) with tanh's backward.

    >>> PositTanhModuleEnhanced()(torch.tensor([0.5, 2.0]))
    tensor([0.5000, 0.9430])
    """

    function = PositTanhFunctionEnhanced


class PositSigmoidModule(_PositActivation):
    """Sigmoid through the posit<16,0> bit trick: :class:`PositSigmoidFunction`.

    >>> PositSigmoidModule()(torch.tensor([0.0, 1.0]))
    tensor([0.5000, 0.7500])
    """

    function = PositSigmoidFunction


class RefTanhModule(torch.nn.Module):
    """The reference: ``torch.tanh`` with its autograd backward.

    >>> RefTanhModule()(torch.tensor([0.0]))
    tensor([0.])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)
