"""Low-precision training of a small CNN, as ``qtorch demo`` runs it.

Everything a user would quantize is quantized, the way a user writes it: ``Quantizer``
modules in the model round the activations (forward) and the errors (backward), and
``OptimLP`` rounds the weights, the gradients and the momentum after each step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qtorch.formats.base import Format
from qtorch.formats.parse import format_from_string
from qtorch.rounding import Rounding


@dataclass(frozen=True)
class Setting:
    """Which format each quantity of training lives in (format specs; ``None`` = float32).

    Weights, errors, gradients and momentum are rounded stochastically (their small updates
    would otherwise be lost), activations to nearest; a format without stochastic rounding
    uses nearest everywhere.
    """

    name: str
    weight: str | None = None
    activation: str | None = None
    error: str | None = None
    gradient: str | None = None
    momentum: str | None = None

    @classmethod
    def uniform(cls, spec: str, name: str | None = None) -> Setting:
        """Every quantity in the format ``spec``."""
        return cls(name or spec, spec, spec, spec, spec, spec)

    @classmethod
    def split(cls, name: str, forward: str, backward: str) -> Setting:
        """Weights and activations in ``forward``; errors, gradients, momentum in ``backward``."""
        return cls(name, forward, forward, backward, backward, backward)

    def describe(self) -> str:
        """A short line naming the formats, e.g. ``fwd posit(8,2) / bwd posit(8,2)``."""
        roles = {
            "w": self.weight,
            "a": self.activation,
            "e": self.error,
            "g": self.gradient,
            "m": self.momentum,
        }
        if len(set(roles.values())) == 1:
            return "float32" if self.weight is None else f"all {self.weight}"
        if self.weight == self.activation and self.error == self.gradient == self.momentum:
            return f"fwd {self.weight} / bwd {self.error}"
        return " ".join(f"{k}={v or 'fp32'}" for k, v in roles.items())


#: The settings ``qtorch demo`` runs by default, by name (``--formats`` takes these names).
SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("fp32"),
        Setting.uniform("bfloat16"),
        Setting.split("float8", "float8_e4m3", "float8_e5m2"),
        Setting.uniform("posit(8,2)"),
        Setting.uniform("posit(8,1)"),
        # posit(6,1) is most precise near 1 and holds only 1/256..256: its grid is scaled
        # down 4x for the weights (~0.1) and 64x for the errors (median ~1e-4)
        Setting(
            "posit(6,1)",
            "posit(6,1,scale=4)",
            "posit(6,1)",
            "posit(6,1,scale=64)",
            "posit(6,1)",
            "posit(6,1)",
        ),
        Setting("fixed8", "fixed(8,6)", "fixed(8,3)", "fixed(8,6)", "fixed(8,4)", "fixed(8,4)"),
        # 4-bit NormalFloat weights (values in -0.5..0.5), the rest in bfloat16
        Setting("nf4", "nf4(scale=2)", *["bfloat16"] * 4),
    )
}


@dataclass
class Data:
    """Train and test tensors: images (N, C, H, W) float32 in [0, 1], labels int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])


def load_digits_data(test_fraction: float = 0.2) -> Data:
    """scikit-learn's bundled 8x8 digits (1,797 images, no download), a fixed split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Data("digits", x[train], y[train], x[test], y[test])


@dataclass
class Result:
    """What one training run produced."""

    setting: str
    description: str
    test_acc: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")

    @property
    def best_acc(self) -> float:
        return max(self.test_acc) if self.test_acc else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "description": self.description,
            "final_test_acc": self.final_acc,
            "best_test_acc": self.best_acc,
            "seconds": self.seconds,
            "test_acc_per_epoch": self.test_acc,
            "train_loss_per_epoch": self.train_loss,
        }


def _fmt(spec: str | None) -> Format | None:
    return None if spec is None else format_from_string(spec)


def _rounding(fmt: Format | None, wanted: Rounding) -> str:
    if fmt is None or wanted in fmt.roundings:
        return wanted.value
    return Rounding.NEAREST.value


def _quantizer_module(setting: Setting) -> nn.Module:
    act, err = _fmt(setting.activation), _fmt(setting.error)
    if act is None and err is None:
        return nn.Identity()
    from qtorch.quant import Quantizer

    return Quantizer(
        forward_number=act,
        backward_number=err,
        forward_rounding=_rounding(act, Rounding.NEAREST),
        backward_rounding=_rounding(err, Rounding.STOCHASTIC),
    )


def make_model(setting: Setting, channels: int = 1) -> nn.Sequential:
    """The CNN: two 3x3 convolutions and a linear layer, a Quantizer after each.

    8x8 digits give 16 x 8 x 8 and 32 x 4 x 4 feature maps; larger images are pooled to 4 x 4.
    """
    return nn.Sequential(
        _quantizer_module(setting),
        nn.Conv2d(channels, 16, 3, padding=1),
        _quantizer_module(setting),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        _quantizer_module(setting),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveMaxPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
        _quantizer_module(setting),
    )


def make_optimizer(setting: Setting, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """SGD with momentum, wrapped in OptimLP when the setting quantizes optimizer state."""
    sgd = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    weight, grad, momentum = _fmt(setting.weight), _fmt(setting.gradient), _fmt(setting.momentum)
    if weight is None and grad is None and momentum is None:
        return sgd
    from qtorch.optim import OptimLP
    from qtorch.quant import quantizer

    def rounder(fmt: Format | None) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if fmt is None:
            return None
        return quantizer(fmt, forward_rounding=_rounding(fmt, Rounding.STOCHASTIC))

    return OptimLP(
        sgd,
        weight_quant=rounder(weight),
        grad_quant=rounder(grad),
        momentum_quant=rounder(momentum),
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Fraction of ``x`` classified as ``y`` (forward pass in the model's formats)."""
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    return correct / max(len(y), 1)


def train(
    setting: Setting,
    data: Data,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 0.001,
    progress: Callable[[int], Any] | None = None,
) -> Result:
    """Train one model in ``setting``; test accuracy after every epoch.

    The loss is the *sum* of cross-entropies over the batch (a loss scale of the batch size,
    so errors and gradients live near 1, where 8-bit formats are most precise); ``lr`` is
    per summed loss. Seeds model initialisation, data order and stochastic rounding with
    ``seed``, so a run is reproducible. ``progress(n)`` is called after each batch.
    """
    result = Result(setting.name, setting.describe())
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = make_model(setting, data.channels)
    optimizer = make_optimizer(setting, model, lr)
    weight = _fmt(setting.weight)
    if weight is not None:  # the weights start in the format, as they will stay
        from qtorch.quantize import quantize

        with torch.no_grad():
            for p in model.parameters():
                p.copy_(quantize(p, weight, "nearest"))
    order = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    n = len(data.train_y)
    for _ in range(epochs):
        model.train()
        total = 0.0
        for idx in torch.randperm(n, generator=order).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(data.train_x[idx]), data.train_y[idx])
            loss.backward()
            optimizer.step()
            total += loss.item()
            if progress is not None:
                progress(1)
        model.eval()
        result.train_loss.append(total / n)
        result.test_acc.append(accuracy(model, data.test_x, data.test_y))
    result.seconds = time.perf_counter() - start
    return result
