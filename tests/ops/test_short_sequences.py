"""Short layers on the CPU: a layer call of few rows (steps x batch) at small batch runs step by step
on the cell kernel, its weights read as stored, and longer or wider ones on the long-sequence paths
(csrc/cpu/elman_cpu.h, short_on_cell_kernel; at batch 1 with large weights only the backward:
short_forward_on_cell_kernel). Both sides of that bound, against nn.RNN in float64:
the output, h_n, every gradient together and each gradient alone (the backward computes only what
autograd asks for), dense and packed, one direction and two; and gradcheck on the cell kernel."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkern
from tests.conftest import GRAD_TOL, TOL, assert_close

MAX_ROWS, MAX_BATCH = rnnkern._C.cpu_cell_kernel_bound()

# (steps, batch) on the cell kernel, and just past it in rows or in batch.
ON_CELL_KERNEL = [(MAX_ROWS, 1), (MAX_ROWS // MAX_BATCH, MAX_BATCH), (1, MAX_BATCH), (3, 5)]
PAST_IT = [(MAX_ROWS + 1, 1), (MAX_ROWS // MAX_BATCH + 1, MAX_BATCH), (1, MAX_BATCH + 1)]


def layer_and_reference(bidirectional, nonlinearity, bias, input_size=5, hidden=13):
    """nn.RNN (one layer, float64) and the same weights as the list rnnkern.elman_layer takes."""
    torch.manual_seed(0)
    reference = nn.RNN(
        input_size,
        hidden,
        nonlinearity=nonlinearity,
        bias=bias,
        bidirectional=bidirectional,
        dtype=torch.float64,
    )
    return reference, list(reference._flat_weights)


def run_both(reference, weights, x, h0, nonlinearity, lengths=None):
    """(nn.RNN's output, h_n) and (rnnkern.elman_layer's), as dense tensors (packed data for a
    packed input)."""
    if lengths is None:
        ours = rnnkern.elman_layer(x, h0, weights, None, nonlinearity)
        return reference(x, h0), ours
    packed = pack_padded_sequence(x, lengths, enforce_sorted=True)
    out, h_n = reference(packed, h0)
    ours = rnnkern.elman_layer(packed.data, h0, weights, packed.batch_sizes, nonlinearity)
    return (out.data, h_n), ours


@pytest.mark.parametrize(
    "steps,batch",
    ON_CELL_KERNEL + PAST_IT,
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("nonlinearity,bias", [("tanh", True), ("relu", False)])
def test_short_layer_matches_nn_rnn(steps, batch, bidirectional, packed, nonlinearity, bias):
    reference, weights = layer_and_reference(bidirectional, nonlinearity, bias)
    lengths = None
    if packed:  # sorted lengths from `steps` down, so that rows leave at different steps
        lengths = torch.tensor([max(steps - i, 1) for i in range(batch)])
    assert_matches_nn_rnn(reference, weights, steps, batch, nonlinearity, lengths)


# Batch 1 with weights of more than 3 x 2^17 multiply-adds a step ((input + hidden) x hidden): a
# short layer's forward takes the long-sequence paths (short_forward_on_cell_kernel), its backward
# stays on the cell kernel.
@pytest.mark.parametrize("steps", [1, 4, MAX_ROWS], ids=lambda v: f"{v} steps")
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("nonlinearity,bias", [("tanh", True), ("relu", False)])
def test_short_layer_with_large_weights_at_batch_1_matches_nn_rnn(
    steps, bidirectional, nonlinearity, bias
):
    reference, weights = layer_and_reference(
        bidirectional, nonlinearity, bias, input_size=512, hidden=450
    )
    assert (512 + 450) * 450 > 3 << 17
    assert_matches_nn_rnn(reference, weights, steps, 1, nonlinearity, None)


def assert_matches_nn_rnn(reference, weights, steps, batch, nonlinearity, lengths):
    """rnnkern.elman_layer's output, h_n and gradients (all together, and each alone) against
    nn.RNN's, in float64, on random inputs."""
    directions = 2 if reference.bidirectional else 1
    x = torch.randn(steps, batch, reference.input_size, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(
        directions, batch, reference.hidden_size, dtype=torch.float64, requires_grad=True
    )
    (out_t, hn_t), (out_o, hn_o) = run_both(reference, weights, x, h0, nonlinearity, lengths)
    assert_close(out_o, out_t, TOL[torch.float64], "output")
    assert_close(hn_o, hn_t, TOL[torch.float64], "h_n")

    gen = torch.Generator().manual_seed(1)
    g_out = torch.randn(out_t.shape, generator=gen, dtype=torch.float64)
    g_hn = torch.randn(hn_t.shape, generator=gen, dtype=torch.float64)

    def gradients(out, h_n, wrt):
        total = (out * g_out).sum() + (h_n * g_hn).sum()
        return torch.autograd.grad(total, wrt, retain_graph=True)

    named = {"x": x, "h0": h0, **{f"weight {i}": w for i, w in enumerate(weights)}}
    weight_names = [name for name in named if name.startswith("weight")]
    # Every gradient at once, then x alone, h0 alone, the weights alone.
    for names in (list(named), ["x"], ["h0"], weight_names):
        wrt = [named[name] for name in names]
        for name, g_o, g_t in zip(
            names, gradients(out_o, hn_o, wrt), gradients(out_t, hn_t, wrt), strict=True
        ):
            assert_close(g_o, g_t, GRAD_TOL[torch.float64], f"grad of {name} (of {names})")


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_gradcheck_on_the_cell_kernel(bidirectional, packed):
    _, weights = layer_and_reference(bidirectional, "tanh", True, input_size=3, hidden=4)
    directions = 2 if bidirectional else 1
    steps, batch = 4, 3
    assert steps * batch <= MAX_ROWS and batch <= MAX_BATCH
    h0 = torch.randn(directions, batch, 4, dtype=torch.float64, requires_grad=True)
    if packed:
        batch_sizes = torch.tensor([3, 3, 2, 1])
        x = torch.randn(int(batch_sizes.sum()), 3, dtype=torch.float64, requires_grad=True)
    else:
        batch_sizes = None
        x = torch.randn(steps, batch, 3, dtype=torch.float64, requires_grad=True)
    weights = [w.detach().requires_grad_() for w in weights]

    def layer(x, h0, *weights):
        return rnnkern.elman_layer(x, h0, list(weights), batch_sizes, "tanh")

    assert torch.autograd.gradcheck(layer, (x, h0, *weights))
