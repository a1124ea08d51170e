"""Low-precision CNN training with posits on the 8x8 digits bundled with scikit-learn.

Weights, activations, errors (the gradients flowing backward), weight gradients and the
momentum all live in posit<nsize, es>: Quantizer modules after each layer round the
activations (forward, nearest) and errors (backward, stochastic); OptimLP rounds the weights,
gradients and momentum after every step (stochastic). Mirrors qtorch+'s posit training
tutorial. Needs scikit-learn (pip install 'qtorch[demo]'). Run:

    python examples/posit_cnn_training.py [--nsize 8] [--es 1] [--epochs 8] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import qtorch
from qtorch.optim import OptimLP
from qtorch.quant import Quantizer, quantizer


def digits(test_fraction: float = 0.2) -> tuple[torch.Tensor, ...]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def posit_cnn(act: qtorch.Format | None, err: qtorch.Format | None) -> nn.Sequential:
    def q() -> nn.Module:
        if act is None:
            return nn.Identity()
        return Quantizer(act, err, forward_rounding="nearest", backward_rounding="stochastic")

    return nn.Sequential(
        q(),
        nn.Conv2d(1, 16, 3, padding=1),
        q(),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        q(),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
        q(),
    )


def run(posit: qtorch.Posit | None, epochs: int, data: tuple[torch.Tensor, ...]) -> list[float]:
    """Train in ``posit`` (None: float32); return the test accuracy after each epoch."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(0)
    model = posit_cnn(posit, posit)
    sgd = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    if posit is None:
        optimizer: torch.optim.Optimizer = sgd
    else:
        stochastic = quantizer(posit, forward_rounding="stochastic")
        optimizer = OptimLP(
            sgd, weight_quant=stochastic, grad_quant=stochastic, momentum_quant=stochastic
        )
        with torch.no_grad():  # start from weights that are posits
            for p in model.parameters():
                p.copy_(qtorch.quantize(p, posit))
    # The summed loss (a loss scale of the batch size) keeps errors and gradients near 1,
    # where posits are most precise.
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    order = torch.Generator().manual_seed(0)
    accuracies = []
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(train_y), generator=order).split(64):
            optimizer.zero_grad()
            loss_fn(model(train_x[idx]), train_y[idx]).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            accuracies.append((model(test_x).argmax(1) == test_y).float().mean().item())
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsize", type=int, default=8, help="posit bits (default 8)")
    parser.add_argument("--es", type=int, default=1, help="posit exponent bits (default 1)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="3 epochs only")
    args = parser.parse_args()
    # Tensors this small run fastest on one thread with the eager kernels (compiling pays
    # off for large tensors only); every kernel mode gives the same results.
    torch.set_num_threads(1)
    qtorch.set_kernel_mode("eager")
    data = digits()
    epochs = 3 if args.quick else args.epochs
    posit = qtorch.Posit(args.nsize, args.es)
    print(f"{posit}: max {posit.max:g}, min positive {posit.min_positive:g}, eps {posit.eps:g}")
    for fmt in (None, posit):
        start = time.perf_counter()
        acc = run(fmt, epochs, data)
        name = "float32" if fmt is None else f"posit({fmt.nsize},{fmt.es})"
        curve = " ".join(f"{a:.3f}" for a in acc)
        print(f"{name:>12}: test accuracy per epoch {curve}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
