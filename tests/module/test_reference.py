"""The NumPy reference: first checked against torch.nn.RNN itself, then used as rnnkern's oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern
from rnnkern import reference

CASES = [
    # num_layers, bidirectional, nonlinearity, bias, seq_len, batch, lengths
    (1, False, "tanh", True, 6, 3, None),
    (2, True, "relu", True, 5, 4, None),
    (3, True, "tanh", False, 4, 2, None),
    (1, False, "relu", False, 7, 5, [7, 5, 5, 2, 1]),
    (2, True, "tanh", True, 6, 4, [6, 6, 3, 1]),
]


def numpy_weights(module):
    return [w.detach().cpu().double().numpy() for w in module._flat_weights]


def run_torch(module, x, h0, lengths):
    """Outputs and gradients of a torch module (nn.RNN or rnnkern.RNN), padded for lengths."""
    x = x.clone().requires_grad_()
    h0 = h0.clone().requires_grad_()
    if lengths is None:
        out, h_n = module(x, h0)
    else:
        packed, h_n = module(
            pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False), h0
        )
        out, _ = pad_packed_sequence(packed, total_length=x.shape[0])
    gen = torch.Generator().manual_seed(7)
    d_out = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    d_hn = torch.randn(h_n.shape, generator=gen, dtype=out.dtype)
    if lengths is not None:  # padding positions are not outputs
        mask = torch.arange(x.shape[0])[:, None] < torch.tensor(lengths)[None, :]
        d_out = d_out * mask[..., None]
    params = list(module.parameters())
    g = torch.autograd.grad((out * d_out).sum() + (h_n * d_hn).sum(), [x, h0, *params])
    return out, h_n, d_out, d_hn, g


def run_reference(module, x, h0, lengths, d_out, d_hn, bidirectional, num_layers):
    out, h_n, cache = reference.rnn_forward(
        x.double().numpy(),
        h0.double().numpy(),
        numpy_weights(module),
        num_layers,
        bidirectional,
        module.nonlinearity,
        None if lengths is None else np.array(lengths),
    )
    g = reference.rnn_backward(d_out.double().numpy(), d_hn.double().numpy(), cache)
    return out, h_n, [g["dx"], g["dh0"], *g["d_flat_weights"]]


@pytest.mark.parametrize("impl", ["torch.nn.RNN", "rnnkern.RNN"])
@pytest.mark.parametrize("case", CASES)
def test_against_reference(impl, case):
    num_layers, bidirectional, nonlinearity, bias, seq_len, batch, lengths = case
    torch.manual_seed(3)
    cls = torch.nn.RNN if impl == "torch.nn.RNN" else rnnkern.RNN
    module = cls(
        4,
        6,
        num_layers,
        nonlinearity=nonlinearity,
        bias=bias,
        bidirectional=bidirectional,
        dtype=torch.float64,
    )
    directions = 2 if bidirectional else 1
    x = torch.randn(seq_len, batch, 4, dtype=torch.float64)
    h0 = torch.randn(num_layers * directions, batch, 6, dtype=torch.float64)
    out, h_n, d_out, d_hn, g = run_torch(module, x, h0, lengths)
    ref_out, ref_hn, ref_g = run_reference(
        module, x, h0, lengths, d_out, d_hn, bidirectional, num_layers
    )
    np.testing.assert_allclose(out.detach().numpy(), ref_out, atol=1e-12, rtol=1e-10)
    np.testing.assert_allclose(h_n.detach().numpy(), ref_hn, atol=1e-12, rtol=1e-10)
    names = ["dx", "dh0"] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, g, ref_g):
        np.testing.assert_allclose(a.numpy(), b, atol=1e-11, rtol=1e-9, err_msg=name)


def test_layer_backward_matches_finite_differences():
    """The reference's own BPTT against central differences of its forward (no torch at all)."""
    rng = np.random.default_rng(0)
    T, B, I, H = 5, 2, 3, 4
    x, h0 = rng.standard_normal((T, B, I)), rng.standard_normal((B, H))
    w_ih, w_hh = rng.standard_normal((H, I)) * 0.5, rng.standard_normal((H, H)) * 0.5
    b_ih, b_hh = rng.standard_normal(H), rng.standard_normal(H)
    dy, dhn = rng.standard_normal((T, B, H)), rng.standard_normal((B, H))
    lengths = np.array([5, 3])

    def loss(w_hh_):
        h, h_n = reference.layer_forward(x, h0, w_ih, w_hh_, b_ih, b_hh, "tanh", True, lengths)
        return (h * dy).sum() + (h_n * dhn).sum()

    h, _ = reference.layer_forward(x, h0, w_ih, w_hh, b_ih, b_hh, "tanh", True, lengths)
    g = reference.layer_backward(dy, dhn, x, h0, w_ih, w_hh, h, "tanh", True, lengths)
    numeric = np.zeros_like(w_hh)
    eps = 1e-6
    for idx in np.ndindex(*w_hh.shape):
        plus, minus = w_hh.copy(), w_hh.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (loss(plus) - loss(minus)) / (2 * eps)
    np.testing.assert_allclose(g["dw_hh"], numeric, rtol=1e-6, atol=1e-8)
