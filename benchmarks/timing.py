"""Timing done the same way for every implementation: warm-up, interleaved repetitions, medians.

Implementations are timed in turn within each repetition, so that drift of the machine (frequency,
a neighbour's load) hits them all alike. On CUDA each call is timed with events after a
synchronisation; on the CPU with perf_counter.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of fn takes, measured so that asynchronous GPU work is included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    start_s = time.perf_counter()
    fn()
    return time.perf_counter() - start_s


def interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Times of each function over `repeats` interleaved rounds, after `warmup` untimed calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return times


def summary(times: list[float]) -> dict[str, float]:
    """Median and spread (quartiles, min, max) of a list of timings, in seconds."""
    ordered = sorted(times)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {
        "median_s": statistics.median(ordered),
        "q1_s": quartiles[0],
        "q3_s": quartiles[2],
        "min_s": ordered[0],
        "max_s": ordered[-1],
    }


def gemm_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """This machine's rate on one large matrix product, the yardstick for every FLOP rate."""
    n = 4096 if device.type == "cuda" else 1536
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = interleaved({"mm": lambda: torch.mm(a, b)}, device, repeats=5, warmup=2)["mm"]
    return 2 * n**3 / statistics.median(times) / 1e9
