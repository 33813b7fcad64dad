"""rnnkern.RNN called from several Python threads at once, determinism, and recovery from errors.

The CPU kernels hand work to a helper thread of their own (a bidirectional layer's second direction,
or 32-step blocks around a single direction's recurrence: csrc/cpu/helper_thread.h, step_blocks.h),
so what Python threads calling one module at the same time do to them is worth checking:

* several threads calling the same module concurrently (forward; forward + torch.autograd.grad;
  backward() accumulating into the shared .grad) get exactly the results of serial calls, which
  match torch.nn.RNN with the same weights;
* the same inputs give bitwise-identical outputs and gradients from run to run, and with
  torch.set_num_threads(1) or (2), for the pipelined single-direction small-batch layers (batch
  <= 32, >= 128 steps), bidirectional layers and batch > 32 (the BLAS recurrence, its steps in
  blocks of columns), and for
  the cell at a batch where its weight gradients are BLAS sums over the batch;
* a call that raised (in the module's checks or in the C++ operator) in another thread leaves the
  module, and the kernels, working;
* a process exits cleanly right after calls whose helper task may still hold their tensors (the
  helper must never release a tensor Python knows: that takes the GIL, and at exit it aborted).

A thread that never finishes (a deadlocked hand-off) fails the test after a timeout.
"""

from __future__ import annotations

import copy
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import rnnkern
from tests.conftest import GRAD_TOL, TOL, assert_close, grads, rnn_pair

THREADS = 4
REPEATS = 5  # concurrent rounds per test, to give a race more chances to show
JOIN_TIMEOUT_S = 60.0

# name -> (RNN arguments, sequence length, batch, dtype)
CONFIGS: dict[str, tuple[dict, int, int, torch.dtype]] = {
    # one direction, batch <= 32, >= 128 steps: the projection / weight-gradient helper thread
    "pipelined": (dict(input_size=6, hidden_size=48, num_layers=2), 160, 3, torch.float32),
    "pipelined_f64": (dict(input_size=5, hidden_size=20), 130, 2, torch.float64),
    # the two directions on two threads
    "bidirectional": (
        dict(input_size=6, hidden_size=40, bidirectional=True, nonlinearity="relu"),
        40,
        5,
        torch.float32,
    ),
    # one direction, batch <= 32, 32-127 steps, blocks of at least 2^22 multiply-adds: pipelined
    # in four blocks of 12 steps
    "short_pipelined": (dict(input_size=256, hidden_size=128), 48, 16, torch.float32),
    # ... and a number of steps four does not divide: blocks of 10, 10, 10 and 7 steps
    "short_pipelined_odd": (dict(input_size=256, hidden_size=128), 37, 16, torch.float32),
    # one direction, batch <= 32, fewer than 32 steps: projection and dX in row blocks shared
    # with the helper (split_rows.h), three blocks each here
    "split_rows": (dict(input_size=256, hidden_size=128), 24, 16, torch.float32),
    # batch > 32: one GEMM per step (a single block of columns: the step is small)
    "large_batch": (dict(input_size=6, hidden_size=32, num_layers=2), 20, 40, torch.float32),
    # batch > 32, each step's GEMM in two blocks of 160 columns shared with the helper
    # (split_rows.h: split_columns), the projection and dX in four blocks of rows
    "column_blocks": (dict(input_size=256, hidden_size=320), 6, 48, torch.float32),
    # ... and two directions, one on each thread, each step one single-threaded GEMM
    "column_blocks_bidirectional": (
        dict(input_size=256, hidden_size=320, bidirectional=True),
        5,
        48,
        torch.float32,
    ),
    # batch 1, few steps, large weights: the forward on the long-sequence paths (its projection
    # in four row blocks shared with the helper, each step's units in two parts), the backward on
    # the cell kernel
    "short_batch_1_large_weights": (dict(input_size=1024, hidden_size=1024), 16, 1, torch.float32),
    # one direction, small batch, hidden >= 768: each step's units in two parts, the second on
    # the helper (csrc/cpu/shared_steps.h)
    "shared_steps": (dict(input_size=16, hidden_size=800), 24, 2, torch.float32),
    # batch > 32, two directions: each projects its own columns, on its own thread
    "bidirectional_large_batch": (
        dict(input_size=6, hidden_size=32, bidirectional=True),
        20,
        40,
        torch.float32,
    ),
}


def run_in_threads(fn: Callable, jobs: list[tuple], threads: int = THREADS) -> list:
    """fn(*job) for every job, on `threads` threads started together; results in job order.

    Re-raises the first exception of any thread, and fails if a thread does not finish in time.
    """
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(first: int) -> None:
        try:
            barrier.wait(timeout=JOIN_TIMEOUT_S)
            for i in range(first, len(jobs), threads):
                results[i] = fn(*jobs[i])
        except BaseException as error:  # noqa: B036  (handed to the main thread)
            errors.append(error)

    workers = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=JOIN_TIMEOUT_S)
    if any(w.is_alive() for w in workers):
        pytest.fail(f"a thread did not finish within {JOIN_TIMEOUT_S:.0f} s (deadlock?)")
    if errors:
        raise errors[0]
    return results


def make_inputs(name: str, count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    config, seq_len, batch, dtype = CONFIGS[name]
    directions = 2 if config.get("bidirectional") else 1
    layers = config.get("num_layers", 1)
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(seq_len, batch, config["input_size"], generator=gen, dtype=dtype),
            torch.randn(
                layers * directions, batch, config["hidden_size"], generator=gen, dtype=dtype
            ),
        )
        for _ in range(count)
    ]


def forward(module, x: torch.Tensor, h0: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(module(x, h0))


def forward_backward(module, x: torch.Tensor, h0: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    out, h_n = module(x, h0)
    return [out.detach(), h_n.detach(), *grads((out, h_n), [x, h0, *module.parameters()])]


def assert_bitwise(actual: list[torch.Tensor], expected: list[torch.Tensor], what: str) -> None:
    assert len(actual) == len(expected)
    for i, (a, b) in enumerate(zip(actual, expected)):
        assert torch.equal(a, b), f"{what}, result {i}: max diff {(a - b).abs().max().item():.3g}"


def assert_matches_nn_rnn(ours: list[torch.Tensor], theirs: list[torch.Tensor], dtype) -> None:
    assert_close(ours[0], theirs[0], TOL[dtype], "output vs nn.RNN")
    assert_close(ours[1], theirs[1], TOL[dtype], "h_n vs nn.RNN")
    for g_o, g_t in zip(ours[2:], theirs[2:]):
        assert_close(g_o, g_t, GRAD_TOL[dtype], "gradient vs nn.RNN")


# ---------------------------------------------------------------------------------------------
# (a) one module, several Python threads at once


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("step", [forward, forward_backward], ids=["forward", "forward_backward"])
def test_threads_match_serial_calls_and_nn_rnn(name: str, step: Callable) -> None:
    config, _, _, dtype = CONFIGS[name]
    theirs, ours = rnn_pair(dtype=dtype, **config)
    inputs = make_inputs(name, 2 * THREADS)
    serial = [step(ours, x, h0) for x, h0 in inputs]
    for i, (x, h0) in enumerate(inputs[:2]):  # the rest equal these bitwise, below
        assert_matches_nn_rnn(serial[i], step(theirs, x, h0), dtype)
    for attempt in range(REPEATS):
        concurrent = run_in_threads(lambda x, h0: step(ours, x, h0), inputs)
        for i, expected in enumerate(serial):
            assert_bitwise(
                concurrent[i], expected, f"round {attempt}, input {i}: concurrent vs serial"
            )
    # the inputs really differ, so a thread reading another's data would be caught
    assert not torch.allclose(concurrent[0][0], concurrent[1][0])


@pytest.mark.parametrize("name", ["pipelined", "bidirectional"])
def test_threads_accumulate_into_shared_grad(name: str) -> None:
    """backward() from several threads at once: .grad is the sum of every call's gradient."""
    config, _, _, dtype = CONFIGS[name]
    theirs, ours = rnn_pair(dtype=dtype, **config)
    inputs = make_inputs(name, 2 * THREADS, seed=1)

    def loss(module, x, h0):
        out, h_n = module(x, h0)
        return (out.sin() ** 2).sum() + (h_n * h0).sum()

    run_in_threads(lambda x, h0: loss(ours, x, h0).backward(), inputs)
    for x, h0 in inputs:
        loss(theirs, x, h0).backward()
    for (param_name, p_o), p_t in zip(ours.named_parameters(), theirs.parameters()):
        assert p_o.grad is not None and p_o.grad.abs().max() > 0, param_name
        # the order of the sums differs from run to run, so this is not bitwise
        assert_close(p_o.grad, p_t.grad, GRAD_TOL[dtype], f"accumulated grad of {param_name}")


# ---------------------------------------------------------------------------------------------
# (b) determinism: run to run, and on one thread or two


def packed_pipelined_call(module, seqs: list[torch.Tensor], h0: torch.Tensor):
    seqs = [s.clone().requires_grad_() for s in seqs]
    h0 = h0.clone().requires_grad_()
    out, h_n = module(pack_sequence(seqs, enforce_sorted=False), h0)
    return [
        out.data.detach(),
        h_n.detach(),
        *grads((out.data, h_n), [*seqs, h0, *module.parameters()]),
    ]


# Packed single-direction layers at small batch, pipelined: (config, sequence lengths). The short
# one has 45 steps (four blocks of 12) and sequences ending inside every block.
PACKED: dict[str, tuple[dict, tuple[int, ...]]] = {
    "pipelined_packed": (dict(input_size=4, hidden_size=33), (200, 131, 170, 140, 199)),
    "short_pipelined_packed": (
        dict(input_size=256, hidden_size=128),
        (45, 44, 40, 37, 36, 33, 30, 25, 24, 20, 13, 12, 11, 5, 2, 1),
    ),
    # batch > 32: steps of 60 down to 28 rows, in two blocks of columns, then one
    "column_blocks_packed": (
        dict(input_size=64, hidden_size=320),
        (6,) * 28 + (5,) * 12 + (3,) * 12 + (1,) * 8,
    ),
}


@pytest.mark.parametrize("name", [*CONFIGS, *PACKED])
def test_bitwise_deterministic_across_runs_and_thread_counts(name: str) -> None:
    if name in PACKED:
        (config, lengths), dtype = PACKED[name], torch.float32
        theirs, ours = rnn_pair(dtype=dtype, **config)
        gen = torch.Generator().manual_seed(3)
        seqs = [torch.randn(n, config["input_size"], generator=gen) for n in lengths]
        h0 = torch.randn(1, len(lengths), config["hidden_size"], generator=gen)
        call = lambda module: packed_pipelined_call(module, seqs, h0)  # noqa: E731
    else:
        config, _, _, dtype = CONFIGS[name]
        theirs, ours = rnn_pair(dtype=dtype, **config)
        ((x, h0),) = make_inputs(name, 1, seed=2)
        call = lambda module: forward_backward(module, x, h0)  # noqa: E731

    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 2, 1, 2):
            torch.set_num_threads(n)
            assert torch.get_num_threads() == n
            results.append((n, call(ours)))
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    first = results[0][1]
    for run, (n, other) in enumerate(results[1:], start=1):
        assert_bitwise(other, first, f"run {run} on {n} thread(s) vs run 0 on 1 thread")
    assert_matches_nn_rnn(first, call(theirs), dtype)


@pytest.mark.parametrize(
    "config, seq_len, batch",
    [
        (dict(input_size=6, hidden_size=48), 160, 2),  # pipelined: projection, weight gradients
        (dict(input_size=6, hidden_size=48, bidirectional=True), 40, 2),  # the second direction
        (dict(input_size=64, hidden_size=256), 64, 40),  # weight gradients as sums of blocks
        (dict(input_size=256, hidden_size=128), 48, 16),  # short, pipelined
        (dict(input_size=256, hidden_size=128), 24, 16),  # projection and dX in row blocks
        (dict(input_size=256, hidden_size=320), 4, 48),  # each step in blocks of columns
        (dict(input_size=16, hidden_size=800), 40, 1),  # each step's units in two parts
    ],
)
def test_two_threads_hand_work_to_the_helper_on_every_call(config, seq_len, batch) -> None:
    """With two threads each call offers work to the helper thread (with one, none), on a thread's
    later calls as on its first (a guard that makes the kernels' BLAS single-threaded once also
    hid torch's thread count from the offer). Whether the helper takes it depends on the load."""
    _, ours = rnn_pair(**config)
    x = torch.randn(seq_len, batch, config["input_size"], requires_grad=True)
    threads = torch.get_num_threads()
    offered = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for call in range(3):
                before = rnnkern._C.helper_offers()
                out, h_n = ours(x)
                (out.sum() + h_n.sum()).backward()
                offered[n, call] = rnnkern._C.helper_offers() - before
    finally:
        torch.set_num_threads(threads)
    assert all(offered[1, call] == 0 for call in range(3)), offered
    assert all(offered[2, call] >= 1 for call in range(3)), offered


@pytest.mark.parametrize("name", ["column_blocks", "column_blocks_bidirectional"])
def test_more_than_two_threads_at_large_batch_match_nn_rnn(name: str) -> None:
    """With more than two threads a call at batch > 32 runs its GEMMs on MKL's whole team (one
    GEMM per step, not blocks of columns): other roundings than on one thread or two, nn.RNN's
    results all the same."""
    config, _, _, dtype = CONFIGS[name]
    theirs, ours = rnn_pair(dtype=dtype, **config)
    ((x, h0),) = make_inputs(name, 1, seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        result = forward_backward(ours, x, h0)
    finally:
        torch.set_num_threads(threads)
    assert_matches_nn_rnn(result, forward_backward(theirs, x, h0), dtype)


@pytest.mark.parametrize("name", ["column_blocks", "split_rows", "shared_steps"])
def test_module_to_with_swap_after_calls_that_offered_work(name: str) -> None:
    """module.to() with swap_tensors after a training step whose GEMMs were shared with the helper:
    a finished helper task lives until the next offer, and one holding a view autograd made of a
    parameter (which keeps the parameter itself) made the swap fail."""
    config, seq_len, batch, dtype = CONFIGS[name]
    _, ours = rnn_pair(dtype=dtype, **config)
    x = torch.randn(seq_len, batch, config["input_size"], dtype=dtype)
    threads = torch.get_num_threads()
    previous = torch.__future__.get_swap_module_params_on_conversion()
    try:
        torch.set_num_threads(2)
        before = rnnkern._C.helper_offers()
        out, h_n = ours(x)
        (out.sum() + h_n.sum()).backward()
        assert rnnkern._C.helper_offers() > before
        del out, h_n
        torch.__future__.set_swap_module_params_on_conversion(True)
        ours.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
        torch.set_num_threads(threads)
    assert all(p.dtype == torch.float64 for p in ours.parameters())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86's MXCSR only")
def test_helper_runs_tasks_under_the_callers_denormal_flushing() -> None:
    """torch.set_flush_denormal sets the calling thread's floating-point control only (x86 MXCSR:
    flush-to-zero, bit 15, and denormals-are-zero, bit 6); the helper's blocks must flush as the
    caller's do, or a block would round differently on the helper."""
    flags = 0x8000 | 0x0040
    config, seq_len, batch, dtype = CONFIGS["column_blocks"]
    _, ours = rnn_pair(dtype=dtype, **config)
    ((x, h0),) = make_inputs("column_blocks", 1, seed=7)
    threads = torch.get_num_threads()
    seen = {}
    try:
        torch.set_num_threads(2)
        for flush in (True, False, True):
            if not torch.set_flush_denormal(flush):
                pytest.skip("this CPU cannot flush denormals")
            seen[flush] = []
            # until the helper has run one of this setting's tasks: on a machine busy with other
            # programs the helper (idle scheduling class) may wait long for a core
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                with torch.no_grad():
                    ours(x, h0)
                seen[flush].append(rnnkern._C.helper_float_control() & flags)
                if seen[flush][-1] == (flags if flush else 0):
                    break
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    assert seen[True][-1] == flags, seen
    assert seen[False][-1] == 0, seen


def test_bidirectional_single_row_calls_on_two_threads_match_nn_rnn() -> None:
    """A bidirectional layer over one row (a packed sequence of one step: a dense one goes to the
    cell operator) whose second direction the helper computes: its buffer of the reverse columns
    must be a copy. When it was the caller's own output, a call that took the direction over
    while the helper still ran got it activated twice (tanh(tanh(z))), in about 1 call in 750 on
    two threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    wrong = []
    try:
        for i in range(3000):
            gen = torch.Generator().manual_seed(i)
            theirs = torch.nn.RNN(1, 1 + i % 3, bidirectional=True, bias=False, dtype=torch.float64)
            ours = rnnkern.replace_rnns(copy.deepcopy(theirs))
            x = pack_sequence([torch.randn(1, 1, generator=gen, dtype=torch.float64) * 0.1])
            with torch.no_grad():
                out, expected = ours(x)[0].data, theirs(x)[0].data
            if not torch.allclose(out, expected, rtol=1e-12, atol=1e-14):
                wrong.append((i, out.flatten().tolist(), expected.flatten().tolist()))
    finally:
        torch.set_num_threads(threads)
    assert not wrong, f"{len(wrong)} of 3000 calls differ from nn.RNN, first: {wrong[:3]}"


def test_cell_gradients_bitwise_on_one_thread_or_two() -> None:
    """At a batch large enough for BLAS, the cell's weight gradients are sums over the batch, which
    a BLAS on two threads may split differently than on one; rnnkern's must not differ."""
    torch.manual_seed(0)
    theirs = torch.nn.RNNCell(32, 32)
    ours = rnnkern.RNNCell(32, 32)
    ours.load_state_dict(theirs.state_dict())
    x, h = torch.randn(4096, 32), torch.randn(4096, 32)

    def call(cell) -> list[torch.Tensor]:
        x_ = x.clone().requires_grad_()
        out = cell(x_, h)
        return [out.detach(), *grads((out,), [x_, *cell.parameters()])]

    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            results.append((n, call(ours)))
    finally:
        torch.set_num_threads(threads)
    for run, (n, other) in enumerate(results[1:], start=1):
        assert_bitwise(other, results[0][1], f"run {run} on {n} thread(s) vs run 0 on 1 thread")
    for a, b in zip(results[0][1], call(theirs)):
        assert_close(a, b, GRAD_TOL[torch.float32], "vs nn.RNNCell")


# ---------------------------------------------------------------------------------------------
# (c) errors in other threads


def test_module_works_after_errors_in_other_threads() -> None:
    config, _, _, dtype = CONFIGS["pipelined"]
    theirs, ours = rnn_pair(dtype=dtype, **config)
    inputs = make_inputs("pipelined", THREADS, seed=4)
    before = [forward_backward(ours, x, h0) for x, h0 in inputs]

    x, h0 = inputs[0]
    bad_weights = [p.detach() for p in ours.parameters()][:4]
    bad_weights[1] = torch.randn(48, 47)  # weight_hh of the wrong shape: the C++ operator throws

    def bad_module_call():
        ours(torch.randn(160, 3, 5), h0)  # wrong input size: the module's checks raise

    def bad_operator_call():
        rnnkern.elman_layer(x, h0[:1], bad_weights)

    def bad_backward_call():
        x_ = x.clone().requires_grad_()
        out, _ = ours(x_, h0)
        out.register_hook(lambda g: g[:, :1])  # a gradient of the wrong shape: autograd raises
        out.sum().backward()

    cases = [
        (bad_module_call, "input.size\\(-1\\) must be equal to input_size"),
        (bad_operator_call, "weight_hh must have shape"),
        (bad_backward_call, "hook"),
    ]
    for bad_call, message in cases:
        # the bad call on one thread while the other threads run good ones
        jobs = [(bad_call,)] + [
            (lambda x=x, h0=h0: forward_backward(ours, x, h0),) for x, h0 in inputs
        ]
        with pytest.raises(RuntimeError, match=message):
            run_in_threads(lambda job: job(), jobs)
        # every good call still gives the same results, on this thread and on others
        for (x_i, h0_i), expected in zip(inputs, before):
            assert_bitwise(forward_backward(ours, x_i, h0_i), expected, "after an error")
        again = run_in_threads(lambda x, h0: forward_backward(ours, x, h0), inputs)
        for result, expected in zip(again, before):
            assert_bitwise(result, expected, "after an error, from threads")
    assert_matches_nn_rnn(before[0], forward_backward(theirs, *inputs[0]), dtype)


# Each the process's first and last rnnkern call, its outputs dropped at once: the helper thread
# starts with it, so its task may still hold the call's tensors (whose Python objects outlive
# Python's own references) as the interpreter exits.
EXIT_RIGHT_AFTER = {
    "forward": "rnnkern.RNN(64, 64)(torch.randn(512, 1, 64))",
    "training step": "sum(t.sum() for t in rnnkern.RNN(64, 64)(torch.randn(512, 1, 64))).backward()",
    "bidirectional": "rnnkern.RNN(64, 64, bidirectional=True)(torch.randn(64, 1, 64))",
}


@pytest.mark.parametrize("call", EXIT_RIGHT_AFTER)
def test_process_exits_cleanly_right_after_helper_tasks(call: str) -> None:
    """The helper must never release a tensor Python knows (that takes the GIL: at exit, abort)."""
    script = f"import torch, rnnkern\ntorch.set_num_threads(2)\n{EXIT_RIGHT_AFTER[call]}\n"
    for _ in range(3):  # a race: the helper has to be late
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"exit code {result.returncode}: {result.stderr[-2000:]}"


@pytest.mark.skipif(
    platform.system() != "Linux", reason="the helper is in the idle scheduling class on Linux only"
)
def test_shared_steps_taken_back_on_a_busy_machine() -> None:
    """With both cores kept busy by other processes, the helper (in the idle scheduling class) gets
    no core, and the caller takes its part of a shared recurrence back (csrc/cpu/shared_steps.h):
    such calls give the bits of one thread, and the module keeps working."""
    name = "shared_steps"
    config, _, _, dtype = CONFIGS[name]
    theirs, ours = rnn_pair(dtype=dtype, **config)
    ((x, h0),) = make_inputs(name, 1, seed=7)
    threads = torch.get_num_threads()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        torch.set_num_threads(1)
        expected = forward(ours, x, h0)
        assert_matches_nn_rnn(expected, forward(theirs, x, h0), dtype)
        torch.set_num_threads(2)
        before = rnnkern._C.helper_parts_taken_back()
        deadline = time.monotonic() + 60
        while rnnkern._C.helper_parts_taken_back() == before:
            assert time.monotonic() < deadline, "no call took the helper's part back"
            assert_bitwise(forward(ours, x, h0), expected, "a busy machine, two threads")
    finally:
        for process in busy:
            process.kill()
            process.wait()
        torch.set_num_threads(threads)
    assert_bitwise(forward(ours, x, h0), expected, "after the load")


@pytest.mark.parametrize(
    "name",
    [
        "pipelined",
        "pipelined_f64",
        "short_pipelined_odd",
        "split_rows",
        "column_blocks",
        "shared_steps",
    ],
)
@pytest.mark.parametrize("mode", ["team", "thread"])
def test_second_thread_as_openmp_teammate_or_helper_thread_gives_the_same_bits(name, mode) -> None:
    """A pipelined call's second thread is torch's OpenMP worker (a team of two) when that worker
    is spinning on the second core anyway, else the helper thread (csrc/cpu/openmp_teammate.h).
    Either way every block computes the same bits as on one thread: here each is forced in turn,
    and a team's call must really have run as one."""
    config, _, _, dtype = CONFIGS[name]
    theirs, ours = rnn_pair(dtype=dtype, **config)
    ((x, h0),) = make_inputs(name, 1, seed=11)
    threads = torch.get_num_threads()
    previous = rnnkern._C.set_teammate_mode(mode)
    try:
        torch.set_num_threads(1)
        expected = forward_backward(ours, x, h0)
        torch.set_num_threads(2)
        for call in range(3):
            teams = rnnkern._C.team_calls()
            result = forward_backward(ours, x, h0)
            ran_as_team = rnnkern._C.team_calls() - teams
            assert_bitwise(result, expected, f"call {call}, second thread {mode}, vs one thread")
            assert (ran_as_team > 0) == (mode == "team"), ran_as_team
    finally:
        rnnkern._C.set_teammate_mode(previous)
        torch.set_num_threads(threads)
    assert_matches_nn_rnn(expected, forward_backward(theirs, x, h0), dtype)


def test_teammate_mode_names_are_checked() -> None:
    with pytest.raises(ValueError, match="'auto', 'team' or 'thread', got 'omp'"):
        rnnkern._C.set_teammate_mode("omp")
    assert rnnkern._C.set_teammate_mode("auto") == "auto"


# A parent that forks after its own calls ran as teams ("team"), or after torch's parallel
# operations only, before any call of rnnkern's on two threads ("torch").
FORK_AFTER_TEAMS = """
import os, signal, sys, torch, rnnkern
torch.set_num_threads(2)
torch.manual_seed(0)
model = rnnkern.RNN(24, 32)
x = torch.randn(160, 2, 24)
if sys.argv[1] == "team":
    rnnkern._C.set_teammate_mode("team")
    with torch.no_grad():
        expected = model(x)[0]
    assert rnnkern._C.team_calls() > 0
else:
    torch.set_num_threads(1)
    with torch.no_grad():
        expected = model(x)[0]
    torch.set_num_threads(2)
    a = torch.randn(512, 512)
    torch.mm(a, a)  # torch's OpenMP team: the parent's pool threads
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a child that hangs ends, and says so by its exit status
    with torch.no_grad():
        ok = torch.equal(model(x)[0], expected)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.parametrize("parent", ["team", "torch"])
def test_forked_child_of_a_process_that_ran_teams_computes(parent: str) -> None:
    """GNU OpenMP cannot start a team in the child of a fork() once the parent had one (the team
    waits forever for the parent's pool threads): a child's calls must use the helper thread,
    whether the parent's own calls ran as OpenMP teams or only torch's operations did, and give
    the parent's bits."""
    result = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_TEAMS, parent],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "child exit 0" in result.stdout, result.stdout + result.stderr


def test_teams_give_way_to_the_helper_thread_on_a_busy_machine() -> None:
    """With both cores kept busy by other processes, a team's closing barrier waits for a worker
    the machine does not schedule: after such a call, calls must go to the helper thread (which
    nobody waits for) for a while, and give the bits of one thread all along."""
    name = "pipelined"
    config, _, _, dtype = CONFIGS[name]
    _, ours = rnn_pair(dtype=dtype, **config)
    ((x, h0),) = make_inputs(name, 1, seed=13)
    threads = torch.get_num_threads()
    previous = rnnkern._C.set_teammate_mode("auto")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        torch.set_num_threads(1)
        expected = forward(ours, x, h0)
        torch.set_num_threads(2)
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "every call on the busy machine ran as a team"
            teams, offers = rnnkern._C.team_calls(), rnnkern._C.helper_offers()
            assert_bitwise(forward(ours, x, h0), expected, "a busy machine, two threads")
            if rnnkern._C.helper_offers() > offers and rnnkern._C.team_calls() == teams:
                break  # offered to the helper thread, not run as a team
    finally:
        for process in busy:
            process.kill()
            process.wait()
        rnnkern._C.set_teammate_mode(previous)
        torch.set_num_threads(threads)
