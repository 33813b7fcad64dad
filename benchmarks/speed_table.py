"""The CPU speed table: rnnkern.RNN against torch.nn.RNN, same weights, same inputs.

For each shape (batch, hidden, seq len; input_size = hidden, one layer, float32) both modules are
timed side by side in one process, interleaved, after a warm-up; each ratio is nn.RNN's median time
over rnnkern's ("x faster"). Forward is inference (torch.no_grad); forward + backward is one
training step (loss = output.sum()). With --runs N the whole table is measured N times and the
table shows the median ratio with the lowest and highest in brackets (a shared machine's timings
drift from minute to minute).

    python -m benchmarks.speed_table [--repeats 11] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
from collections.abc import Callable

import torch
from torch import nn

import rnnkern
from benchmarks.timing import interleaved

# (batch, hidden, seq_len): the shapes of the table and the speedup each is held to.
SHAPES = [(1, 64, 512), (1, 256, 512), (16, 256, 256), (64, 1024, 32)]
TARGETS = {
    (1, 64, 512): (8.0, 15.0),
    (1, 256, 512): (2.5, 5.0),
    (16, 256, 256): (1.2, 1.5),
    (64, 1024, 32): (0.95, 0.95),
}


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed interleaved by benchmarks/timing.py."""
    times = interleaved(fns, torch.device("cpu"), repeats=repeats, warmup=2)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(batch: int, hidden: int, seq_len: int, repeats: int) -> dict:
    torch.manual_seed(0)
    theirs = nn.RNN(hidden, hidden)
    ours = rnnkern.replace_rnns(copy.deepcopy(theirs))
    x = torch.randn(seq_len, batch, hidden)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-4, rtol=1e-4)

    def inference(module):
        def run():
            with torch.no_grad():
                module(x)

        return run

    def training(module):
        x_train = x.clone().requires_grad_()

        def run():
            module(x_train)[0].sum().backward()

        return run

    fwd = interleaved_medians({"nn.RNN": inference(theirs), "rnnkern": inference(ours)}, repeats)
    fwd_bwd = interleaved_medians({"nn.RNN": training(theirs), "rnnkern": training(ours)}, repeats)
    return {
        "batch": batch,
        "hidden": hidden,
        "seq_len": seq_len,
        "forward_s": fwd,
        "forward_backward_s": fwd_bwd,
        "forward_speedup": fwd["nn.RNN"] / fwd["rnnkern"],
        "forward_backward_speedup": fwd_bwd["nn.RNN"] / fwd_bwd["rnnkern"],
    }


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}x"
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed runs per module (median)")
    parser.add_argument("--runs", type=int, default=1, help="times to measure the whole table")
    parser.add_argument("--json", help="also write every measurement here")
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"rnnkern CPU kernels: {rnnkern.cpu_isa()}, {platform.processor() or platform.machine()}"
    )
    runs = [[measure(*shape, repeats=args.repeats) for shape in SHAPES] for _ in range(args.runs)]
    print("| batch, hidden, seq len | forward | target | forward + backward | target |")
    print("| --- | --- | --- | --- | --- |")
    for i, shape in enumerate(SHAPES):
        f_target, fb_target = TARGETS[shape]
        forward = spread([run[i]["forward_speedup"] for run in runs])
        training = spread([run[i]["forward_backward_speedup"] for run in runs])
        print(
            f"| {shape[0]}, {shape[1]}, {shape[2]} | {forward} | >= {f_target}x "
            f"| {training} | >= {fb_target}x |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "command": "python -m benchmarks.speed_table "
                    f"--repeats {args.repeats} --runs {args.runs}",
                    "torch": torch.__version__,
                    "threads": torch.get_num_threads(),
                    "cpu_isa": rnnkern.cpu_isa(),
                    "machine": platform.machine(),
                    "runs": runs,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
