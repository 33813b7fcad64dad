"""The CPU kernels below the modules: the vectorised activation, and every kernel table (generic,
AVX2, AVX-512) against nn.RNN in float32 and float64, each in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import rnnkern
from tests.conftest import KERNEL_TABLE_PROPERTY, ROOT


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


# Run in a fresh interpreter per kernel table (the table is chosen once, at process start, capped by
# RNNKERN_CPU_ISA): every table is held to nn.RNN at the tolerances of the dtype it runs, float64's
# included (a table rounding float64 through float32 is 1e-8 off: far outside them), and to
# gradcheck. It prints one JSON line saying which table ran.
KERNEL_TABLE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_sequence
    import rnnkern
    from tests.conftest import GRAD_TOL, TOL

    expected = sys.argv[1]
    assert rnnkern.cpu_isa() == expected, f"asked for the {expected} table, got {rnnkern.cpu_isa()}"


    def close(actual, wanted, tol, what):
        # allclose first: assert_close's full report costs ms a call, and is wanted only on failure
        if actual.shape != wanted.shape or not torch.allclose(actual, wanted, **tol):
            torch.testing.assert_close(actual, wanted, **tol, msg=lambda m: f"{what}: {m}")


    def pair(config, dtype, seed=0):
        torch.manual_seed(seed)
        theirs = nn.RNN(**config, dtype=dtype)
        with torch.no_grad():  # nn's init (+-1/sqrt(H)) makes W_hh h small: make it matter
            for p in theirs.parameters():
                p.uniform_(-1.0, 1.0).div_(max(config["input_size"], config["hidden_size"]) ** 0.5)
        ours = rnnkern.RNN(**config, dtype=dtype)
        ours.load_state_dict(theirs.state_dict())
        return theirs, ours


    def check_layers(config, batch, steps, dtype, lengths=None):
        # Output, h_n and every gradient (input, h0, each weight) against nn.RNN, random everything.
        theirs, ours = pair(config, dtype)
        what = f"{dtype} {config} batch {batch} steps {steps}" + (f" packed {lengths}" if lengths else "")
        layers = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
        h0 = torch.randn(layers, batch, config["hidden_size"], dtype=dtype, requires_grad=True)
        if lengths:
            seqs = [torch.randn(n, config["input_size"], dtype=dtype, requires_grad=True) for n in lengths]
            x, leaves = pack_sequence(seqs), seqs
        else:
            x = torch.randn(steps, batch, config["input_size"], dtype=dtype, requires_grad=True)
            leaves = [x]
        (out_o, hn_o), (out_t, hn_t) = ours(x, h0), theirs(x, h0)
        if lengths:
            out_o, out_t = out_o.data, out_t.data
        close(out_o, out_t, TOL[dtype], what + " output")
        close(hn_o, hn_t, TOL[dtype], what + " h_n")
        w_out, w_hn = torch.randn_like(out_t), torch.randn_like(hn_t)
        wanted = [*leaves, h0]
        # retain_graph: with packed input both graphs begin at the same pack_sequence
        g_o = torch.autograd.grad(
            (out_o * w_out).sum() + (hn_o * w_hn).sum(), [*wanted, *ours.parameters()], retain_graph=True
        )
        g_t = torch.autograd.grad((out_t * w_out).sum() + (hn_t * w_hn).sum(), [*wanted, *theirs.parameters()])
        names = [f"input {k}" for k in range(len(leaves))] + ["h0"] + [n for n, _ in ours.named_parameters()]
        for name, a, b in zip(names, g_o, g_t, strict=True):
            close(a, b, GRAD_TOL[dtype], f"{what} gradient of {name}")


    # Each path that runs the table's kernels, at hidden sizes that are no multiple of any vector
    # width (37, 70, 770), tanh and relu, one direction and two layers of two:
    MAX_ROWS, MAX_BATCH = rnnkern._C.cpu_cell_kernel_bound()
    LAYERS = [
        # at most MAX_ROWS rows (steps x batch), MAX_BATCH a step: step by step on the cell kernel
        (dict(input_size=5, hidden_size=37, num_layers=2, bidirectional=True), 1, 9),
        (dict(input_size=6, hidden_size=70, num_layers=2, bidirectional=True, nonlinearity="relu"), 3, 9),
        # longer, batch <= 32: the register-blocked kernel does each step's product, activation fused
        (dict(input_size=5, hidden_size=37, num_layers=2, bidirectional=True), 1, 40),
        (dict(input_size=6, hidden_size=70, num_layers=2, bidirectional=True, nonlinearity="relu"), 3, 12),
        (dict(input_size=6, hidden_size=37, nonlinearity="relu"), MAX_BATCH + 1, 2),
        # hidden sizes just under the widest register block (AVX2: 64 float32, 32 float64), and
        # a small one without bias
        (dict(input_size=3, hidden_size=60), 1, MAX_ROWS + 8),
        (dict(input_size=3, hidden_size=47), 2, MAX_ROWS),
        (dict(input_size=3, hidden_size=30), 1, MAX_ROWS + 8),
        (dict(input_size=2, hidden_size=9, bias=False), 2, MAX_ROWS),
        # batch > 32: BLAS does the product, the table the activation and its derivative
        (dict(input_size=5, hidden_size=37, num_layers=2, bidirectional=True, nonlinearity="relu"), 64, 6),
        (dict(input_size=6, hidden_size=70, num_layers=2, bidirectional=True), 40, 6),
        # one past the register kernel's largest batch, no bias
        (dict(input_size=4, hidden_size=70, nonlinearity="relu", bias=False), 33, 5),
        # one direction, 130 steps: blocks of steps projected ahead and weight gradients behind on
        # the kernel (step_blocks.h)
        (dict(input_size=5, hidden_size=37), 2, 130),
        # batch 1 from hidden 256: dot products of W_hh's rows (recurrence_cpu.h, dot_form), both
        # directions, and the projection pipelined ahead (260 steps)
        (dict(input_size=4, hidden_size=259, bidirectional=True), 1, MAX_ROWS + 8),
        (dict(input_size=4, hidden_size=258, nonlinearity="relu"), 1, 260),
        # hidden >= 768 at batch 1: each step's units split in two parts (shared_steps.h)
        (dict(input_size=4, hidden_size=770), 1, MAX_ROWS + 8),
    ]
    short = [steps * batch <= MAX_ROWS and batch <= MAX_BATCH for _, batch, steps in LAYERS]
    assert any(short) and not all(short), "both sides of the cell kernel's bound"
    PACKED = [  # on the cell kernel, and past it (more rows)
        (dict(input_size=3, hidden_size=37, num_layers=2, bidirectional=True), [9, 7, 7, 3, 1]),
        (dict(input_size=3, hidden_size=37, num_layers=2, bidirectional=True), [13, 11, 11, 4, 2]),
    ]
    assert sum(PACKED[0][1]) <= MAX_ROWS < sum(PACKED[1][1])

    for dtype in (torch.float64, torch.float32):
        for config, batch, steps in LAYERS:
            check_layers(config, batch, steps, dtype)
        for config, lengths in PACKED:
            check_layers(config, len(lengths), max(lengths), dtype, lengths=lengths)

    # The cell operator (its own vector kernels; BLAS at batch 40, hidden 130) and a one-step
    # rnnkern.RNN call (the cell operator per layer and direction), against nn.
    for dtype in (torch.float64, torch.float32):
        for batch, input_size, hidden, extra in [
            (1, 5, 13, {}),
            (3, 5, 13, dict(nonlinearity="relu")),
            (3, 5, 13, dict(bias=False)),
            (1, 7, 70, {}),
            (40, 16, 130, {}),  # batch * hidden > 4096: BLAS
        ]:
            torch.manual_seed(0)
            theirs = nn.RNNCell(input_size, hidden, dtype=dtype, **extra)
            ours = rnnkern.RNNCell(input_size, hidden, dtype=dtype, **extra)
            ours.load_state_dict(theirs.state_dict())
            x = torch.randn(batch, input_size, dtype=dtype, requires_grad=True)
            h = torch.randn(batch, hidden, dtype=dtype, requires_grad=True)
            what = f"{dtype} RNNCell({input_size}, {hidden}, {extra}) batch {batch}"
            out_o, out_t = ours(x, h), theirs(x, h)
            close(out_o, out_t, TOL[dtype], what)
            w = torch.randn(batch, hidden, dtype=dtype)
            g_o = torch.autograd.grad(out_o, [x, h, *ours.parameters()], w)
            g_t = torch.autograd.grad(out_t, [x, h, *theirs.parameters()], w)
            for a, b in zip(g_o, g_t, strict=True):
                close(a, b, GRAD_TOL[dtype], what + " gradient")
        for config, batch in [
            (dict(input_size=5, hidden_size=13, num_layers=2, bidirectional=True), 3),
            (dict(input_size=5, hidden_size=13, nonlinearity="relu", bias=False), 1),
            (dict(input_size=16, hidden_size=130, num_layers=2), 40),
        ]:
            check_layers(config, batch, 1, dtype)

    # gradcheck of the layer operator itself (its fused backward against finite differences), in
    # float64, on each path of the recurrence: cell kernel, register kernel, BLAS step, packed rows.
    def layer_gradcheck(directions, batch, relu, bias, batch_sizes=None, steps=3, I=3, H=5, fast=False):
        torch.manual_seed(1)
        def leaf(*shape):
            return torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        weights = []
        for _ in range(directions):
            weights += [leaf(H, I), leaf(H, H)] + ([leaf(H), leaf(H)] if bias else [])
        rows = int(batch_sizes.sum()) if batch_sizes is not None else None
        x = leaf(rows, I) if rows else leaf(steps, batch, I)
        hx = leaf(directions, batch, H)
        def fn(x, hx, *weights):
            return torch.ops.rnnkern.elman_layer(x, hx, list(weights), batch_sizes, relu)
        assert torch.autograd.gradcheck(fn, (x, hx, *weights), fast_mode=fast), (directions, batch, relu)

    layer_gradcheck(directions=2, batch=2, relu=False, bias=True)  # cell kernel
    layer_gradcheck(directions=1, batch=2, relu=True, bias=False, steps=MAX_ROWS // 2 + 1, I=2, H=3)
    # fast_mode (a random projection of the Jacobian): the full one at these sizes costs seconds
    layer_gradcheck(directions=2, batch=2, relu=False, bias=True, steps=MAX_ROWS // 2 + 1, fast=True)
    layer_gradcheck(directions=2, batch=33, relu=True, bias=True, steps=2, I=2, H=3, fast=True)
    layer_gradcheck(directions=2, batch=3, relu=False, bias=True, batch_sizes=torch.tensor([3, 2, 2, 1]))
    layer_gradcheck(
        directions=2, batch=9, relu=True, bias=True, batch_sizes=torch.tensor([9, 9, 8, 8, 4]), fast=True
    )
    print(json.dumps({"table": rnnkern.cpu_isa(), "checked": ["float32", "float64", "gradcheck"]}))
    """
)


def cpu_flags() -> set[str]:
    if not os.path.exists("/proc/cpuinfo"):
        return set()
    return set(open("/proc/cpuinfo").read().split())


# The CPU flags each table needs (kernels_dispatch.cpp's test) and the RNNKERN_CPU_ISA value that
# selects it: a cap at it, or for AVX-512 no cap at all (any other value is none).
TABLE_FLAGS = {
    "generic": set(),
    "avx2": {"avx2", "fma"},
    "avx512": {"avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl"},
}


@pytest.mark.parametrize("table", list(TABLE_FLAGS))
def test_every_kernel_table_matches_nn_rnn(table, request):
    """RNNKERN_CPU_ISA caps the instruction set, so every table this CPU can run is tested on it,
    in float32 and float64, each at its own tolerances, and by gradcheck. What ran is recorded
    for the run's summary (tests/conftest.py, pytest_terminal_summary)."""
    record = {"table": table}
    request.node.user_properties.append((KERNEL_TABLE_PROPERTY, record))
    missing = sorted(TABLE_FLAGS[table] - cpu_flags())
    if missing:
        # Missing hardware: the one reason this test skips. The summary says so too.
        record["why"] = f"this CPU has no {', '.join(missing)}"
        pytest.skip(record["why"])
    # One OpenMP thread: the paths, and so the kernels and their bits, are functions of the shape
    # alone, the same on one thread or two (csrc/cpu/elman_cpu.h); a second thread only made this
    # check 3x slower on a busy machine (21 s against 7 s), its barriers waiting for a core.
    env = {**os.environ, "RNNKERN_CPU_ISA": table, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", KERNEL_TABLE_SCRIPT, table],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["table"] == table
    # float64 has no AVX-512 table: under AVX-512 it runs AVX2's (kernels_dispatch.cpp).
    checked = ", ".join(report["checked"])
    if table == "avx512":
        checked += "; its float64 is the avx2 table's"
    record["checked"] = checked


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
