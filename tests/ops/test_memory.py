"""Memory on the CPU: what a training step keeps per step, what inference keeps, long sequences, leaks.

How memory is measured, and why:

- torch's CPU allocator has no peak counter, and torch.profiler's memory events proved unusable here
  (a handful of events for a whole step, a peak of 0, seconds of overhead and Kineto noise on
  stderr). So the per-step cost of a training step is measured by **saved-tensor accounting**: every
  tensor autograd saves for backward passes through a ``saved_tensors_hooks`` pack hook, and the
  bytes of the unique storages behind them (plus the output's) are what the step keeps alive until
  backward. That is exact, deterministic and cheap, and it is where nn.RNN and rnnkern differ: on the
  CPU nn.RNN runs one autograd op per step and saves every step's state as a separate tensor besides
  the stacked output, while rnnkern's fused op saves its input, h0, weights and output only.
- Saved tensors do not see what backward allocates (gradient buffers, the kernel's scratch), so one
  size is backed by the process's **peak resident memory**: each measurement runs in a fresh
  subprocess (so no earlier allocation, cached free memory or allocator state is reused), resets
  the high-water mark through /proc/self/clear_refs after a warm-up, runs one step and reads VmHWM.
  That counts everything the step touches, whichever thread or allocator, but includes allocator
  slack, so its bounds are looser.
- Leaks are read from the resident set (/proc/self/statm) before and after thousands of calls.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rnnkern import reference
from tests.conftest import ROOT, TOL, assert_close, rnn_pair

MiB = 2**20
LINUX_PROC = os.path.exists("/proc/self/statm") and os.path.exists("/proc/self/clear_refs")

# The shape of the scaling measurements: batch 4, hidden 64, input 8, float32.
B, H, I = 4, 64, 8
ROW_BYTES = (B * H + B * I) * 4  # one step of output + one step of input


@contextlib.contextmanager
def one_thread():
    """Runs nn.RNN on one thread: its thousands of tiny parallel ops stall for seconds on a busy
    2-core machine when two threads wait for each other. Memory is the same on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def saved_bytes(module, x, h0):
    """Bytes kept alive for backward by one forward: unique storages saved by autograd + output.

    Returns (bytes, number of unique storages, output, h_n).
    """
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, h_n = module(x, h0)
    count = len(storages)
    s = out.untyped_storage()
    storages[s.data_ptr()] = s.nbytes()
    return sum(storages.values()), count, out, h_n


def fit_slope(lengths, values) -> float:
    """Least-squares bytes per step."""
    slope, _ = np.polyfit(np.asarray(lengths, dtype=np.float64), np.asarray(values, np.float64), 1)
    return float(slope)


def test_training_memory_is_linear_in_length_and_at_most_nn_rnns():
    theirs, ours = rnn_pair(input_size=I, hidden_size=H)
    lengths = [256, 512, 1024, 2048]
    kept = {"nn.RNN": [], "rnnkern": []}
    for T in lengths:
        x = torch.randn(T, B, I)
        h0 = torch.randn(1, B, H, requires_grad=True)
        for name, module in (("nn.RNN", theirs), ("rnnkern", ours)):
            with one_thread() if name == "nn.RNN" else contextlib.nullcontext():
                nbytes, count, out, h_n = saved_bytes(module, x, h0)
            kept[name].append(nbytes)
            if name == "rnnkern":
                # input, h0, output and the 4 weights: nothing per step.
                assert count == 7, f"rnnkern saved {count} storages at T={T}"
                (out.sum() + h_n.sum()).backward()  # what was saved is enough for backward
                assert h0.grad is not None and torch.isfinite(h0.grad).all()

    slopes = {name: fit_slope(lengths, values) for name, values in kept.items()}
    print(f"saved bytes per step: {slopes} (output + input per step: {ROW_BYTES})")
    # No worse than nn.RNN (which keeps about twice as much: its per-step states and the output).
    assert slopes["rnnkern"] <= 1.02 * slopes["nn.RNN"], slopes
    # rnnkern keeps the output and the input, and nothing else that grows with the length.
    assert slopes["rnnkern"] <= 1.02 * ROW_BYTES, slopes
    for name, values in kept.items():
        increments = [
            (values[i + 1] - values[i]) / (lengths[i + 1] - lengths[i])
            for i in range(len(lengths) - 1)
        ]
        # Linear: the cost of a step at the longest lengths is that at the shortest (not growing).
        assert 0 < increments[-1] <= 1.1 * increments[0], (name, increments)
        assert increments[-1] >= 0.9 * increments[0], (name, increments)


# One measurement in a fresh process: the growth of its peak resident memory over one step.
PEAK_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import torch
    from torch import nn
    import rnnkern

    def status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(field + " not in /proc/self/status")

    impl, mode, T, B, H, I = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
    torch.manual_seed(0)
    rnn = (nn.RNN if impl == "nn.RNN" else rnnkern.RNN)(I, H)
    if impl == "nn.RNN":
        torch.set_num_threads(1)  # see one_thread() in test_memory.py

    def step(T):
        x = torch.randn(T, B, I)
        h0 = torch.zeros(1, B, H, requires_grad=True)
        if mode == "train":
            out, h_n = rnn(x, h0)
            (out.sum() + h_n.sum()).backward()
        else:
            with torch.no_grad():
                out, h_n = rnn(x, h0)

    for _ in range(3):  # warm-up: libraries, thread pool, kernel tables
        step(256)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    base = status("VmRSS")
    step(T)
    print(json.dumps({"growth": status("VmHWM") - base}))
    """
)


def peak_growth(impl: str, mode: str, T: int) -> int:
    """Peak resident memory (bytes) one step adds, measured in a fresh subprocess."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, impl, mode, str(T), str(B), str(H), str(I)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])["growth"]


@pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc (VmHWM, clear_refs)")
def test_peak_memory_of_a_training_step_is_below_nn_rnns():
    """Everything forward+backward touches, backward's buffers included, at one length."""
    T = 4096
    io_bytes = T * ROW_BYTES
    ours = peak_growth("rnnkern", "train", T)
    theirs = peak_growth("nn.RNN", "train", T)
    print(f"peak growth of a training step at T={T}: rnnkern {ours}, nn.RNN {theirs} bytes")
    # rnnkern: output, its gradient, dZ and the input's gradient, about 3x input + output.
    assert ours <= 4 * io_bytes + 4 * MiB, (ours, io_bytes)
    assert ours <= theirs, (ours, theirs)


def test_inference_saves_nothing():
    theirs, ours = rnn_pair(input_size=I, hidden_size=H)
    x = torch.randn(512, B, I, requires_grad=True)
    h0 = torch.randn(1, B, H, requires_grad=True)
    saved = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(saved.append, lambda t: t):
        out, h_n = ours(x, h0)
        with one_thread():
            expected, expected_h_n = theirs(x, h0)
    assert saved == []
    assert out.grad_fn is None and h_n.grad_fn is None
    assert not out.requires_grad and not h_n.requires_grad
    assert_close(out, expected, TOL[torch.float32], "output")
    assert_close(h_n, expected_h_n, TOL[torch.float32], "h_n")


@pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc (VmHWM, clear_refs)")
def test_inference_memory_is_input_plus_output():
    T = 65536
    io_bytes = T * ROW_BYTES
    growth = peak_growth("rnnkern", "inference", T)
    print(f"peak growth of inference at T={T}: {growth} bytes, input + output {io_bytes}")
    assert growth <= 1.1 * io_bytes + 2 * MiB, (growth, io_bytes)


def test_100k_steps_forward_and_backward():
    """A long sequence at batch 1: no recursion, no per-step buffers, the same results."""
    T, hidden, inputs = 100_000, 16, 4
    theirs, ours = rnn_pair(input_size=inputs, hidden_size=hidden)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(T, 1, inputs, generator=gen, requires_grad=True)
    h0 = torch.randn(1, 1, hidden, generator=gen, requires_grad=True)
    d_out = torch.randn(T, 1, hidden, generator=gen)
    d_h_n = torch.randn(1, 1, hidden, generator=gen)

    nbytes, count, out, h_n = saved_bytes(ours, x, h0)
    assert count == 7
    assert nbytes <= T * (hidden + inputs) * 4 + 64 * 1024, nbytes  # output + input, + weights
    torch.autograd.backward([out, h_n], [d_out, d_h_n])

    with torch.no_grad(), one_thread():
        expected, expected_h_n = theirs(x, h0)
    assert_close(out, expected, TOL[torch.float32], "output")
    assert_close(out[-5:], expected[-5:], TOL[torch.float32], "last outputs")
    assert_close(h_n, expected_h_n, TOL[torch.float32], "h_n")

    # nn.RNN's backward over 100k steps takes ~15 s; the NumPy reference (float64, ~2 s) is exact.
    weights = [w.detach().double().numpy() for w in theirs._flat_weights]
    ref_out, ref_h_n, cache = reference.rnn_forward(
        x.detach().double().numpy(), h0.detach().double().numpy(), weights
    )
    ref = reference.rnn_backward(d_out.double().numpy(), d_h_n.double().numpy(), cache)

    def check(actual, expected, what, scale=1.0):
        expected = torch.from_numpy(expected).float()
        tol = {"atol": 1e-4 * scale, "rtol": 1e-3}
        assert_close(actual, expected, tol, what)

    check(out.detach(), ref_out, "output vs reference")
    check(h0.grad, ref["dh0"], "grad h0")
    check(x.grad, ref["dx"], "grad input")
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    for name, g in zip(names, ref["d_flat_weights"]):
        # Sums over 100k steps: float32 accumulation error grows with their size.
        check(getattr(ours, name).grad, g, name, scale=float(np.abs(g).max()))


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not LINUX_PROC, reason="needs Linux /proc/self/statm")
def test_thousands_of_calls_do_not_leak():
    torch.manual_seed(0)
    _, single = rnn_pair(input_size=8, hidden_size=32)  # one direction: the pipelined kernels
    _, stacked = rnn_pair(input_size=8, hidden_size=32, num_layers=2, bidirectional=True)
    x = torch.randn(128, 4, 8, requires_grad=True)  # 128 steps: enough for the pipelined kernels
    h_single = torch.randn(1, 4, 32, requires_grad=True)
    h_stacked = torch.randn(4, 4, 32, requires_grad=True)

    def call(i):
        if i % 4 == 0:
            module, h0, input = stacked, h_stacked, x[:32]
        else:
            module, h0, input = single, h_single, x
        out, h_n = module(input, h0)
        (out.sum() + h_n.sum()).backward()
        if i % 10 == 0:
            with torch.no_grad():
                module(input, h0)

    # Most calls on one thread (the same kernels and blocking: see elman_cpu.h's pipelined()), so
    # the test stays fast when other processes load the cores and OpenMP's threads wait on each
    # other; a fifth on every thread, so the helper-thread paths run concurrently too.
    def calls(first, count):
        with one_thread():
            for i in range(first, first + count * 4 // 5):
                call(i)
        for i in range(first + count * 4 // 5, first + count):
            call(i)

    calls(0, 300)  # warm-up: allocator arenas, thread pool
    gc.collect()
    before = resident_bytes()
    calls(300, 3000)
    gc.collect()
    growth = resident_bytes() - before
    print(f"resident memory growth over 3000 calls: {growth / MiB:.2f} MiB")
    assert growth < 4 * MiB, f"{growth / MiB:.1f} MiB"
