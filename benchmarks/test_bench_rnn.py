"""pytest-benchmark suite: the runner's comparisons on a small grid, kept out of the default test run.

    pytest benchmarks --benchmark-only                      # run (make bench-pytest)
    pytest benchmarks --benchmark-only --benchmark-autosave  # keep the results under .benchmarks/
    pytest benchmarks --benchmark-only --benchmark-compare   # against the last saved run

Every implementation of the runner takes part (the per-call cases and the peers outside torch
included) where it can run the configuration. A second set times rnnkern on one thread and on two,
and nn.RNN, with one core kept busy by another process (the runner's --load 1). Benchmarks are grouped by configuration, so each group compares the implementations on one shape
and --benchmark-compare lines up the same group across commits.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.implementations import IMPLEMENTATIONS
from benchmarks.load import outside_load
from benchmarks.run import CHECK_TOLERANCE, Config, check, make_call, unsupported_reason

# (batch, hidden, seq len), input_size = hidden: a short sequence (where per-call costs show), a
# long one at batch 1, and a batch of 16.
GRID = [(1, 64, 16), (1, 64, 256), (16, 256, 64)]


def checked_call(name: str, batch: int, hidden: int, seq_len: int, mode: str):
    """The unit of work timed for implementation `name` on one point, once its output has been
    checked against nn.RNN's."""
    torch.manual_seed(0)
    reference = torch.nn.RNN(hidden, hidden)
    fn = IMPLEMENTATIONS[name].build(reference)
    x = torch.randn(seq_len, batch, hidden, requires_grad=mode == "forward+backward")
    h0 = torch.randn(1, batch, hidden)
    with torch.no_grad():
        expected = reference(x, h0)
    error = check(fn, expected, x, h0, torch.float32)
    assert error <= CHECK_TOLERANCE[torch.float32], f"{name} differs from nn.RNN by {error}"
    return make_call(fn, x, h0, mode)


@pytest.mark.parametrize("mode", ["inference", "forward+backward"])
@pytest.mark.parametrize("batch, hidden, seq_len", GRID)
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_rnn(benchmark, name, batch, hidden, seq_len, mode):
    benchmark.group = f"{mode}, batch {batch}, hidden {hidden}, seq len {seq_len}"
    config = Config("cpu", "float32", mode, batch, hidden, hidden, 1, False, "tanh")
    reason = unsupported_reason(name, config)
    if reason:
        pytest.skip(reason)  # not applicable here (its device, dtype or mode), as the runner says
    benchmark.pedantic(checked_call(name, batch, hidden, seq_len, mode), rounds=5, warmup_rounds=2)


# Under outside load: the two-thread paths against rnnkern's own one-thread time (which they
# should not exceed by much), batch 1 (the pipelines and their helper thread) and batch 16 (a short
# sequence pipelined in four blocks, and one shorter still, its GEMMs in row blocks).
LOAD_GRID = [(1, 64, 256), (16, 256, 64), (16, 256, 24)]


@pytest.mark.parametrize("mode", ["inference", "forward+backward"])
@pytest.mark.parametrize("batch, hidden, seq_len", LOAD_GRID)
@pytest.mark.parametrize("name, threads", [("rnnkern", 1), ("rnnkern", 2), ("nn.RNN", 2)])
def test_rnn_under_load(benchmark, name, threads, batch, hidden, seq_len, mode):
    benchmark.group = f"one busy core: {mode}, batch {batch}, hidden {hidden}, seq len {seq_len}"
    call = checked_call(name, batch, hidden, seq_len, mode)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with outside_load(1):
            benchmark.pedantic(call, rounds=5, warmup_rounds=2)
    finally:
        torch.set_num_threads(before)
