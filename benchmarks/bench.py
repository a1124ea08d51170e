"""Benchmark every qtorch quantizer (eager and fused) against the memory-bound limit.

Same as ``qtorch bench``; run ``python benchmarks/bench.py --help`` for the options, e.g.

    python benchmarks/bench.py --sizes 4194304 --threads 2 --json results.json
"""

import sys

from qtorch.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
