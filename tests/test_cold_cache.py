"""Cold caches in the benchmark: what is read, and which calls start cold (never timed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from qtorch.cli import bench, cold_cache

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("32768K\n", 32768 * 1024), ("32M", 32 * 1024 * 1024), ("1G", 1024**3), ("512", 512)],
)
def test_sysfs_cache_sizes_parse(text: str, expected: int) -> None:
    assert cold_cache._parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "K", "32 MB", "big"])
def test_unreadable_cache_sizes_are_none(text: str) -> None:
    assert cold_cache._parse_size(text) is None


def test_eviction_reads_several_times_the_largest_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cold_cache, "largest_cache_bytes", lambda device: 3 * 2**20)
    assert cold_cache.eviction_bytes(CPU) == cold_cache.CACHE_MULTIPLE * 3 * 2**20
    monkeypatch.setattr(cold_cache, "largest_cache_bytes", lambda device: None)
    assert cold_cache.eviction_bytes(CPU) == cold_cache.FALLBACK_BYTES


def test_the_evicted_buffer_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    # a buffer never written maps to the zero page: its reads would evict nothing
    monkeypatch.setattr(cold_cache, "largest_cache_bytes", lambda device: 2**16)
    evict = cold_cache.Evictor(CPU)
    assert evict.buffer.numel() * 4 == cold_cache.CACHE_MULTIPLE * 2**16
    assert bool((evict.buffer == 1).all())
    assert evict() is None


def test_triple_evicts_before_each_call_untimed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    now = [0.0]

    def fn(name: str, seconds: float) -> Callable[[], None]:
        def call() -> None:
            calls.append(name)
            now[0] += seconds

        return call

    monkeypatch.setattr(bench, "_clock", lambda: now[0])
    fns = (fn("ref", 1.0), fn("clone", 2.0), fn("run", 3.0))
    assert bench._triple(fns, 4, CPU, fn("evict", 100.0)) == (1.0, 2.0, 3.0)
    assert calls[::2] == ["evict"] * 3 and sorted(calls[1::2]) == ["clone", "ref", "run"]


@pytest.mark.parametrize(
    ("cache", "largest", "cold_sizes"),
    [
        ("auto", 2**16, {4096, 5000}),  # x and the output fill half of 64 KiB from 4,096
        ("auto", None, {100, 4095, 4096, 5000}),  # unknown cache: cold everywhere
        ("cold", 2**16, {100, 4095, 4096, 5000}),
        ("warm", 2**16, set()),
    ],
)
def test_which_sizes_are_timed_cold(
    monkeypatch: pytest.MonkeyPatch, cache: str, largest: int | None, cold_sizes: set[int]
) -> None:
    monkeypatch.setattr(bench, "largest_cache_bytes", lambda device: largest)
    monkeypatch.setattr(cold_cache, "largest_cache_bytes", lambda device: largest)
    seen: dict[int, Any] = {}

    def fake_time_path(mode, x, fmt, rounding, references, repeats, warmup, budget_s, evict):
        seen[x.numel()] = evict
        return [(1e-3, 1e-3, 2e-3)] * repeats, 0.0

    monkeypatch.setattr(bench, "_time_path", fake_time_path)
    sizes = [100, 4095, 4096, 5000]
    formats = bench.resolve_formats(["fixed"])
    rows = bench.measure(formats, sizes, CPU, 3, 1, ("fused",), 1.0, cache=cache)
    assert {n for n, evict in seen.items() if evict is not None} == cold_sizes
    assert all(isinstance(e, cold_cache.Evictor) for e in seen.values() if e is not None)
    assert {r.n for r in rows if r.cache == "cold"} == cold_sizes
    assert {r.n for r in rows if r.cache == "warm"} == set(sizes) - cold_sizes
    env = bench.environment(CPU, cache)
    expected = None if not cold_sizes else 0 if cold_sizes == set(sizes) else min(cold_sizes)
    assert env["cold_from_n"] == expected
    words = "warm" if expected is None else "at every size" if expected == 0 else "from n = 4,096"
    assert words in bench._cache_line(env)


def test_bench_cold_runs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cold_cache, "largest_cache_bytes", lambda device: 2**20)
    assert bench.main(["--quick", "--formats", "fixed", "--path", "fused", "--cache", "cold"]) == 0
    out = capsys.readouterr().out
    assert (
        "cache=cold" in out
        and "caches: cold (4 MiB read before each timed call) at every size" in out
    )


def test_an_unknown_cache_state_is_refused() -> None:
    with pytest.raises(ValueError, match="cache must be one of auto, cold, warm"):
        bench.measure(bench.resolve_formats(["fixed"]), [10], CPU, 1, 0, ("fused",), cache="hot")
