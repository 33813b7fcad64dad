"""Stacked layers two at a time as a wavefront on two cores (csrc/cpu/stacked_forward_cpu.cpp).

In inference on the CPU, rnnkern.RNN's direct call runs two stacked one-direction layers at once:
the caller computes the lower layer block by block while torch's OpenMP worker computes the upper
layer one block behind it. It must give exactly the bits of one layer operator call per layer
(the same blocks, the same kernels), whoever computed each block, including when the caller takes
over a block the worker had started (it then returns a fresh output). Checked here against that
path itself (rnnkern._C.set_stacked_pairs(False)) and against nn.RNN, and that it runs where it
should and nowhere else: never where an autograd graph is wanted, dropout comes between the
layers, a dispatch mode watches the operators, or the shape or the second thread does not suit it.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import rnnkern
from tests.conftest import TOL, OperatorNames, assert_close, rnn_pair

_C = rnnkern._C


@contextlib.contextmanager
def pairs(enabled: bool, never_wait: bool = False, threads: int = 2, mode: str = "team"):
    """rnnkern's pairs of stacked layers allowed or not, on `threads` threads, with the second
    thread forced to torch's OpenMP worker ("team") or the helper thread ("thread")."""
    saved_threads = torch.get_num_threads()
    saved_mode = _C.set_teammate_mode(mode)
    saved = _C.set_stacked_pairs(enabled, never_wait)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        _C.set_stacked_pairs(saved)
        _C.set_teammate_mode(saved_mode)
        torch.set_num_threads(saved_threads)


def pair_calls() -> int:
    return _C.stacked_pair_counts()[0]


def infer(module, x, hx=None):
    with torch.no_grad():
        return module(x, hx)


def assert_bitwise(actual, expected, what: str) -> None:
    for name, a, b in zip(("output", "h_n"), actual, expected, strict=True):
        assert a.shape == b.shape, f"{what}: {name} shape"
        assert torch.equal(a, b), f"{what}: {name} differs by {(a - b).abs().max().item():.3g}"


# (module arguments, steps, batch, dtype, pairs a call runs)
SHAPES = {
    "batch 1, hidden 64, 2 layers": (dict(input_size=7, hidden_size=64, num_layers=2), 160, 1, 1),
    "batch 1, hidden 256, 3 layers, relu": (
        dict(input_size=256, hidden_size=256, num_layers=3, nonlinearity="relu"),
        130,
        1,
        1,
    ),
    "batch 3, hidden 48, 4 layers, no bias, float64": (
        dict(input_size=5, hidden_size=48, num_layers=4, bias=False, dtype=torch.float64),
        200,
        3,
        2,
    ),
    "batch 2, hidden 128, 2 layers, 150 steps": (
        dict(input_size=256, hidden_size=128, num_layers=2),
        150,
        2,
        1,
    ),
    "batch 4, hidden 64, 5 layers, batch first": (
        dict(input_size=3, hidden_size=64, num_layers=5, batch_first=True),
        131,
        4,
        2,
    ),
}


def make_case(name: str, seed: int = 0):
    config, steps, batch, _ = SHAPES[name]
    config = dict(config)
    dtype = config.pop("dtype", torch.float32)
    theirs, ours = rnn_pair(dtype=dtype, seed=seed, **config)
    ours.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    shape = (batch, steps) if config.get("batch_first") else (steps, batch)
    x = torch.randn(*shape, config["input_size"], generator=gen, dtype=dtype)
    layers = config["num_layers"]
    hx = torch.randn(layers, batch, config["hidden_size"], generator=gen, dtype=dtype)
    return theirs, ours, x, hx, dtype


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("hx_given", [True, False], ids=["hx", "no hx"])
def test_pairs_give_the_bits_of_one_layer_at_a_time(name: str, hx_given: bool) -> None:
    theirs, ours, x, hx, dtype = make_case(name)
    hx = hx if hx_given else None
    with pairs(False):
        expected = infer(ours, x, hx)
    per_call = SHAPES[name][3]
    with pairs(True):
        for call in range(3):
            before = pair_calls()
            actual = infer(ours, x, hx)
            assert pair_calls() - before == per_call, "the pairs did not run"
            assert_bitwise(actual, expected, f"call {call}")
    for name_, a, b in zip(("output", "h_n"), actual, theirs(x, hx), strict=True):
        assert_close(a, b, TOL[dtype], name_)


def test_unbatched_input_runs_in_pairs_too() -> None:
    theirs, ours, x, hx, dtype = make_case("batch 1, hidden 64, 2 layers")
    x, hx = x[:, 0], hx[:, 0]
    with pairs(False):
        expected = infer(ours, x, hx)
    with pairs(True):
        before = pair_calls()
        actual = infer(ours, x, hx)
        assert pair_calls() - before == 1
    assert_bitwise(actual, expected, "unbatched")
    assert_close(actual[0], theirs(x, hx)[0], TOL[dtype], "output")


@pytest.mark.parametrize("name", list(SHAPES))
def test_caller_taking_over_the_workers_block_gives_the_same_bits(name: str) -> None:
    """never_wait: the caller takes over the upper layer's first block the worker has not
    finished, usually one it has started and may still be writing, so that the call returns a
    fresh output with the worker's finished blocks copied into it. Some call must do so."""
    _, ours, x, hx, _ = make_case(name, seed=3)
    with pairs(False):
        expected = infer(ours, x, hx)
    with pairs(True, never_wait=True):
        _, taken_before, replaced_before = _C.stacked_pair_counts()
        for call in range(40):
            assert_bitwise(infer(ours, x, hx), expected, f"call {call}, taken over")
        _, taken, replaced = _C.stacked_pair_counts()
    assert taken > taken_before, "the caller never took a block over"
    assert replaced > replaced_before, "no call took over a block the worker had started"
    with pairs(True):
        assert_bitwise(infer(ours, x, hx), expected, "after the take-overs")


@pytest.mark.parametrize("threads, mode", [(1, "team"), (2, "thread")], ids=["1 thread", "thread"])
def test_without_a_team_of_two_layers_run_one_at_a_time(threads: int, mode: str) -> None:
    """With one thread, or the helper thread as the second (on which the upper layer ran 1.3x-1.5x
    slower than the caller's lower one), the layers run one at a time: the same bits."""
    _, ours, x, hx, _ = make_case("batch 1, hidden 64, 2 layers")
    with pairs(False):
        expected = infer(ours, x, hx)
    with pairs(True, threads=threads, mode=mode):
        before = pair_calls()
        actual = infer(ours, x, hx)
        assert pair_calls() == before
    assert_bitwise(actual, expected, f"{threads} threads, {mode}")


class Seen(torch.Tensor):
    """A tensor subclass that sees the operators called on it (the Python dispatch key) but not
    their Python calls (no __torch_function__): a call on it reaches rnnkern's C++."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    names: list[str] = []

    @staticmethod
    def __new__(cls, t):
        return torch.Tensor._make_subclass(cls, t)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if str(func).startswith("rnnkern."):
            cls.names.append(str(func))
        python_key = torch._C.DispatchKeySet(torch._C.DispatchKey.Python)
        with torch._C._ExcludeDispatchKeyGuard(python_key):
            return func(*args, **(kwargs or {}))


def declines(case: str):
    """(module, x, how to call it) for each case where the pairs must not run."""
    _, ours, x, hx, _ = make_case("batch 1, hidden 64, 2 layers")
    if case == "autograd":
        return ours, x, lambda: ours(x, hx)  # the parameters require grad
    if case == "input requires grad":
        ours.requires_grad_(False)
        x = x.requires_grad_()
        return ours, x, lambda: ours(x, hx)
    if case == "dropout, training":
        ours.dropout = 0.3
        ours.train()
    if case == "bidirectional":
        _, ours = rnn_pair(input_size=7, hidden_size=64, num_layers=2, bidirectional=True)
        hx = torch.randn(4, 1, 64)
    if case == "batch 4, hidden 128":  # a step of more than 256 units
        _, ours = rnn_pair(input_size=7, hidden_size=128, num_layers=2)
        x, hx = torch.randn(160, 4, 7), torch.randn(2, 4, 128)
    if case == "16 steps":
        x = x[:16]
    if case == "a subclass with __torch_dispatch__":
        x = Seen(x)
    if case == "a lazily negated input":  # its data holds -x: the dispatcher negates it first
        x = torch._neg_view(-x)
    return ours, x, lambda: infer(ours, x, hx)


DECLINES = [
    "autograd",
    "input requires grad",
    "dropout, training",
    "bidirectional",
    "batch 4, hidden 128",
    "16 steps",
    "a subclass with __torch_dispatch__",
    "a lazily negated input",
]


@pytest.mark.parametrize("case", DECLINES)
def test_pairs_run_only_where_they_should(case: str) -> None:
    ours, x, call = declines(case)
    with pairs(True):
        before = pair_calls()
        torch.manual_seed(0)
        output, _ = call()
        assert pair_calls() == before, f"{case}: the pairs ran"
    with pairs(False):
        torch.manual_seed(0)
        assert torch.equal(call()[0], output)


def test_a_subclass_sees_the_operators_of_one_layer_at_a_time() -> None:
    ours, x, call = declines("a subclass with __torch_dispatch__")
    seen = {}
    for enabled in (False, True):
        Seen.names = []
        with pairs(enabled):
            call()
        seen[enabled] = Seen.names
    assert seen[True] == seen[False] == ["rnnkern.elman_layer.default"]  # the first layer's input


def test_functional_tensors_run_one_layer_at_a_time() -> None:
    """C++ functionalization (what torch.compile's tracing uses): the input is a functional wrapper
    whose data lives elsewhere, which the dispatcher unwraps first."""
    _, ours, x, hx, _ = make_case("batch 1, hidden 64, 2 layers")
    with pairs(False):
        expected = infer(ours, x, hx)
    with pairs(True), torch.no_grad():
        before = pair_calls()
        wrapped = torch._to_functional_tensor(x)
        torch._enable_functionalization(reapply_views=True)
        try:
            output, _ = ours(wrapped, hx)
        finally:
            torch._disable_functionalization()
        assert pair_calls() == before
        torch._sync(output)
        output = torch._from_functional_tensor(output)
    assert torch.equal(output, expected[0])


def test_inference_mode_tensors_run_in_pairs() -> None:
    theirs, ours, x, hx, dtype = make_case("batch 1, hidden 64, 2 layers")
    with pairs(False):
        expected = infer(ours, x, hx)
    with pairs(True), torch.inference_mode():
        x, hx = x.clone(), hx.clone()  # inference tensors: fewer dispatch keys
        before = pair_calls()
        actual = ours(x, hx)
        assert pair_calls() - before == 1
    assert_bitwise(actual, expected, "inference mode")


def test_a_dispatch_mode_sees_the_layer_operator_per_layer() -> None:
    _, ours, x, hx, _ = make_case("batch 1, hidden 64, 2 layers")
    with pairs(True):
        before = pair_calls()
        with OperatorNames() as mode:
            output, _ = infer(ours, x, hx)
        assert pair_calls() == before
    assert mode.names == ["rnnkern.elman_layer.default"] * 2
    with pairs(True):
        assert torch.equal(infer(ours, x, hx)[0], output)
