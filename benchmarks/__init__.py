"""rnnkern's benchmarks: the runner (``python -m benchmarks.run``), the CPU speed table, and
a pytest-benchmark suite (``pytest benchmarks --benchmark-only``)."""
