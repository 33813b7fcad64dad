"""The CUDA kernels (csrc/cuda/): against nn.RNN (cuDNN), the CPU kernels and gradcheck on the GPU.

Skipped, with the reason, where torch sees no GPU or this build has no CUDA kernels. The last test
runs everywhere: CUDA kernels not yet verified on a GPU stay opt-in.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import rnnkern
from rnnkern import _ops

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or not rnnkern._C.has_cuda_kernels(),
    reason="no CUDA GPU visible to torch, or this build has no CUDA kernels",
)
TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float16: dict(atol=2e-2, rtol=2e-2),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}


@pytest.fixture
def cuda_kernels(monkeypatch):
    monkeypatch.setitem(_ops.KERNEL_DTYPES, "cuda", tuple(TOL))


@needs_gpu
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_cuda_matches_cpu_kernels_and_nn_rnn(
    cuda_kernels, dtype, bidirectional, nonlinearity, batch
):
    torch.manual_seed(0)
    cpu = rnnkern.RNN(
        5, 24, 2, nonlinearity=nonlinearity, bidirectional=bidirectional, dtype=torch.float64
    )
    x = torch.randn(20, batch, 5, dtype=torch.float64)
    expected, expected_hn = cpu(x)
    gpu = rnnkern.RNN(
        5, 24, 2, nonlinearity=nonlinearity, bidirectional=bidirectional, device="cuda", dtype=dtype
    )
    gpu.load_state_dict(cpu.state_dict())
    theirs = torch.nn.RNN(
        5, 24, 2, nonlinearity=nonlinearity, bidirectional=bidirectional, device="cuda", dtype=dtype
    )
    theirs.load_state_dict(cpu.state_dict())
    xg = x.to("cuda", dtype).requires_grad_()
    out, h_n = gpu(xg)
    torch.testing.assert_close(out.double().cpu(), expected, **TOL[dtype])
    torch.testing.assert_close(h_n.double().cpu(), expected_hn, **TOL[dtype])
    out_t, _ = theirs(xg)
    torch.testing.assert_close(out, out_t, **TOL[dtype])
    g = torch.autograd.grad(out.float().square().sum(), [xg, *gpu.parameters()])
    g_t = torch.autograd.grad(out_t.float().square().sum(), [xg, *theirs.parameters()])
    for a, b in zip(g, g_t):
        torch.testing.assert_close(a, b, **{k: 10 * v for k, v in TOL[dtype].items()})


@needs_gpu
def test_cuda_packed_sequences(cuda_kernels):
    torch.manual_seed(1)
    theirs = torch.nn.RNN(3, 16, bidirectional=True, device="cuda")
    ours = rnnkern.RNN(3, 16, bidirectional=True, device="cuda")
    ours.load_state_dict(theirs.state_dict())
    seqs = [torch.randn(n, 3, device="cuda") for n in (9, 4, 6, 1)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    out_t, hn_t = theirs(packed)
    out_o, hn_o = ours(packed)
    torch.testing.assert_close(out_o.data, out_t.data, **TOL[torch.float32])
    torch.testing.assert_close(hn_o, hn_t, **TOL[torch.float32])


@needs_gpu
def test_cuda_gradcheck_float64():
    D, T, B, I, H = 2, 4, 3, 3, 5
    opts = dict(device="cuda", dtype=torch.float64, requires_grad=True)
    x = torch.randn(T, B, I, **opts)
    hx = torch.randn(D, B, H, **opts)
    weights = [
        torch.randn(*shape, **opts) for _ in range(D) for shape in ((H, I), (H, H), (H,), (H,))
    ]

    def fn(x, hx, *w):
        return rnnkern.elman_layer(x, hx, w, None, "tanh")

    assert torch.autograd.gradcheck(fn, (x, hx, *weights))


@needs_gpu
def test_cuda_same_results_every_run(cuda_kernels):
    torch.manual_seed(2)
    rnn = rnnkern.RNN(8, 32, device="cuda")
    x = torch.randn(50, 4, 8, device="cuda")
    first = rnn(x)[0]
    for _ in range(5):
        assert torch.equal(rnn(x)[0], first)


def test_unverified_cuda_kernels_are_opt_in():
    enabled = "cuda" in _ops.KERNEL_DTYPES
    assert enabled == (
        rnnkern._C.has_cuda_kernels() and os.environ.get("RNNKERN_CUDA_KERNELS") == "1"
    )


@needs_gpu
def test_cuda_empty_batch(cuda_kernels):
    rnn = rnnkern.RNN(3, 8, bidirectional=True, device="cuda")
    x = torch.randn(5, 0, 3, device="cuda", requires_grad=True)
    out, h_n = rnn(x)
    assert out.shape == (5, 0, 16) and h_n.shape == (2, 0, 8)
    (out.sum() + h_n.sum()).backward()
    assert x.grad.shape == x.shape
