"""Stacked layers in inference two at a time as a wavefront on two cores (pairs), against one layer
at a time (csrc/cpu/stacked_forward_cpu.cpp), in one process:

    python -m benchmarks.stacked_pairs --shapes 1,64,512,2 16,64,256,2 --rounds 5

A shape is batch,hidden,steps,layers[,input size] (input size = hidden unless given), timed as inference (no_grad) on two
threads, in the two orders of benchmarks.second_thread: "after nn.RNN" (each call right after an
nn.RNN call with the same weights, as the benchmark runner times it) and "back to back". The two
ways alternate round by round (rnnkern._C.set_stacked_pairs), so that the machine's drift falls on
both. Prints the median µs per step of each way and of nn.RNN, and the pairs' speed-up over one
layer at a time and over nn.RNN.
"""

from __future__ import annotations

import argparse
import statistics
import time

WAYS = ("one at a time", "pairs")
ORDERS = ("after nn.RNN", "back to back")


def time_shape(shape: tuple[int, ...], rounds: int, calls: int, stat=statistics.median):
    """{(way, order): µs per step (stat of the calls)}, and {("nn.RNN", order): ...}, for one
    shape."""
    import torch

    import rnnkern

    batch, hidden, steps, layers, *rest = shape
    input_size = rest[0] if rest else hidden
    torch.manual_seed(0)
    theirs = torch.nn.RNN(input_size, hidden, num_layers=layers)
    ours = rnnkern.RNN(input_size, hidden, num_layers=layers)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(steps, batch, input_size)
    times = {(way, order): [] for way in (*WAYS, "nn.RNN") for order in ORDERS}
    with torch.no_grad():
        for _ in range(rounds):
            for way in WAYS:
                previous = rnnkern._C.set_stacked_pairs(way == "pairs")
                try:
                    for _ in range(2):  # settle
                        theirs(x)
                        ours(x)
                    for order in ORDERS:
                        for _ in range(calls):
                            if order == "after nn.RNN":
                                start = time.perf_counter()
                                theirs(x)
                                times["nn.RNN", order].append(time.perf_counter() - start)
                            start = time.perf_counter()
                            ours(x)
                            times[way, order].append(time.perf_counter() - start)
                finally:
                    rnnkern._C.set_stacked_pairs(previous)
    return {key: stat(t) / steps * 1e6 for key, t in times.items() if t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["1,64,512,2", "16,64,256,2"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20, help="timed calls per way, order, round")
    parser.add_argument(
        "--fastest",
        action="store_true",
        help="the fastest call of each instead of the median (what the machine does when nothing "
        "else takes its cores)",
    )
    args = parser.parse_args()

    import torch

    import rnnkern

    torch.set_num_threads(2)
    stat = "fastest" if args.fastest else "median"
    print(f"µs/step ({stat}), inference, 2 threads; pairs' speed-up over one at a time, nn.RNN")
    for text in args.shapes:
        shape = tuple(int(v) for v in text.split(","))
        counts = rnnkern._C.stacked_pair_counts()
        medians = time_shape(
            shape, args.rounds, args.calls, min if args.fastest else statistics.median
        )
        for order in ORDERS:
            one, pairs = medians["one at a time", order], medians["pairs", order]
            line = f"{text:>14} {order:>12}: one at a time {one:8.3f}  pairs {pairs:8.3f}"
            line += f"  {one / pairs:5.2f}x"
            if order == "after nn.RNN":
                nn_rnn = medians["nn.RNN", order]
                line += f"  | nn.RNN {nn_rnn:8.3f}: {nn_rnn / one:5.2f}x -> {nn_rnn / pairs:5.2f}x"
            print(line, flush=True)
        calls, blocks, replaced = (b - a for a, b in zip(counts, rnnkern._C.stacked_pair_counts()))
        print(
            f"{'':>14} pairs run {calls}, upper blocks by the caller {blocks}, taken over after "
            f"the helper started {replaced}"
        )


if __name__ == "__main__":
    main()
