"""The drop-in contract: construction, parameters, state_dicts, and the rest of nn.Module life."""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
from torch import nn

import rnnkern
from tests.conftest import GRAD_TOL, TOL, assert_close, grads, rnn_pair


@pytest.mark.parametrize(
    "config",
    [
        dict(input_size=3, hidden_size=4),
        dict(input_size=3, hidden_size=4, num_layers=3, bidirectional=True, bias=False),
        dict(
            input_size=2,
            hidden_size=6,
            num_layers=2,
            nonlinearity="relu",
            batch_first=True,
            dropout=0.2,
        ),
    ],
)
def test_same_parameters_names_shapes_and_init_as_nn_rnn(config):
    torch.manual_seed(11)
    theirs = nn.RNN(**config)
    torch.manual_seed(11)
    ours = rnnkern.RNN(**config)
    names_t = [(n, p.shape) for n, p in theirs.named_parameters()]
    names_o = [(n, p.shape) for n, p in ours.named_parameters()]
    assert names_o == names_t
    for (_, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(a, b)  # the same initialisation, draw for draw
    assert ours.extra_repr() == theirs.extra_repr()


def test_positional_arguments_like_nn_rnn():
    ours = rnnkern.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    theirs = nn.RNN(3, 4, 2, "relu", False, True, 0.0, True)
    assert ours.extra_repr() == theirs.extra_repr()


def test_state_dict_both_ways():
    theirs, ours = rnn_pair(input_size=3, hidden_size=5, num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3)
    back = nn.RNN(3, 5, 2, bidirectional=True)
    back.load_state_dict(ours.state_dict())
    assert_close(back(x)[0], ours(x)[0], TOL[torch.float32], "nn.RNN loaded from rnnkern")
    assert_close(ours(x)[0], theirs(x)[0], TOL[torch.float32], "rnnkern loaded from nn.RNN")


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_unbatched_input(batch_first, with_h0):
    theirs, ours = rnn_pair(
        input_size=3, hidden_size=5, num_layers=2, bidirectional=True, batch_first=batch_first
    )
    x = torch.randn(6, 3, requires_grad=True)
    h0 = torch.randn(4, 5, requires_grad=True)
    args = (x, h0) if with_h0 else (x,)
    out_t, hn_t = theirs(*args)
    out_o, hn_o = ours(*args)
    assert out_o.shape == out_t.shape == (6, 10) and hn_o.shape == hn_t.shape == (4, 5)
    assert_close(out_o, out_t, TOL[torch.float32], "output")
    assert_close(hn_o, hn_t, TOL[torch.float32], "h_n")
    inputs = list(args)
    for a, b in zip(grads((out_o, hn_o), inputs), grads((out_t, hn_t), inputs)):
        assert_close(a, b, GRAD_TOL[torch.float32], "grad")


def test_functional_call_uses_the_given_parameters():
    theirs, ours = rnn_pair(input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3)
    new = {n: torch.randn_like(p) for n, p in ours.named_parameters()}
    out_o = torch.func.functional_call(ours, new, (x,))[0]
    out_t = torch.func.functional_call(theirs, new, (x,))[0]
    assert_close(out_o, out_t, TOL[torch.float32], "functional_call")
    assert not torch.allclose(out_o, ours(x)[0])


def test_deepcopy_save_load_and_to_dtype(tmp_path):
    theirs, ours = rnn_pair(input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(5, 2, 3)
    expected = ours(x)[0]
    assert_close(copy.deepcopy(ours)(x)[0], expected, TOL[torch.float32], "deepcopy")
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded) is rnnkern.RNN
    assert_close(loaded(x)[0], expected, TOL[torch.float32], "torch.save/torch.load")
    path = tmp_path / "rnn.pt"
    torch.save(ours.state_dict(), path)
    fresh = rnnkern.RNN(3, 4, 2)
    fresh.load_state_dict(torch.load(path))
    assert_close(fresh(x)[0], expected, TOL[torch.float32], "state_dict file")
    as64 = copy.deepcopy(ours).to(torch.float64)
    out64 = as64(x.double())[0]
    assert out64.dtype == torch.float64
    assert_close(out64, theirs.double()(x.double())[0], TOL[torch.float64], "to(float64)")


def test_frozen_parameters_and_no_grad():
    theirs, ours = rnn_pair(input_size=3, hidden_size=4, num_layers=2, bidirectional=True)
    for module in (theirs, ours):
        module.weight_hh_l0.requires_grad_(False)
        module.bias_ih_l1_reverse.requires_grad_(False)
    x = torch.randn(5, 2, 3, requires_grad=True)
    trainable_o = [p for p in ours.parameters() if p.requires_grad]
    trainable_t = [p for p in theirs.parameters() if p.requires_grad]
    for a, b in zip(grads(ours(x), [x, *trainable_o]), grads(theirs(x), [x, *trainable_t])):
        assert_close(a, b, GRAD_TOL[torch.float32], "grad with frozen parameters")
    with torch.no_grad():
        out, h_n = ours(x)
    assert not out.requires_grad and not h_n.requires_grad
    for p in ours.parameters():
        p.requires_grad_(False)
    out, _ = ours(torch.randn(5, 2, 3))
    assert not out.requires_grad


def test_input_without_grad_still_trains_weights():
    theirs, ours = rnn_pair(input_size=3, hidden_size=4)
    x = torch.randn(5, 2, 3)
    for a, b in zip(
        grads(ours(x), list(ours.parameters())), grads(theirs(x), list(theirs.parameters()))
    ):
        assert_close(a, b, GRAD_TOL[torch.float32], "weight grads")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_rnn_cell_matches_nn_rnn_cell(nonlinearity, bias):
    torch.manual_seed(2)
    theirs = nn.RNNCell(4, 6, bias=bias, nonlinearity=nonlinearity)
    torch.manual_seed(2)
    ours = rnnkern.RNNCell(4, 6, bias=bias, nonlinearity=nonlinearity)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    x = torch.randn(3, 4, requires_grad=True)
    h = torch.randn(3, 6, requires_grad=True)
    for args in ((x, h), (x,), (x[0], h[0]), (x[0],)):
        out_o, out_t = ours(*args), theirs(*args)
        assert out_o.shape == out_t.shape
        assert_close(out_o, out_t, TOL[torch.float32], "cell output")
        inputs = [a for a in args]
        for a, b in zip(
            grads([out_o], inputs + list(ours.parameters())),
            grads([out_t], inputs + list(theirs.parameters())),
        ):
            assert_close(a, b, GRAD_TOL[torch.float32], "cell grad")


def test_replace_rnns_swaps_modules_and_keeps_parameters():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("encoder", nn.RNN(3, 8, 2, batch_first=True))
    inner = nn.Module()
    inner.cell = nn.RNNCell(8, 4, nonlinearity="relu")
    model.add_module("inner", inner)
    model.eval()
    x = torch.randn(2, 5, 3)
    enc_out = model.encoder(x)[0]
    cell_out = model.inner.cell(enc_out[:, -1])
    optimizer_params = list(model.parameters())

    rnnkern.replace_rnns(model)
    assert type(model.encoder) is rnnkern.RNN and type(model.inner.cell) is rnnkern.RNNCell
    assert not model.encoder.training
    assert all(a is b for a, b in zip(model.parameters(), optimizer_params))
    assert_close(model.encoder(x)[0], enc_out, TOL[torch.float32], "replaced RNN")
    assert_close(model.inner.cell(enc_out[:, -1]), cell_out, TOL[torch.float32], "replaced cell")
    assert type(rnnkern.replace_rnns(nn.RNN(2, 3))) is rnnkern.RNN


def test_nonlinearity_and_proj_size_errors():
    with pytest.raises(ValueError, match="tanh.*relu"):
        rnnkern.RNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="proj_size"):
        rnnkern.RNN(3, 4, proj_size=2)


def test_dtype_without_kernel_runs_torch_implementation_with_a_warning():
    theirs, ours = rnn_pair(input_size=3, hidden_size=4, dtype=torch.bfloat16)
    x = torch.randn(5, 2, 3, dtype=torch.bfloat16)
    rnnkern.modules._warned_fallback.clear()
    with pytest.warns(UserWarning, match="no fused kernel"):
        out_o = ours(x)[0]
    assert torch.equal(out_o, theirs(x)[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(x)  # warned once only


def test_meta_device_shapes():
    rnn = rnnkern.RNN(3, 4, 2, bidirectional=True, device="meta")
    out, h_n = rnn(torch.empty(5, 2, 3, device="meta"))
    assert out.shape == (5, 2, 8) and h_n.shape == (4, 2, 4) and out.device.type == "meta"


def test_non_contiguous_strided_and_expanded_tensors_like_nn_rnn():
    # Inputs, states and even parameters that are views with unusual strides give nn.RNN's results.
    theirs, ours = rnn_pair(input_size=4, hidden_size=8, num_layers=2, bidirectional=True)
    wide = torch.randn(7, 3, 8)
    cases = {
        "strided input": (wide[..., ::2], torch.randn(4, 3, 8)),
        "transposed input": (torch.randn(3, 7, 4).transpose(0, 1), torch.randn(4, 3, 8)),
        "expanded input": (torch.randn(1, 3, 4).expand(7, 3, 4), torch.randn(4, 3, 8)),
        "expanded h0": (torch.randn(7, 3, 4), torch.randn(4, 1, 8).expand(4, 3, 8)),
        "strided h0": (torch.randn(7, 3, 4), torch.randn(4, 3, 16)[..., 1::2]),
    }
    for what, (x, h0) in cases.items():
        assert not (x.is_contiguous() and h0.is_contiguous()), what
        x = x.detach().requires_grad_()
        out, h_n = ours(x, h0)
        out_t, h_n_t = theirs(x, h0)
        assert_close(out, out_t, TOL[torch.float32], what)
        assert_close(h_n, h_n_t, TOL[torch.float32], what)
        (g,) = torch.autograd.grad(out.sum(), x)
        (g_t,) = torch.autograd.grad(out_t.sum(), x)
        assert_close(g, g_t, GRAD_TOL[torch.float32], what)

    # Parameters passed as transposed views (torch.func.functional_call).
    params = {
        n: p.detach().t().contiguous().t() if p.dim() == 2 else p.detach()[None].expand(2, -1)[0]
        for n, p in ours.named_parameters()
    }
    assert not all(p.is_contiguous() for p in params.values())
    x = torch.randn(5, 3, 4)
    out = torch.func.functional_call(ours, params, (x,))[0]
    assert_close(out, theirs(x)[0], TOL[torch.float32], "strided parameters")
