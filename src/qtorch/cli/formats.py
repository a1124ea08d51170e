"""``qtorch formats [SPEC ...]``: a table of the properties of number formats."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from qtorch.formats.base import Format
from qtorch.formats.parse import FAMILIES, format_from_string

#: Shown when no SPEC is given; specs that this installation cannot build are skipped.
DEFAULT_SPECS: tuple[str, ...] = (
    "fixed(8,4)",
    "fixed(16,8)",
    "float16",
    "bfloat16",
    "float8_e5m2",
    "float8_e4m3",
    "float8_e4m3fn",
    "float6_e3m2fn",
    "float6_e2m3fn",
    "float4_e2m1fn",
    "posit(8,0)",
    "posit(8,1)",
    "posit(8,2)",
    "posit(16,1)",
    "posit(6,1)",
    "nf4",
    "block(8)",
)

#: Plotted by ``--plot`` when no SPEC is given (the whole default list is too crowded).
PLOT_SPECS: tuple[str, ...] = (
    "fixed(16,8)",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "posit(8,1)",
    "posit(16,1)",
)

NOT_APPLICABLE = "-"


@dataclass(frozen=True)
class Column:
    """One column of the table: a heading and how to get the value from a format."""

    heading: str
    value: Callable[[Format], Any]


def _attr(*names: str) -> Callable[[Format], Any]:
    """The first of ``names`` that the format defines (None when it defines none)."""

    def get(fmt: Format) -> Any:
        for name in names:
            try:
                return getattr(fmt, name)
            except (AttributeError, NotImplementedError, ValueError):
                continue
        return None

    return get


def _decades(fmt: Format) -> float | None:
    largest, smallest = _attr("max")(fmt), _attr("min_positive")(fmt)
    if largest is None or smallest is None or smallest <= 0:
        return None
    return math.log10(largest / smallest)


def finite_values(fmt: Format) -> torch.Tensor | None:
    """Every finite value of the format (float64, ascending) or None if it cannot list them."""
    values = getattr(fmt, "values", None)
    if values is None:
        return None
    try:
        return values()
    except (NotImplementedError, ValueError, TypeError):
        return None


def _count(fmt: Format) -> int | None:
    values = finite_values(fmt)
    return None if values is None else int(values.numel())


def _has_code(fmt: Format, special: float) -> bool | None:
    """Whether the format has a code for ``special`` (inf or nan); None if it cannot say.

    Decided by the format's ``has_inf``/``has_nan`` when it defines them, else by encoding
    the value and decoding the code. Formats without codes (block floating point) give None:
    quantizing still lets NaN through, but there is no code for it.
    """
    flag = _attr("has_inf" if math.isinf(special) else "has_nan")(fmt)
    if flag is not None:
        return bool(flag)
    encode, decode = getattr(fmt, "encode", None), getattr(fmt, "decode", None)
    if encode is None or decode is None:
        return None
    x = torch.tensor([special], dtype=torch.float32)
    try:
        y = decode(encode(x))
    except ValueError:  # "x contains NaN, which has no ... code"
        return False
    except (TypeError, RuntimeError):
        return None
    return bool(torch.isinf(y).item()) if math.isinf(special) else bool(torch.isnan(y).item())


COLUMNS: tuple[Column, ...] = (
    Column("bits", _attr("bits")),
    Column("max", _attr("max")),
    Column("min positive", _attr("min_positive")),
    Column("min normal", _attr("min_normal", "smallest_normal")),
    Column("eps", _attr("eps")),
    Column("decades", _decades),
    Column("finite values", _count),
    Column("Inf", lambda fmt: _has_code(fmt, math.inf)),
    Column("NaN", lambda fmt: _has_code(fmt, math.nan)),
)


def cell(value: Any) -> str:
    """How a property prints: integral values in full, others to 7 significant digits."""
    if value is None:
        return NOT_APPLICABLE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))  # exact: 65504, 16777216
        return f"{value:.7g}"
    return str(value)


def table(rows: list[tuple[str, Format]]) -> str:
    """The aligned text table of ``(spec, format)`` rows."""
    headings = ["format", *(c.heading for c in COLUMNS)]
    body = [[spec, *(cell(c.value(fmt)) for c in COLUMNS)] for spec, fmt in rows]
    widths = [max(len(r[i]) for r in [headings, *body]) for i in range(len(headings))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headings), rule, *(line(r) for r in body)])


def plot_spacing(rows: list[tuple[str, Format]], path: str) -> list[str]:
    """Save relative spacing vs magnitude (log-log) to ``path``; return the specs left out.

    The spacing of each positive value to the next is divided by the power of two at or
    below the value, so each binade shows one level: 2**-p for p fraction bits. Floats are
    flat over their normal range, posits taper away from 1, fixed point falls as 1/|x|.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    skipped = []
    for spec, fmt in rows:
        values = finite_values(fmt)
        positive = values[values > 0] if values is not None else None
        if positive is None or positive.numel() < 2:
            skipped.append(spec)
            continue
        low = positive[:-1]
        binade = torch.exp2(torch.floor(torch.log2(low)))
        relative = (positive[1:] - low) / binade  # 2**-(fraction bits) for floats and posits
        ax.step(low.numpy(), relative.numpy(), where="post", label=spec, linewidth=1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("magnitude |x|")
    ax.set_ylabel("gap to the next value / 2**floor(log2 |x|)")
    ax.set_title("Relative spacing of neighbouring values (tapered precision of posits)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return skipped


def run(args: argparse.Namespace) -> int:
    """Print the table (and save the plot); exit code 2 on a bad spec."""
    specs = args.specs or list(DEFAULT_SPECS)
    rows = []
    for spec in specs:
        try:
            rows.append((spec, format_from_string(spec)))
        except ValueError as err:
            if args.specs:
                print(f"qtorch formats: error: {err}", file=sys.stderr)
                return 2
    print(table(rows))
    if args.plot:
        try:
            shown = rows if args.specs else [(s, format_from_string(s)) for s in PLOT_SPECS]
            skipped = plot_spacing(shown, args.plot)
        except ImportError:
            print(
                "qtorch formats: error: --plot needs matplotlib: pip install 'qtorch[demo]'",
                file=sys.stderr,
            )
            return 1
        for spec in skipped:
            print(f"qtorch formats: {spec} has no list of values, not plotted", file=sys.stderr)
        print(f"plot saved to {args.plot}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``formats`` subcommand."""
    forms = ", ".join(f.usage for f in FAMILIES)
    parser = subparsers.add_parser(
        "formats",
        help="table of format properties (largest, smallest, eps, range, ...)",
        description=(
            "Print bits, largest value, smallest positive, smallest normal, eps (the gap "
            "above 1), dynamic range in decades (log10 max/min positive), number of finite "
            "values and Inf/NaN support of each format."
        ),
        epilog=(
            f"SPEC grammar: a short form ({forms}), a preset name (float16, bfloat16, "
            "float8_e4m3fn, nf4, mxfp8_e4m3, ...) or the constructor call repr() prints, "
            "e.g. 'FixedPoint(wl=8, fl=4)'. Quote specs in the shell. See docs/cli.md."
        ),
    )
    parser.add_argument("specs", nargs="*", metavar="SPEC", help="formats to show")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="save relative spacing vs magnitude on log axes (needs matplotlib); "
        "without SPECs plots " + ", ".join(PLOT_SPECS),
    )
    parser.set_defaults(func=run)
