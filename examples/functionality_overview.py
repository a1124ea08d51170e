"""A tour of qtorch: formats, quantize, Quantizer, OptimLP (with accumulators), sequential_lower.

Mirrors QPyTorch's "Functionality Overview" tutorial. Run:

    python examples/functionality_overview.py [--quick]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import qtorch
from qtorch.auto_low import sequential_lower
from qtorch.optim import OptimLP
from qtorch.quant import (
    Quantizer,
    block_quantize,
    fixed_point_quantize,
    float_quantize,
    posit_quantize,
    quantizer,
)


def formats_and_quantize(n: int) -> None:
    print("== 1. Formats are values; qtorch.quantize rounds a tensor to one ==")
    x = torch.tensor([0.1, -1.3, 3.14159, 100.0])
    for spec in ("fixed(8,4)", "float(5,2)", "bfloat16", "block(4)", "posit(8,1)", "nf4"):
        fmt = qtorch.format_from_string(spec)
        print(f"{spec:>11}: {fmt!r}")
        print(f"{'':>11}  quantize(x) = {qtorch.quantize(x, fmt).tolist()}")

    print("\n== 2. The QPyTorch functional API, same names and arguments ==")
    print("fixed_point_quantize:", fixed_point_quantize(x, wl=8, fl=4, rounding="nearest"))
    print("float_quantize e5m2: ", float_quantize(x, exp=5, man=2, rounding="nearest"))
    print("block_quantize wl=4: ", block_quantize(x, wl=4, rounding="nearest"))
    print("posit_quantize <8,1>:", posit_quantize(x, nsize=8, es=1))

    print("\n== 3. Stochastic rounding is unbiased and reproducible with torch.manual_seed ==")
    value = torch.full((n,), 0.1)
    torch.manual_seed(0)
    first = fixed_point_quantize(value, 8, 4, rounding="stochastic")
    torch.manual_seed(0)
    again = fixed_point_quantize(value, 8, 4, rounding="stochastic")
    print(
        f"0.1 on fixed(8,4) (grid 1/16): values {sorted(set(first.tolist()))}, "
        f"mean of {n} = {first.mean():.4f}, "
        f"same again with the seed: {torch.equal(first, again)}"
    )


def quantizer_in_autograd() -> None:
    print("\n== 4. quantizer(): round forward values to one format, gradients to another ==")
    q = quantizer(
        forward_number=qtorch.FixedPoint(8, 4),
        backward_number=qtorch.FloatingPoint(5, 2),
        forward_rounding="nearest",
        backward_rounding="nearest",
    )
    x = torch.tensor([0.3, 1.7], requires_grad=True)
    y = q(x)
    y.backward(torch.tensor([0.1, 0.3]))
    print(f"forward: {y.tolist()}   backward (e5m2 of [0.1, 0.3]): {x.grad.tolist()}")


def small_model(fmt: qtorch.Format | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)]
    if fmt is not None:  # a Quantizer module after each linear layer, as in QPyTorch
        layers.insert(1, Quantizer(fmt, fmt, "nearest", "stochastic"))
        layers.append(Quantizer(fmt, fmt, "nearest", "stochastic"))
    return nn.Sequential(*layers)


def optim_lp(steps: int) -> None:
    print("\n== 5. OptimLP: low-precision weights, gradients, momentum and accumulators ==")
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    target = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    bf16, fp8 = qtorch.bfloat16, qtorch.float8_e5m2
    model = small_model(bf16)
    optimizer = OptimLP(
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        weight_quant=quantizer(fp8, forward_rounding="stochastic"),  # what the model sees
        grad_quant=quantizer(bf16, forward_rounding="stochastic"),
        momentum_quant=quantizer(bf16, forward_rounding="stochastic"),
        acc_quant=quantizer(bf16, forward_rounding="nearest"),  # bfloat16 master weights
    )
    for step in range(steps + 1):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        if step % max(steps // 4, 1) == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    weight = model[0].weight.detach()
    print("weights are float8 e5m2 values:", torch.equal(weight, qtorch.quantize(weight, fp8)))


def lowering() -> None:
    print("\n== 6. sequential_lower: quantize every conv/linear output of a copy of a model ==")
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    low = sequential_lower(
        model,
        layer_types=["conv", "linear"],
        forward_number=qtorch.Posit(8, 1),
        backward_number=qtorch.Posit(8, 1),
        forward_rounding="nearest",
    )
    x = torch.randn(2, 1, 8, 8)
    out = low(x)
    print(low)
    exact = torch.equal(out, qtorch.quantize(out, qtorch.Posit(8, 1)))
    print("outputs are posit<8,1> values:", exact)
    print("the original model is untouched:", not torch.equal(model(x), out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps")
    args = parser.parse_args()
    formats_and_quantize(1000 if args.quick else 100_000)
    quantizer_in_autograd()
    optim_lp(40 if args.quick else 400)
    lowering()


if __name__ == "__main__":
    main()
