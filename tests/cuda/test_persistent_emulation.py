"""The persistent CUDA kernels' recurrences, run on the CPU by csrc/persistent/emulate.cpp.

The emulation calls the kernels' own per-thread step functions (csrc/persistent/recurrence_steps.h)
for every thread of every block of the kernels' launch plan, phase by phase between the barriers,
so the indexing, the packed-sequence handling, both directions and the state carry of the CUDA
kernels are checked here against torch.nn.RNN without a GPU. Small made-up devices force the plan
into many blocks per group, many batch slices and many outputs per thread.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

from rnnkern import _testing

P = _testing  # the test-only module (csrc/testing/)

H100 = (132, 232448, 1024, True)
DEVICES = {
    "H100": H100,
    # Few multiprocessors, little shared memory, one warp: M split over blocks, batch in slices,
    # several outputs per thread.
    "tiny": (12, 2048, 32, True),
    "tiny-wide": (4, 20000, 64, True),
}


def layer_case(seed, steps, batch, hidden, bidirectional, relu, packed, dtype):
    """An nn.RNN layer, an input (padded or packed), its projection Y = X W_ih^T + b, and h0."""
    torch.manual_seed(seed)
    input_size = hidden + 2  # >= hidden: grad_input then pins dz down (dz = grad_input W_ih^+)
    rnn = nn.RNN(
        input_size,
        hidden,
        nonlinearity="relu" if relu else "tanh",
        bidirectional=bidirectional,
        dtype=dtype,
    )
    directions = 2 if bidirectional else 1
    h0 = torch.randn(directions, batch, hidden, dtype=dtype, requires_grad=True)
    if packed:
        lengths = torch.randint(1, steps + 1, (batch,)).sort(descending=True).values
        lengths[0] = steps
        seqs = [torch.randn(int(n), input_size, dtype=dtype) for n in lengths]
        x = pack_sequence(seqs)
        data, batch_sizes = x.data.requires_grad_(), x.batch_sizes
        x = torch.nn.utils.rnn.PackedSequence(data, batch_sizes)
    else:
        data = torch.randn(steps, batch, input_size, dtype=dtype, requires_grad=True)
        x, batch_sizes = data, None
    suffixes = ["", "_reverse"][:directions]
    w_ih = [getattr(rnn, f"weight_ih_l0{s}") for s in suffixes]
    w_hh = [getattr(rnn, f"weight_hh_l0{s}").detach() for s in suffixes]
    bias = [getattr(rnn, f"bias_ih_l0{s}") + getattr(rnn, f"bias_hh_l0{s}") for s in suffixes]
    flat = data.reshape(-1, input_size).detach()
    projected = torch.cat([flat @ w.detach().T + b.detach() for w, b in zip(w_ih, bias)], dim=1)
    return rnn, x, data, h0, projected, w_hh, w_ih, batch_sizes


CASES = [
    # steps, batch, hidden, bidirectional, relu, packed
    (1, 1, 1, False, False, False),
    (9, 1, 7, False, False, False),
    (6, 4, 20, True, False, False),
    (8, 5, 16, False, True, False),
    (7, 6, 33, True, True, True),
    (10, 3, 12, False, False, True),
    (5, 9, 9, True, False, True),
]


def case_id(c):
    steps, batch, hidden, bidirectional, relu, packed = c
    flags = "-bi" * bidirectional + "-relu" * relu + "-packed" * packed
    return f"T{steps}B{batch}H{hidden}{flags}"


def fitting_runs():
    """(device, algorithm, case) for every case the algorithm fits on that device (in float64)."""
    for name, device in DEVICES.items():
        for algorithm in ("block", "grid"):
            for case in CASES:
                _, batch, hidden, bidirectional, _, _ = case
                p = P.plan_launch(hidden, batch, 1 + bidirectional, 8, 8, device, algorithm)
                if p["algorithm"] == algorithm:
                    yield pytest.param(
                        device, algorithm, case, id=f"{name}-{algorithm}-{case_id(case)}"
                    )


@pytest.mark.parametrize(("device", "algorithm", "case"), list(fitting_runs()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_emulated_kernels_match_nn_rnn(device, algorithm, case, dtype):
    steps, batch, hidden, bidirectional, relu, packed = case
    directions = 2 if bidirectional else 1
    tol = dict(atol=1e-12, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-5, rtol=1e-4)
    rnn, x, data, h0, projected, w_hh, w_ih, batch_sizes = layer_case(sum(case[:3]), *case, dtype)

    out, h_n = rnn(x, h0)
    out = out.data if packed else out.reshape(-1, directions * hidden)
    y, our_h_n, used = P.emulate_forward(
        projected, h0.detach(), w_hh, batch_sizes, relu, device, algorithm
    )
    assert used == algorithm
    torch.testing.assert_close(y, out.detach(), **tol)
    torch.testing.assert_close(our_h_n, h_n.detach(), **tol)

    dy = torch.randn_like(out)
    dh_n = torch.randn_like(h_n)
    grad_data, grad_h0, *grad_w = torch.autograd.grad(
        (out * dy).sum() + (h_n * dh_n).sum(), [data, h0, *w_ih]
    )
    dz, our_grad_h0, used = P.emulate_backward(
        y, dy, dh_n, w_hh, batch_sizes, relu, device, algorithm
    )
    assert used == algorithm
    torch.testing.assert_close(our_grad_h0, grad_h0, **tol)
    # dL/dX = dZ W_ih (both directions), and dL/dW_ih = dZ^T X: with input_size >= hidden these
    # determine every row of dz.
    w_ih_stacked = torch.cat([w.detach() for w in w_ih], dim=0)
    torch.testing.assert_close(dz @ w_ih_stacked, grad_data.reshape(dz.shape[0], -1), **tol)
    flat = data.detach().reshape(dz.shape[0], -1)
    for d in range(directions):
        dz_d = dz[:, d * hidden : (d + 1) * hidden]
        torch.testing.assert_close(dz_d.T @ flat, grad_w[d], **tol)


def test_the_made_up_devices_exercise_every_part_of_the_plan():
    # Otherwise the test above could pass without ever splitting M or the batch.
    seen = set()
    for case in CASES:
        steps, batch, hidden, bidirectional, relu, packed = case
        for device in DEVICES.values():
            for algorithm in ("block", "grid"):
                p = P.plan_launch(hidden, batch, 1 + bidirectional, 8, 8, device, algorithm)
                if p["algorithm"] == "per_step":
                    continue
                seen.add(("several blocks per group", p["blocks_per_group"] > 1))
                seen.add(("several batch slices", p["groups_per_direction"] > 1))
                seen.add(("several outputs per thread", p["outputs_per_thread"] > 1))
                seen.add(("partial last block", hidden % p["rows_per_block"] != 0))
                seen.add(("dot products split over lanes", p["split"] > 1))
                seen.add(("rows of M padded", p["m_stride"] > hidden))
    assert all((what, True) in seen for what, _ in seen), seen


def test_emulation_refuses_a_shape_without_a_persistent_plan():
    w = [torch.randn(8, 8)]
    with pytest.raises(RuntimeError, match="no persistent plan"):
        P.emulate_forward(
            torch.randn(4, 8), torch.randn(1, 1, 8), w, None, False, (1, 64, 32, True), "block"
        )
