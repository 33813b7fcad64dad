"""torch.func and batched gradients: vmap, grad, vjp, jacrev, jacfwd, hessian, jvp, forward-mode AD,
gradcheck's check_batched_grad and autograd.grad's is_grads_batched, against nn.RNN (and, where
nn.RNN refuses a transform, against a loop over nn.RNN)."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap
from torch.nn.utils.rnn import pack_sequence

import rnnkern
from tests.conftest import rnn_pair

DT = torch.float64
TOL = dict(atol=1e-10, rtol=1e-8)
CONFIGS = [
    dict(input_size=3, hidden_size=4, num_layers=2, bidirectional=True),
    dict(input_size=2, hidden_size=5, nonlinearity="relu", bias=False, batch_first=True),
]


def same(a, b):
    for x, y in zip(
        torch.utils._pytree.tree_leaves(a), torch.utils._pytree.tree_leaves(b), strict=True
    ):
        torch.testing.assert_close(x, y, **TOL)


@pytest.fixture(params=CONFIGS, ids=["2-layer-bidirectional", "relu-nobias-batch_first"])
def pair(request):
    return rnn_pair(dtype=DT, seed=1, **request.param)


def cell_pair(nonlinearity="tanh"):
    torch.manual_seed(2)
    theirs = nn.RNNCell(3, 4, nonlinearity=nonlinearity, dtype=DT)
    ours = rnnkern.RNNCell(3, 4, nonlinearity=nonlinearity, dtype=DT)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


TRANSFORMS = {
    "grad": lambda m, x: grad(lambda x: m(x)[0].pow(2).sum())(x),
    "vjp": lambda m, x: vjp(lambda x: m(x), x)[1](
        (torch.ones_like(m(x)[0]), torch.ones_like(m(x)[1]))
    ),
    "jacrev": lambda m, x: jacrev(lambda x: m(x)[1])(x),
    "jacfwd": lambda m, x: jacfwd(lambda x: m(x)[1])(x),
    "jvp": lambda m, x: jvp(lambda x: m(x)[0], (x,), (torch.cos(x),)),
    "hessian": lambda m, x: hessian(lambda x: m(x)[1].sum())(x[:2]),
}


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transform_of_rnn_matches_nn_rnn(pair, transform):
    theirs, ours = pair
    x = torch.randn(4, 3, theirs.input_size, dtype=DT)
    same(TRANSFORMS[transform](ours, x), TRANSFORMS[transform](theirs, x))


def test_grad_of_parameters_matches_nn_rnn(pair):
    theirs, ours = pair
    x = torch.randn(4, 3, theirs.input_size, dtype=DT)

    def loss(module):
        return lambda p: functional_call(module, p, (x,))[0].pow(2).sum()

    params = {k: v.detach() for k, v in theirs.named_parameters()}
    same(grad(loss(ours))(params), grad(loss(theirs))(params))


def test_vmap_over_rnn_matches_a_loop(pair):
    # nn.RNN refuses this (no batching rule for aten::rnn_tanh); rnnkern's composite layers run it.
    theirs, ours = pair
    xs = torch.randn(5, 4, 3, theirs.input_size, dtype=DT)
    batched = vmap(ours)(xs)
    looped = [torch.stack(t) for t in zip(*[theirs(x) for x in xs])]
    same(batched, looped)


def test_vmap_over_stacked_weights_is_an_ensemble(pair):
    theirs, ours = pair
    x = torch.randn(4, 3, theirs.input_size, dtype=DT)
    members = [{k: v.detach() + 0.01 * i for k, v in theirs.named_parameters()} for i in range(3)]
    stacked = {k: torch.stack([m[k] for m in members]) for k in members[0]}
    ensemble = vmap(lambda p: functional_call(ours, p, (x,)))(stacked)
    looped = [torch.stack(t) for t in zip(*[functional_call(theirs, m, (x,)) for m in members])]
    same(ensemble, looped)


def test_grad_with_packed_input_matches_autograd_on_nn_rnn():
    theirs, ours = rnn_pair(
        dtype=DT, seed=3, input_size=3, hidden_size=4, num_layers=2, bidirectional=True
    )
    packed = pack_sequence([torch.randn(n, 3, dtype=DT) for n in (5, 3, 2)])
    h0 = torch.randn(4, 3, 4, dtype=DT)

    def loss(module, h):
        out, h_n = module(packed, h)
        return out.data.pow(2).sum() + h_n.sum()

    h = h0.clone().requires_grad_()
    (expected,) = torch.autograd.grad(loss(theirs, h), h)  # nn.RNN: not under torch.func.grad
    same(grad(lambda h: loss(ours, h))(h0), expected)


def test_forward_mode_ad_matches_nn_rnn(pair):
    theirs, ours = pair
    x = torch.randn(4, 3, theirs.input_size, dtype=DT)
    tangent = torch.randn_like(x)
    results = []
    for module in (ours, theirs):
        with fwAD.dual_level():
            out, h_n = module(fwAD.make_dual(x, tangent))
            results.append([fwAD.unpack_dual(t).tangent for t in (out, h_n)])
    same(*results)


def test_forward_mode_ad_of_an_empty_batch_matches_nn_rnn(pair):
    theirs, ours = pair
    shape = (0, 4) if theirs.batch_first else (4, 0)
    x = torch.randn(*shape, theirs.input_size, dtype=DT)
    tangent = torch.randn_like(x)
    results = [jvp(module, (x,), (tangent,)) for module in (ours, theirs)]
    assert results[0][0][0].shape == results[1][0][0].shape  # the output: no rows, D * H wide
    same(*results)


@pytest.mark.parametrize("transform", ["vmap", "grad", "jacrev", "jacfwd", "hessian"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_transform_of_cell_matches_nn_rnncell(transform, nonlinearity):
    theirs, ours = cell_pair(nonlinearity)
    x = torch.randn(6, 3, dtype=DT)
    h = torch.randn(6, 4, dtype=DT)
    apply = {
        "vmap": lambda c: vmap(c)(x, h),
        "grad": lambda c: grad(lambda x: c(x, h).sum(), argnums=0)(x),
        "jacrev": lambda c: jacrev(c, argnums=(0, 1))(x[0], h[0]),
        "jacfwd": lambda c: jacfwd(c, argnums=(0, 1))(x[0], h[0]),
        "hessian": lambda c: hessian(lambda x: c(x, h[0]).sum())(x[0]),
    }[transform]
    same(apply(ours), apply(theirs))


def test_gradcheck_with_batched_grads():
    theirs, ours = rnn_pair(
        dtype=DT, seed=4, input_size=2, hidden_size=3, num_layers=2, bidirectional=True
    )
    names = [n for n, _ in ours.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=DT, requires_grad=True)

    def fn(x, *params):
        return functional_call(ours, dict(zip(names, params)), (x,))

    params = [p.detach().requires_grad_() for p in ours.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *params), check_batched_grad=True)
    cell = rnnkern.RNNCell(3, 4, dtype=DT)
    args = (
        torch.randn(2, 3, dtype=DT, requires_grad=True),
        torch.randn(2, 4, dtype=DT, requires_grad=True),
    )
    assert torch.autograd.gradcheck(cell, args, check_batched_grad=True)


@pytest.mark.parametrize("packed", [False, True])
def test_is_grads_batched_matches_one_by_one(packed):
    theirs, ours = rnn_pair(dtype=DT, seed=5, input_size=3, hidden_size=4, bidirectional=True)
    for module in (ours, theirs):
        module.requires_grad_(True)
    x = torch.randn(5, 3, 3, dtype=DT, requires_grad=True)
    inputs = [x, *ours.parameters()]
    xin = pack_sequence([x[:, 0], x[:4, 1], x[:2, 2]]) if packed else x
    out, h_n = ours(xin)
    out = out.data if packed else out
    cotangents = torch.randn(4, *out.shape, dtype=DT)
    batched = torch.autograd.grad(out, inputs, cotangents, is_grads_batched=True, retain_graph=True)
    for v in range(4):
        one = torch.autograd.grad(out, inputs, cotangents[v], retain_graph=True)
        for b, o in zip(batched, one):
            torch.testing.assert_close(b[v], o, **TOL)


def test_compiled_transforms_match_nn_rnn():
    # torch.compile traces torch.func transforms; the layers must take the composite path there too.
    torch._dynamo.reset()
    theirs, ours = rnn_pair(dtype=DT, seed=6, input_size=3, hidden_size=4, bidirectional=True)
    xs = torch.randn(3, 5, 2, 3, dtype=DT)
    batched = torch.compile(vmap(lambda x: ours(x)[0]), backend="aot_eager")(xs)
    same(batched, torch.stack([theirs(x)[0] for x in xs]))
    loss = lambda module: lambda x: module(x)[0].pow(2).sum()  # noqa: E731
    same(torch.compile(grad(loss(ours)), backend="aot_eager")(xs[0]), grad(loss(theirs))(xs[0]))


def test_transforms_on_each_device(device):
    # On a GPU, rnnkern's layers under torch.func run the same composite operations on CUDA tensors.
    theirs, ours = rnn_pair(dtype=DT, seed=7, input_size=3, hidden_size=4, bidirectional=True)
    ours.to(device)
    xs = torch.randn(3, 5, 2, 3, dtype=DT)
    batched = vmap(lambda x: ours(x)[0])(xs.to(device))
    same(batched.cpu(), torch.stack([theirs(x)[0] for x in xs]))
    loss = lambda module: lambda x: module(x)[0].pow(2).sum()  # noqa: E731
    same(grad(loss(ours))(xs[0].to(device)).cpu(), grad(loss(theirs))(xs[0]))


def test_layer_under_transforms_checks_its_arguments_as_the_operator_does():
    weights = [torch.randn(6, 3), torch.randn(6, 6)]
    bad_hx = torch.zeros(1, 5, 6)  # batch 5, input batch 2
    with pytest.raises(RuntimeError, match=r"hx must have shape \[1, 2, 6\], got \[1, 5, 6\]"):
        vmap(lambda x: rnnkern.elman_layer(x, bad_hx, weights))(torch.randn(5, 4, 2, 3))
    with pytest.raises(RuntimeError, match=r"hx must have shape \[1, 2, 6\]"):
        grad(lambda x: rnnkern.elman_layer(x, bad_hx, weights)[0].sum())(torch.randn(4, 2, 3))
