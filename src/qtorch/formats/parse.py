"""Format specs: one grammar for the strings the ``qtorch`` command and the library accept.

A spec is one of

* a **preset name**: ``bfloat16``, ``float8_e4m3fn``, ``nf4``, ``mxfp8_e4m3``, ... (every
  lowercase :class:`~qtorch.formats.Format` instance exported by :mod:`qtorch.formats`);
* a **short form** ``family(arg, ..., option=value, ...)`` from :data:`FAMILIES`:
  ``fixed(8,4)``, ``fixed(8,4,clamp=false)``, ``float(5,2)``, ``float(4,3,inf=false)``,
  ``block(8)``, ``block(8,0)``, ``posit(8,2)``, ``posit(16,1,scale=0.5)``, ...;
* a **preset with changed options**: ``nf4(scale=2)``, ``bfloat16(saturate=false)``,
  ``mxfp8_e4m3(block_size=16)`` (keyword arguments only, :func:`dataclasses.replace`);
* the **constructor call** that ``repr(fmt)`` prints, e.g.
  ``FixedPoint(wl=8, fl=4, clamp=True, symmetric=False)``: any format class of
  :mod:`qtorch.formats`, called with literal arguments.

Specs are parsed with :mod:`ast` and never evaluated: only whitelisted names may be called and
arguments must be literals (numbers, ``true``/``false`` in any case, ``inf``, ``nan``, strings,
tuples/lists of those, or nested specs). Whitespace is ignored; names are case-insensitive
except constructor class names. A new format family registers its short form by adding one
:class:`Family` row to :data:`FAMILIES`; presets and constructor calls need no registration.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qtorch.formats.base import Format

__all__ = ["FAMILIES", "Family", "format_from_string", "presets"]


@dataclass(frozen=True)
class Family:
    """The short form ``keyword(positional..., option=value)`` of one format family.

    Attributes:
        keyword: the lowercase name written in specs, e.g. ``"posit"``.
        class_name: the format class, looked up in :mod:`qtorch.formats` when first used.
        positional: constructor parameter names taken in order by positional arguments.
        required: how many of ``positional`` must be given.
        options: short option names mapped to constructor parameter names (``inf`` ->
            ``has_inf``); the constructor's own parameter names are accepted as well.
        star: if set, all positional arguments are collected into this one tuple parameter
            (for tables of values such as ``codebook(0.5, 1, 2)``).
        usage: the form shown in error messages and ``--help``.
    """

    keyword: str
    class_name: str
    positional: tuple[str, ...]
    required: int
    usage: str
    options: Mapping[str, str] = field(default_factory=dict)
    star: str | None = None


#: The short forms, one row per family. Add a row to register a new family.
FAMILIES: tuple[Family, ...] = (
    Family("fixed", "FixedPoint", ("wl", "fl"), 2, "fixed(wl,fl[,clamp=true,symmetric=false])"),
    Family(
        "float",
        "FloatingPoint",
        ("exp", "man"),
        2,
        "float(exp,man[,subnormals=,saturate=,inf=,nan=])",
        {"inf": "has_inf", "nan": "has_nan"},
    ),
    Family("block", "BlockFloatingPoint", ("wl", "dim"), 1, "block(wl[,dim])"),
    Family("posit", "Posit", ("nsize", "es", "scale"), 2, "posit(n,es[,scale])", {"n": "nsize"}),
    Family(
        "positbf", "Positbf", ("nsize", "es", "scale"), 2, "positbf(n,es[,scale])", {"n": "nsize"}
    ),
    Family(
        "codebook",
        "Codebook",
        (),
        1,
        "codebook(v1,v2,...[,signed=,scale=,boundaries=])",
        star="entries",
    ),
    Family("mx", "MX", ("element", "block_size", "dim"), 1, "mx(element[,block_size,dim])"),
)

_CONSTANTS: dict[str, Any] = {
    "true": True,
    "false": False,
    "none": None,
    "inf": math.inf,
    "nan": math.nan,
}


class _SpecError(ValueError):
    """A problem with one part of a spec; turned into the one-line message by the caller."""


def _formats_module() -> Any:
    return importlib.import_module("qtorch.formats")


def _format_classes() -> dict[str, type[Format]]:
    """Every concrete format class defined in qtorch, by class name (the call whitelist)."""
    _formats_module()  # importing the package defines and registers every family
    found: dict[str, type[Format]] = {}
    todo: list[type[Format]] = [Format]  # type: ignore[type-abstract]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.__module__.startswith("qtorch.") and dataclasses.is_dataclass(cls):
            found[cls.__name__] = cls
    return found


def presets() -> dict[str, Format]:
    """Every named preset: lowercase names bound to format instances in ``qtorch.formats``.

    >>> presets()["bfloat16"] == format_from_string("bfloat16")
    True
    """
    _formats_module()
    found: dict[str, Format] = {}
    modules = [m for n, m in sorted(sys.modules.items()) if n.startswith("qtorch.formats")]
    for module in modules:
        for name, value in vars(module).items():
            if isinstance(value, Format) and name.islower() and not name.startswith("_"):
                found.setdefault(name, value)
    return dict(sorted(found.items()))


def _accepted() -> str:
    forms = ", ".join(f.usage for f in FAMILIES)
    names = list(presets())
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return (
        f"accepted: {forms}; a preset name ({shown or 'none available'}); "
        "or a constructor call such as FixedPoint(wl=8, fl=4)"
    )


def _literal(node: ast.expr) -> Any:
    """The Python value of a literal argument node (nested specs become formats)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool)):
        return node.value
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Name) and node.id.lower() in _CONSTANTS:
        return _CONSTANTS[node.id.lower()]
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, (ast.Call, ast.Name)):
        return _build(node)
    raise _SpecError(f"{ast.unparse(node)!r} is not a literal argument")


def _call_family(family: Family, node: ast.Call) -> Format:
    cls = _format_classes().get(family.class_name)
    if cls is None:
        raise _SpecError(f"the {family.keyword} family is not available in this installation")
    args = [_literal(a) for a in node.args]
    kwargs: dict[str, Any] = {}
    if family.star is not None:
        if len(args) == 1 and isinstance(args[0], tuple):  # codebook([0.5, 1, 2])
            args = list(args[0])
        if args:
            kwargs[family.star] = tuple(args)
    elif len(args) > len(family.positional):
        raise _SpecError(f"{family.usage} takes at most {len(family.positional)} arguments")
    else:
        kwargs.update(zip(family.positional, args, strict=False))
    for kw in node.keywords:
        if kw.arg is None:
            raise _SpecError("** arguments are not allowed")
        name = family.options.get(kw.arg.lower(), kw.arg)
        if name in kwargs:
            raise _SpecError(f"{family.keyword}: {name} given twice")
        kwargs[name] = _literal(kw.value)
    needed = (family.star,) if family.star is not None else family.positional[: family.required]
    missing = [name for name in needed if name not in kwargs]
    if missing:
        raise _SpecError(f"{family.keyword} needs {', '.join(missing)}: {family.usage}")
    return _construct(cls, kwargs, family.usage)


def _construct(cls: type[Format], kwargs: dict[str, Any], usage: str, args: tuple = ()) -> Format:
    if dataclasses.is_dataclass(cls):
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise _SpecError(
                f"{usage} has no option {unknown[0]!r} (options: {', '.join(sorted(known))})"
            )
    try:
        return cls(*args, **kwargs)
    except TypeError as err:
        raise _SpecError(f"{usage}: {err}") from None


def _build(node: ast.expr) -> Format:
    if isinstance(node, ast.Name):
        name = node.id.lower()
        table = presets()
        if name in table:
            return table[name]
        family = _family(name)
        if family is not None:
            raise _SpecError(f"{name} needs arguments: {family.usage}")
        raise _SpecError(f"unknown format name {node.id!r}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        cls = _format_classes().get(node.func.id)
        if cls is not None:  # the constructor call, as repr() prints it
            if any(kw.arg is None for kw in node.keywords):
                raise _SpecError("** arguments are not allowed")
            args = tuple(_literal(a) for a in node.args)
            kwargs = {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
            return _construct(cls, kwargs, node.func.id, args)
        family = _family(node.func.id.lower())
        if family is not None:
            return _call_family(family, node)
        preset = presets().get(node.func.id.lower())
        if preset is not None:  # a preset with changed options: nf4(scale=2)
            return _replace(node.func.id.lower(), preset, node)
        raise _SpecError(f"unknown format family {node.func.id!r}")
    raise _SpecError(f"{ast.unparse(node)!r} is not a format spec")


def _replace(name: str, preset: Format, node: ast.Call) -> Format:
    if node.args or any(kw.arg is None for kw in node.keywords):
        raise _SpecError(f"a preset takes options only, as in {name}(option=value)")
    kwargs = {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg is not None}
    options = {f.name for f in dataclasses.fields(preset) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(kwargs) - options)
    if unknown:
        raise _SpecError(
            f"{name} has no option {unknown[0]!r} (options: {', '.join(sorted(options))})"
        )
    return dataclasses.replace(preset, **kwargs)  # type: ignore[type-var]


def _family(keyword: str) -> Family | None:
    return next((f for f in FAMILIES if f.keyword == keyword), None)


def format_from_string(spec: str) -> Format:
    """Parse a format spec (a preset name, a short form or a constructor call).

    The grammar is described in this module's docstring. ``format_from_string(str(fmt)) ==
    fmt`` for every format. Nothing is evaluated: the spec is parsed with :mod:`ast`.

    Args:
        spec: e.g. ``"posit(8,2)"``, ``"float(4,3,inf=false)"``, ``"fixed(8,4)"``,
            ``"block(8)"``, ``"bfloat16"``, ``"nf4"`` or ``"FixedPoint(wl=8, fl=4)"``.

    Returns:
        The format object.

    Raises:
        ValueError: with one line saying what is wrong and what is accepted.

    >>> format_from_string("fixed(8, 4)")
    FixedPoint(wl=8, fl=4, clamp=True, symmetric=False)
    >>> format_from_string("posit(8,2)") == format_from_string("Posit(nsize=8, es=2)")
    True
    """
    if not isinstance(spec, str):
        raise TypeError(f"format spec must be a string, got {type(spec).__name__}")
    text = " ".join(spec.split())
    try:
        if not text:
            raise _SpecError("empty spec")
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError:
            raise _SpecError("not a valid spec expression") from None
        return _build(tree.body)
    except _SpecError as err:
        raise ValueError(f"bad format spec {spec!r}: {err}; {_accepted()}") from None
    except ValueError as err:  # the format's own parameter check
        message = " ".join(str(err).split())
        raise ValueError(f"bad format spec {spec!r}: {message}") from None
