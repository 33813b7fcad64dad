"""Per-call timings of one build of rnnkern, for comparing two builds (an A/B of a change).

Run it once per build, each in its own process, alternating, with that build first on the path:

    PYTHONPATH=/path/to/build_a python benchmarks/per_call.py > a1.json
    PYTHONPATH=/path/to/build_b python benchmarks/per_call.py > b1.json   # and again, a2, b2, ...

It prints {case: microseconds per call} as JSON, the minimum over 5 repeats: nn.RNNCell's step
(the baseline a user compares with), rnnkern.RNNCell's, the layer operator's on a one-step
sequence and the cell operator's (torch.ops, and the rnnkern._C entry the modules call) at batch
1, hidden 64, and rnnkern.RNN over four shapes (batch, hidden, steps), one and two directions,

forward (no_grad) and forward+backward. Compare builds as ratios of the minima over runs; absolute

times differ from machine to machine. One thread unless told otherwise (first argument).
"""

from __future__ import annotations

import json
import sys
import time

import torch

import rnnkern

# (batch, hidden, steps): one step is streaming, a few steps a short layer.
SHAPES = [(1, 64, 1), (1, 64, 4), (1, 64, 16), (1, 64, 512), (16, 256, 64), (64, 256, 32)]


def best_of(fn, calls: int, repeats: int = 5) -> float:
    """Microseconds per call of fn, the minimum over `repeats` timed loops of `calls` calls."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def time_layer(rnn: rnnkern.RNN, inputs: torch.Tensor, calls: int) -> tuple[float, float]:
    """(forward without grad, forward+backward) microseconds per call of rnn on inputs."""
    trained = inputs.clone().requires_grad_()

    def train_step():
        out, h_n = rnn(trained)
        (out.sum() + h_n.sum()).backward()

    with torch.no_grad():
        forward = best_of(lambda: rnn(inputs), calls)
    return forward, best_of(train_step, max(calls // 2, 1))


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    torch.manual_seed(0)
    times = {}
    cell, x, h = rnnkern.RNNCell(64, 64), torch.randn(1, 64), torch.randn(1, 64)
    weights = [p.detach() for p in cell.parameters()]
    op = torch.ops.rnnkern.elman_layer.default
    theirs = torch.nn.RNNCell(64, 64)
    with torch.no_grad():
        times["nn.RNNCell fwd b1 h64"] = best_of(lambda: theirs(x, h), 400)
        times["cell fwd b1 h64"] = best_of(lambda: cell(x, h), 400)
        times["op 1 step b1 h64"] = best_of(lambda: op(x[None], h[None], weights, None, False), 400)
        if hasattr(torch.ops.rnnkern, "elman_cell"):  # builds with the one-step cell operator
            cell_op = torch.ops.rnnkern.elman_cell.default
            times["cell op b1 h64"] = best_of(lambda: cell_op(x, h, *weights, False), 400)
            times["cell op via _C b1 h64"] = best_of(
                lambda: rnnkern._C.elman_cell(x, h, *weights, False), 400
            )

    for batch, hidden, steps in SHAPES:
        for directions in (1, 2):
            rnn = rnnkern.RNN(hidden, hidden, bidirectional=directions == 2)
            inputs = torch.randn(steps, batch, hidden)
            name = f"{batch},{hidden},{steps} D{directions}"
            forward, train = time_layer(rnn, inputs, 20 if steps > 100 else 100)
            times[f"fwd {name}"], times[f"f+b {name}"] = forward, train
    print(json.dumps(times))


if __name__ == "__main__":
    main()
