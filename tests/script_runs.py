"""Run the benchmark scripts that tests check as subprocesses, two at a time.

The scripts that stand in a CUDA device (``benchmarks/cuda_codegen.py``,
``benchmarks/cuda_interpret.py``) each run in one thread, for tens of seconds: started
two at a time, the tests that need several runs wait for about half as long on the two
cores the default run is sized for.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

AT_ONCE = 2


def run_all(
    commands: Sequence[Sequence[str]], timeout: float
) -> list[subprocess.CompletedProcess[str]]:
    """Each command's finished process (output captured as text), in the given order."""

    def run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)

    with ThreadPoolExecutor(AT_ONCE) as pool:
        return list(pool.map(run, commands))
