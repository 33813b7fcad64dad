"""pytest-benchmark suite: the runner's comparisons on a small grid, kept out of the default test run.

    pytest benchmarks --benchmark-only                      # run (make bench-pytest)
    pytest benchmarks --benchmark-only --benchmark-autosave  # keep the results under .benchmarks/
    pytest benchmarks --benchmark-only --benchmark-compare   # against the last saved run

Benchmarks are grouped by configuration, so each group compares the implementations on one shape
and --benchmark-compare lines up the same group across commits.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.implementations import IMPLEMENTATIONS
from benchmarks.run import CHECK_TOLERANCE, check, make_call

GRID = [(1, 64, 256), (16, 256, 64)]  # (batch, hidden, seq len), input_size = hidden


@pytest.mark.parametrize("mode", ["inference", "forward+backward"])
@pytest.mark.parametrize("batch, hidden, seq_len", GRID)
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_rnn(benchmark, name, batch, hidden, seq_len, mode):
    benchmark.group = f"{mode}, batch {batch}, hidden {hidden}, seq len {seq_len}"
    torch.manual_seed(0)
    reference = torch.nn.RNN(hidden, hidden)
    fn = IMPLEMENTATIONS[name].build(reference)
    x = torch.randn(seq_len, batch, hidden, requires_grad=mode == "forward+backward")
    h0 = torch.randn(1, batch, hidden)
    with torch.no_grad():
        expected = reference(x, h0)
    error = check(fn, expected, x, h0, torch.float32)
    assert error <= CHECK_TOLERANCE[torch.float32], f"{name} differs from nn.RNN by {error}"
    benchmark.pedantic(make_call(fn, x, h0, mode), rounds=5, warmup_rounds=2)
