"""Under torch.autocast, rnnkern.RNN and RNNCell behave as nn.RNN and nn.RNNCell do: the same dtypes
out, the same values, and float32 gradients for the float32 parameters.

On the CPU, autocast runs nn.RNN in its lower-precision dtype; rnnkern has no CPU kernel for
bfloat16 or float16, so it hands such calls to torch's own RNN, which applies autocast's rules
itself (rnnkern/modules.py: _kernel_dtype). tests/cuda/test_cuda.py checks CUDA autocast, where the
CUDA kernels run the cast call.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import rnnkern
from tests.conftest import rnn_pair

AUTOCAST_DTYPES = [torch.bfloat16, torch.float16]


def outputs_and_grads(module, x, h0=None):
    out, h_n = module(x) if h0 is None else module(x, h0)
    data = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    return data, h_n


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_under_cpu_autocast_matches_nn_rnn(dtype, bidirectional):
    theirs, ours = rnn_pair(input_size=4, hidden_size=16, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(7, 3, 4, requires_grad=True)
    h0 = torch.randn(2 * (1 + bidirectional), 3, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # autocast is not a missing kernel: no fallback warning
        with torch.autocast("cpu", dtype=dtype):
            out, h_n = ours(x, h0)
            out_t, h_n_t = theirs(x, h0)
    assert (out.dtype, h_n.dtype) == (out_t.dtype, h_n_t.dtype) == (dtype, dtype)
    torch.testing.assert_close(out, out_t)
    torch.testing.assert_close(h_n, h_n_t)
    grads = torch.autograd.grad(out.float().sum(), [x, *ours.parameters()])
    grads_t = torch.autograd.grad(out_t.float().sum(), [x, *theirs.parameters()])
    for g, g_t in zip(grads, grads_t):
        assert g.dtype == g_t.dtype == torch.float32
        torch.testing.assert_close(g, g_t)


def test_packed_input_and_cell_under_cpu_autocast():
    theirs, ours = rnn_pair(input_size=3, hidden_size=8)
    packed = pack_sequence([torch.randn(n, 3) for n in (6, 4, 1)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = outputs_and_grads(ours, packed)
        out_t, h_n_t = outputs_and_grads(theirs, packed)
    assert out.dtype == out_t.dtype and h_n.dtype == h_n_t.dtype
    torch.testing.assert_close(out, out_t)

    cell_t = nn.RNNCell(3, 8)
    cell = rnnkern.RNNCell(3, 8)
    cell.load_state_dict(cell_t.state_dict())
    x, h = torch.randn(5, 3), torch.randn(5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_t = cell(x, h), cell_t(x, h)
    assert y.dtype == y_t.dtype
    torch.testing.assert_close(y, y_t)


def test_float64_module_under_autocast_stays_float64_and_uses_the_kernel():
    # autocast leaves float64 alone, so the fused float64 kernel still runs (and nn.RNN agrees).
    theirs, ours = rnn_pair(dtype=torch.float64, input_size=3, hidden_size=8)
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h_n = ours(x)
        out_t, _ = theirs(x)
    assert out.dtype == out_t.dtype == torch.float64
    torch.testing.assert_close(out, out_t, atol=1e-11, rtol=1e-9)
    # The kernel, not torch's RNN: the op shows up in the autograd graph.
    assert out.grad_fn.name().endswith("ElmanLayer>")


def test_autocast_disabled_is_plain_float32():
    theirs, ours = rnn_pair(input_size=3, hidden_size=8)
    x = torch.randn(6, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        out, _ = ours(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, theirs(x)[0], atol=2e-5, rtol=1e-4)
