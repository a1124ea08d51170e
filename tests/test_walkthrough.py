"""The earlier libraries' functionality walk-through, as tests.

Membership of results in a format is checked with independent oracles: SoftPosit for
posit⟨16,1⟩, torch casts for float16 / bfloat16, integer arithmetic for fixed point.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qtorch
from qtorch import FixedPoint
from qtorch.auto_low import sequential_lower
from qtorch.optim import OptimLP
from qtorch.quant import Quantizer, quantizer


def blobs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two Gaussian blobs in 2-D, labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.6 + (y.float() * 2 - 1).unsqueeze(1) * torch.tensor(
        [1.0, 0.5]
    )
    return x, y.float()


def on_fixed_grid(t: torch.Tensor, wl: int, fl: int) -> bool:
    k = t.detach() * 2.0**fl
    return bool(
        torch.equal(k, torch.round(k)) and k.min() >= -(2 ** (wl - 1)) and k.max() < 2 ** (wl - 1)
    )


def is_half(t: torch.Tensor) -> bool:
    return torch.equal(t.half().float(), t)


def is_bfloat16(t: torch.Tensor) -> bool:
    return torch.equal(t.bfloat16().float(), t)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(x).squeeze(1) > 0).float() == y).float().mean())


def test_logistic_regression_with_posit_quantizer() -> None:
    softposit = pytest.importorskip("softposit")
    posit = qtorch.Posit(16, 1)
    x, y = blobs(256)
    model = nn.Sequential(nn.Linear(2, 1), Quantizer(posit, posit, "nearest", "nearest"))
    seen: list[torch.Tensor] = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first / 2
    assert accuracy(model, x, y) >= 0.9
    logits = seen[-1].flatten()[:64].tolist()
    assert logits == [float(softposit.posit16(v)) for v in logits]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))


def _fit(model: nn.Module, opt: OptimLP, steps: int = 40) -> tuple[float, float]:
    x, y = blobs(128, seed=1)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_sgd_momentum_with_weight_grad_momentum_quantization() -> None:
    model = _mlp()
    weight_quant = quantizer(forward_number=FixedPoint(8, 6), forward_rounding="nearest")
    opt = OptimLP(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        weight_quant=weight_quant,
        grad_quant=lambda t: qtorch.quantize(t, qtorch.bfloat16, "stochastic"),
        momentum_quant=lambda t: qtorch.quantize(t, qtorch.float16, "stochastic"),
    )
    first, last = _fit(model, opt)
    assert last < first / 2
    x, y = blobs(128, seed=1)
    assert accuracy(model, x, y) >= 0.9
    for p in model.parameters():
        assert on_fixed_grid(p, 8, 6)
        assert p.grad is not None and is_bfloat16(p.grad)
        assert is_half(opt.state[p]["momentum_buffer"])


def test_accumulator_variant() -> None:
    model = _mlp()
    opt = OptimLP(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        weight_quant=lambda t: qtorch.quantize(t, FixedPoint(6, 3), "nearest"),
        acc_quant=lambda t: qtorch.quantize(t, qtorch.float16, "nearest"),
    )
    first, last = _fit(model, opt)
    assert last < first / 2
    for p in model.parameters():
        acc = opt.accumulators[p]
        assert is_half(acc)
        assert on_fixed_grid(p, 6, 3)
        # The weight is the rounding of the accumulator, which keeps finer values.
        assert torch.equal(p.data, torch.clamp(torch.round(acc * 8) / 8, -4, 3.875))
    assert any(not on_fixed_grid(acc, 6, 3) for acc in opt.accumulators.values())


def test_sequential_lower_on_a_linear_model() -> None:
    model = nn.Sequential(nn.Linear(2, 8), nn.Linear(8, 4), nn.Linear(4, 1))
    x, y = blobs(64, seed=2)
    plain = model(x).detach()
    low = sequential_lower(model, ["linear"], FixedPoint(8, 4), FixedPoint(8, 4))
    assert torch.equal(model(x), plain)  # the original is untouched
    out = low(x)
    assert on_fixed_grid(out, 8, 4)
    assert not on_fixed_grid(plain, 8, 4)
    opt = OptimLP(torch.optim.SGD(low.parameters(), lr=0.1), weight_quant=FixedPoint(8, 6))
    nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y).backward()
    opt.step()
    assert all(on_fixed_grid(p, 8, 6) for p in low.parameters())
