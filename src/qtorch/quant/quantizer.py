"""Quantization inside autograd: ``quantizer()`` (a function) and ``Quantizer`` (a module).

The forward pass rounds activations to one format, the backward pass rounds the incoming
gradient to another; either may be ``None`` (identity). This is the QPyTorch API, kept
signature for signature, working with every :class:`qtorch.formats.base.Format`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qtorch._autograd import function_output
from qtorch.formats.base import Format
from qtorch.quantize import quantize
from qtorch.rounding import Rounding

__all__ = [
    "ForwardModeQuantizerFunction",
    "Quantizer",
    "QuantizerConfig",
    "QuantizerFunction",
    "quantizer",
    "saturated",
]

GradHook = Callable[[torch.Tensor], torch.Tensor]


def saturated(x: torch.Tensor, q: torch.Tensor, fmt: Format) -> torch.Tensor | None:
    """Boolean mask of the elements of ``x`` that quantizing to ``fmt`` saturated.

    An element is saturated when it lies beyond the format's range and its quantized value
    ``q`` is the end of that range: ``x > fmt.max`` with ``q == fmt.max``, or
    ``x < lowest`` with ``q == lowest``, where ``lowest`` is ``fmt.min`` when the format
    defines it (numpy-finfo meaning: the most negative value) and ``-fmt.max`` otherwise.
    ±Inf inputs of a saturating format are saturated; NaN never is. A format that overflows
    to ±Inf, or does not clamp (``FixedPoint(clamp=False)``), saturates nothing. For
    formats whose scale follows each block (block floating point, MX), the range is the
    format's global one (its ``max``), so only values beyond it count: the rounding of a
    block's largest element to the block's own grid is rounding, not saturation.

    Returns ``None`` when the format has no finite ``max``.
    """
    top = getattr(fmt, "max", None)
    if top is None or not math.isfinite(top):
        return None
    lowest = getattr(fmt, "min", None)
    if lowest is None or not math.isfinite(lowest) or lowest >= 0:
        lowest = -top
    return ((x > top) & (q == top)) | ((x < lowest) & (q == lowest))


class QuantizerFunction(torch.autograd.Function):
    """Round in the forward pass and round the gradient in the backward pass.

    Forward: ``q = quantize(x, forward_number, forward_rounding)`` (``q = x`` when the
    forward format is ``None``); with ``clamping_grad_zero`` it also records which elements
    the format saturated (see :func:`saturated`).

    Backward: the incoming gradient ``g`` goes through ``backward_hooks`` in order, then
    ``g = quantize(g, backward_number, backward_rounding)`` (identity when ``None``), then
    elements saturated in the forward pass get a zero gradient. The gradient is that of a
    straight-through estimator: rounding itself passes the gradient unchanged.

    ``torch.func`` transforms apply to it (``grad``, ``vmap`` of per-example gradients,
    ``jacrev``, ...); under ``vmap`` stochastic rounding needs ``randomness="same"`` or
    ``"different"``, as any random operation does. Forward-mode AD is
    :class:`ForwardModeQuantizerFunction`'s, which :func:`quantizer` applies outside
    ``torch.compile``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, config: QuantizerConfig) -> torch.Tensor:
        if config.forward_number is None:
            return x.clone()  # a view of x would forbid in-place ops (ReLU(inplace)) after
        return function_output(quantize(x, config.forward_number, config.forward_rounding))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _setup_context(ctx, inputs, output, forward_mode=False)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        config: QuantizerConfig = ctx.config
        for hook in config.backward_hooks:
            grad = hook(grad)
        if config.backward_number is not None:
            grad = quantize(grad, config.backward_number, config.backward_rounding)
        if ctx.masked:
            (mask,) = ctx.saved_tensors
            grad = grad.masked_fill(mask, 0.0)
        return grad, None


class ForwardModeQuantizerFunction(QuantizerFunction):
    """:class:`QuantizerFunction` with forward-mode AD (``torch.func.jvp``, ``jacfwd``,
    ``hessian``, ``torch.autograd.forward_ad``).

    The tangent gets the straight-through Jacobian of the backward pass: it passes
    unchanged, but is zero where the forward pass saturated (with ``clamping_grad_zero``).
    The backward format and hooks are for gradients; they do not touch tangents. Dynamo
    does not trace a custom ``jvp`` ("Unsupported custom jvp"), so under ``torch.compile``
    :func:`quantizer` applies the base class.
    """

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        _setup_context(ctx, inputs, output, forward_mode=True)

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, _config: None) -> torch.Tensor:
        if ctx.masked:
            (mask,) = ctx.saved_tensors
            return tangent.masked_fill(mask, 0.0)
        return tangent.clone()


def _setup_context(
    ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor, forward_mode: bool
) -> None:
    """Keep the config, and the saturation mask (``clamping_grad_zero``) for the backward
    pass and, with ``forward_mode``, for ``jvp``."""
    x, config = inputs
    ctx.config = config
    ctx.masked = False
    if config.clamping_grad_zero and config.forward_number is not None:
        mask = saturated(x, output, config.forward_number)
        if mask is not None:
            ctx.save_for_backward(mask)
            if forward_mode:
                ctx.save_for_forward(mask)
            ctx.masked = True


def _check_number(name: str, number: object) -> None:
    if number is not None and not isinstance(number, Format):
        raise TypeError(f"quantizer: {name} must be a qtorch format or None, got {number!r}")


@dataclass(frozen=True)
class QuantizerConfig:
    """What :func:`quantizer` returns: a callable ``Tensor -> Tensor`` usable in autograd.

    Holds the formats, rounding modes (parsed to :class:`Rounding`), the clamping flag and
    the backward hooks (a tuple). Arguments are validated on construction. Calling it on
    a tensor applies :class:`QuantizerFunction`.
    """

    forward_number: Format | None = None
    backward_number: Format | None = None
    forward_rounding: Rounding = Rounding.STOCHASTIC
    backward_rounding: Rounding = Rounding.STOCHASTIC
    clamping_grad_zero: bool = False
    backward_hooks: tuple[GradHook, ...] = ()

    def __post_init__(self) -> None:
        _check_number("forward_number", self.forward_number)
        _check_number("backward_number", self.backward_number)
        for name, number in (("forward", self.forward_number), ("backward", self.backward_number)):
            rounding = getattr(self, f"{name}_rounding")
            mode = Rounding.parse(rounding) if number is None else number.check_rounding(rounding)
            object.__setattr__(self, f"{name}_rounding", mode)
        hooks = tuple(self.backward_hooks)
        for hook in hooks:
            if not callable(hook):
                raise TypeError(f"quantizer: backward_hooks must be callables, got {hook!r}")
        object.__setattr__(self, "backward_hooks", hooks)
        if self.clamping_grad_zero and self.forward_number is not None:
            top = getattr(self.forward_number, "max", None)
            if top is None or not math.isfinite(top):
                raise ValueError(
                    "quantizer: clamping_grad_zero needs a forward format with a finite range "
                    f"(a finite `max`), got {self.forward_number!r}"
                )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.forward_number is None and self.backward_number is None and not self.backward_hooks:
            return x  # the identity: nothing to record for autograd
        if torch.compiler.is_compiling():
            out: torch.Tensor = QuantizerFunction.apply(x, self)
        else:
            out = ForwardModeQuantizerFunction.apply(x, self)
        return out

    def describe(self) -> str:
        """One line: the formats and rounding modes (what ``Quantizer`` prints)."""
        parts = [
            f"forward_number={self.forward_number!r}",
            f"forward_rounding={self.forward_rounding.value!r}",
            f"backward_number={self.backward_number!r}",
            f"backward_rounding={self.backward_rounding.value!r}",
        ]
        if self.clamping_grad_zero:
            parts.append("clamping_grad_zero=True")
        if self.backward_hooks:
            parts.append(f"backward_hooks={len(self.backward_hooks)}")
        return ", ".join(parts)


def quantizer(
    forward_number: Format | None = None,
    backward_number: Format | None = None,
    forward_rounding: Rounding | str = "stochastic",
    backward_rounding: Rounding | str = "stochastic",
    clamping_grad_zero: bool = False,
    backward_hooks: Iterable[GradHook] = (),
) -> QuantizerConfig:
    """Return a function that quantizes forward values and backward gradients.

    Args:
        forward_number: format of the forward values; ``None`` leaves them unchanged.
        backward_number: format of the gradient; ``None`` leaves it unchanged.
        forward_rounding: rounding mode of the forward pass (``"stochastic"`` by default,
            seeded by the torch RNG, so ``torch.manual_seed`` reproduces it).
        backward_rounding: rounding mode of the backward pass.
        clamping_grad_zero: zero the gradient of elements the forward format saturated
            (see :func:`saturated`); the forward format needs a finite ``max``.
        backward_hooks: functions ``Tensor -> Tensor`` applied in order to the incoming
            gradient before backward quantization (always, with or without clamping).

    Returns:
        A callable ``Tensor -> Tensor`` (a :class:`QuantizerConfig`) usable in autograd.
        NaN, ±Inf, -0 and overflow behave as the formats define.

    Raises:
        ValueError: a rounding mode the format does not accept, or ``clamping_grad_zero``
            with a forward format without a finite range.
        TypeError: a format that is not a :class:`qtorch.formats.base.Format`.

    >>> q = quantizer(backward_number=None, forward_rounding="nearest")
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> q(x).sum().backward()
    >>> x.grad
    tensor([1., 1.])
    """
    return QuantizerConfig(
        forward_number,
        backward_number,
        forward_rounding,  # type: ignore[arg-type]  # parsed in __post_init__
        backward_rounding,  # type: ignore[arg-type]
        bool(clamping_grad_zero),
        tuple(backward_hooks),
    )


class Quantizer(nn.Module):
    """Module form of :func:`quantizer`: same arguments, forward applies it.

    Prints its formats and rounding modes. Holds no parameters or buffers, so adding one to
    a model does not change its ``state_dict``.

    >>> import qtorch
    >>> Quantizer(qtorch.FixedPoint(8, 4), forward_rounding="nearest")  # doctest: +ELLIPSIS
    Quantizer(forward_number=FixedPoint(wl=8, fl=4, ...), forward_rounding='nearest', ...)
    """

    def __init__(
        self,
        forward_number: Format | None = None,
        backward_number: Format | None = None,
        forward_rounding: Rounding | str = "stochastic",
        backward_rounding: Rounding | str = "stochastic",
        clamping_grad_zero: bool = False,
        backward_hooks: Iterable[GradHook] = (),
    ) -> None:
        super().__init__()
        self.config = quantizer(
            forward_number,
            backward_number,
            forward_rounding,
            backward_rounding,
            clamping_grad_zero,
            backward_hooks,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.config(x)

    def extra_repr(self) -> str:
        return self.config.describe()
