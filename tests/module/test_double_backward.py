"""Double backward: gradients of rnnkern's gradients equal nn.RNN's, on every configuration the
property tests draw, and gradgradcheck holds in float64.

With create_graph=True the fused backward hands over to torch's own RNN (csrc/autograd_layer.cpp:
differentiable_gradients), so second derivatives are nn.RNN's; the first derivatives such a call
returns are compared too (the fused first derivatives are the property tests' subject).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern
from tests.module.test_properties import PROPERTY_SETTINGS, configurations, drawn_modules

TOL = {
    torch.float64: dict(atol=1e-9, rtol=1e-7),
    torch.float32: dict(atol=1e-4, rtol=1e-3),
}


def loss_fn(module, lengths, batch_first, cotangents):
    """A scalar function of (x, h0, *parameters) through the module, for first and second
    derivatives: the outputs weighted by fixed cotangents, squared so that it is not linear in
    them."""
    names = [n for n, _ in module.named_parameters()]
    d_out, d_hn = cotangents

    def fn(x, h0, *params):
        xin = x.transpose(0, 1) if batch_first else x
        if lengths is not None:
            xin = pack_padded_sequence(
                xin, torch.tensor(lengths), batch_first, enforce_sorted=False
            )
        out, h_n = torch.func.functional_call(module, dict(zip(names, params)), (xin, h0))
        if lengths is not None:
            out, _ = pad_packed_sequence(out, batch_first, total_length=x.shape[0])
        if batch_first:
            out = out.transpose(0, 1)
        return ((out * d_out).sum() + (h_n * d_hn).sum()) ** 2

    return fn


def first_and_second(fn, inputs, direction):
    """The gradient of fn, and the gradient of <gradient, direction> (a Hessian-vector product)."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(fn(*inputs), inputs, create_graph=True)
    projected = sum((g * v).sum() for g, v in zip(grads, direction))
    return [g.detach() for g in grads], torch.autograd.grad(projected, inputs)


@PROPERTY_SETTINGS
@given(c=configurations())
def test_second_derivatives_match_nn_rnn(c):
    dtype = c["dtype"]
    theirs, ours = drawn_modules(c)
    directions = 2 if c["bidirectional"] else 1
    x = torch.randn(c["steps"], c["batch"], c["input_size"], dtype=dtype) * c["scale"]
    h0 = torch.randn(c["num_layers"] * directions, c["batch"], c["hidden_size"], dtype=dtype)
    d_out = torch.randn(c["steps"], c["batch"], directions * c["hidden_size"], dtype=dtype)
    d_hn = torch.randn_like(h0)
    if c["lengths"] is not None:  # padding positions are not outputs
        mask = torch.arange(c["steps"])[:, None] < torch.tensor(c["lengths"])[None, :]
        d_out = d_out * mask[..., None]
    inputs = [x, h0, *theirs.parameters()]
    direction = [torch.randn_like(t) for t in inputs]

    results = {}
    for name, module in (("rnnkern", ours), ("nn.RNN", theirs)):
        fn = loss_fn(module, c["lengths"], c["batch_first"], (d_out, d_hn))
        results[name] = first_and_second(fn, inputs, direction)
    names = ["input", "h0"] + [n for n, _ in ours.named_parameters()]
    for order, (got, expected) in enumerate(zip(results["rnnkern"], results["nn.RNN"]), 1):
        for name, a, b in zip(names, got, expected, strict=True):
            scale = max(1.0, b.abs().max().item())
            torch.testing.assert_close(
                a / scale,
                b / scale,
                **TOL[dtype],
                msg=lambda m, order=order, name=name: f"order {order}, {name}: {m} ({c})",
            )


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("nonlinearity, bias", [("tanh", True), ("relu", False)])
def test_gradgradcheck_module(bidirectional, packed, nonlinearity, bias):
    torch.manual_seed(3)
    rnn = rnnkern.RNN(2, 3, 2, nonlinearity, bias, bidirectional=bidirectional, dtype=torch.float64)
    directions = 2 if bidirectional else 1
    x = torch.randn(4, 2, 2, dtype=torch.float64)
    h0 = torch.randn(2 * directions, 2, 3, dtype=torch.float64)
    lengths = [4, 2] if packed else None
    fn = loss_fn(rnn, lengths, False, (torch.randn(4, 2, 3 * directions, dtype=torch.float64), 1))
    inputs = [t.detach().requires_grad_() for t in (x, h0, *rnn.parameters())]
    assert torch.autograd.gradgradcheck(fn, inputs, check_batched_grad=True)


def test_gradgradcheck_cell_and_layer_op():
    cell = rnnkern.RNNCell(3, 4, dtype=torch.float64)
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(cell, (x, h))

    weights = [
        torch.randn(4, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(4, 4, dtype=torch.float64, requires_grad=True),
    ]

    def layer(x, h, *w):
        return rnnkern.elman_layer(x, h, list(w), None, "relu")

    x3 = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        layer, (x3, h.unsqueeze(0).detach().requires_grad_(), *weights)
    )


def backward_runs_fused_operator(create_graph: bool) -> bool:
    rnn = rnnkern.RNN(3, 4)
    out, _ = rnn(torch.randn(5, 2, 3, requires_grad=True))
    with torch.autograd.profiler.profile() as profile:
        torch.autograd.grad(out.sum(), list(rnn.parameters()), create_graph=create_graph)
    return any(e.name == "rnnkern::elman_layer_backward" for e in profile.function_events)


def test_only_create_graph_leaves_the_fused_backward():
    # A plain backward (training) runs rnnkern's fused BPTT; create_graph=True takes torch's RNN.
    assert backward_runs_fused_operator(create_graph=False)
    assert not backward_runs_fused_operator(create_graph=True)


def test_second_derivatives_on_each_device(device):
    # On a GPU, nn.RNN has double backward without cuDNN (whose RNN has none): so does rnnkern.
    theirs, ours = (
        nn.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64),
        rnnkern.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64),
    )
    ours.load_state_dict(theirs.state_dict())
    ours.to(device)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    inputs = [x, *theirs.parameters()]
    direction = [torch.randn_like(t) for t in inputs]

    def second(module, where):
        names = [n for n, _ in module.named_parameters()]
        fn = lambda x, *p: functional_call_loss(module, names, x, p)  # noqa: E731
        return first_and_second(fn, [t.to(where) for t in inputs], [v.to(where) for v in direction])

    with torch.backends.cudnn.flags(enabled=False):
        got = second(ours, device)
    expected = second(theirs, "cpu")
    for a, b in zip([*got[0], *got[1]], [*expected[0], *expected[1]], strict=True):
        torch.testing.assert_close(a.cpu(), b, **TOL[torch.float64])


def functional_call_loss(module, names, x, params):
    out, h_n = torch.func.functional_call(module, dict(zip(names, params)), (x,))
    return out.pow(2).sum() + h_n.pow(3).sum()
