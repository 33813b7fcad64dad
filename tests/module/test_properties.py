"""Property-based tests: rnnkern.RNN against nn.RNN and the NumPy reference on drawn configurations.

Hypothesis draws every shape from 1 up (sequence length, batch, input and hidden size), layers,
directions, nonlinearity, bias, batch_first, variable lengths (PackedSequence), dtype and the scale
of inputs and weights: large enough to saturate tanh, or to make relu grow layer after layer. Each
example compares the output, h_n and the gradient of every input and parameter. The runs are
derandomized (the same examples every time), so CI cannot pass or fail by chance. Where a GPU is
visible the same examples run rnnkern's CUDA kernels too (against nn.RNN on the CPU).
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkern
from tests.conftest import RNN_ARGS
from tests.module.test_reference import run_reference

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    # The device fixture only names a device; it holds no state between examples.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=5e-5, rtol=5e-4),
}


@st.composite
def configurations(draw):
    steps = draw(st.integers(1, 12))
    batch = draw(st.integers(1, 5))
    packed = draw(st.booleans())
    lengths = None
    if packed:
        lengths = draw(st.lists(st.integers(1, steps), min_size=batch, max_size=batch))
        lengths[draw(st.integers(0, batch - 1))] = steps  # the longest sets the padded length
    return dict(
        steps=steps,
        batch=batch,
        input_size=draw(st.integers(1, 6)),
        hidden_size=draw(st.integers(1, 12)),
        num_layers=draw(st.integers(1, 3)),
        bidirectional=draw(st.booleans()),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        lengths=lengths,
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        scale=draw(st.sampled_from([0.1, 1.0, 4.0])),  # 4: tanh saturates, relu grows
        with_h0=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def run(module, x, h0, lengths, batch_first, cotangents):
    """Output (padded, sequence-first), h_n and every gradient of one module, back on the CPU."""
    device = next(module.parameters()).device
    x = x.to(device, copy=True).requires_grad_()
    h0 = None if h0 is None else h0.to(device, copy=True).requires_grad_()
    xin = x.transpose(0, 1) if batch_first else x
    if lengths is not None:
        xin = pack_padded_sequence(xin, torch.tensor(lengths), batch_first, enforce_sorted=False)
    out, h_n = module(xin, h0)
    if lengths is not None:
        out, _ = pad_packed_sequence(out, batch_first, total_length=x.shape[0])
    if batch_first:
        out = out.transpose(0, 1)
    d_out, d_hn = (c.to(device) for c in cotangents)
    inputs = [x] + ([] if h0 is None else [h0]) + list(module.parameters())
    grads = torch.autograd.grad((out * d_out).sum() + (h_n * d_hn).sum(), inputs)
    return out.cpu(), h_n.cpu(), [g.cpu() for g in grads]


def drawn_modules(c: dict, device="cpu") -> tuple[nn.RNN, rnnkern.RNN]:
    """nn.RNN (on the CPU) and rnnkern.RNN (on device) of a drawn configuration, with the same
    weights, scaled by the drawn scale."""
    torch.manual_seed(c["seed"])
    config = {k: c[k] for k in RNN_ARGS}
    theirs = nn.RNN(**config, dtype=c["dtype"])
    with torch.no_grad():
        for w in theirs.parameters():
            w.mul_(c["scale"])
    ours = rnnkern.RNN(**config, dtype=c["dtype"], device=device)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@PROPERTY_SETTINGS
@given(c=configurations())
def test_matches_nn_rnn_and_the_numpy_reference(device, c):
    dtype = c["dtype"]
    theirs, ours = drawn_modules(c, device)

    directions = 2 if c["bidirectional"] else 1
    x = torch.randn(c["steps"], c["batch"], c["input_size"], dtype=dtype) * c["scale"]
    h0 = (
        torch.randn(c["num_layers"] * directions, c["batch"], c["hidden_size"], dtype=dtype)
        if c["with_h0"]
        else None
    )
    d_out = torch.randn(c["steps"], c["batch"], directions * c["hidden_size"], dtype=dtype)
    d_hn = torch.randn(c["num_layers"] * directions, c["batch"], c["hidden_size"], dtype=dtype)
    if c["lengths"] is not None:  # padding positions are not outputs
        mask = torch.arange(c["steps"])[:, None] < torch.tensor(c["lengths"])[None, :]
        d_out = d_out * mask[..., None]

    out, h_n, grads = run(ours, x, h0, c["lengths"], c["batch_first"], (d_out, d_hn))
    out_t, h_n_t, grads_t = run(theirs, x, h0, c["lengths"], c["batch_first"], (d_out, d_hn))

    # Relative to the largest value: relu at scale 4 grows by orders of magnitude per layer.
    def close(a, b, what):
        scale = max(1.0, b.abs().max().item())
        torch.testing.assert_close(
            a / scale, b / scale, **TOL[dtype], msg=lambda m: f"{what}: {m} (config {c})"
        )

    close(out, out_t, "output")
    close(h_n, h_n_t, "h_n")
    names = ["input"] + (["h0"] if h0 is not None else []) + [n for n, _ in ours.named_parameters()]
    for name, g, g_t in zip(names, grads, grads_t):
        close(g, g_t, f"grad of {name}")

    if dtype == torch.float64:
        h0_ref = h0 if h0 is not None else torch.zeros_like(d_hn)
        ref_out, ref_hn, ref_grads = run_reference(
            ours, x, h0_ref, c["lengths"], d_out, d_hn, c["bidirectional"], c["num_layers"]
        )
        close(out, torch.from_numpy(np.asarray(ref_out)), "output vs reference")
        close(h_n, torch.from_numpy(np.asarray(ref_hn)), "h_n vs reference")
        dx, dh0, *d_weights = (torch.from_numpy(np.asarray(g)) for g in ref_grads)
        expected = [dx] + ([dh0] if h0 is not None else []) + d_weights
        for name, g, g_ref in zip(names, grads, expected, strict=True):
            close(g, g_ref, f"grad of {name} vs reference")
