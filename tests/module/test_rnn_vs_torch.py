"""rnnkern.RNN against torch.nn.RNN with the same weights: outputs, h_n and every gradient."""

from __future__ import annotations

import random

import pytest
import torch

import rnnkern
from tests.conftest import GRAD_TOL, RNN_ARGS, TOL, assert_close, grads, rnn_pair


def random_configs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        configs.append(
            dict(
                input_size=rng.choice([1, 3, 8, 17]),
                hidden_size=rng.choice([1, 5, 8, 16, 33, 64, 100]),
                num_layers=rng.choice([1, 2, 3]),
                nonlinearity=rng.choice(["tanh", "relu"]),
                bias=rng.choice([True, False]),
                batch_first=rng.choice([True, False]),
                bidirectional=rng.choice([True, False]),
                seq_len=rng.choice([1, 2, 7, 30]),
                batch=rng.choice([1, 2, 3, 5, 16, 17, 40]),
                dtype=rng.choice([torch.float32, torch.float64]),
                with_h0=rng.choice([True, False]),
            )
        )
    return configs


def split(config: dict):
    module_args = {k: config[k] for k in RNN_ARGS}
    return module_args, config["seq_len"], config["batch"], config["dtype"], config["with_h0"]


CONFIGS = random_configs(48, seed=2)


@pytest.mark.parametrize(
    "config",
    CONFIGS,
    ids=lambda c: (
        "-".join(f"{k[:3]}{v}" for k, v in c.items() if k != "dtype") + f"-{str(c['dtype'])[6:]}"
    ),
)
def test_matches_nn_rnn(config):
    module_args, seq_len, batch, dtype, with_h0 = split(config)
    theirs, ours = rnn_pair(dtype=dtype, **module_args)
    directions = 2 if module_args["bidirectional"] else 1
    shape = (batch, seq_len) if module_args["batch_first"] else (seq_len, batch)
    x = torch.randn(*shape, module_args["input_size"], dtype=dtype, requires_grad=True)
    h0 = torch.randn(
        module_args["num_layers"] * directions,
        batch,
        module_args["hidden_size"],
        dtype=dtype,
        requires_grad=True,
    )
    args = (x, h0) if with_h0 else (x,)

    out_t, hn_t = theirs(*args)
    out_o, hn_o = ours(*args)
    assert out_o.shape == out_t.shape and hn_o.shape == hn_t.shape
    assert_close(out_o, out_t, TOL[dtype], "output")
    assert_close(hn_o, hn_t, TOL[dtype], "h_n")

    inputs_t = [x, h0, *theirs.parameters()] if with_h0 else [x, *theirs.parameters()]
    inputs_o = [x, h0, *ours.parameters()] if with_h0 else [x, *ours.parameters()]
    for name, g_o, g_t in zip(
        ["x", "h0", "params"], grads((out_o, hn_o), inputs_o), grads((out_t, hn_t), inputs_t)
    ):
        assert_close(g_o, g_t, GRAD_TOL[dtype], f"grad {name}")


@pytest.mark.parametrize("batch", [1, 4, 17, 31, 32, 33, 64])
@pytest.mark.parametrize("hidden", [7, 64, 130])
def test_batch_thresholds(batch, hidden):
    """Both recurrence paths (register-blocked small batch, BLAS large batch) and their boundary."""
    theirs, ours = rnn_pair(input_size=5, hidden_size=hidden, bidirectional=True)
    x = torch.randn(9, batch, 5, requires_grad=True)
    out_t, hn_t = theirs(x)
    out_o, hn_o = ours(x)
    assert_close(out_o, out_t, TOL[torch.float32], "output")
    assert_close(hn_o, hn_t, TOL[torch.float32], "h_n")
    for g_o, g_t in zip(
        grads((out_o, hn_o), [x, *ours.parameters()]),
        grads((out_t, hn_t), [x, *theirs.parameters()]),
    ):
        assert_close(g_o, g_t, GRAD_TOL[torch.float32], "grad")


def test_long_sequence_float32():
    theirs, ours = rnn_pair(input_size=4, hidden_size=32)
    x = torch.randn(2000, 2, 4)
    assert_close(ours(x)[0], theirs(x)[0], {"atol": 1e-4, "rtol": 1e-4}, "output")


def test_only_h_n_used_and_only_output_used():
    """Autograd materialises the unused output's gradient; both halves must still be right."""
    theirs, ours = rnn_pair(input_size=3, hidden_size=8, num_layers=2)
    x = torch.randn(6, 2, 3, requires_grad=True)
    for pick in (0, 1):
        g_o = torch.autograd.grad(ours(x)[pick].sum(), [x, *ours.parameters()])
        g_t = torch.autograd.grad(theirs(x)[pick].sum(), [x, *theirs.parameters()])
        for a, b in zip(g_o, g_t):
            assert_close(a, b, GRAD_TOL[torch.float32], f"grad via output {pick}")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("trainable", ["weights", "biases", "hx", "one matrix"])
def test_gradients_when_only_some_tensors_need_them(bidirectional, trainable):
    """What autograd asks of the fused backward decides what it computes (and, for a first layer,
    which weights it copies): each subset must get nn.RNN's gradients."""
    theirs, ours = rnn_pair(
        dtype=torch.float64, input_size=3, hidden_size=5, num_layers=2, bidirectional=bidirectional
    )
    x = torch.randn(6, 4, 3, dtype=torch.float64)  # no gradient wanted for the input
    h0 = torch.randn(4 if bidirectional else 2, 4, 5, dtype=torch.float64)
    results = []
    for module in (ours, theirs):
        params = dict(module.named_parameters())
        wanted = {
            "weights": [p for n, p in params.items() if n.startswith("weight")],
            "biases": [p for n, p in params.items() if n.startswith("bias")],
            "hx": [h0.clone().requires_grad_()],
            "one matrix": [params["weight_hh_l0"]],
        }[trainable]
        for p in module.parameters():
            p.requires_grad_(any(p is w for w in wanted))
        out, h_n = module(x, wanted[0] if trainable == "hx" else h0)
        results.append(torch.autograd.grad(out.pow(2).sum() + h_n.sum(), wanted))
    for a, b in zip(*results, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float64], f"gradient with only {trainable} trainable")


def test_dropout_matches_nn_rnn_masks():
    """Same seed, same dropout masks: dropout is applied where and how nn.RNN applies it."""
    theirs, ours = rnn_pair(input_size=4, hidden_size=16, num_layers=3, dropout=0.5)
    x = torch.randn(7, 3, 4)
    torch.manual_seed(5)
    out_t, hn_t = theirs(x)
    torch.manual_seed(5)
    out_o, hn_o = ours(x)
    assert_close(out_o, out_t, TOL[torch.float32], "output with dropout")
    assert_close(hn_o, hn_t, TOL[torch.float32], "h_n with dropout")
    # and dropout is really on: a different seed changes the result
    torch.manual_seed(6)
    assert not torch.allclose(ours(x)[0], out_o)
    # and off in eval mode
    ours.eval()
    theirs.eval()
    assert_close(ours(x)[0], theirs(x)[0], TOL[torch.float32], "eval output")


def test_saturating_and_growing_inputs():
    for nonlinearity, scale in (("tanh", 30.0), ("relu", 3.0)):
        theirs, ours = rnn_pair(input_size=6, hidden_size=24, nonlinearity=nonlinearity)
        x = scale * torch.randn(20, 3, 6, dtype=torch.float32)
        out_t, _ = theirs(x)
        out_o, _ = ours(x)
        torch.testing.assert_close(out_o, out_t, rtol=1e-4, atol=1e-4)


# (input, hidden): blocks of 32 steps small enough for the register kernel at every batch here, and
# large enough at batch 16 (over 2^21 multiply-adds) for ATen's GEMMs (elman_cpu.h:
# blocks_on_kernel).
@pytest.mark.parametrize("sizes", [(5, 40), (64, 64)])
@pytest.mark.parametrize("batch", [1, 3, 16])
@pytest.mark.parametrize("packed", [False, True])
def test_pipelined_long_sequences(batch, packed, sizes):
    """Long single-direction sequences at small batch: the GEMMs run on a helper thread."""
    from torch.nn.utils.rnn import pack_sequence

    input_size, hidden = sizes
    theirs, ours = rnn_pair(input_size=input_size, hidden_size=hidden, nonlinearity="tanh")
    lengths = [300 - 17 * b for b in range(batch)] if packed else [300] * batch
    seqs = [torch.randn(n, input_size, requires_grad=True) for n in lengths]
    h0 = torch.randn(1, batch, hidden, requires_grad=True)
    results = []
    for module in (theirs, ours):
        x = pack_sequence(seqs) if packed else torch.stack(seqs, 1)
        out, h_n = module(x, h0)
        out = out.data if packed else out
        results.append((out, h_n, grads((out, h_n), [*seqs, h0, *module.parameters()])))
    (out_t, hn_t, g_t), (out_o, hn_o, g_o) = results
    assert_close(out_o, out_t, {"atol": 1e-4, "rtol": 1e-4}, "output")
    assert_close(hn_o, hn_t, {"atol": 1e-4, "rtol": 1e-4}, "h_n")
    for a, b in zip(g_o, g_t):
        assert_close(a, b, {"atol": 1e-3, "rtol": 1e-3}, "grad")


@pytest.mark.parametrize(
    "config, batch",
    [
        (dict(input_size=6, hidden_size=48), 2),  # pipelined with the helper thread
        (dict(input_size=6, hidden_size=48, bidirectional=True), 2),  # directions on two threads
        (dict(input_size=6, hidden_size=48, num_layers=2), 40),  # BLAS steps
    ],
)
def test_bitwise_identical_on_one_thread_or_two(config, batch):
    _, ours = rnn_pair(**config)
    x = torch.randn(260, batch, 6, requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            out, h_n = ours(x)
            results.append([out, h_n, *grads((out, h_n), [x, *ours.parameters()])])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


# Hidden sizes just under, at and over every register-block width (C vectors x W lanes) of the
# kernels: AVX-512 float32 128/112/96, AVX2 float32 64/48/32/24, AVX2 float64 32/24/16/12; with
# batches leaving every row remainder (1-3 rows after the blocks of 4).
BLOCK_EDGE_HIDDEN = [7, 12, 23, 24, 29, 31, 47, 57, 63, 95, 111, 113, 120, 127, 129]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hidden", BLOCK_EDGE_HIDDEN)
def test_every_column_block_shape(dtype, hidden):
    theirs, ours = rnn_pair(dtype=dtype, input_size=4, hidden_size=hidden)
    for batch in (1, 2, 3, 5, 6, 7):
        x = torch.randn(5, batch, 4, dtype=dtype, requires_grad=True)
        out_o, hn_o = ours(x)
        out_t, hn_t = theirs(x)
        assert_close(out_o, out_t, TOL[dtype], f"output, batch {batch}")
        assert_close(hn_o, hn_t, TOL[dtype], f"h_n, batch {batch}")
        for a, b in zip(
            grads((out_o, hn_o), [x, *ours.parameters()]),
            grads((out_t, hn_t), [x, *theirs.parameters()]),
        ):
            assert_close(a, b, GRAD_TOL[dtype], f"grad, batch {batch}")


@pytest.mark.parametrize(
    "dtype, hidden",
    [(torch.float64, 300), (torch.float64, 800), (torch.float32, 600), (torch.float32, 1100)],
)
def test_large_hidden_in_tiles(dtype, hidden):
    """Register batch with W_hh rows too long for one pass: the kernel sums over tiles of k; from
    hidden 768 each step's units in two parts, one on the helper thread (shared_steps.h)."""
    theirs, ours = rnn_pair(dtype=dtype, input_size=3, hidden_size=hidden)
    steps = rnnkern._C.cpu_cell_kernel_bound()[0] + 1  # past a short layer's cell kernel
    for batch in (1, 3, 5):
        x = torch.randn(steps, batch, 3, dtype=dtype, requires_grad=True)
        h0 = torch.randn(1, batch, hidden, dtype=dtype, requires_grad=True)
        out_o, hn_o = ours(x, h0)
        out_t, hn_t = theirs(x, h0)
        assert_close(out_o, out_t, TOL[dtype], f"output, batch {batch}")
        assert_close(hn_o, hn_t, TOL[dtype], f"h_n, batch {batch}")
        for a, b in zip(
            grads((out_o, hn_o), [x, h0, *ours.parameters()]),
            grads((out_t, hn_t), [x, h0, *theirs.parameters()]),
        ):
            assert_close(a, b, GRAD_TOL[dtype], f"grad, batch {batch}")
