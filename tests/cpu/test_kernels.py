"""The CPU kernels below the modules: the vectorised activation, and the portable (generic) build."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rnnkern


def activation_through_kernel(values: torch.Tensor, nonlinearity: str) -> torch.Tensor:
    """act(values) for values (T, B, H), computed by the fused steps: W_ih = I, W_hh = 0, no bias."""
    n = values.shape[-1]
    weights = [torch.eye(n, dtype=values.dtype), torch.zeros(n, n, dtype=values.dtype)]
    hx = torch.zeros(1, values.shape[1], n, dtype=values.dtype)
    out, _ = rnnkern.elman_layer(values, hx, weights, None, nonlinearity)
    return out


def activation_of_bias(values: torch.Tensor, batch: int, nonlinearity: str) -> torch.Tensor:
    """act(values) with values as bias_ih (so that inf and NaN meet no multiplication)."""
    n = values.numel()
    zeros = torch.zeros(n, n)
    weights = [torch.zeros(n, 1), zeros, values, torch.zeros(n)]
    out, _ = rnnkern.elman_layer(
        torch.ones(1, batch, 1), torch.zeros(1, batch, n), weights, None, nonlinearity
    )
    return out[0]


@pytest.mark.parametrize("batch", [1, 64])  # register-blocked kernel and BLAS step
def test_tanh_float32_accuracy(batch):
    sweep = torch.linspace(-12, 12, 240_000, dtype=torch.float32)
    tiny = torch.logspace(-30, 1.5, 8_000, dtype=torch.float32)
    x = torch.cat([sweep, tiny, -tiny]).reshape(-1, batch, 1000)  # 256,000 values
    ours = activation_through_kernel(x, "tanh").double()
    exact = torch.tanh(x.double())
    ulp = torch.finfo(torch.float32).eps * exact.abs().clamp_min(torch.finfo(torch.float32).tiny)
    assert ((ours - exact).abs() / ulp).max() <= 2  # within 2 ulp of the exact value everywhere
    assert (ours.abs() <= 1).all()


@pytest.mark.parametrize("batch", [1, 40])
def test_activation_special_values(batch):
    special = torch.tensor(
        [
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            88.0,
            -88.0,
            1e30,
            float("inf"),
            -float("inf"),
            float("nan"),
            0.625,
            -0.625,
            0.62499,
        ]
    )
    tanh = activation_of_bias(special, batch, "tanh")
    expected = torch.tanh(special).expand(batch, -1)
    torch.testing.assert_close(tanh, expected, equal_nan=True, atol=0, rtol=2e-7)
    relu = activation_of_bias(special, batch, "relu")
    torch.testing.assert_close(
        relu, torch.relu(special).expand(batch, -1), equal_nan=True, atol=0, rtol=0
    )


ISA_SCRIPT = textwrap.dedent(
    """
    import os, torch, rnnkern
    assert rnnkern.cpu_isa() == os.environ["RNNKERN_CPU_ISA"], rnnkern.cpu_isa()
    for config, batch, dtype in [
        (dict(input_size=3, hidden_size=13, num_layers=2, bidirectional=True), 3, torch.float32),
        (dict(input_size=5, hidden_size=70, nonlinearity="relu"), 40, torch.float32),
        (dict(input_size=2, hidden_size=9, bias=False), 2, torch.float64),
        # hidden sizes just under the widest register block (AVX2: 64 float32, 32 float64)
        (dict(input_size=3, hidden_size=60), 1, torch.float32),
        (dict(input_size=3, hidden_size=47), 2, torch.float32),
        (dict(input_size=3, hidden_size=30), 1, torch.float64),
    ]:
        torch.manual_seed(0)
        theirs = torch.nn.RNN(**config, dtype=dtype)
        ours = rnnkern.RNN(**config, dtype=dtype)
        ours.load_state_dict(theirs.state_dict())
        x = torch.randn(7, batch, config["input_size"], dtype=dtype, requires_grad=True)
        out_o, hn_o = ours(x)
        out_t, hn_t = theirs(x)
        torch.testing.assert_close(out_o, out_t, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(hn_o, hn_t, atol=2e-5, rtol=1e-4)
        g_o = torch.autograd.grad((out_o ** 2).sum() + hn_o.sum(), [x, *ours.parameters()])
        g_t = torch.autograd.grad((out_t ** 2).sum() + hn_t.sum(), [x, *theirs.parameters()])
        for a, b in zip(g_o, g_t):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)

    # rnnkern.RNNCell (the cell operator's vector kernels, and BLAS at batch 40, hidden 130), and
    # a one-step rnnkern.RNN call (the cell operator per layer and direction), against nn.
    tol = {
        torch.float32: (dict(atol=2e-5, rtol=1e-4), dict(atol=1e-4, rtol=1e-3)),
        torch.float64: (dict(atol=1e-11, rtol=1e-9), dict(atol=1e-10, rtol=1e-8)),
    }
    for dtype in (torch.float32, torch.float64):
        out_tol, grad_tol = tol[dtype]
        for batch, input_size, hidden, extra in [
            (1, 5, 13, {}),
            (3, 5, 13, dict(nonlinearity="relu")),
            (3, 5, 13, dict(bias=False)),
            (1, 7, 70, {}),
            (40, 16, 130, {}),  # batch * hidden > 4096: BLAS
        ]:
            torch.manual_seed(0)
            theirs = torch.nn.RNNCell(input_size, hidden, dtype=dtype, **extra)
            ours = rnnkern.RNNCell(input_size, hidden, dtype=dtype, **extra)
            ours.load_state_dict(theirs.state_dict())
            x = torch.randn(batch, input_size, dtype=dtype, requires_grad=True)
            h = torch.randn(batch, hidden, dtype=dtype, requires_grad=True)
            out_o, out_t = ours(x, h), theirs(x, h)
            torch.testing.assert_close(out_o, out_t, **out_tol)
            w = torch.randn(batch, hidden, dtype=dtype)
            g_o = torch.autograd.grad(out_o, [x, h, *ours.parameters()], w)
            g_t = torch.autograd.grad(out_t, [x, h, *theirs.parameters()], w)
            for a, b in zip(g_o, g_t, strict=True):
                torch.testing.assert_close(a, b, **grad_tol)
        for config, batch in [
            (dict(input_size=5, hidden_size=13, num_layers=2, bidirectional=True), 3),
            (dict(input_size=5, hidden_size=13, nonlinearity="relu", bias=False), 1),
            (dict(input_size=16, hidden_size=130, num_layers=2), 40),
        ]:
            torch.manual_seed(0)
            theirs = torch.nn.RNN(**config, dtype=dtype)
            ours = rnnkern.RNN(**config, dtype=dtype)
            ours.load_state_dict(theirs.state_dict())
            layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
            x = torch.randn(1, batch, config["input_size"], dtype=dtype, requires_grad=True)
            h = torch.randn(layers, batch, config["hidden_size"], dtype=dtype, requires_grad=True)
            (out_o, hn_o), (out_t, hn_t) = ours(x, h), theirs(x, h)
            torch.testing.assert_close(out_o, out_t, **out_tol)
            torch.testing.assert_close(hn_o, hn_t, **out_tol)
            w = torch.randn(out_t.shape, dtype=dtype)
            g_o = torch.autograd.grad((out_o * w).sum() + hn_o.sum(), [x, h, *ours.parameters()])
            g_t = torch.autograd.grad((out_t * w).sum() + hn_t.sum(), [x, h, *theirs.parameters()])
            for a, b in zip(g_o, g_t, strict=True):
                torch.testing.assert_close(a, b, **grad_tol)
    print("isa ok")
    """
)


def cpu_flags() -> set[str]:
    if not os.path.exists("/proc/cpuinfo"):
        return set()
    return set(open("/proc/cpuinfo").read().split())


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_capped_kernels_match_nn_rnn(isa):
    """RNNKERN_CPU_ISA caps the instruction set, so every kernel table is tested on one machine."""
    if isa == "avx2" and not {"avx2", "fma"} <= cpu_flags():
        pytest.skip("this CPU has no AVX2+FMA")
    env = {**os.environ, "RNNKERN_CPU_ISA": isa}
    result = subprocess.run(
        [sys.executable, "-c", ISA_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "isa ok" in result.stdout


def test_default_isa_is_the_best_this_cpu_has():
    if os.environ.get("RNNKERN_CPU_ISA"):
        pytest.skip("RNNKERN_CPU_ISA is set for this run")
    flags = cpu_flags()
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl", "avx2", "fma"} <= flags:
        assert rnnkern.cpu_isa() == "avx512"
    elif {"avx2", "fma"} <= flags:
        assert rnnkern.cpu_isa() == "avx2"
    else:
        assert rnnkern.cpu_isa() == "generic"
