"""The benchmark and the GPU check run (checked to run and to report, never timed)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from qtorch import FixedPoint
from qtorch.cli import bench
from qtorch.cli.main import main as cli_main
from qtorch.kernels import fused
from qtorch.rounding import Rounding

ROOT = Path(__file__).resolve().parents[1]


def test_bench_quick_runs_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = bench.main(["--quick", "--formats", "fixed", "nosuchfamily", "--json", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert (
        "torch=" in captured.out and "threads=" in captured.out and "dtype=float32" in captured.out
    )
    assert "skipping 'nosuchfamily'" in captured.err
    report = json.loads(out.read_text())
    rows = report["runs"][0]["rows"]
    assert {(r["rounding"], r["n"]) for r in rows} == {
        (rounding, n) for rounding in bench.ROUNDINGS for n in bench.QUICK_SIZES
    }
    for row in rows:
        assert row["family"] == "fixed" and row["reference"] == "mul"
        for key in (
            "reference_ms",
            "clone_ms",
            "eager_ms",
            "fused_ms",
            "eager_ratio",
            "fused_ratio",
            "eager_ratio_q1",
            "eager_ratio_q3",
            "fused_ratio_q1",
            "fused_ratio_q3",
            "eager_clone_ratio",
            "fused_clone_ratio",
            "fused_speedup",
        ):
            assert math.isfinite(row[key]) and row[key] > 0
        assert row["fused_speedup"] == pytest.approx(row["eager_ms"] / row["fused_ms"])
        for path in ("eager", "fused"):
            low, mid, high = (row[f"{path}_ratio{q}"] for q in ("_q1", "", "_q3"))
            assert low <= mid <= high
    assert "x.clone()" in captured.out and "eager/fused" in captured.out


def test_triples_take_every_order_and_keep_the_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    durations = {"ref": 1.0, "clone": 2.0, "run": 3.0}
    now = [0.0]

    def fn(name: str) -> Callable[[], None]:
        def call() -> None:
            calls.append(name)
            now[0] += durations[name]

        return call

    monkeypatch.setattr(bench, "_clock", lambda: now[0])
    fns = (fn("ref"), fn("clone"), fn("run"))
    orders = set()
    for index in range(6):
        calls.clear()
        assert bench._triple(fns, index, torch.device("cpu")) == (1.0, 2.0, 3.0)
        orders.add(tuple(calls))
    assert len(orders) == 6 and all(sorted(o) == ["clone", "ref", "run"] for o in orders)


def test_rounds_pool_their_triples(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int, int, float]] = []

    def fake_time_path(mode, x, fmt, rounding, references, repeats, warmup, budget_s, evict):
        assert evict is None  # warm by default
        seen.append((mode, repeats, warmup, budget_s))
        k = len(seen)  # round r of the fused path returns quantizer times r + 1 ms (ref 1 ms)
        return [(1e-3, 2e-3, k * 1e-3)] * repeats, 10.0 * k

    monkeypatch.setattr(bench, "_time_path", fake_time_path)
    formats = bench.resolve_formats(["fixed"])
    rows = bench.measure(formats, [100], torch.device("cpu"), 7, 3, ("fused",), 3.0, rounds=3)
    # two roundings, three rounds each: ceil(7 / 3) = 3 triples a round, a third of the budget,
    # the full warm-up in the first round only
    assert [(m, r, w) for m, r, w, _ in seen] == [("compiled", 3, 3)] * 2 + [("compiled", 3, 1)] * 4
    assert all(b == pytest.approx(1.0) for *_, b in seen)
    nearest, stochastic = rows
    # nearest got calls 1, 3, 5 (quantizer 1, 3, 5 ms): median 3 ms over the nine triples
    assert nearest.fused_ms == pytest.approx(3.0) and nearest.fused_ratio == pytest.approx(3.0)
    # ratios 1, 1, 1, 3, 3, 3, 5, 5, 5: quartiles at sorted positions 2 and 6
    assert nearest.fused_ratio_q1 == pytest.approx(1.0)
    assert nearest.fused_ratio_q3 == pytest.approx(5.0)
    assert nearest.eager_ratio_q1 is None and "1.00-5.00" in bench.format_row(nearest)
    assert nearest.fused_clone_ratio == pytest.approx(1.5) and nearest.first_call_s == 10.0
    assert stochastic.fused_ms == pytest.approx(4.0) and stochastic.first_call_s == 20.0


def test_quartiles_interpolate_within_the_values() -> None:
    assert bench.quartiles([5.0, 1.0, 4.0, 2.0, 3.0]) == (2.0, 3.0, 4.0)
    assert bench.quartiles([1.0, 2.0]) == (1.25, 1.5, 1.75)
    assert bench.quartiles([7.0]) == (7.0, 7.0, 7.0)


def test_ab_pairs_alternate_the_order() -> None:
    spec = importlib.util.spec_from_file_location("ab_script", ROOT / "benchmarks/ab.py")
    assert spec is not None and spec.loader is not None
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    calls: list[str] = []
    now = [0.0]

    def new() -> None:
        calls.append("new")
        now[0] += 3.0

    def base() -> None:
        calls.append("base")
        now[0] += 2.0

    ratios = ab.compare(new, base, (), 4, lambda: now[0])
    assert ratios == [1.5] * 4
    assert calls == ["new", "base", "base", "new", "new", "base", "base", "new"]


def test_bench_script_and_subcommand_parse(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "benchmarks/bench.py")
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # imports without running

    parser = argparse.ArgumentParser(prog="qtorch")
    bench.register(parser.add_subparsers())
    args = parser.parse_args(["bench", "--sizes", "1e4,4194304", "--formats", "posit(16,1)"])
    assert args.sizes == [10_000, 4_194_304] and args.formats == ["posit(16,1)"]
    assert args.func is bench.run
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--sizes", "0"])
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["bench", "--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_bench_refuses_cuda_without_a_device(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--device cuda`` where there is none is an error (it printed a note and exited 0,
    having timed nothing, and wrote an empty --json report)."""
    out = tmp_path / "bench.json"
    code = cli_main(["bench", "--device", "cuda", "--quick", "--json", str(out)])
    assert code == 2 and not out.exists()
    assert "no CUDA device" in capsys.readouterr().err


def test_gpu_check_dry_run_on_cpu(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    assert spec is not None and spec.loader is not None
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    # An earlier test in this process may have left "auto" decisions for the same format
    # and size class under other keys (stochastic here); the check reads its own key only
    # (it read every key of the format, and failed when the two paths differed).
    other = fused._key(torch.empty(3000), FixedPoint(8, 4), Rounding.STOCHASTIC, False, "cpu")
    monkeypatch.setitem(fused._faster, (other, (3000).bit_length()), "eager")
    code = gpu_check.main(["--cpu-dry-run", "--formats", "fixed", "--size", "3000"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAIL" not in out and out.count("ok") >= 4
    assert out.count("auto keeps the faster path") == 6  # fixed and posit, three sizes
    assert out.count("by buckets: same bits") == 2  # the codebook experiment ran
    assert out.count("direct call at") == 4  # fixed and posit, two sizes
    assert "bandwidth vs copy" in out and "per call:" in out


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git history")
def test_ab_script_compares_with_a_commit() -> None:
    args = ["--base", "HEAD", "--eager", "--size", "2000", "--pairs", "2", "--formats", "fixed"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/ab.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("FixedPoint")]
    assert [line.split()[-5] for line in lines] == ["nearest", "stochastic"]
    assert all(line.split()[-4] == "yes" for line in lines)  # the same code gives the same bits
