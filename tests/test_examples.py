"""The runnable examples in examples/ that need no external data, in their --quick mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_functionality_overview() -> None:
    out = run_example("functionality_overview.py", "--quick")
    assert "weights are float8 e5m2 values: True" in out
    assert "outputs are posit<8,1> values: True" in out
    assert "same again with the seed: True" in out


def test_posit_cnn_training() -> None:
    pytest.importorskip("sklearn")
    out = run_example("posit_cnn_training.py", "--quick")
    last = {line.split(":")[0].strip(): line for line in out.splitlines() if "per epoch" in line}
    assert set(last) == {"float32", "posit(8,1)"}
    accuracy = float(last["posit(8,1)"].split("per epoch")[1].split("(")[0].split()[-1])
    assert accuracy > 0.5  # 10 classes: chance is 0.1


def test_posit_activations(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "activations.png"
    out = run_example("posit_activations.py", str(plot), "--quick")
    assert plot.read_bytes()[:4] == b"\x89PNG"
    errors = {
        (line.split()[1], line.split()[2]): float(line.split("max |error|")[1].split()[0])
        for line in out.splitlines()
        if line.startswith("nsize")
    }
    assert len(errors) == 6
    # the approximations are coarse but bounded (qtorch+ documents ~0.05 / 0.1 / 0.04)
    assert all(0 < e < 0.11 for e in errors.values())
    assert errors[("16", "posit_tanh_enhanced")] < errors[("16", "posit_tanh")]


def test_post_training_quantization() -> None:
    pytest.importorskip("sklearn")
    out = run_example("post_training_quantization.py", "--quick")
    rows = [line.split() for line in out.splitlines() if line.startswith(("bfloat16", "posit"))]
    assert len(rows) == 2
    assert all(0.5 < float(cell) <= 1.0 for row in rows for cell in row[2:])
