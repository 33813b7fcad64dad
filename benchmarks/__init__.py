"""rnnkern's benchmarks: the runner (``python -m benchmarks.run``), the speed table of issue 2, and
a pytest-benchmark suite (``pytest benchmarks --benchmark-only``)."""
