"""The CUDA kernels (csrc/cuda/) on a GPU: every algorithm (persistent block, persistent grid,
per-step) against nn.RNN (cuDNN), the CPU kernels in float64, the NumPy reference and gradcheck.

Skipped, with the reason, where torch sees no GPU or this build has no CUDA kernels; the launch
plan and the persistent recurrences are checked without a GPU by tests/cuda/test_launch_plan.py and
tests/cuda/test_persistent_emulation.py. The last tests run everywhere.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

import rnnkern
from rnnkern import _ops, reference
from tests.conftest import needs_gpu

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# Against a float64 reference: float32 arithmetic; half and bfloat16 with float32 accumulation and
# state, rounded to 11 and 8 bits where they are stored.
TOL = {
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
}
GRAD_TOL = {k: {n: 10 * v for n, v in tol.items()} for k, tol in TOL.items()}
ALGORITHMS = ["block", "grid", "per_step"]


@pytest.fixture(autouse=True)
def cudnn_without_tf32(monkeypatch):
    # cuDNN runs float32 RNNs in TF32 by default (about 1e-3 relative); rnnkern's float32 is full
    # float32. Compare against full-precision cuDNN.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.fixture
def cuda_kernels(monkeypatch):
    monkeypatch.setitem(_ops.KERNEL_DTYPES, "cuda", tuple(DTYPES))


@pytest.fixture(params=ALGORITHMS)
def algorithm(request, monkeypatch, cuda_kernels):
    monkeypatch.setenv("RNNKERN_CUDA_ALGORITHM", request.param)
    return request.param


def plan(hidden, batch, directions, dtype, algorithm="auto"):
    return _ops.cuda_launch_plan(hidden, batch, directions, dtype, algorithm)


def layer_weights(hidden, input_size, directions, dtype, device="cuda", bias=True, scale=None):
    scale = scale or hidden**-0.5
    shapes = [(hidden, input_size), (hidden, hidden)] + [(hidden,), (hidden,)] * bias
    return [
        (torch.rand(*s, dtype=torch.float64) * 2 - 1).mul(scale).to(device, dtype)
        for _ in range(directions)
        for s in shapes
    ]


def compare_layer_with_cpu(steps, batch, hidden, directions, dtype, relu=False, lengths=None):
    """One elman_layer call, forward and backward, on the GPU in `dtype` and on the CPU in float64."""
    input_size = 6
    weights = layer_weights(hidden, input_size, directions, dtype)
    x = torch.randn(steps, batch, input_size, dtype=torch.float64)
    h0 = torch.randn(directions, batch, hidden, dtype=torch.float64) * 0.5
    batch_sizes = None
    if lengths is not None:
        packed = pack_sequence([x[: int(n), b] for b, n in enumerate(lengths)])
        x, batch_sizes = packed.data, packed.batch_sizes
    nonlinearity = "relu" if relu else "tanh"

    def run(device, dt):
        xs = x.to(device, dt).requires_grad_()
        hs = h0.to(device, dt).requires_grad_()
        ws = [w.detach().to(device, dt).requires_grad_() for w in weights]
        out, h_n = rnnkern.elman_layer(xs, hs, ws, batch_sizes, nonlinearity)
        gen = torch.Generator().manual_seed(7)
        dy = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(device, dt)
        dh = torch.randn(h_n.shape, generator=gen, dtype=torch.float64).to(device, dt)
        grads = torch.autograd.grad((out * dy).sum() + (h_n * dh).sum(), [xs, hs, *ws])
        return [t.detach().double().cpu() for t in (out, h_n, *grads)]

    expected = run("cpu", torch.float64)
    actual = run("cuda", dtype)
    names = ["output", "h_n", "grad_input", "grad_hx"] + [
        f"grad_weight[{i}]" for i in range(len(weights))
    ]
    for name, a, e in zip(names, actual, expected):
        tol = TOL[dtype] if name in ("output", "h_n") else GRAD_TOL[dtype]
        torch.testing.assert_close(a, e, **tol, msg=lambda m, n=name: f"{n}: {m}")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_cuda_matches_cpu_kernels_and_nn_rnn(algorithm, dtype, bidirectional, nonlinearity, batch):
    torch.manual_seed(0)
    config = dict(
        input_size=5,
        hidden_size=24,
        num_layers=2,
        nonlinearity=nonlinearity,
        bidirectional=bidirectional,
    )
    cpu = rnnkern.RNN(**config, dtype=torch.float64)
    x = torch.randn(20, batch, 5, dtype=torch.float64)
    expected, expected_hn = cpu(x)
    gpu = rnnkern.RNN(**config, device="cuda", dtype=dtype)
    gpu.load_state_dict(cpu.state_dict())
    theirs = torch.nn.RNN(**config, device="cuda", dtype=dtype)
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
        torch.testing.assert_close(a, b, **GRAD_TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_packed_sequences(algorithm, dtype):
    compare_layer_with_cpu(9, 4, 16, 2, dtype, lengths=[9, 6, 4, 1])
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
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["block", "grid"])
def test_cuda_shapes_around_every_launch_boundary(cuda_kernels, dtype, kind):
    # The largest hidden size the algorithm takes on this GPU, and one more (which goes to the
    # next algorithm), at batch 1 and at a batch split over several blocks.
    largest = max(h for h in range(1, 4097) if plan(h, 1, 1, dtype, kind)["algorithm"] == kind)
    for hidden in (largest, largest + 1):
        for batch, directions in ((1, 1), (5, 2)):
            compare_layer_with_cpu(6, batch, hidden, directions, dtype)
    for batch in (1, 2, 33, 200):
        compare_layer_with_cpu(5, batch, 96, 1, dtype, relu=True)


@needs_gpu
def test_cuda_matches_the_numpy_reference(algorithm):
    T, B, I, H = 12, 3, 4, 40
    torch.manual_seed(3)
    rnn = rnnkern.RNN(I, H, num_layers=2, bidirectional=True, device="cuda", dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, device="cuda", requires_grad=True)
    h0 = torch.randn(4, B, H, dtype=torch.float64, device="cuda")
    out, h_n = rnn(x, h0)
    flat = [w.detach().cpu().numpy() for w in rnn._flat_weights]
    ref_out, ref_hn, cache = reference.rnn_forward(
        x.detach().cpu().numpy(), h0.cpu().numpy(), flat, 2, True, "tanh"
    )
    np.testing.assert_allclose(out.detach().cpu().numpy(), ref_out, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(h_n.detach().cpu().numpy(), ref_hn, rtol=1e-9, atol=1e-11)
    d_out = np.random.default_rng(0).standard_normal(ref_out.shape)
    ref = reference.rnn_backward(d_out, np.zeros_like(ref_hn), cache)
    (gx,) = torch.autograd.grad(out, x, torch.from_numpy(d_out).cuda())
    np.testing.assert_allclose(gx.cpu().numpy(), ref["dx"], rtol=1e-8, atol=1e-10)


@needs_gpu
@pytest.mark.parametrize("packed", [False, True])
def test_cuda_gradcheck_float64(algorithm, packed):
    D, T, B, I, H = 2, 4, 3, 3, 5
    opts = dict(device="cuda", dtype=torch.float64, requires_grad=True)
    batch_sizes = torch.tensor([3, 3, 2, 1]) if packed else None
    x = torch.randn(int(batch_sizes.sum()), I, **opts) if packed else torch.randn(T, B, I, **opts)
    hx = torch.randn(D, B, H, **opts)
    weights = [
        torch.randn(*shape, **opts) for _ in range(D) for shape in ((H, I), (H, H), (H,), (H,))
    ]

    def fn(x, hx, *w):
        return rnnkern.elman_layer(x, hx, w, batch_sizes, "tanh")

    assert torch.autograd.gradcheck(fn, (x, hx, *weights))


@needs_gpu
@pytest.mark.parametrize("hidden", [32, 1000])
def test_cuda_same_results_every_run(algorithm, hidden):
    # A race shows up as results that differ between runs on the same inputs; the weight and bias
    # gradients are reduced without atomics, so they too are bitwise the same every run.
    if algorithm == "block" and plan(hidden, 4, 1, torch.float32, "block")["algorithm"] != "block":
        hidden = 32
    torch.manual_seed(2)
    rnn = rnnkern.RNN(8, hidden, device="cuda")
    x = torch.randn(50, 4, 8, device="cuda", requires_grad=True)

    def run():
        out, h_n = rnn(x)
        grads = torch.autograd.grad(out.sum() + h_n.sum(), [x, *rnn.parameters()])
        return [out, h_n, *grads]

    first = run()
    for _ in range(20):
        for a, b in zip(run(), first):
            assert torch.equal(a, b)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_error_against_float64_is_as_documented(cuda_kernels, dtype):
    # README states these relative errors (output, 256 steps, hidden 128, batch 4).
    bound = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}[dtype]
    torch.manual_seed(4)
    rnn = rnnkern.RNN(16, 128, dtype=torch.float64)
    x = torch.randn(256, 4, 16, dtype=torch.float64)
    expected = rnn(x)[0]
    out = rnn.to("cuda", dtype)(x.to("cuda", dtype))[0].double().cpu()
    assert ((out - expected).norm() / expected.norm()).item() < bound


@needs_gpu
def test_cuda_forced_algorithm_that_does_not_fit_says_so(cuda_kernels, monkeypatch):
    monkeypatch.setenv("RNNKERN_CUDA_ALGORITHM", "block")
    rnn = rnnkern.RNN(4, 4096, device="cuda")
    with pytest.raises(RuntimeError, match="RNNKERN_CUDA_ALGORITHM=block does not fit"):
        rnn(torch.randn(3, 1, 4, device="cuda"))
    monkeypatch.setenv("RNNKERN_CUDA_ALGORITHM", "fastest")
    with pytest.raises(RuntimeError, match="expected one of auto, block, grid, per_step"):
        rnn(torch.randn(3, 1, 4, device="cuda"))
    monkeypatch.delenv("RNNKERN_CUDA_ALGORITHM")
    assert rnn(torch.randn(3, 1, 4, device="cuda"))[0].shape == (3, 1, 4096)


@needs_gpu
def test_cuda_barriers_only_floor_runs(cuda_kernels):
    weights = layer_weights(64, 8, 1, torch.float32)
    x = torch.randn(10, 1, 8, device="cuda")
    out, h_n = torch.ops.rnnkern._elman_layer_barriers_only(
        x, torch.zeros(1, 1, 64, device="cuda"), weights, None, False
    )
    assert out.shape == (10, 1, 64) and torch.isfinite(out).all()


@needs_gpu
def test_cuda_empty_batch(algorithm):
    rnn = rnnkern.RNN(3, 8, bidirectional=True, device="cuda")
    x = torch.randn(5, 0, 3, device="cuda", requires_grad=True)
    out, h_n = rnn(x)
    assert out.shape == (5, 0, 16) and h_n.shape == (2, 0, 8)
    (out.sum() + h_n.sum()).backward()
    assert x.grad.shape == x.shape


@needs_gpu
def test_cuda_launch_plan_is_the_pure_plan_for_this_gpu(monkeypatch):
    # rnnkern._ops.cuda_launch_plan (the benchmark and these tests use it) reads the GPU in C++, as
    # every launch does; the test module's pure plan, given the GPU as torch reports it, must agree.
    from rnnkern import _testing

    prop = torch.cuda.get_device_properties()
    gpu = (prop.multi_processor_count, prop.shared_memory_per_block_optin, 1024, True)
    monkeypatch.delenv("RNNKERN_CUDA_ALGORITHM", raising=False)
    for hidden, batch, directions, dtype in [
        (64, 4, 2, torch.bfloat16),
        (256, 1, 1, torch.float32),
        (1024, 16, 1, torch.float32),
        (128, 8, 2, torch.float64),
        (4096, 1, 1, torch.float32),
    ]:
        state_bytes = 8 if dtype == torch.float64 else 4
        expected = _testing.plan_launch(
            hidden, batch, directions, dtype.itemsize, state_bytes, gpu, "auto"
        )
        assert _ops.cuda_launch_plan(hidden, batch, directions, dtype) == expected
    assert _ops.cuda_launch_plan(64, 4, 2, torch.float64, "grid")["algorithm"] == "grid"
    monkeypatch.setenv("RNNKERN_CUDA_ALGORITHM", "per_step")
    assert _ops.cuda_launch_plan(64, 4, 2, torch.float32)["algorithm"] == "per_step"


def test_unverified_cuda_kernels_are_opt_in():
    enabled = "cuda" in _ops.KERNEL_DTYPES
    assert enabled == (
        rnnkern._C.has_cuda_kernels() and os.environ.get("RNNKERN_CUDA_KERNELS") == "1"
    )


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_matches_nn_rnn(cuda_kernels, dtype):
    # Under CUDA autocast the float32 module's call is cast and runs rnnkern's kernels, in the
    # dtype nn.RNN's cuDNN path uses (float16, whatever autocast's dtype: ATen's AutocastRNN).
    torch.manual_seed(6)
    theirs = torch.nn.RNN(4, 32, 2, device="cuda")
    ours = rnnkern.RNN(4, 32, 2, device="cuda")
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(12, 3, 4, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        out, h_n = ours(x)
        out_t, h_n_t = theirs(x)
    assert (out.dtype, h_n.dtype) == (out_t.dtype, h_n_t.dtype)
    torch.testing.assert_close(out.float(), out_t.float(), **TOL[dtype])
    grads = torch.autograd.grad(out.float().sum(), [x, *ours.parameters()])
    grads_t = torch.autograd.grad(out_t.float().sum(), [x, *theirs.parameters()])
    for g, g_t in zip(grads, grads_t):
        assert g.dtype == g_t.dtype
        torch.testing.assert_close(g, g_t, **GRAD_TOL[dtype])


@needs_gpu
@pytest.mark.parametrize("algorithm_name", ["block", "grid", "per_step"])
def test_cuda_training_memory_grows_linearly_and_no_faster_than_nn_rnn(
    cuda_kernels, monkeypatch, algorithm_name
):
    # Peak device memory of one training step at three lengths: it grows linearly, and per step by
    # at most what nn.RNN's grows (cuDNN keeps a reserve per step; rnnkern its output).
    monkeypatch.setenv("RNNKERN_CUDA_ALGORITHM", algorithm_name)
    torch.manual_seed(8)
    theirs = torch.nn.RNN(16, 64, device="cuda")
    ours = rnnkern.RNN(16, 64, device="cuda")
    ours.load_state_dict(theirs.state_dict())

    lengths = (512, 1024, 2048)

    def peaks(module):
        x = torch.randn(64, 4, 16, device="cuda", requires_grad=True)
        (module(x)[0].sum()).backward()  # warm-up: cuBLAS/cuDNN workspaces are allocated once
        result = []
        for steps in lengths:
            x = torch.randn(steps, 4, 16, device="cuda", requires_grad=True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            out, h_n = module(x)
            (out.sum() + h_n.sum()).backward()
            torch.cuda.synchronize()
            result.append(torch.cuda.max_memory_allocated() - before)
            del x, out, h_n
        return result

    def per_step(p, i):
        return (p[i + 1] - p[i]) / (lengths[i + 1] - lengths[i])

    ours_peaks, theirs_peaks = peaks(ours), peaks(theirs)
    first, second = per_step(ours_peaks, 0), per_step(ours_peaks, 1)
    assert abs(second - first) <= 0.25 * max(first, second) + 64, ("not linear", ours_peaks)
    assert second <= 1.10 * per_step(theirs_peaks, 1) + 64, (ours_peaks, theirs_peaks)


@needs_gpu
def test_cuda_threads_calling_one_module(cuda_kernels):
    # Several Python threads on one module (each on torch's current stream) get serial results.
    import threading

    torch.manual_seed(9)
    rnn = rnnkern.RNN(8, 48, 2, bidirectional=True, device="cuda")
    inputs = [torch.randn(30, 3, 8, device="cuda") for _ in range(4)]
    serial = [rnn(x)[0] for x in inputs]
    results: list = [None] * len(inputs)

    def work(i):
        for _ in range(5):
            results[i] = rnn(inputs[i])[0]
        torch.cuda.synchronize()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, expected in zip(results, serial):
        assert torch.equal(got, expected)
