"""The ``qtorch`` command through ``python -m qtorch``: formats table, errors, demo, help."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import qtorch
from qtorch.cli.demo import split_top_level
from qtorch.cli.formats import finite_values
from qtorch.cli.main import main

pytest.importorskip("sklearn")


def qtorch_cmd(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qtorch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse_table(text: str) -> dict[str, dict[str, str]]:
    """Rows of a text table (columns separated by 2+ spaces), keyed by the first column."""
    lines = [line for line in text.splitlines() if line.strip()]
    headings = re.split(r"\s{2,}", lines[0].strip())
    assert set(lines[1]) <= {"-", " "}
    rows = {}
    for line in lines[2:]:
        cells = re.split(r"\s{2,}", line.strip())
        assert len(cells) == len(headings), line
        rows[cells[0]] = dict(zip(headings, cells, strict=True))
    return rows


#: One spec per family, each checked against the object's own properties.
FAMILY_SPECS = [
    "fixed(8,4)",
    "bfloat16",
    "fixed(6,2,symmetric=true)",
    "float(5,2)",
    "float(4,3,inf=false)",
    "float16",
    "float4_e2m1fn",
    "block(8)",
    "posit(8,2)",
    "posit(6,1)",
    "posit(16,1,scale=0.5)",
    "posit(24,2)",
    "codebook(0.5,1,2)",
    "nf4",
    "mxfp8_e4m3",
]


def check_number(cell: str, value: float | int | None) -> None:
    if value is None:
        assert cell == "-"
    elif isinstance(value, int):
        assert int(cell) == value
    else:
        assert math.isclose(float(cell), value, rel_tol=1e-6), (cell, value)


@pytest.fixture(scope="module")
def family_rows() -> dict[str, dict[str, str]]:
    result = qtorch_cmd("formats", *FAMILY_SPECS)
    assert result.returncode == 0, result.stderr
    return parse_table(result.stdout)


def test_formats_table_matches_the_format_objects(family_rows: dict[str, dict[str, str]]) -> None:
    rows = family_rows
    assert list(rows) == FAMILY_SPECS
    for spec, row in rows.items():
        fmt = qtorch.format_from_string(spec)
        check_number(row["bits"], fmt.bits)  # type: ignore[attr-defined]
        check_number(row["max"], getattr(fmt, "max", None))
        check_number(row["min positive"], getattr(fmt, "min_positive", None))
        check_number(row["min normal"], getattr(fmt, "min_normal", None))
        check_number(row["eps"], getattr(fmt, "eps", None))
        values = finite_values(fmt)
        check_number(row["finite values"], None if values is None else values.numel())
        top, low = getattr(fmt, "max", None), getattr(fmt, "min_positive", None)
        if top is not None and low is not None:
            check_number(row["decades"], math.log10(top / low))
        for column, flag in (("Inf", "has_inf"), ("NaN", "has_nan")):
            if hasattr(fmt, flag):
                assert row[column] == ("yes" if getattr(fmt, flag) else "no")


def test_formats_independent_numbers(family_rows: dict[str, dict[str, str]]) -> None:
    """Known values of standard formats, from their specifications (not from qtorch)."""
    rows = family_rows
    assert float(rows["float16"]["max"]) == 65504
    assert float(rows["float16"]["min positive"]) == pytest.approx(2**-24, rel=1e-6)
    assert float(rows["float16"]["min normal"]) == pytest.approx(2**-14, rel=1e-6)
    assert float(rows["float16"]["eps"]) == pytest.approx(2**-10, rel=1e-6)
    assert int(rows["float16"]["finite values"]) == 2**16 - 2 * 2**10 - 1  # -0 counted once
    assert rows["float16"]["Inf"] == rows["float16"]["NaN"] == "yes"
    assert float(rows["bfloat16"]["max"]) == pytest.approx((2 - 2**-7) * 2**127, rel=1e-6)
    assert float(rows["float(5,2)"]["max"]) == 57344
    assert float(rows["float(4,3,inf=false)"]["max"]) == 448
    assert float(rows["float4_e2m1fn"]["max"]) == 6
    assert (rows["float4_e2m1fn"]["Inf"], rows["float4_e2m1fn"]["NaN"]) == ("no", "no")
    assert int(rows["float4_e2m1fn"]["finite values"]) == 15
    assert float(rows["posit(8,2)"]["max"]) == 2**24
    assert int(rows["posit(8,2)"]["finite values"]) == 2**8 - 1  # NaR is not finite
    assert (rows["posit(8,2)"]["Inf"], rows["posit(8,2)"]["NaN"]) == ("no", "yes")
    assert float(rows["fixed(8,4)"]["max"]) == 127 / 16
    assert int(rows["fixed(8,4)"]["finite values"]) == 256
    assert (rows["fixed(8,4)"]["Inf"], rows["fixed(8,4)"]["NaN"]) == ("no", "no")  # no codes


def test_formats_default_list_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "spacing.png"
    result = qtorch_cmd("formats", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    rows = parse_table(result.stdout.split("plot saved")[0])
    assert {"bfloat16", "float8_e4m3fn", "posit(8,2)", "fixed(8,4)", "nf4"} <= set(rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_formats_bad_spec_exit_2_one_line() -> None:
    result = qtorch_cmd("formats", "float16", "posit(8)")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("qtorch formats: error: bad format spec 'posit(8)'")


@pytest.mark.parametrize("spec", ["float(9,2)", "wibble", "posit(8,2", "__import__('os')"])
def test_formats_bad_specs_in_process(spec: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["formats", spec]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("qtorch formats: error: bad format spec")


def test_demo_quick_run_table_and_json(tmp_path: Path) -> None:
    report = tmp_path / "demo.json"
    args = ["demo", "--epochs", "1", "--formats", "fp32,posit(8,2)", "--no-progress"]
    result = qtorch_cmd(*args, "--json", str(report))
    assert result.returncode == 0, result.stderr
    rows = parse_table(result.stdout)
    assert list(rows) == ["fp32", "posit(8,2)"]
    data = json.loads(report.read_text())
    assert data["epochs"] == 1
    accuracies = {r["setting"]: r for r in data["results"]}
    for r in accuracies.values():
        assert 0.0 <= r["final_test_acc"] <= 1.0
        assert 0.0 <= r["best_test_acc"] <= 1.0
        assert len(r["test_acc_per_epoch"]) == 1
    assert accuracies["fp32"]["final_test_acc"] > 0.4  # chance is 0.1
    assert rows["fp32"]["final acc"] == f"{accuracies['fp32']['final_test_acc']:.3f}"
    again = tmp_path / "again.json"  # the same run in this process: the same numbers
    assert main([*args, "--json", str(again)]) == 0
    repeat = {
        r["setting"]: r["test_acc_per_epoch"] for r in json.loads(again.read_text())["results"]
    }
    assert repeat == {k: v["test_acc_per_epoch"] for k, v in accuracies.items()}  # same seed


def test_demo_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--formats", "fp32,posit(8)"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad format spec 'posit(8)'" in err[0]
    assert main(["demo", "--dataset", "mnist", "--data-dir", "/nonexistent/qtorch"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mnist" in err[0]


def test_help() -> None:
    result = qtorch_cmd("--help")
    assert result.returncode == 0
    assert "formats" in result.stdout and "demo" in result.stdout


@pytest.mark.parametrize("command", ["formats", "demo"])
def test_subcommand_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: qtorch {command}" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: qtorch" in capsys.readouterr().err


def test_split_top_level() -> None:
    assert split_top_level("fp32, posit(8,2),codebook([0.5,1],scale=2),,") == [
        "fp32",
        "posit(8,2)",
        "codebook([0.5,1],scale=2)",
    ]


def fake_torchvision(present: bool) -> types.ModuleType:
    """A stand-in for torchvision whose MNIST holds a few random images (or is missing)."""

    class MNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            assert download is False  # the demo never downloads
            if not present:
                raise RuntimeError("Dataset not found. You can use download=True to download it")
            g = torch.Generator().manual_seed(int(train))
            n = 96 if train else 32
            self.data = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
            self.targets = torch.randint(0, 10, (n,), generator=g)

    module = types.ModuleType("torchvision")
    module.datasets = types.SimpleNamespace(MNIST=MNIST, CIFAR10=MNIST)  # type: ignore[attr-defined]
    return module


def test_demo_torchvision_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["demo", "--dataset", "mnist", "--data-dir", str(tmp_path), "--epochs", "1"]
    args += ["--formats", "fp32,bfloat16", "--no-progress", "--json", str(tmp_path / "r.json")]
    monkeypatch.setitem(sys.modules, "torchvision", fake_torchvision(present=True))
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dataset"] == "mnist"
    assert [r["setting"] for r in report["results"]] == ["fp32", "bfloat16"]
    assert all(0 <= r["final_test_acc"] <= 1 for r in report["results"])
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "torchvision", fake_torchvision(present=False))
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qtorch demo: error: mnist not found in")
