"""Loops of rnnkern.RNN calls on one thread and on two, idle or with cores kept busy: how the
threading of the CPU paths behaves when nothing else interleaves with it (the runner interleaves
every call with nn.RNN's, whose pool threads and cache traffic the next call pays for).

    python -m benchmarks.thread_loops --shapes 16,256,64 1,64,512 16,256,64,2 --load 0 1

A shape is batch,hidden,steps[,directions] (input size = hidden). Each thread count runs in a
process of its own (torch's thread pools are set once per process); each shape is timed as
inference (no_grad) and as a training step that ends in out.backward(g) with a fixed g, not in a
loss such as out.sum(): a reduction is itself an OpenMP team of two, whose barrier under outside
load costs the step more than anything of rnnkern's (PERFORMANCE.md, version 17). Prints the
median µs per step and, per shape and load, two threads over one. To compare two builds, run it
with each build first on PYTHONPATH, alternating, and compare medians.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def module_calls(model, x, g):
    """(mode, the call timed) for inference and a training step of `model`."""
    import torch

    def inference():
        with torch.no_grad():
            model(x)

    def training():
        for p in model.parameters():
            p.grad = None
        out, _ = model(x)
        out.backward(g)

    return (("inference", inference), ("forward+backward", training))


def _time_shapes(threads: int, load: int, shapes: list[tuple[int, ...]], calls: int) -> None:
    import torch

    torch.set_num_threads(threads)
    import rnnkern
    from benchmarks.load import outside_load

    with outside_load(load):
        time.sleep(0.3)  # the spinners running
        for batch, hidden, steps, directions in shapes:
            torch.manual_seed(0)
            model = rnnkern.RNN(hidden, hidden, bidirectional=directions == 2)
            x = torch.randn(steps, batch, hidden)
            g = torch.randn(steps, batch, directions * hidden)

            for mode, call in module_calls(model, x, g):
                for _ in range(3):
                    call()
                times = []
                for _ in range(calls):
                    start = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - start)
                us = statistics.median(times) / steps * 1e6
                shape = ",".join(map(str, (batch, hidden, steps, directions)))
                print(f"{shape} {mode} {threads} {load} {us:.3f}", flush=True)


def _parse_shape(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) == 3:
        values += (1,)
    if len(values) != 4 or values[3] not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected batch,hidden,steps[,directions], got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", type=_parse_shape, required=True)
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--load", nargs="+", type=int, default=[0, 1], help="busy cores")
    parser.add_argument("--calls", type=int, default=40, help="timed calls per shape and mode")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)  # threads, load
    args = parser.parse_args(argv)
    if args.child:
        _time_shapes(*args.child, args.shapes, args.calls)
        return

    shape_args = [",".join(map(str, s)) for s in args.shapes]
    results: dict[tuple[str, str, int, int], float] = {}
    for load in args.load:
        for threads in args.threads:
            command = [sys.executable, "-m", "benchmarks.thread_loops", "--child", str(threads)]
            command += [str(load), "--calls", str(args.calls), "--shapes", *shape_args]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            for line in output.splitlines():
                shape, mode, t, l, us = line.split()
                results[(shape, mode, int(t), int(l))] = float(us)
    print(f"{'shape':>14} {'mode':>16} {'load':>4} " + " ".join(f"{t} thr" for t in args.threads))
    for (shape, mode, threads, load), _ in sorted(results.items()):
        if threads != args.threads[0]:
            continue
        row = [results[(shape, mode, t, load)] for t in args.threads]
        ratio = f"  ({row[-1] / row[0]:.2f}x)" if len(row) > 1 else ""
        cells = " ".join(f"{us:5.2f}" for us in row)
        print(f"{shape:>14} {mode:>16} {load:>4} {cells}{ratio}")


if __name__ == "__main__":
    main()
