"""Shared helpers: pairs of modules with identical weights, and per-dtype tolerances; and the run's
summary line saying which CPU kernel tables the tests exercised."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import rnnkern

# Tolerances against torch.nn.RNN: the only differences are float rounding (summation order, tanh).
TOL = {torch.float32: {"atol": 2e-5, "rtol": 1e-4}, torch.float64: {"atol": 1e-11, "rtol": 1e-9}}
GRAD_TOL = {
    torch.float32: {"atol": 1e-4, "rtol": 1e-3},
    torch.float64: {"atol": 1e-10, "rtol": 1e-8},
}


# Tests that need a GPU and rnnkern's CUDA kernels skip, saying so, elsewhere.
needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or not rnnkern._C.has_cuda_kernels(),
    reason="no CUDA GPU visible to torch, or this build has no CUDA kernels",
)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=needs_gpu)])
def device(request, monkeypatch) -> torch.device:
    """Each device rnnkern runs on: the CPU, and the GPU where there is one (its CUDA kernels on,
    float32 and float64, compared with full-precision cuDNN rather than its default TF32)."""
    if request.param == "cuda":
        from rnnkern import _ops

        monkeypatch.setitem(_ops.KERNEL_DTYPES, "cuda", (torch.float32, torch.float64))
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return torch.device(request.param)


# nn.RNN's constructor arguments other than device and dtype.
RNN_ARGS = (
    "input_size",
    "hidden_size",
    "num_layers",
    "nonlinearity",
    "bias",
    "batch_first",
    "bidirectional",
)


def rnn_pair(dtype=torch.float32, seed=0, **config) -> tuple[nn.RNN, rnnkern.RNN]:
    """A torch.nn.RNN and an rnnkern.RNN with the same configuration and the same weights."""
    torch.manual_seed(seed)
    theirs = nn.RNN(**config, dtype=dtype)
    ours = rnnkern.RNN(**config, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def grads(outputs, inputs) -> list[torch.Tensor | None]:
    """d(sum of outputs weighted by fixed random cotangents)/d(inputs); None where unused."""
    gen = torch.Generator().manual_seed(1234)
    total = 0
    for out in outputs:
        total = total + (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum()
    return list(torch.autograd.grad(total, inputs, allow_unused=True))


def count_calls_of(monkeypatch, where, entry: str, keep=lambda args, result: True) -> list:
    """The arguments of every call of rnnkern._C.<entry> made through module `where`'s _C (for
    which keep(args, result) holds), from now until the test ends (each call still runs)."""
    calls = []
    original = where._C

    class CountingC:
        def __getattr__(self, name):
            function = getattr(original, name)
            if name != entry:
                return function

            def counted(*args):
                result = function(*args)
                if keep(args, result):
                    calls.append(args)
                return result

            return counted

    monkeypatch.setattr(where, "_C", CountingC())
    return calls


class OperatorNames(TorchDispatchMode):
    """The rnnkern operators dispatched while active."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith("rnnkern."):
            self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def assert_close(actual, expected, tol, what=""):
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


ROOT = pathlib.Path(__file__).resolve().parent.parent

# A new interpreter loads a saved artifact: the import it needs first, then the load and the run.
FRESH_PROCESS_SCRIPT = """
import sys, torch
import rnnkern  # registers rnnkern's operators, which a saved model calls
{load}
inputs = torch.load(sys.argv[1])
with torch.no_grad():
    outputs = model(*inputs)
torch.save(outputs, sys.argv[2])
"""


def run_in_fresh_process(load: str, inputs: tuple, tmp_path: pathlib.Path):
    """Runs ``load`` (code that sets ``model``) in a new Python process, calls model(*inputs)
    there and returns what it returned: nothing of this process's state is reused."""
    inputs_file, outputs_file = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save(inputs, inputs_file)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT.format(load=load), inputs_file, outputs_file],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return torch.load(outputs_file)


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


# The CPU kernel tables (generic, AVX2, AVX-512: csrc/cpu/kernels_dispatch.cpp) are chosen once per
# process, so one run exercises only its own table, except where a test starts processes capped
# at each (tests/cpu/test_kernels.py). That test attaches this property to its report: the table
# and what was checked on it, or why it could not run here. The summary reads it back from the
# reports, so it says what ran in this run, not what was meant to.
KERNEL_TABLE_PROPERTY = "rnnkern_cpu_kernel_table"


def pytest_terminal_summary(terminalreporter):
    """One line at the end of the run: which kernel tables were held to nn.RNN and on what, which
    failed, which this CPU could not run, and the table every other CPU test ran on."""
    ran, failed, not_run = {}, {}, {}
    for outcome in ("passed", "failed", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            for name, value in getattr(report, "user_properties", ()):
                if name != KERNEL_TABLE_PROPERTY:
                    continue
                if outcome == "passed":
                    ran[value["table"]] = value["checked"]
                elif outcome == "failed":
                    failed[value["table"]] = True
                else:
                    not_run[value["table"]] = value.get("why", "skipped")

    def listed(tables):
        return ", ".join(f"{t} ({why})" for t, why in tables.items()) or "none"

    line = f"rnnkern CPU kernel tables exercised: {listed(ran)}"
    if failed:
        line += f"; FAILED: {', '.join(failed)}"
    if not_run:
        line += f"; not exercised: {listed(not_run)}"
    if not ran and not failed and not not_run:
        line += " (tests/cpu/test_kernels.py::test_every_kernel_table_matches_nn_rnn did not run)"
    # this process's table; float64 has none for AVX-512 and runs AVX2's (kernels_dispatch.cpp)
    own = rnnkern.cpu_isa()
    line += f"; every other test ran on the {own} table" + (
        ", float64 on avx2's" if own == "avx512" else ""
    )
    terminalreporter.write_line(line)
