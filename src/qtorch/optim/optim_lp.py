"""``OptimLP``: low-precision weights, gradients, optimizer state and accumulators."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

from qtorch.formats.base import Format
from qtorch.quantize import quantize_

__all__ = ["OptimLP"]

QuantFn = Callable[[torch.Tensor], torch.Tensor]

#: State entries that are counters or scalars, never quantized even when shaped like a
#: 0-d parameter.
_COUNTER_KEYS = frozenset({"step", "eta", "mu", "mu_product", "H_diag"})

_ACC_KEY = "qtorch_acc"


def _as_inplace(name: str, quant: QuantFn | Format | None) -> Callable[[torch.Tensor], None] | None:
    """Turn a quantization argument into a function that overwrites a tensor in place."""
    if quant is None:
        return None
    if isinstance(quant, Format):
        fmt = quant

        def round_format(t: torch.Tensor) -> None:
            quantize_(t, fmt, "nearest")

        return round_format
    if not callable(quant):
        raise TypeError(
            f"OptimLP: {name} must be a callable, a qtorch format or None, got {quant!r}"
        )
    fn = quant

    def round_callable(t: torch.Tensor) -> None:
        out = fn(t)
        if out is not t:
            t.copy_(out)

    return round_callable


class OptimLP(Optimizer):
    """Wrap any ``torch.optim`` optimizer to simulate low-precision training.

    One :meth:`step` does, for every parameter ``p`` that has a gradient (parameters
    without one are skipped entirely):

    1. ``p.grad`` is multiplied by ``grad_scaling`` and rounded with ``grad_quant``. With a
       closure, this happens to the gradients of every closure call instead.
    2. With ``acc_quant``: ``p`` is loaded from its full-precision accumulator.
    3. The wrapped optimizer steps.
    4. With ``acc_quant``: the accumulator becomes ``acc_quant(p)``, and ``p`` is set from it.
    5. ``p`` is rounded with ``weight_quant``.
    6. Every floating-point state tensor of ``p`` shaped like ``p`` (``momentum_buffer``,
       ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, ``square_avg``, ``acc_delta``,
       ``sum``, ``exp_inf``, ``ax``, ``prev``, ``step_size``, ...) is rounded with
       ``momentum_quant``; step counters and scalars never are.

    Each quantization argument is a function ``Tensor -> Tensor`` (e.g. a lambda around
    :func:`qtorch.quantize`, or what :func:`qtorch.quant.quantizer` returns) or a format
    object, which is applied with nearest rounding (ties to even). For stochastic rounding
    pass ``lambda x: qtorch.quantize(x, fmt, "stochastic")``; it draws from the torch RNG,
    so ``torch.manual_seed`` reproduces a run. Results are written into the existing
    tensors: no copy of the model is made per step. The accumulators (one full-precision
    copy per parameter, made at the parameter's first step) are part of
    :meth:`state_dict`, so a run resumed from a checkpoint continues bit-identically.

    ``param_groups`` and ``state`` are those of the wrapped optimizer: learning-rate
    schedulers, ``zero_grad`` and ``add_param_group`` work on either object.

    Args:
        optim: the optimizer to wrap (any ``torch.optim.Optimizer``).
        weight_quant: rounds the weights after each step.
        grad_scaling: positive factor applied to gradients before ``grad_quant``.
        grad_quant: rounds the gradients before each step.
        momentum_quant: rounds the optimizer state after each step.
        acc_quant: rounds the full-precision accumulators; enables them.

    >>> import qtorch
    >>> w = torch.nn.Parameter(torch.tensor([1.0]))
    >>> opt = OptimLP(torch.optim.SGD([w], lr=0.1), weight_quant=lambda x: x.round())
    >>> w.grad = torch.tensor([4.0])
    >>> opt.step()
    >>> w.data
    tensor([1.])
    """

    def __init__(
        self,
        optim: Optimizer,
        weight_quant: QuantFn | Format | None = None,
        grad_scaling: float = 1.0,
        grad_quant: QuantFn | Format | None = None,
        momentum_quant: QuantFn | Format | None = None,
        acc_quant: QuantFn | Format | None = None,
    ) -> None:
        if not isinstance(optim, Optimizer):
            raise TypeError(f"OptimLP: optim must be a torch.optim.Optimizer, got {optim!r}")
        if isinstance(optim, OptimLP):
            raise TypeError("OptimLP: optim is already an OptimLP")
        if not float(grad_scaling) > 0:
            raise ValueError(f"OptimLP: grad_scaling must be > 0, got {grad_scaling}")
        self.optim = optim
        self.grad_scaling = float(grad_scaling)
        self.weight_quant = weight_quant
        self.grad_quant = grad_quant
        self.momentum_quant = momentum_quant
        self.acc_quant = acc_quant
        self._weight = _as_inplace("weight_quant", weight_quant)
        self._grad = _as_inplace("grad_quant", grad_quant)
        self._momentum = _as_inplace("momentum_quant", momentum_quant)
        self._acc = _as_inplace("acc_quant", acc_quant)
        self.accumulators: dict[torch.Tensor, torch.Tensor] = {}
        # Optimizer.__init__ resets ``state`` and rebuilds ``param_groups``; both are
        # properties reading and writing the wrapped optimizer's, so restore them after.
        state, groups = optim.state, optim.param_groups
        super().__init__(list(groups), optim.defaults)
        optim.state, optim.param_groups = state, groups

    @property
    def state(self) -> Any:
        """The wrapped optimizer's ``state`` (shared, never copied)."""
        return self.optim.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optim.state = value

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's ``param_groups`` (shared: schedulers act on both)."""
        return self.optim.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optim.param_groups = value

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- the step -------------------------------------------------------------------------

    def _params_with_grad(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def _round_grads(self) -> None:
        if self.grad_scaling == 1.0 and self._grad is None:
            return
        for p in self._params_with_grad():
            grad = p.grad
            if grad is None:  # for type checkers: _params_with_grad keeps those with one
                continue
            if self.grad_scaling != 1.0:
                grad.mul_(self.grad_scaling)
            if self._grad is not None:
                self._grad(grad)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Quantize gradients, step the wrapped optimizer, quantize weights and state."""
        if closure is None:
            self._round_grads()
            inner_closure = None
        else:

            def inner_closure() -> Any:
                with torch.enable_grad():
                    loss = closure()
                self._round_grads()
                return loss

        # With a closure the gradients appear during the step: load every accumulator.
        params = self._params_with_grad() if closure is None else list(self.accumulators)
        if self._acc is not None:
            for p in params:
                acc = self.accumulators.get(p)
                if acc is None:
                    self.accumulators[p] = p.detach().clone()
                else:
                    p.copy_(acc)

        loss = self.optim.step() if inner_closure is None else self.optim.step(inner_closure)
        if closure is not None:
            loaded = set(params)
            params += [p for p in self._params_with_grad() if p not in loaded]

        for p in params:
            if self._acc is not None:
                acc = self.accumulators.setdefault(p, p.detach().clone())
                acc.copy_(p)
                self._acc(acc)
                p.copy_(acc)
            if self._weight is not None:
                self._weight(p)
            if self._momentum is not None:
                for key, value in self.state.get(p, {}).items():
                    if (
                        key not in _COUNTER_KEYS
                        and isinstance(value, torch.Tensor)
                        and value.is_floating_point()
                        and value.shape == p.shape
                    ):
                        self._momentum(value)
        return loss

    # -- delegation -----------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero (or drop) the gradients, as the wrapped optimizer does."""
        self.optim.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the wrapped optimizer (shared with this wrapper)."""
        self.optim.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus the accumulators (``"qtorch_acc"``).

        Accumulators are keyed by the parameter's index, numbered as in the wrapped
        optimizer's ``state`` (parameters in group order).
        """
        sd = self.optim.state_dict()
        if self.accumulators:
            index = {p: i for i, p in enumerate(self._ordered_params())}
            sd[_ACC_KEY] = {index[p]: acc.clone() for p, acc in self.accumulators.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (accumulators included)."""
        state_dict = dict(state_dict)
        accs = state_dict.pop(_ACC_KEY, {})
        self.optim.load_state_dict(state_dict)
        params = self._ordered_params()
        self.accumulators = {}
        for i, acc in accs.items():
            p = params[int(i)]
            self.accumulators[p] = acc.detach().to(dtype=p.dtype, device=p.device, copy=True)

    def _ordered_params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def __repr__(self) -> str:
        return f"OptimLP({self.optim!r})"
