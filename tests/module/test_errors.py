"""Bad input gets nn.RNN's exception type, with a message that contains nn.RNN's own (so code matching
nn.RNN's messages keeps working) and says more, and the module keeps working."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import rnnkern
from tests.conftest import TOL, assert_close, rnn_pair

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
    ("4-D input", torch.randn(5, 2, 3, 1), None, ValueError, r"shape \[5, 2, 3, 1\]"),
    ("1-D input", torch.randn(5), None, ValueError, "got 1D"),
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
    ("empty sequence", torch.randn(0, 2, 3), None, RuntimeError, r"got input of shape \[0, 2, 3\]"),
    (
        "hx on another device",
        torch.randn(5, 2, 3),
        torch.randn(2, 2, 8, device="meta"),
        RuntimeError,
        "move hx to cpu",
    ),
]


def raised_by(module, *args) -> Exception:
    try:
        module(*args)
    except Exception as e:
        return e
    raise AssertionError(f"{type(module).__name__} accepted {args}")


@pytest.mark.parametrize(
    "name, x, hx, error, pattern", BAD_RNN_CALLS, ids=[c[0] for c in BAD_RNN_CALLS]
)
def test_bad_rnn_input_raises_clear_error(name, x, hx, error, pattern):
    theirs, ours = rnn_pair(input_size=3, hidden_size=8, num_layers=2)
    expected = raised_by(theirs, x, hx)
    assert type(expected) is error, f"nn.RNN raises {type(expected).__name__} for {name}"
    with pytest.raises(error, match=pattern) as raised:
        ours(x, hx)
    assert str(expected) in str(raised.value), f"nn.RNN's words missing from {raised.value}"
    good = torch.randn(5, 2, 3)
    assert_close(ours(good)[0], theirs(good)[0], TOL[torch.float32], f"after {name}")


def test_packed_h0_of_wrong_batch():
    _, ours = rnn_pair(input_size=2, hidden_size=4)
    packed = pack_sequence([torch.randn(3, 2), torch.randn(2, 2)])
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 2, 4\)"):
        ours(packed, torch.randn(1, 3, 4))


BAD_CELL_CALLS = [
    # (name, input, hx, exception type, message pattern): nn.RNNCell's exception type and words
    # (checked against nn.RNNCell itself below), with rnnkern's detail
    ("wrong feature size", torch.randn(2, 5), None, RuntimeError, r"input of shape \[2, 5\]"),
    ("wrong hx batch", torch.randn(2, 3), torch.randn(3, 4), RuntimeError, r"hx of shape \[3, 4\]"),
    ("wrong hx size", torch.randn(2, 3), torch.randn(2, 5), RuntimeError, r"hx of shape \[2, 5\]"),
    ("3-D input", torch.randn(2, 3, 1), None, ValueError, r"shape \[2, 3, 1\]"),
    ("1-D input, 2-D hx", torch.randn(3), torch.randn(2, 4), RuntimeError, "must be 1-D like"),
    ("2-D input, 1-D hx", torch.randn(2, 3), torch.randn(4), RuntimeError, "must be 2-D like"),
    ("3-D hx", torch.randn(2, 3), torch.randn(1, 2, 4), ValueError, r"shape \[1, 2, 4\]"),
    (
        "dtype",
        torch.randn(2, 3, dtype=torch.float64),
        None,
        RuntimeError,
        r"input.to\(torch.float32\)",
    ),
    ("hx dtype", torch.randn(2, 3), torch.randn(2, 4, dtype=torch.float64), RuntimeError, "hx is"),
    ("integer input", torch.randint(0, 3, (2, 3)), None, RuntimeError, "cell.to"),
]


@pytest.mark.parametrize(
    "name, x, hx, error, pattern", BAD_CELL_CALLS, ids=[c[0] for c in BAD_CELL_CALLS]
)
def test_bad_cell_input_raises_clear_error(name, x, hx, error, pattern):
    cell = rnnkern.RNNCell(3, 4)
    theirs = nn.RNNCell(3, 4)
    expected = raised_by(theirs, x, hx)
    assert type(expected) is error, f"nn.RNNCell raises {type(expected).__name__} for {name}"
    with pytest.raises(error, match=pattern) as raised:
        cell(x, hx)
    assert str(expected) in str(raised.value), f"nn.RNNCell's words missing from {raised.value}"
    assert cell(torch.randn(2, 3)).shape == (2, 4)


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda m: m(3, 8, nonlinearity="sigmoid"), ValueError),
        (lambda m: m(3, 8, proj_size=2), ValueError),
        (lambda m: m(3, 8, dropout=2.0), ValueError),
        (lambda m: m(3, 0), ValueError),
        (lambda m: m(3, 8, bias=1), TypeError),
    ],
    ids=["nonlinearity", "proj_size", "dropout", "hidden_size", "bias type"],
)
def test_bad_rnn_arguments_raise_like_nn_rnn(make, error):
    expected = raised_by(lambda: make(nn.RNN))
    assert type(expected) is error
    with pytest.raises(error) as raised:
        make(rnnkern.RNN)
    assert str(expected) in str(raised.value)


def test_cell_with_unknown_nonlinearity_raises_at_call_like_nn_rnncell():
    theirs, ours = (
        nn.RNNCell(3, 4, nonlinearity="sigmoid"),
        rnnkern.RNNCell(3, 4, nonlinearity="sigmoid"),
    )
    expected = raised_by(theirs, torch.randn(2, 3))
    with pytest.raises(RuntimeError) as raised:
        ours(torch.randn(2, 3))
    assert type(expected) is RuntimeError and str(expected) in str(raised.value)


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
