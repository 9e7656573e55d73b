"""Speed benchmark: seg's training and evaluation throughput against a tutorial-style loop
(`seg-bench`, or `python scripts/benchmark.py`); see docs/benchmarks.md."""
