"""``qtorch demo``: train a small CNN once per number-format setting and compare accuracy."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from qtorch.cli.train import SETTINGS, Data, Result, Setting, load_digits_data, train
from qtorch.formats.parse import format_from_string
from qtorch.kernel_mode import kernel_mode

DEFAULT_EPOCHS = 10
PROG = "qtorch demo"


class DemoError(Exception):
    """A problem to report in one line (the message) with a non-zero exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses or brackets.

    >>> split_top_level("fp32,posit(8,2), fixed(8,4)")
    ['fp32', 'posit(8,2)', 'fixed(8,4)']
    """
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    items.append("".join(current).strip())
    return [item for item in items if item]


def resolve_settings(text: str | None) -> list[Setting]:
    """Settings named in ``--formats`` (setting names or format specs; default: all)."""
    if text is None:
        names = list(SETTINGS)
    else:
        names = split_top_level(text)
        if not names:
            raise DemoError("--formats is empty", code=2)
    settings = []
    for name in names:
        setting = SETTINGS.get("".join(name.split()).lower())
        if setting is None:
            try:
                format_from_string(name)
            except ValueError as err:
                known = ", ".join(SETTINGS)
                raise DemoError(f"{err} (or a setting name: {known})", code=2) from None
            setting = Setting.uniform(name)
        roles = (setting.weight, setting.activation, setting.error, setting.gradient)
        for spec in {*roles, setting.momentum}:
            if spec is not None:
                try:
                    format_from_string(spec)
                except ValueError as err:
                    raise DemoError(f"setting {setting.name}: {err}", code=2) from None
        settings.append(setting)
    return settings


def load_data(dataset: str, data_dir: str | None, subset: int | None) -> Data:
    """The digits (bundled with scikit-learn) or a torchvision dataset already on disk."""
    if dataset == "digits":
        try:
            data = load_digits_data()
        except ImportError:
            raise DemoError(
                "the digits data needs scikit-learn: pip install 'qtorch[demo]'"
            ) from None
    else:
        data = _load_torchvision(dataset, data_dir)
    if subset is not None:
        data.train_x, data.train_y = data.train_x[:subset], data.train_y[:subset]
    return data


def _load_torchvision(dataset: str, data_dir: str | None) -> Data:
    import torch

    if data_dir is None:
        raise DemoError(f"--dataset {dataset} needs --data-dir DIR (where it is already stored)")
    try:
        import torchvision
    except ImportError:
        raise DemoError(
            f"--dataset {dataset} needs torchvision (pip install torchvision) and the data in "
            f"{data_dir}; nothing is downloaded"
        ) from None
    cls = {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[dataset]
    tensors = []
    for is_train in (True, False):
        try:
            ds = cls(data_dir, train=is_train, download=False)
        except (RuntimeError, OSError) as err:
            message = " ".join(str(err).split())
            raise DemoError(f"{dataset} not found in {data_dir}: {message}") from None
        x = torch.as_tensor(ds.data).float() / 255.0
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        tensors += [x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)]
    return Data(dataset, *tensors)


def results_table(results: list[Result]) -> str:
    """The text table: setting, formats, final and best test accuracy, seconds."""
    headings = ["setting", "formats", "final acc", "best acc", "time s"]
    rows = [
        [
            r.setting,
            r.description,
            f"{r.final_acc:.3f}",
            f"{r.best_acc:.3f}",
            f"{r.seconds:.1f}",
        ]
        for r in results
    ]
    widths = [max(len(row[i]) for row in [headings, *rows]) for i in range(len(headings))]

    def line(cells: list[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:2], widths[:2], strict=True)]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headings), rule, *(line(r) for r in rows)])


def plot_curves(results: list[Result], path: str, dataset: str) -> None:
    """Save test accuracy per epoch, one line per setting, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        ax.plot(range(1, len(r.test_acc) + 1), r.test_acc, marker="o", label=r.setting)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"qtorch demo: {dataset}, low-precision training")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not enabled)


def run(args: argparse.Namespace) -> int:
    """Train every setting, print the table, write the JSON and the plot."""
    import torch

    try:
        if args.epochs < 1:
            raise DemoError("--epochs must be at least 1", code=2)
        settings = resolve_settings(args.formats)
        data = load_data(args.dataset, args.data_dir, args.subset)
    except DemoError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.code
    batches = math.ceil(len(data.train_y) / args.batch_size) * args.epochs
    print(
        f"{PROG}: {data.name}, {len(data.train_y)} training / {len(data.test_y)} test images, "
        f"{args.epochs} epochs, seed {args.seed}, {len(settings)} settings",
        file=sys.stderr,
    )
    # Tensors this small run fastest single-threaded on the eager kernels (no compile time,
    # no thread contention); results are the same in every kernel mode.
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    results = []
    try:
        for setting in settings:
            bar = _progress_bar(batches, setting.name, not args.no_progress)
            with kernel_mode("eager"):
                result = train(
                    setting,
                    data,
                    args.epochs,
                    args.seed,
                    batch_size=args.batch_size,
                    progress=None if bar is None else bar.update,
                )
            if bar is not None:
                bar.close()
            print(
                f"{setting.name}: test accuracy {result.final_acc:.3f} ({result.seconds:.1f} s)",
                file=sys.stderr,
            )
            results.append(result)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    print(results_table(results))
    if args.json:
        report = {
            "dataset": data.name,
            "epochs": args.epochs,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "results": [r.to_json() for r in results],
        }
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    if args.plot:
        try:
            plot_curves(results, args.plot, data.name)
        except ImportError:
            print(
                f"{PROG}: error: --plot needs matplotlib: pip install 'qtorch[demo]'",
                file=sys.stderr,
            )
            return 1
    return 0


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    names = ", ".join(SETTINGS)
    parser = subparsers.add_parser(
        "demo",
        help="train a small CNN in several number formats and compare test accuracy",
        description=(
            "Train a small CNN on the 8x8 handwritten digits bundled with scikit-learn (no "
            "download) once per format setting, with weights, activations, errors, gradients "
            "and momentum in that format (Quantizer modules + OptimLP), and print final and "
            "best test accuracy and time per setting."
        ),
        epilog=(
            f"Settings: {names}. Any format spec (see 'qtorch formats --help') is a setting "
            "with every quantity in that format. Weights, errors, gradients and momentum use "
            "stochastic rounding, activations nearest."
        ),
    )
    parser.add_argument(
        "--formats",
        metavar="LIST",
        help="comma-separated settings or format specs, e.g. 'fp32,posit(8,2),float(4,3)' "
        "(default: all settings)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        metavar="N",
        help=f"(default {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seeds init, data order, rounding"
    )
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="(default 64)")
    parser.add_argument(
        "--dataset",
        choices=("digits", "mnist", "cifar10"),
        default="digits",
        help="(default digits)",
    )
    parser.add_argument("--data-dir", metavar="DIR", help="torchvision data already on disk")
    parser.add_argument("--subset", type=int, metavar="N", help="train on the first N images only")
    parser.add_argument("--plot", metavar="FILE.png", help="save test accuracy curves")
    parser.add_argument("--json", metavar="FILE", help="save the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(func=run)
