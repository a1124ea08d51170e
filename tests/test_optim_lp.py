"""OptimLP: order of the quantizations, any optimizer, state, checkpoints, in-place work."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import pytest
import torch
from edge_cases import bits_equal
from torch import nn

import qtorch
from qtorch import FixedPoint
from qtorch.optim import OptimLP


def grid(step: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Round to multiples of ``step`` (a power of two), ties to even: a hand-checkable quantizer."""
    return lambda t: torch.round(t / step) * step


def test_one_sgd_step_by_hand() -> None:
    # p = 1, g = 0.3. Scaled by 2: 0.6; grad_quant to 1/4: 0.5; SGD lr 0.5: p = 0.75;
    # weight_quant to 1/2: 0.75/0.5 = 1.5 -> ties to even 2 -> p = 1.0.
    p = nn.Parameter(torch.tensor([1.0]))
    opt = OptimLP(
        torch.optim.SGD([p], lr=0.5),
        weight_quant=grid(0.5),
        grad_scaling=2.0,
        grad_quant=grid(0.25),
    )
    p.grad = torch.tensor([0.3])
    opt.step()
    assert p.grad.item() == 0.5
    assert p.item() == 1.0


def test_grad_scaling_applies_without_grad_quant() -> None:
    p = nn.Parameter(torch.tensor([1.0]))
    opt = OptimLP(torch.optim.SGD([p], lr=0.25), grad_scaling=4.0)
    p.grad = torch.tensor([0.5])
    opt.step()
    assert p.grad.item() == 2.0
    assert p.item() == 0.5


def test_momentum_quantized_after_the_step() -> None:
    # SGD momentum 0.5, lr 1, two steps with g = 0.3 (grad not quantized); the state is
    # quantized (to 1/4) after each step, so each step uses the unquantized new buffer:
    # step 1: buf = 0.3, p = 1 - 0.3, then buf -> 0.25;
    # step 2: buf = 0.5*0.25 + 0.3 = 0.425, p = 0.7 - 0.425, then buf -> 0.5.
    p = nn.Parameter(torch.tensor([1.0]))
    opt = OptimLP(torch.optim.SGD([p], lr=1.0, momentum=0.5), momentum_quant=grid(0.25))
    for _ in range(2):
        p.grad = torch.tensor([0.3])
        opt.step()
    g = torch.tensor([0.3])
    expected = (torch.tensor([1.0]) - g) - (torch.tensor([0.125]) + g)
    assert opt.state[p]["momentum_buffer"].item() == 0.5
    assert bits_equal(p.data, expected)


def test_accumulator_keeps_full_precision() -> None:
    # acc_quant identity, weight_quant to 1/2, lr 1, g = 0.1 three times:
    # acc: 0.9, 0.8, 0.7 (float32 arithmetic), weights round(acc*2)/2: 1.0, 1.0, 0.5.
    p = nn.Parameter(torch.tensor([1.0]))
    opt = OptimLP(torch.optim.SGD([p], lr=1.0), weight_quant=grid(0.5), acc_quant=lambda t: t)
    expected_acc = torch.tensor([1.0])
    for want in (1.0, 1.0, 0.5):
        p.grad = torch.tensor([0.1])
        opt.step()
        expected_acc = expected_acc - torch.tensor([0.1])
        assert bits_equal(opt.accumulators[p], expected_acc)
        assert p.item() == want


def test_format_object_rounds_to_nearest() -> None:
    p = nn.Parameter(torch.tensor([0.0, 0.0, 0.0]))
    opt = OptimLP(torch.optim.SGD([p], lr=1.0), weight_quant=FixedPoint(8, 2))
    p.grad = torch.tensor([-0.3, -0.375, -100.0])  # 0.3 -> 0.25, tie 0.375 -> 0.5, saturate
    opt.step()
    assert p.tolist() == [0.25, 0.5, 31.75]


def test_params_without_grad_are_skipped() -> None:
    used = nn.Parameter(torch.tensor([1.0]))
    unused = nn.Parameter(torch.tensor([0.3]))
    opt = OptimLP(
        torch.optim.Adam([used, unused], lr=0.1),
        weight_quant=grid(0.5),
        momentum_quant=grid(0.5),
        acc_quant=grid(0.125),
    )
    used.grad = torch.tensor([1.0])
    opt.step()
    assert unused.item() == pytest.approx(0.3) and bits_equal(unused.data, torch.tensor([0.3]))
    assert unused not in opt.accumulators
    assert len(opt.state[unused]) == 0
    assert used.item() == 1.0  # 1 - 0.1 = 0.9 -> acc 0.875 -> weight 1.0


def _optimizer_classes() -> list[type[torch.optim.Optimizer]]:
    return sorted(
        (
            cls
            for cls in vars(torch.optim).values()
            if inspect.isclass(cls)
            and issubclass(cls, torch.optim.Optimizer)
            and cls is not torch.optim.Optimizer
        ),
        key=lambda cls: cls.__name__,
    )


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def _build(cls: type[torch.optim.Optimizer], model: nn.Module) -> torch.optim.Optimizer | None:
    """The optimizer on the model, or on its matrices only (Muon), or None if it refuses."""
    for params in (list(model.parameters()), [p for p in model.parameters() if p.dim() == 2]):
        try:
            return cls(params)
        except (TypeError, ValueError):
            continue
    return None


def _closure(
    model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor
) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    return closure


def test_every_torch_optimizer_runs_with_optimlp() -> None:
    x = torch.randn(8, 3)
    weight_fmt = FixedPoint(10, 6)

    def on_grid(t: torch.Tensor, step: float) -> bool:
        return torch.equal(torch.round(t / step) * step, t)

    ran = []
    for cls in _optimizer_classes():
        bare_model = _model()
        bare = _build(cls, bare_model)
        if bare is None:
            continue
        try:
            bare.step(_closure(bare_model, bare, x))
        except RuntimeError:  # SparseAdam: dense gradients refused by the optimizer itself
            continue
        # Wrapped without quantization: identical to the bare optimizer.
        plain_model = _model()
        plain_opt = _build(cls, plain_model)
        assert plain_opt is not None
        plain = OptimLP(plain_opt)
        plain.step(_closure(plain_model, plain, x))
        for a, b in zip(bare_model.parameters(), plain_model.parameters(), strict=True):
            assert bits_equal(a.data, b.data), cls.__name__
        # Wrapped with every quantization.
        model = _model()
        inner = _build(cls, model)
        assert inner is not None
        seen: list[torch.Tensor] = []

        def momentum_quant(t: torch.Tensor, seen: list[torch.Tensor] = seen) -> torch.Tensor:
            seen.append(t)
            return torch.round(t * 2**10) / 2**10

        opt = OptimLP(
            inner,
            weight_quant=weight_fmt,
            grad_quant=grid(2**-8),
            momentum_quant=momentum_quant,
            acc_quant=grid(2**-12),
        )
        opt.step(_closure(model, opt, x))
        stepped = [p for g in opt.param_groups for p in g["params"]]
        for p in stepped:
            assert on_grid(p.data, 2**-6), cls.__name__
            assert p.grad is not None and on_grid(p.grad, 2**-8), cls.__name__
            assert on_grid(opt.accumulators[p], 2**-12), cls.__name__
        expected = [
            v
            for p in stepped
            for key, v in inner.state[p].items()
            if isinstance(v, torch.Tensor) and v.shape == p.shape and key != "step"
        ]
        assert {id(t) for t in seen} == {id(t) for t in expected}, cls.__name__
        for p in stepped:
            step = inner.state[p].get("step")
            if isinstance(step, torch.Tensor):
                assert step.item() == 1.0, cls.__name__  # never quantized
        ran.append(cls.__name__)
    assert len(ran) >= 12, ran
    assert {"SGD", "Adam", "AdamW", "LBFGS", "Adagrad", "RMSprop"} <= set(ran)


def _train(
    model: nn.Module, opt: OptimLP, batches: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _lp(model: nn.Module, kind: str) -> OptimLP:
    fixed = FixedPoint(12, 8)
    inner: torch.optim.Optimizer
    if kind == "sgd":
        inner = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        inner = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)

    def sr(t: torch.Tensor) -> torch.Tensor:
        return qtorch.quantize(t, fixed, "stochastic")

    def sr_fine(t: torch.Tensor) -> torch.Tensor:
        return qtorch.quantize(t, FixedPoint(24, 16), "stochastic")

    return OptimLP(
        inner, weight_quant=sr, grad_quant=sr_fine, momentum_quant=sr_fine, acc_quant=sr_fine
    )


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_checkpoint_resume_is_bit_identical(kind: str, tmp_path: object) -> None:
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)) for _ in range(6)]
    k = 3

    torch.manual_seed(7)
    model = _model()
    opt = _lp(model, kind)
    torch.manual_seed(11)
    _train(model, opt, batches)
    straight = [p.detach().clone() for p in model.parameters()]

    torch.manual_seed(7)
    model = _model()
    opt = _lp(model, kind)
    torch.manual_seed(11)
    _train(model, opt, batches[:k])
    path = str(tmp_path) + "/ckpt.pt"
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()}, path
    )

    torch.manual_seed(99)  # a different fresh model
    fresh = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    fresh_opt = _lp(fresh, kind)
    ckpt = torch.load(path)
    fresh.load_state_dict(ckpt["model"])
    fresh_opt.load_state_dict(ckpt["opt"])
    torch.set_rng_state(ckpt["rng"])
    _train(fresh, fresh_opt, batches[k:])
    resumed = [p.detach() for p in fresh.parameters()]
    assert all(bits_equal(a, b) for a, b in zip(straight, resumed, strict=True))
    assert len(ckpt["opt"]["qtorch_acc"]) == 4


def test_scheduler_zero_grad_add_param_group() -> None:
    model = _model()
    inner = torch.optim.SGD(model[0].parameters(), lr=0.5)
    opt = OptimLP(inner, weight_quant=grid(2**-4))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x = torch.randn(2, 3)
    model(x).sum().backward()
    opt.step()
    sched.step()  # warns (an error here) if it did not see opt.step()
    assert inner.param_groups[0]["lr"] == 0.25
    opt.add_param_group({"params": list(model[2].parameters()), "lr": 0.125})
    assert len(inner.param_groups) == 2 and opt.param_groups is inner.param_groups
    before = model[2].weight.detach().clone()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters() if p is not None)
    model(x).sum().backward()
    opt.step()
    assert not torch.equal(before, model[2].weight)
    assert torch.equal(torch.round(model[2].weight * 16) / 16, model[2].weight)


def test_quantization_happens_in_place() -> None:
    model = _model()
    opt = OptimLP(
        torch.optim.Adam(model.parameters(), lr=0.1),
        weight_quant=FixedPoint(8, 4),
        grad_quant=FixedPoint(8, 6),
        momentum_quant=FixedPoint(16, 10),
        acc_quant=FixedPoint(16, 12),
    )
    x = torch.randn(2, 3)
    model(x).sum().backward()
    opt.step()
    ptrs = {id(p): p.data_ptr() for p in model.parameters()}
    grads = {id(p): p.grad for p in model.parameters()}
    states = {id(p): {k: v.data_ptr() for k, v in opt.state[p].items()} for p in model.parameters()}
    accs = {id(p): opt.accumulators[p].data_ptr() for p in model.parameters()}
    model(x).sum().backward()
    opt.step()
    for p in model.parameters():
        assert p.data_ptr() == ptrs[id(p)]
        assert p.grad is grads[id(p)]
        assert opt.accumulators[p].data_ptr() == accs[id(p)]
        assert {k: v.data_ptr() for k, v in opt.state[p].items()} == states[id(p)]


def test_arguments_validated() -> None:
    p = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="grad_scaling"):
        OptimLP(torch.optim.SGD([p]), grad_scaling=0.0)
    with pytest.raises(TypeError, match="optim"):
        OptimLP([p])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weight_quant"):
        OptimLP(torch.optim.SGD([p]), weight_quant="fixed")  # type: ignore[arg-type]
    assert "SGD" in repr(OptimLP(torch.optim.SGD([p])))


def test_state_dict_round_trip_without_accumulators() -> None:
    model = _model()
    opt = OptimLP(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), momentum_quant=grid(2**-8)
    )
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert "qtorch_acc" not in sd
    opt2 = OptimLP(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    opt2.load_state_dict(sd)
    for p in model.parameters():
        assert bits_equal(opt2.state[p]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_amp_grad_scaler_steps_unscaled_gradients_and_skips_overflow() -> None:
    """``torch.amp.GradScaler`` drives OptimLP as any optimizer: the gradients are unscaled
    before ``grad_quant`` (the same bits as unscaling and quantizing by hand), and a step
    with an infinite gradient is skipped whole (no weight, state or accumulator change)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    by_hand = copy.deepcopy(model)
    quants = {"weight_quant": grid(2.0**-6), "grad_quant": grid(2.0**-9)}
    opt = OptimLP(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), **quants)
    ref = torch.optim.SGD(by_hand.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(3):
        x = torch.randn(32, 8)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x).float().square().mean()
            loss_by_hand = by_hand(x).float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        (loss_by_hand * 2.0**10).backward()
        with torch.no_grad():
            for p in by_hand.parameters():
                assert p.grad is not None
                p.grad.copy_(quants["grad_quant"](p.grad * 2.0**-10))
            ref.step()
            for p in by_hand.parameters():
                p.copy_(quants["weight_quant"](p))
        ref.zero_grad()
        for a, b in zip(model.parameters(), by_hand.parameters(), strict=True):
            assert bits_equal(a.detach(), b.detach())
    before = [p.detach().clone() for p in model.parameters()]
    momenta = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    scaler.scale(model(torch.randn(4, 8)).sum()).backward()
    first = next(iter(model.parameters()))
    assert first.grad is not None
    first.grad[0, 0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0**9
    for p, w, m in zip(model.parameters(), before, momenta, strict=True):
        assert bits_equal(p.detach(), w) and bits_equal(opt.state[p]["momentum_buffer"], m)
