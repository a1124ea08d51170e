"""qtorch+'s posit activation modules: posit tanh / sigmoid forward, analytic backward."""

from __future__ import annotations

import functools
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


def _tanh_chain(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return g * (1 - y * y)


def _sigmoid_chain(g: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return g * y * (1 - y)


def _save_output(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(output)


class PositTanhFunction(torch.autograd.Function):
    """Forward: y = posit_tanh(x, nsize). Backward: grad_x = grad_y * (1 - y**2).

    The backward is tanh's derivative written in terms of the (posit) output y, as in
    qtorch+; it is not the derivative of the piecewise-constant forward. ``torch.func``
    transforms apply (``grad``, ``vmap``, ``jacrev``, ...); forward-mode AD is
    :func:`forward_mode`'s subclass's, which the modules apply outside ``torch.compile``
    (Dynamo does not trace a custom ``jvp``).
    """

    generate_vmap_rule = True
    #: the gradient (or tangent) g times the derivative at the output y
    chain = staticmethod(_tanh_chain)
    setup_context = staticmethod(_save_output)

    @staticmethod
    def forward(x: torch.Tensor, nsize: int = 16) -> torch.Tensor:
        return function_output(posit_tanh(x, nsize))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return _tanh_chain(grad, y), None


class PositTanhFunctionEnhanced(PositTanhFunction):
    """Forward: y = posit_tanh_enhanced(x, nsize). Backward (inherited): grad_y * (1 - y**2)."""

    @staticmethod
    def forward(x: torch.Tensor, nsize: int = 16) -> torch.Tensor:
        return function_output(posit_tanh_enhanced(x, nsize))


class PositSigmoidFunction(torch.autograd.Function):
    """Forward: y = posit_sigmoid(x, nsize). Backward: grad_x = grad_y * y * (1 - y).

    ``torch.func`` and forward-mode AD as for :class:`PositTanhFunction`.
    """

    generate_vmap_rule = True
    chain = staticmethod(_sigmoid_chain)
    setup_context = staticmethod(_save_output)

    @staticmethod
    def forward(x: torch.Tensor, nsize: int = 16) -> torch.Tensor:
        return function_output(posit_sigmoid(x, nsize))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        return _sigmoid_chain(grad, y), None


_Activation = type[PositTanhFunction] | type[PositSigmoidFunction]


@functools.cache
def forward_mode(function: _Activation) -> _Activation:
    """``function`` with forward-mode AD (``torch.func.jvp``, ``jacfwd``, ``hessian``,
    ``torch.autograd.forward_ad``): ``tangent_y = chain(tangent_x, y)``."""
    chain = function.chain

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    def jvp(ctx: Any, tangent: torch.Tensor, *_: None) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return chain(tangent, y)

    name = f"ForwardMode{function.__name__}"
    namespace = {"setup_context": staticmethod(setup_context), "jvp": staticmethod(jvp)}
    return type(name, (function,), namespace)


class _PositActivation(torch.nn.Module):
    """A module applying ``function`` (an autograd Function of (x, nsize)) with nsize 8 or 16."""

    function: ClassVar[_Activation]

    def __init__(self, nsize: int = 16) -> None:
        super().__init__()
        self.nsize = _check_nsize(type(self).__name__, nsize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self.function.apply(x, self.nsize)
        return forward_mode(self.function).apply(x, self.nsize)

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
