"""format_from_string: round trip of str(fmt) for every family, short forms, presets, errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import qtorch
import qtorch.formats as F
from qtorch.formats.parse import FAMILIES, _format_classes, format_from_string, presets

#: At least one instance of every format family, with non-default options where it has any.
INSTANCES = [
    F.FixedPoint(8, 4),
    F.FixedPoint(6, -2, clamp=False, symmetric=True),
    F.FloatingPoint(5, 2),
    F.FloatingPoint(4, 3, subnormals=False, saturate=False, has_inf=False, has_nan=True),
    F.BlockFloatingPoint(8),
    F.BlockFloatingPoint(6, dim=0),
    F.Posit(8, 2),
    F.Posit(16, 1, scale=0.1),
    F.Posit(5, 0, scale=1024.0),
    F.Positbf(8, 1),
    F.Codebook((0.5, 1.0, 2.0)),
    F.Codebook((-1.0, 0.0, 0.3, 1.0), signed=True, scale=4.0, boundaries="geometric"),
    F.Codebook((0.0, 0.25, 1.0), boundaries=(0.1, 0.5)),
    F.MX(F.float8_e4m3fn, block_size=16, dim=0, scale_rule="ceil"),
    F.MX(F.FixedPoint(8, 6)),
    F.NVFP4(),
    *presets().values(),
]


def test_every_family_is_covered() -> None:
    covered = {type(fmt).__name__ for fmt in INSTANCES}
    assert set(_format_classes()) <= covered


@pytest.mark.parametrize("fmt", INSTANCES, ids=repr)
def test_round_trip_str_and_repr(fmt: qtorch.Format) -> None:
    assert format_from_string(str(fmt)) == fmt
    assert format_from_string(repr(fmt)) == fmt


@pytest.mark.parametrize("name", list(presets()))
def test_presets_are_the_exported_objects(name: str) -> None:
    assert format_from_string(name) is getattr(F, name)
    assert format_from_string(name.upper()) is getattr(F, name)


@settings(max_examples=60, deadline=None)
@given(
    exp=st.integers(1, 8),
    man=st.integers(0, 23),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
)
def test_round_trip_random_floats(exp: int, man: int, flags: tuple[bool, ...]) -> None:
    subnormals, saturate, has_inf, has_nan = flags
    try:
        fmt = F.FloatingPoint(
            exp, man, subnormals=subnormals, saturate=saturate, has_inf=has_inf, has_nan=has_nan
        )
    except ValueError:
        assume(False)
        return
    assert format_from_string(str(fmt)) == fmt
    short = (
        f"float({exp},{man},subnormals={subnormals},saturate={saturate},"
        f"inf={str(has_inf).lower()},nan={str(has_nan).lower()})"
    )
    assert format_from_string(short) == fmt


@settings(max_examples=60, deadline=None)
@given(
    nsize=st.integers(2, 32),
    es=st.integers(0, 4),
    scale=st.floats(1e-30, 1e30, allow_nan=False, allow_infinity=False),
)
def test_round_trip_random_posits(nsize: int, es: int, scale: float) -> None:
    fmt = F.Posit(nsize, es, scale=scale)
    assert format_from_string(str(fmt)) == fmt
    assert format_from_string(f"posit({nsize},{es},{scale!r})") == fmt


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=12, unique=True))
def test_round_trip_random_codebooks(entries: list[float]) -> None:
    fmt = F.Codebook(sorted(entries))
    assert format_from_string(str(fmt)) == fmt
    assert format_from_string("codebook(" + ",".join(map(repr, sorted(entries))) + ")") == fmt


SHORT_FORMS = [
    ("fixed(8,4)", F.FixedPoint(8, 4)),
    ("fixed( 8 , 4 , clamp = false )", F.FixedPoint(8, 4, clamp=False)),
    ("FIXED(8,4,symmetric=TRUE)", F.FixedPoint(8, 4, symmetric=True)),
    ("fixed(wl=12, fl=-2)", F.FixedPoint(12, -2)),
    ("float(5,2)", F.FloatingPoint(5, 2)),
    ("float(4,3,inf=false)", F.FloatingPoint(4, 3, has_inf=False)),
    ("float(3,2,inf=false,nan=false)", F.FloatingPoint(3, 2, has_inf=False, has_nan=False)),
    (
        "float(5,10,saturate=false,subnormals=false)",
        F.FloatingPoint(5, 10, saturate=False, subnormals=False),
    ),
    ("float(4,3,has_inf=False)", F.FloatingPoint(4, 3, has_inf=False)),
    ("block(8)", F.BlockFloatingPoint(8)),
    ("block(8,0)", F.BlockFloatingPoint(8, 0)),
    ("block(8,dim=-1)", F.BlockFloatingPoint(8, -1)),
    ("posit(8,2)", F.Posit(8, 2)),
    ("posit(16,1,0.5)", F.Posit(16, 1, 0.5)),
    ("posit(n=6, es=1, scale=64)", F.Posit(6, 1, 64.0)),
    ("positbf(8,1)", F.Positbf(8, 1)),
    ("codebook(0.5,1,2)", F.Codebook((0.5, 1.0, 2.0))),
    ("codebook([0.5, 1, 2], scale=2)", F.Codebook((0.5, 1.0, 2.0), scale=2.0)),
    ("codebook(-1,0,1,signed=true)", F.Codebook((-1.0, 0.0, 1.0), signed=True)),
    ("codebook(1,2,4,boundaries='geometric')", F.Codebook((1.0, 2.0, 4.0), boundaries="geometric")),
    ("mx(float8_e4m3fn)", F.mxfp8_e4m3),
    ("mx(float(4,3,inf=false), 32)", F.mxfp8_e4m3),
    ("mx(fixed(8,6), 16, 0)", F.MX(F.FixedPoint(8, 6), block_size=16, dim=0)),
    ("nf4(scale=2)", dataclasses.replace(F.nf4, scale=2.0)),
    ("bfloat16(saturate=false)", F.FloatingPoint(8, 7, saturate=False)),
    ("mxfp4_e2m1(block_size=16)", F.MX(F.float4_e2m1fn, block_size=16)),
    ("Posit(8, 2)", F.Posit(8, 2)),
    ("FixedPoint(wl=8, fl=4)", F.FixedPoint(8, 4)),
    ("FloatingPoint(exp=8, man=23)", F.FloatingPoint(8, 23)),
]


@pytest.mark.parametrize(("spec", "expected"), SHORT_FORMS, ids=[s for s, _ in SHORT_FORMS])
def test_short_forms(spec: str, expected: qtorch.Format) -> None:
    assert format_from_string(spec) == expected


def test_inf_and_nan_are_literals_the_format_checks() -> None:
    for spec in ("posit(8,2,scale=inf)", "posit(8,2,scale=nan)", "codebook(1, INF)"):
        with pytest.raises(ValueError, match=r"Posit|Codebook"):
            format_from_string(spec)


def test_every_family_has_a_usage_line() -> None:
    classes = _format_classes()
    for family in FAMILIES:
        assert family.usage.startswith(family.keyword + "(")
        assert family.class_name in classes


BAD = [
    "",
    "   ",
    "posit(8)",
    "posit(8,2,1,1)",
    "posit(8,7)",
    "fixed(8,4",
    "fixed(8,4,colour=1)",
    "float(9,2)",
    "float(4)",
    "foo",
    "foo(1)",
    "posit",
    "codebook()",
    "codebook(2,1)",
    "nf4(2)",
    "nf4(colour=1)",
    "posit(8,2)+1",
    "posit(x,2)",
    "qtorch.Posit(8,2)",
    "Posit(**{'nsize': 8, 'es': 2})",
    "__import__('os')",
    "lambda: 1",
    "[posit(8,2)]",
    "posit(8,2); posit(8,1)",
    "posit(es=2, es=1)",
]


@pytest.mark.parametrize("spec", BAD)
def test_bad_specs_raise_one_line(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        format_from_string(spec)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("bad format spec")


def test_grammar_errors_say_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"posit needs es.*accepted: fixed\(wl,fl"):
        format_from_string("posit(8)")
    with pytest.raises(ValueError, match=r"Posit: es must be in 0\.\.4, got 7"):
        format_from_string("posit(8,7)")


def test_nothing_is_evaluated(tmp_path: Path) -> None:
    target = tmp_path / "created"
    for spec in (f"open({str(target)!r}, 'w')", f"posit(open({str(target)!r}, 'w'), 2)"):
        with pytest.raises(ValueError):
            format_from_string(spec)
    assert not target.exists()


def test_not_a_string() -> None:
    with pytest.raises(TypeError, match="string"):
        format_from_string(F.Posit(8, 2))  # type: ignore[arg-type]
