"""Streaming: rnnkern.RNN called one step at a time (its state carried from call to call), and
rnnkern.RNNCell, on the one-step cell operator.

A one-step rnnkern.RNN call in plain eager mode on the CPU runs whole in C++ (rnnkern._C.eager_rnn:
one cell operator call per layer and direction); under torch.jit.trace, torch.compile, torch.func transforms
and forward AD it takes the layer operator's paths. Either way the results are nn.RNN's.
Both modules read their parameters from module._parameters, falling back to getattr for
parametrized weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import rnnkern
from rnnkern import functional, modules
from tests.conftest import GRAD_TOL, TOL, assert_close, count_calls_of, rnn_pair

STEPS = 6


def one_step(args, result) -> bool:
    """Whether a call of rnnkern._C.eager_rnn ran (not None) on a sequence of one step."""
    x, batch_first = args[0], args[8]
    return result is not None and x.shape[1 if batch_first and x.dim() == 3 else 0] == 1


@pytest.fixture
def one_step_calls(monkeypatch) -> list:
    """The one-step calls rnnkern.RNN ran whole in C++ (rnnkern._C.eager_rnn), the streaming path:
    one cell operator call per layer and direction (test_direct_call.py checks which operators)."""
    return count_calls_of(monkeypatch, modules, "eager_rnn", keep=one_step)


def step_slices(xs: torch.Tensor, batch_first: bool, batched: bool) -> list[torch.Tensor]:
    """The one-step inputs of a sequence: (1, N, I), (N, 1, I) or unbatched (1, I)."""
    dim = 1 if batch_first and batched else 0
    return [xs.narrow(dim, t, 1) for t in range(xs.shape[dim])]


def stream(module, steps, hx):
    """Calls module once per step, carrying h_n; returns every step's output and the last h_n."""
    outputs = []
    for x in steps:
        out, hx = module(x, hx)
        outputs.append(out)
    return outputs, hx


CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=1, nonlinearity="relu", bias=False),
    dict(num_layers=1, bidirectional=True, batch_first=True),
    dict(num_layers=3),
    dict(num_layers=3, bidirectional=True),
    dict(num_layers=3, bidirectional=True, nonlinearity="relu", batch_first=True),
    dict(num_layers=3, bias=False, batch_first=True),
    dict(num_layers=2, bidirectional=True, bias=False, nonlinearity="relu"),
]


def config_id(config: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in config.items()) or "default"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("hx_given", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_streaming_matches_nn_rnn(config, batched, hx_given, dtype, one_step_calls):
    I, H, N = 5, 7, 3
    theirs, ours = rnn_pair(dtype=dtype, seed=1, input_size=I, hidden_size=H, **config)
    batch_first = config.get("batch_first", False)
    D = 2 if config.get("bidirectional") else 1
    L = config["num_layers"]
    seq_shape = ((N, STEPS, I) if batch_first else (STEPS, N, I)) if batched else (STEPS, I)
    xs = torch.randn(seq_shape, dtype=dtype, requires_grad=True)
    h0 = torch.randn((L * D, N, H) if batched else (L * D, H), dtype=dtype, requires_grad=True)
    start = h0 if hx_given else None
    steps = step_slices(xs, batch_first, batched)

    out_t, hn_t = stream(theirs, steps, start)
    out_o, hn_o = stream(ours, steps, start)
    assert len(one_step_calls) == STEPS  # every call took the one-step path

    tol = TOL[dtype]
    for t, (a, b) in enumerate(zip(out_o, out_t, strict=True)):
        assert a.shape == b.shape, f"step {t}"
        assert_close(a, b, tol, f"output at step {t}")
    assert hn_o.shape == hn_t.shape
    assert_close(hn_o, hn_t, tol, "final h_n")

    gen = torch.Generator().manual_seed(99)
    weights = [torch.randn(o.shape, dtype=dtype, generator=gen) for o in out_t]
    weight_hn = torch.randn(hn_t.shape, dtype=dtype, generator=gen)

    def loss(outputs, h_n):
        return sum((o * w).sum() for o, w in zip(outputs, weights)) + (h_n * weight_hn).sum()

    inputs_t = [xs, *([h0] if hx_given else []), *theirs.parameters()]
    inputs_o = [xs, *([h0] if hx_given else []), *ours.parameters()]
    grads_t = torch.autograd.grad(loss(out_t, hn_t), inputs_t)
    grads_o = torch.autograd.grad(loss(out_o, hn_o), inputs_o)
    names = ["input", *(["hx"] if hx_given else []), *(n for n, _ in ours.named_parameters())]
    for name, a, b in zip(names, grads_o, grads_t, strict=True):
        assert_close(a, b, GRAD_TOL[dtype], f"gradient of {name}")


@pytest.mark.parametrize(
    "config",
    [dict(num_layers=1), dict(num_layers=3, nonlinearity="relu"), dict(num_layers=2, bias=False)],
    ids=config_id,
)
@pytest.mark.parametrize("batch_first", [False, True])
def test_streaming_matches_whole_sequence(config, batch_first, one_step_calls):
    # One direction: a sequence fed step by step is the same sequence fed at once (by rnnkern's
    # layer operator), forward and backward.
    torch.manual_seed(2)
    rnn = rnnkern.RNN(4, 9, batch_first=batch_first, dtype=torch.float64, **config)
    shape = (2, STEPS, 4) if batch_first else (STEPS, 2, 4)
    xs = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(config["num_layers"], 2, 9, dtype=torch.float64, requires_grad=True)
    whole_out, whole_hn = rnn(xs, h0)
    assert not one_step_calls
    outs, hn = stream(rnn, step_slices(xs, batch_first, True), h0)
    assert len(one_step_calls) == STEPS
    stepped_out = torch.cat(outs, 1 if batch_first else 0)
    tol = TOL[torch.float64]
    assert_close(stepped_out, whole_out, tol, "outputs")
    assert_close(hn, whole_hn, tol, "h_n")
    w = torch.randn(whole_out.shape, dtype=torch.float64)
    inputs = [xs, h0, *rnn.parameters()]
    g_whole = torch.autograd.grad((whole_out * w).sum() + whole_hn.sum(), inputs)
    g_step = torch.autograd.grad((stepped_out * w).sum() + hn.sum(), inputs)
    for a, b in zip(g_step, g_whole, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float64], "gradient")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_dropout_masks_are_nn_rnn_s(bidirectional, one_step_calls):
    # Dropout between layers on the same tensor shapes as nn.RNN: with the same seed before each
    # call, the same masks, so the same outputs and gradients.
    theirs, ours = rnn_pair(
        input_size=4, hidden_size=8, num_layers=3, dropout=0.5, bidirectional=bidirectional
    )
    theirs.train()
    ours.train()
    D = 2 if bidirectional else 1
    xs = torch.randn(STEPS, 3, 4, requires_grad=True)
    h0 = torch.randn(3 * D, 3, 8)
    h_t = h_o = h0
    outs_t, outs_o = [], []
    for t in range(STEPS):
        torch.manual_seed(100 + t)
        out_t, h_t = theirs(xs[t : t + 1], h_t)
        torch.manual_seed(100 + t)
        out_o, h_o = ours(xs[t : t + 1], h_o)
        outs_t.append(out_t)
        outs_o.append(out_o)
        assert_close(out_o, out_t, TOL[torch.float32], f"output at step {t}")
        assert_close(h_o, h_t, TOL[torch.float32], f"h_n at step {t}")
    assert len(one_step_calls) == STEPS
    # Dropout did act: the first step in eval mode gives something else.
    ours.eval()
    with torch.no_grad():
        assert not torch.allclose(ours(xs[:1], h0)[0], outs_o[0])
    total_t = sum((o * (k + 1)).sum() for k, o in enumerate(outs_t)) + h_t.sum()
    total_o = sum((o * (k + 1)).sum() for k, o in enumerate(outs_o)) + h_o.sum()
    g_t = torch.autograd.grad(total_t, [xs, *theirs.parameters()])
    g_o = torch.autograd.grad(total_o, [xs, *ours.parameters()])
    for a, b in zip(g_o, g_t, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float32], "gradient")


def test_dropout_is_off_in_eval_mode(one_step_calls):
    theirs, ours = rnn_pair(input_size=4, hidden_size=8, num_layers=3, dropout=0.5)
    theirs.eval()
    ours.eval()
    x = torch.randn(1, 3, 4)
    with torch.no_grad():
        a, b = theirs(x), ours(x)
    assert_close(b[0], a[0], TOL[torch.float32], "output")
    assert_close(b[1], a[1], TOL[torch.float32], "h_n")
    assert len(one_step_calls) == 1


@pytest.mark.parametrize(
    "config",
    [dict(), dict(bidirectional=True), dict(num_layers=3), dict(num_layers=2, bidirectional=True)],
    ids=config_id,
)
@pytest.mark.parametrize("batch_first", [False, True])
def test_output_and_h_n_do_not_share_memory(config, batch_first, one_step_calls):
    theirs, ours = rnn_pair(input_size=4, hidden_size=5, batch_first=batch_first, **config)
    x = torch.randn(2, 1, 4) if batch_first else torch.randn(1, 2, 4)
    for module in (theirs, ours):
        with torch.no_grad():
            out, h_n = module(x)
            before = h_n.clone()
            out.add_(10.0)
            assert torch.equal(h_n, before), type(module)
            h_n.mul_(3.0)
            assert (out > 5).all(), type(module)
    assert len(one_step_calls) == 1


@pytest.mark.parametrize("steps", [1, 4])
def test_in_place_change_of_output_then_backward_is_a_clear_error(steps):
    """A documented difference (README): the fused operators save their output for the backward
    (nn.RNN saves its own copy), so changing the output in place and then differentiating through
    it fails with autograd's in-place error, one step or many, instead of a wrong gradient."""
    _, ours = rnn_pair(input_size=4, hidden_size=5)
    x = torch.randn(steps, 2, 4, requires_grad=True)
    out, h_n = ours(x)
    out.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(out.sum() + h_n.sum(), [x, *ours.parameters()])
    # Out of place, as nn.RNN users mostly write it, it works and matches nn.RNN.
    theirs, ours = rnn_pair(input_size=4, hidden_size=5)
    grads = []
    for module in (theirs, ours):
        out, h_n = module(x)
        grads.append(torch.autograd.grad((out * 2.0).sum() + h_n.sum(), [x, *module.parameters()]))
    for a, b in zip(grads[1], grads[0], strict=True):
        assert_close(a, b, GRAD_TOL[torch.float32], "gradient")


class Step(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, h):
        return self.rnn(x, h)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_trace_records_the_layer_operator(bidirectional, one_step_calls):
    theirs, ours = rnn_pair(input_size=4, hidden_size=6, num_layers=2, bidirectional=bidirectional)
    D = 2 if bidirectional else 1
    x, h = torch.randn(1, 3, 4), torch.randn(2 * D, 3, 6)
    with torch.no_grad():
        traced = torch.jit.trace(Step(ours), (x, h), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "rnnkern::elman_layer" in graph
    assert "elman_cell" not in graph
    assert not one_step_calls  # tracing takes the layer path (check_trace would run eager)
    x2, h2 = torch.randn(1, 3, 4), torch.randn(2 * D, 3, 6)
    with torch.no_grad():
        got = traced(x2, h2)
        eager = ours(x2, h2)
        reference = theirs(x2, h2)
    for a, b, c in zip(got, eager, reference, strict=True):
        assert_close(a, b, TOL[torch.float32], "trace vs eager")
        assert_close(a, c, TOL[torch.float32], "trace vs nn.RNN")


def test_trace_of_cell_records_the_layer_operator():
    torch.manual_seed(0)
    theirs = nn.RNNCell(4, 6)
    ours = rnnkern.RNNCell(4, 6)
    ours.load_state_dict(theirs.state_dict())
    x, h = torch.randn(3, 4), torch.randn(3, 6)
    with torch.no_grad():
        traced = torch.jit.trace(ours, (x, h))
    graph = str(traced.inlined_graph)
    assert "rnnkern::elman_layer" in graph and "elman_cell" not in graph
    x2, h2 = torch.randn(3, 4), torch.randn(3, 6)
    with torch.no_grad():
        assert_close(traced(x2, h2), theirs(x2, h2), TOL[torch.float32], "traced cell")


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_compiled_one_step_call_matches_eager(backend, one_step_calls):
    torch._dynamo.reset()
    theirs, ours = rnn_pair(input_size=4, hidden_size=6, num_layers=2, bidirectional=True)
    compiled = torch.compile(Step(ours), backend=backend, fullgraph=True)
    h = torch.randn(4, 3, 6)
    h_ref = h
    outs, refs = [], []
    xs = torch.randn(3, 3, 4, requires_grad=True)
    for t in range(3):
        out, h = compiled(xs[t : t + 1], h)
        ref, h_ref = theirs(xs[t : t + 1], h_ref)
        outs.append(out)
        refs.append(ref)
        assert_close(out, ref, TOL[torch.float32], f"{backend} output at step {t}")
        assert_close(h, h_ref, TOL[torch.float32], f"{backend} h_n at step {t}")
    assert not one_step_calls  # torch.compile runs the layer operator
    g = torch.autograd.grad(sum(o.sum() for o in outs) + h.sum(), [xs, *ours.parameters()])
    g_ref = torch.autograd.grad(
        sum(o.sum() for o in refs) + h_ref.sum(), [xs, *theirs.parameters()]
    )
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float32], f"{backend} gradient")
    # and eager afterwards is the streaming path again, with the same result
    eager_out, _ = ours(xs[:1], torch.zeros(4, 3, 6))
    assert len(one_step_calls) == 1
    with torch.no_grad():
        assert_close(eager_out, compiled(xs[:1], torch.zeros(4, 3, 6))[0], TOL[torch.float32], "")


def test_compiled_cell_matches_nn():
    torch._dynamo.reset()
    torch.manual_seed(0)
    theirs = nn.RNNCell(4, 6, nonlinearity="relu")
    ours = rnnkern.RNNCell(4, 6, nonlinearity="relu")
    ours.load_state_dict(theirs.state_dict())
    compiled = torch.compile(ours, backend="eager", fullgraph=True)
    x = torch.randn(3, 4, requires_grad=True)
    h = torch.randn(3, 6)
    out, ref = compiled(x, h), theirs(x, h)
    assert_close(out, ref, TOL[torch.float32], "output")
    g = torch.autograd.grad(out.sum(), [x, *ours.parameters()])
    g_ref = torch.autograd.grad(ref.sum(), [x, *theirs.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float32], "gradient")


def test_forward_ad_one_step_call_takes_the_composite_path(one_step_calls):
    theirs, ours = rnn_pair(dtype=torch.float64, input_size=3, hidden_size=5, num_layers=2)
    x, tangent = (
        torch.randn(1, 2, 3, dtype=torch.float64),
        torch.randn(1, 2, 3, dtype=torch.float64),
    )
    results = []
    with fwAD.dual_level():
        for module in (theirs, ours):
            out, h_n = module(fwAD.make_dual(x, tangent))
            results.append([fwAD.unpack_dual(t) for t in (out, h_n)])
    assert not one_step_calls
    for a, b in zip(results[1], results[0], strict=True):
        assert a.tangent is not None
        assert_close(a.primal, b.primal, TOL[torch.float64], "primal")
        assert_close(a.tangent, b.tangent, TOL[torch.float64], "tangent")


# --- parameters read from _parameters, or through parametrizations -------------------------------


def assert_weight_norm_matches(ours, theirs, outs: dict, parameter: str) -> None:
    """The outputs of both (outs["ours"], outs["theirs"]) agree, and so do the gradients of every
    parameter, ``parameter`` (one of weight_norm's) among them."""
    for a, b in zip(outs["ours"], outs["theirs"], strict=True):
        assert_close(a, b, TOL[torch.float64], "output")
    g_o, g_t = weight_norm_grads(ours, outs["ours"]), weight_norm_grads(theirs, outs["theirs"])
    assert parameter in g_o and g_o.keys() == g_t.keys()
    for name in g_t:
        assert_close(g_o[name], g_t[name], GRAD_TOL[torch.float64], f"gradient of {name}")


def weight_norm_grads(module, outputs, seed=5):
    gen = torch.Generator().manual_seed(seed)
    total = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outputs)
    names, params = zip(*module.named_parameters())
    return dict(zip(names, torch.autograd.grad(total, params)))


def test_cell_with_weight_norm_matches_nn():
    torch.manual_seed(0)
    theirs = nn.RNNCell(5, 13, dtype=torch.float64)
    ours = rnnkern.RNNCell(5, 13, dtype=torch.float64)
    ours.load_state_dict(theirs.state_dict())
    for module in (theirs, ours):
        weight_norm(module, "weight_hh")
        with torch.no_grad():  # a g that is not ||v||, so that the parametrization matters
            module.parametrizations.weight_hh.original0.mul_(
                torch.linspace(0.5, 1.5, 13, dtype=torch.float64).unsqueeze(1)
            )
    assert "weight_hh" not in ours._parameters
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 13, dtype=torch.float64)
    outs = {}
    for name, module in (("theirs", theirs), ("ours", ours)):
        h1 = module(x, h)
        h2 = module(x * 0.5, h1)
        outs[name] = (h1, h2)
    assert_weight_norm_matches(ours, theirs, outs, "parametrizations.weight_hh.original0")
    # The cell follows the parametrization as it changes.
    with torch.no_grad():
        for module in (theirs, ours):
            module.parametrizations.weight_hh.original0.mul_(2.0)
        assert_close(ours(x, h), theirs(x, h), TOL[torch.float64], "after changing g")
        assert not torch.allclose(ours(x, h), outs["ours"][0])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_streaming_rnn_with_weight_norm_matches_nn(bidirectional, one_step_calls):
    theirs, ours = rnn_pair(
        dtype=torch.float64,
        input_size=4,
        hidden_size=6,
        num_layers=2,
        bidirectional=bidirectional,
    )
    for module in (theirs, ours):
        weight_norm(module, "weight_hh_l0")
        with torch.no_grad():
            module.parametrizations.weight_hh_l0.original0.mul_(
                torch.linspace(0.5, 1.5, 6, dtype=torch.float64).unsqueeze(1)
            )
    D = 2 if bidirectional else 1
    xs = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    outs = {}
    for name, module in (("theirs", theirs), ("ours", ours)):
        outputs, h_n = stream(
            module, step_slices(xs, False, True), torch.zeros(2 * D, 2, 6, dtype=torch.float64)
        )
        outs[name] = (*outputs, h_n)
    assert len(one_step_calls) == 3
    assert_weight_norm_matches(ours, theirs, outs, "parametrizations.weight_hh_l0.original1")
    with torch.no_grad():
        for module in (theirs, ours):
            module.parametrizations.weight_hh_l0.original0.mul_(2.0)
        x = xs[:1].detach()
        assert_close(ours(x)[0], theirs(x)[0], TOL[torch.float64], "after changing g")


def substitutes(module, seed=11):
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(p.shape, dtype=p.dtype, generator=gen).requires_grad_()
        for name, p in module.named_parameters()
    }


def test_functional_call_on_cell_uses_the_substitutes():
    torch.manual_seed(0)
    theirs = nn.RNNCell(5, 7, nonlinearity="relu")
    ours = rnnkern.RNNCell(5, 7, nonlinearity="relu")
    ours.load_state_dict(theirs.state_dict())
    subs = substitutes(theirs)
    x, h = torch.randn(3, 5), torch.randn(3, 7)
    expected = torch.func.functional_call(theirs, subs, (x, h))
    got = torch.func.functional_call(ours, subs, (x, h))
    assert_close(got, expected, TOL[torch.float32], "output")
    assert not torch.allclose(got, ours(x, h))  # not the module's own weights
    g_o = torch.autograd.grad(got.sum(), list(subs.values()))
    g_t = torch.autograd.grad(expected.sum(), list(subs.values()))
    for a, b in zip(g_o, g_t, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float32], "gradient of a substitute")
    assert all(p.grad is None for p in ours.parameters())
    assert isinstance(ours._parameters["weight_ih"], nn.Parameter)  # restored afterwards


@pytest.mark.parametrize("bidirectional", [False, True])
def test_functional_call_on_one_step_rnn_uses_the_substitutes(bidirectional, one_step_calls):
    theirs, ours = rnn_pair(input_size=5, hidden_size=7, num_layers=2, bidirectional=bidirectional)
    subs = substitutes(theirs)
    D = 2 if bidirectional else 1
    x, h = torch.randn(1, 3, 5), torch.randn(2 * D, 3, 7)
    expected = torch.func.functional_call(theirs, subs, (x, h))
    got = torch.func.functional_call(ours, subs, (x, h))
    assert len(one_step_calls) == 1
    for a, b in zip(got, expected, strict=True):
        assert_close(a, b, TOL[torch.float32], "output")
    assert not torch.allclose(got[0], ours(x, h)[0])
    total_o = got[0].sum() + (got[1] ** 2).sum()
    total_t = expected[0].sum() + (expected[1] ** 2).sum()
    g_o = torch.autograd.grad(total_o, list(subs.values()))
    g_t = torch.autograd.grad(total_t, list(subs.values()))
    for a, b in zip(g_o, g_t, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float32], "gradient of a substitute")
    assert all(p.grad is None for p in ours.parameters())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
def test_cell_streaming_matches_nn_rnn_cell(bias, batched):
    # rnnkern.RNNCell in a loop, as a tutorial's training loop calls it, through the cell operator.
    torch.manual_seed(0)
    theirs = nn.RNNCell(5, 13, bias=bias, nonlinearity="relu")
    ours = rnnkern.RNNCell(5, 13, bias=bias, nonlinearity="relu")
    ours.load_state_dict(theirs.state_dict())
    lead = (3,) if batched else ()
    xs = torch.randn(STEPS, *lead, 5, requires_grad=True)
    totals = []
    for module in (theirs, ours):
        h, total = None, 0
        for t in range(STEPS):
            h = module(xs[t], h)
            total = total + (h * (t + 1)).sum()
        totals.append((h, total))
    assert_close(totals[1][0], totals[0][0], TOL[torch.float32], "final state")
    g_t = torch.autograd.grad(totals[0][1], [xs, *theirs.parameters()])
    g_o = torch.autograd.grad(totals[1][1], [xs, *ours.parameters()])
    for a, b in zip(g_o, g_t, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float32], "gradient")


def test_cell_calls_the_cell_operator(monkeypatch):
    # Plain eager calls of rnnkern.RNNCell go through rnnkern._C.elman_cell (not the layer op).
    calls = count_calls_of(monkeypatch, modules, "elman_cell")
    cell = rnnkern.RNNCell(3, 4)
    cell(torch.randn(2, 3))
    cell(torch.randn(3))
    assert len(calls) == 2
    assert calls[0][4] is not None and calls[0][6] is False


def test_plain_eager_layer_calls_go_straight_into_the_dispatcher(monkeypatch):
    # Plain eager calls of the functional layer on the CPU go through rnnkern._C.elman_layer (no
    # torch.ops parsing); traced ones record the operator itself
    # (test_trace_records_the_layer_operator). (A module's plain eager call runs whole in C++:
    # test_direct_call.py.)
    calls = count_calls_of(monkeypatch, functional, "elman_layer")
    theirs = nn.RNN(3, 4, bidirectional=True)
    x, h0 = torch.randn(5, 2, 3), torch.randn(2, 2, 4)
    out, h_n = functional.elman_layer(x, h0, list(theirs._flat_weights))
    assert len(calls) == 1
    expected, expected_h_n = theirs(x, h0)
    torch.testing.assert_close(out, expected, **TOL[torch.float32])
    torch.testing.assert_close(h_n, expected_h_n, **TOL[torch.float32])


class Tagged(torch.Tensor):
    """A tensor subclass with torch's default __torch_function__: what torch computes from it is
    Tagged too."""


class RecordingMode(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "kind, steps", [("RNN", 5), ("RNN", 1), ("RNNCell", None)], ids=["layer", "one step", "cell"]
)
def test_torch_function_is_honoured_as_nn_does(kind, steps):
    # Plain eager calls go straight into the dispatcher (rnnkern._C), which __torch_function__ never
    # sees: with a tensor subclass or a TorchFunctionMode about, they go through torch.ops instead.
    torch.manual_seed(0)
    if kind == "RNN":
        theirs = nn.RNN(3, 4, num_layers=2)
        ours = rnnkern.RNN(3, 4, num_layers=2)
        x = torch.randn(steps, 2, 3)
    else:
        theirs, ours = nn.RNNCell(3, 4), rnnkern.RNNCell(3, 4)
        x = torch.randn(2, 3)
    ours.load_state_dict(theirs.state_dict())

    def first(result):
        return result[0] if isinstance(result, tuple) else result

    expected = first(theirs(x.as_subclass(Tagged)))
    got = first(ours(x.as_subclass(Tagged)))
    assert type(expected) is Tagged and type(got) is Tagged
    torch.testing.assert_close(got.as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor))

    with RecordingMode() as mode:
        got = first(ours(x))
    # (A one-step RNN call then takes the layer operator, as under torch.jit.trace.)
    operator = "rnnkern.elman_cell" if kind == "RNNCell" else "rnnkern.elman_layer"
    assert any(name.startswith(operator) for name in mode.names), mode.names
    torch.testing.assert_close(got, first(theirs(x)))
