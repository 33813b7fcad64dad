"""torch.autograd.gradcheck in float64: the fused BPTT against numerical differentiation."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import rnnkern


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_layer_op(nonlinearity, bidirectional, bias):
    D, T, B, I, H = (2 if bidirectional else 1), 5, 3, 4, 6
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(D, B, H, dtype=torch.float64, requires_grad=True)
    weights = []
    for _ in range(D):
        weights += [
            torch.randn(H, I, dtype=torch.float64) * 0.4,
            torch.randn(H, H, dtype=torch.float64) * 0.4,
        ]
        if bias:
            weights += [torch.randn(H, dtype=torch.float64), torch.randn(H, dtype=torch.float64)]
    weights = [w.requires_grad_() for w in weights]

    def fn(x, hx, *weights):
        return rnnkern.elman_layer(x, hx, weights, None, nonlinearity)

    assert torch.autograd.gradcheck(fn, (x, hx, *weights))


@pytest.mark.parametrize("batch_first", [False, True])
def test_gradcheck_module_stack(batch_first):
    rnn = rnnkern.RNN(
        3, 5, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=torch.float64
    )
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(
        4, x.shape[0] if batch_first else x.shape[1], 5, dtype=torch.float64, requires_grad=True
    )
    names = [n for n, _ in rnn.named_parameters()]

    def fn(x, h0, *params):
        out, h_n = torch.func.functional_call(rnn, dict(zip(names, params)), (x, h0))
        return out, h_n

    assert torch.autograd.gradcheck(
        fn, (x, h0, *[p.detach().requires_grad_() for p in rnn.parameters()])
    )


def test_gradcheck_packed():
    rnn = rnnkern.RNN(2, 4, bidirectional=True, nonlinearity="relu", dtype=torch.float64)
    seqs = [torch.randn(n, 2, dtype=torch.float64, requires_grad=True) for n in (2, 5, 3)]
    h0 = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)

    def fn(h0, *seqs):
        out, h_n = rnn(pack_sequence(list(seqs), enforce_sorted=False), h0)
        return out.data, h_n

    assert torch.autograd.gradcheck(fn, (h0, *seqs))


def test_gradcheck_cell():
    cell = rnnkern.RNNCell(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(cell, (x, h))
