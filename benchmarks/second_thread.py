"""rnnkern.RNN calls right after one of torch's own parallel operations, and back to back, with the
CPU pipelines' second thread chosen as in production (`auto`: torch's OpenMP worker when it is
spinning on the second core anyway, else the helper thread) or always the helper thread (`thread`,
how every call ran before the choice existed): csrc/cpu/openmp_teammate.h.

    python -m benchmarks.second_thread --shapes 1,256,256 16,256,256 --load 0 1

A shape is batch,hidden,steps (input size = hidden), timed as inference (no_grad) and as a training
step (forward, then out.backward(g) with a fixed g), on two threads. "after nn.RNN" times each call
right after an nn.RNN call with the same weights, as the benchmark runner does and as any program
meets it that runs torch's parallel operations (a linear layer, a loss, an optimizer step) between
rnnkern calls: torch's OpenMP worker then spins on the second core for several milliseconds.
"back to back" times calls with nothing between them. The modes alternate round by round in one
process, so that the machine's drift falls on both. Prints the median µs per step of each, and
auto's speed-up over thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

from benchmarks.thread_loops import module_calls

MODES = ("thread", "auto")
ORDERS = ("after nn.RNN", "back to back")


def time_shape(shape: tuple[int, int, int], rounds: int, calls: int) -> dict:
    """{(kind, mode, order): median µs per step} for one shape."""
    import torch

    import rnnkern

    batch, hidden, steps = shape
    torch.manual_seed(0)
    theirs = torch.nn.RNN(hidden, hidden)
    ours = rnnkern.RNN(hidden, hidden)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(steps, batch, hidden)
    g = torch.randn(steps, batch, hidden)
    medians = {}
    for (kind, call), (_, baseline) in zip(module_calls(ours, x, g), module_calls(theirs, x, g)):
        times = {(mode, order): [] for mode in MODES for order in ORDERS}
        for _ in range(rounds):
            for mode in MODES:
                previous = rnnkern._C.set_teammate_mode(mode)
                try:
                    for _ in range(2):  # settle into the mode
                        baseline()
                        call()
                    for order in ORDERS:
                        for _ in range(calls):
                            if order == "after nn.RNN":
                                baseline()
                            start = time.perf_counter()
                            call()
                            times[mode, order].append(time.perf_counter() - start)
                finally:
                    rnnkern._C.set_teammate_mode(previous)
        for key, values in times.items():
            medians[(kind, *key)] = statistics.median(values) / steps * 1e6
    return medians


def _parse_shape(text: str) -> tuple[int, int, int]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected batch,hidden,steps, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=_parse_shape, required=True)
    parser.add_argument("--load", nargs="+", type=int, default=[0], help="busy cores")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of both modes")
    parser.add_argument("--calls", type=int, default=6, help="timed calls per round and order")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.load import outside_load

    torch.set_num_threads(2)
    print(f"{'shape':>12} {'mode':>16} {'load':>4} {'order':>12}   thread     auto  speed-up")
    for load in args.load:
        with outside_load(load):
            time.sleep(0.3)  # the spinners running
            for shape in args.shapes:
                medians = time_shape(shape, args.rounds, args.calls)
                name = ",".join(map(str, shape))
                for kind in ("inference", "forward+backward"):
                    for order in ORDERS:
                        thread, auto = (medians[kind, mode, order] for mode in MODES)
                        print(
                            f"{name:>12} {kind:>16} {load:>4} {order:>12} {thread:8.2f} "
                            f"{auto:8.2f}  {thread / auto:5.2f}x",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
