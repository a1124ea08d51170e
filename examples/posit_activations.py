"""Posit activation approximations against the exact functions, with an error plot.

posit_sigmoid is a bit trick on posit<n,0> codes (flip the sign bit, shift right by 2);
posit_tanh is 2 * sigmoid(2x) - 1 built the same way; posit_tanh_enhanced corrects tanh near
±1. This script prints their maximum errors against torch.sigmoid / torch.tanh for nsize 8
and 16, and saves the curves and their errors to a PNG (needs matplotlib). It also shows the
module forms used in models (PositTanhModule, ...). Mirrors qtorch+'s posit activation
tutorial. Run:

    python examples/posit_activations.py posit_activations.png [--quick]
"""

from __future__ import annotations

import argparse

import torch

import qtorch
from qtorch.quant import posit_sigmoid, posit_tanh, posit_tanh_enhanced

APPROXIMATIONS = {
    "posit_sigmoid": (posit_sigmoid, torch.sigmoid),
    "posit_tanh": (posit_tanh, torch.tanh),
    "posit_tanh_enhanced": (posit_tanh_enhanced, torch.tanh),
}


def errors(x: torch.Tensor, nsize: int) -> dict[str, torch.Tensor]:
    """Approximation minus exact value at x, per approximation."""
    return {name: fn(x, nsize) - exact(x) for name, (fn, exact) in APPROXIMATIONS.items()}


def plot(x: torch.Tensor, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for col, nsize in enumerate((8, 16)):
        top, bottom = axes[0][col], axes[1][col]
        top.plot(x, torch.sigmoid(x), "k:", label="sigmoid (exact)")
        top.plot(x, torch.tanh(x), "k--", label="tanh (exact)")
        for name, err in errors(x, nsize).items():
            fn = APPROXIMATIONS[name][0]
            top.plot(x, fn(x, nsize), label=name)
            bottom.plot(x, err, label=name)
        top.set_title(f"nsize = {nsize}")
        bottom.set_xlabel("x")
        bottom.set_ylabel("approximation - exact")
        top.grid(True, alpha=0.3)
        bottom.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    axes[1][0].legend(fontsize="small")
    fig.suptitle("Posit activation approximations")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plot", metavar="FILE.png", help="where to save the error plot")
    parser.add_argument("--quick", action="store_true", help="fewer points")
    args = parser.parse_args()
    x = torch.linspace(-8.0, 8.0, 801 if args.quick else 20001)
    for nsize in (8, 16):
        for name, err in errors(x, nsize).items():
            worst = int(err.abs().argmax())
            print(
                f"nsize {nsize:2d}  {name:<20} max |error| {err.abs().max():.4f} "
                f"at x = {x[worst]:+.3f}"
            )
    # The module forms, for models: same forward, tanh's derivative in backward.
    z = torch.tensor([-2.0, 0.0, 0.5, 2.0], requires_grad=True)
    y = qtorch.PositTanhModule(nsize=16)(z)
    y.sum().backward()
    print("PositTanhModule(16):", y.detach().tolist(), "grad:", z.grad.tolist())
    print("RefTanhModule:      ", qtorch.RefTanhModule()(z).detach().tolist())
    plot(x, args.plot)
    print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
