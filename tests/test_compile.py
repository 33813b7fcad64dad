"""torch.compile(fullgraph=True) runs models containing rnnkern.RNN without a graph break."""

from __future__ import annotations

import torch
from conftest import GRAD_TOL, TOL, assert_close, rnn_pair
from torch import nn

import rnnkern


class Regressor(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 1)

    def forward(self, x, h0=None):
        out, h_n = self.rnn(x, h0)
        return self.head(out), h_n


def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    _, ours = rnn_pair(
        input_size=3, hidden_size=16, num_layers=2, bidirectional=True, batch_first=True
    )
    model = Regressor(ours)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 9, 3, requires_grad=True)
    y_eager, hn_eager = model(x)
    y_comp, hn_comp = compiled(x)
    assert_close(y_comp, y_eager, TOL[torch.float32], "compiled output")
    assert_close(hn_comp, hn_eager, TOL[torch.float32], "compiled h_n")
    g_eager = torch.autograd.grad(y_eager.sum(), [x, *model.parameters()])
    g_comp = torch.autograd.grad(y_comp.sum(), [x, *model.parameters()])
    for a, b in zip(g_comp, g_eager):
        assert_close(a, b, GRAD_TOL[torch.float32], "compiled grad")


def test_compile_inductor_matches_nn_rnn():
    torch._dynamo.reset()
    theirs, ours = rnn_pair(input_size=2, hidden_size=8, nonlinearity="relu")
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(5, 3, 2)
    h0 = torch.randn(1, 3, 8)
    assert_close(compiled(x, h0)[0], theirs(x, h0)[0], TOL[torch.float32], "inductor output")


def test_compile_cell_loop():
    torch._dynamo.reset()
    cell = rnnkern.RNNCell(3, 5)
    ref = nn.RNNCell(3, 5)
    ref.load_state_dict(cell.state_dict())

    def unroll(c, xs, h):
        for x in xs:
            h = c(x, h)
        return h

    xs = torch.randn(4, 2, 3)
    h = torch.randn(2, 5)
    compiled = torch.compile(unroll, fullgraph=True, backend="aot_eager")
    assert_close(compiled(cell, xs, h), unroll(ref, xs, h), TOL[torch.float32], "cell loop")
