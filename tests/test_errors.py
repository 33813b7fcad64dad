"""Bad input gets a clear Python exception, as nn.RNN's or clearer, and the module keeps working."""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, assert_close, rnn_pair
from torch.nn.utils.rnn import pack_sequence

import rnnkern

BAD_RNN_CALLS = [
    # (name, input, hx, exception type, message pattern)
    (
        "wrong feature size",
        torch.randn(5, 2, 4),
        None,
        RuntimeError,
        "input_size. Expected 3, got 4",
    ),
    (
        "wrong h0 batch",
        torch.randn(5, 2, 3),
        torch.randn(2, 3, 8),
        RuntimeError,
        r"Expected hidden size \(2, 2, 8\), got \[2, 3, 8\]",
    ),
    (
        "wrong h0 layers",
        torch.randn(5, 2, 3),
        torch.randn(1, 2, 8),
        RuntimeError,
        r"Expected hidden size \(2, 2, 8\)",
    ),
    (
        "wrong h0 rank",
        torch.randn(5, 2, 3),
        torch.randn(2, 8),
        RuntimeError,
        "hx should also be 3-D",
    ),
    (
        "unbatched with 3-D h0",
        torch.randn(5, 3),
        torch.randn(2, 1, 8),
        RuntimeError,
        "hx should also be 2-D",
    ),
    ("4-D input", torch.randn(5, 2, 3, 1), None, ValueError, "2-D .* or 3-D .* got a 4-D"),
    ("1-D input", torch.randn(5), None, ValueError, "got a 1-D"),
    (
        "float64 input, float32 module",
        torch.randn(5, 2, 3, dtype=torch.float64),
        None,
        ValueError,
        "dtype",
    ),
    ("integer input", torch.randint(0, 5, (5, 2, 3)), None, ValueError, "dtype"),
    (
        "h0 dtype",
        torch.randn(5, 2, 3),
        torch.randn(2, 2, 8, dtype=torch.float64),
        RuntimeError,
        "hx has dtype torch.float64 but input has torch.float32",
    ),
]


@pytest.mark.parametrize(
    "name, x, hx, error, pattern", BAD_RNN_CALLS, ids=[c[0] for c in BAD_RNN_CALLS]
)
def test_bad_rnn_input_raises_clear_error(name, x, hx, error, pattern):
    theirs, ours = rnn_pair(input_size=3, hidden_size=8, num_layers=2)
    with pytest.raises(error, match=pattern):
        ours(x, hx)
    with pytest.raises((RuntimeError, ValueError)):  # nn.RNN rejects it too
        theirs(x, hx)
    good = torch.randn(5, 2, 3)
    assert_close(ours(good)[0], theirs(good)[0], TOL[torch.float32], f"after {name}")


def test_packed_h0_of_wrong_batch():
    _, ours = rnn_pair(input_size=2, hidden_size=4)
    packed = pack_sequence([torch.randn(3, 2), torch.randn(2, 2)])
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 2, 4\)"):
        ours(packed, torch.randn(1, 3, 4))


BAD_CELL_CALLS = [
    (
        "wrong feature size",
        torch.randn(2, 5),
        None,
        RuntimeError,
        "input has 5 features, expected input_size=3",
    ),
    (
        "wrong hx",
        torch.randn(2, 3),
        torch.randn(3, 4),
        RuntimeError,
        r"hx must have shape \[2, 4\]",
    ),
    ("3-D input", torch.randn(2, 3, 1), None, ValueError, "got a 3-D"),
    ("3-D hx", torch.randn(2, 3), torch.randn(1, 2, 4), ValueError, "hx to be 1-D"),
    ("dtype", torch.randn(2, 3, dtype=torch.float64), None, ValueError, "dtype"),
]


@pytest.mark.parametrize(
    "name, x, hx, error, pattern", BAD_CELL_CALLS, ids=[c[0] for c in BAD_CELL_CALLS]
)
def test_bad_cell_input_raises_clear_error(name, x, hx, error, pattern):
    cell = rnnkern.RNNCell(3, 4)
    with pytest.raises(error, match=pattern):
        cell(x, hx)
    assert cell(torch.randn(2, 3)).shape == (2, 4)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch", [1, 40])
def test_nan_in_gives_nan_where_nn_rnn_does(nonlinearity, batch):
    theirs, ours = rnn_pair(input_size=3, hidden_size=9, nonlinearity=nonlinearity)
    x = torch.randn(6, batch, 3)
    x[2, 0, 1] = float("nan")
    x[4, batch - 1, 0] = float("inf")
    out_t, hn_t = theirs(x)
    out_o, hn_o = ours(x)
    assert torch.equal(torch.isnan(out_o), torch.isnan(out_t))
    assert torch.equal(torch.isnan(hn_o), torch.isnan(hn_t))
    assert torch.isnan(out_o).any()
    finite = ~torch.isnan(out_t)
    assert_close(out_o[finite], out_t[finite], TOL[torch.float32], "finite part")


def test_empty_sequence_raises_like_nn_rnn():
    theirs, ours = rnn_pair(input_size=3, hidden_size=5)
    x = torch.randn(0, 2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="sequence length"):
        theirs(x)
    with pytest.raises(RuntimeError, match="sequence length must be at least 1"):
        ours(x)
    good = torch.randn(4, 2, 3)
    assert_close(ours(good)[0], theirs(good)[0], TOL[torch.float32], "after empty sequence")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_empty_batch_behaves_like_nn_rnn(bidirectional):
    theirs, ours = rnn_pair(input_size=3, hidden_size=5, num_layers=2, bidirectional=bidirectional)
    for module in (theirs, ours):
        x = torch.randn(4, 0, 3, requires_grad=True)
        out, h_n = module(x)
        assert out.shape == (4, 0, 10 if bidirectional else 5)
        assert h_n.shape == (4 if bidirectional else 2, 0, 5)
        (out.sum() + h_n.sum()).backward()
        assert x.grad.shape == x.shape
        assert all(torch.count_nonzero(p.grad) == 0 for p in module.parameters())


def test_mixing_meta_and_cpu_tensors_raises():
    x, h0 = torch.randn(4, 2, 3), torch.zeros(1, 2, 5)
    weights = [torch.randn(5, 3, device="meta"), torch.randn(5, 5)]
    with pytest.raises(RuntimeError, match="device of input"):
        rnnkern.elman_layer(x, h0, weights, None, "tanh")
