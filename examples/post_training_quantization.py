"""Post-training quantization: a float32-trained CNN evaluated with weights and activations
rounded to each of many formats (no retraining).

Trains a small CNN on the 8x8 digits bundled with scikit-learn, then for every format spec
rounds a copy's weights (qtorch.quantize, nearest) and the outputs of its conv and linear
layers (qtorch.auto_low.sequential_lower) and reports the test accuracy: weights only,
activations only, both. Needs scikit-learn. Run:

    python examples/post_training_quantization.py [--formats "posit(8,1),float8_e4m3fn"] [--quick]
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import qtorch
from qtorch.auto_low import sequential_lower

DEFAULT_FORMATS = (
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "float6_e2m3fn",
    "float4_e2m1fn",
    "posit(8,1)",
    "posit(6,1)",
    "posit(4,1)",
    "fixed(8,4)",
    "fixed(6,3)",
    "block(6)",
    "mxfp8_e4m3",
    "mxfp4_e2m1",
    "nvfp4",
    "nf4",
)


def split_specs(text: str) -> list[str]:
    """Split a comma list of specs on the commas outside parentheses."""
    specs, depth, start = [], 0, 0
    for i, char in enumerate(text + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            specs.append(text[start:i].strip())
            start = i + 1
    return [s for s in specs if s]


def digits() -> tuple[torch.Tensor, ...]:
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = order[:359], order[359:]
    return x[train], y[train], x[test], y[test]


def train_fp32(data: tuple[torch.Tensor, ...], epochs: int) -> nn.Sequential:
    train_x, train_y, _, _ = data
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(train_y), generator=order).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def quantized(model: nn.Module, fmt: qtorch.Format, weights: bool, acts: bool) -> nn.Module:
    """A copy of ``model`` with weights and/or conv/linear outputs rounded to ``fmt``."""
    copy = sequential_lower(
        model, ["conv", "linear"] if acts else [], forward_number=fmt, forward_rounding="nearest"
    )
    if weights:
        with torch.no_grad():
            for p in copy.parameters():
                p.copy_(qtorch.quantize(p, fmt, "nearest"))
    return copy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", help="comma-separated format specs (default: a broad set)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="3 epochs, 4 formats")
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny tensors: one thread and eager kernels are fastest
    qtorch.set_kernel_mode("eager")
    specs = split_specs(args.formats) if args.formats else list(DEFAULT_FORMATS)
    if args.quick and not args.formats:
        specs = ["bfloat16", "float8_e4m3fn", "posit(6,1)", "fixed(6,3)"]
    data = digits()
    model = train_fp32(data, 3 if args.quick else args.epochs)
    _, _, test_x, test_y = data
    print(f"float32 model: test accuracy {accuracy(model, test_x, test_y):.3f}\n")
    print(f"{'format':<20} {'bits':>4} {'weights':>8} {'acts':>8} {'both':>8}")
    for spec in specs:
        fmt = qtorch.format_from_string(spec)
        cells = [
            accuracy(quantized(model, fmt, w, a), test_x, test_y)
            for w, a in ((True, False), (False, True), (True, True))
        ]
        bits = getattr(fmt, "bits", "")
        print(f"{spec:<20} {bits!s:>4} " + " ".join(f"{c:8.3f}" for c in cells))


if __name__ == "__main__":
    main()
