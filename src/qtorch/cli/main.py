"""Entry point of the ``qtorch`` command (also ``python -m qtorch``).

Each subcommand lives in its own module, listed in :data:`COMMANDS`. A module exposes
``register(subparsers)``, which adds its parser with ``subparsers.add_parser(...)`` and sets
``func`` (``parser.set_defaults(func=run)``) to a function ``run(args) -> int`` returning the
exit code. Heavy imports (matplotlib, scikit-learn, tqdm) happen inside ``run``, so that
``qtorch --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import qtorch

#: The subcommand modules, in the order ``qtorch --help`` lists them.
COMMANDS: tuple[str, ...] = ("qtorch.cli.formats", "qtorch.cli.demo", "qtorch.cli.bench")


def build_parser() -> argparse.ArgumentParser:
    """The ``qtorch`` argument parser with every subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="qtorch",
        description="qtorch: exact simulation of low-precision number formats in PyTorch.",
        epilog="Run 'qtorch COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"qtorch {qtorch.__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``qtorch`` command on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("qtorch: interrupted", file=sys.stderr)
        return 130
