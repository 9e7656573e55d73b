#!/usr/bin/env python
"""Run the seg speed benchmark from a checkout: `python scripts/benchmark.py [overrides ...] [--steps N]`.
Same as the `seg-bench` command; see docs/benchmarks.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's seg, installed or not

from seg.bench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
