"""Outside load for the benchmark runner (``--load N``): N other processes, each keeping one core
busy for as long as the timing runs, as a data loader or another program would in real use.

Each is a separate process spinning in pure Python (no threads shared with torch's pool), started
before the sweep and stopped after it, also when the sweep fails.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    while not stop.is_set():
        end = time.perf_counter() + 0.01
        while time.perf_counter() < end:
            pass


@contextlib.contextmanager
def outside_load(processes: int):
    """Keeps `processes` cores busy inside the with-block (which gets the spinning processes);
    nothing when 0."""
    if processes <= 0:
        yield []
        return
    context = multiprocessing.get_context("spawn")  # nothing of torch's state in the spinners
    stop = context.Event()
    spinners = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(processes)]
    for p in spinners:
        p.start()
    try:
        yield spinners
    finally:
        stop.set()
        for p in spinners:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
