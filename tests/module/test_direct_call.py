"""rnnkern.RNN's plain eager call on dense CPU input runs whole in C++ (rnnkern._C.eager_rnn,
csrc/eager_rnn.cpp), a copy of the module's Python path (_forward_tensor) without its Python.

Being a copy, it must give the Python path's bits: outputs, final states, every gradient and
dropout's random masks, checked here against that path itself (forced by declining the direct call)
over the module's configurations and calling conventions, as well as against nn.RNN. (At one step
the direct call streams through the cell operator, the Python path the layer operator: the same
masks, and sums rounded differently.) Where the
Python path would do anything but run the kernels (raise, warn, fall back, cast), the direct call
declines and the Python path runs.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

import rnnkern
from rnnkern import modules
from tests.conftest import GRAD_TOL, TOL, OperatorNames, assert_close, count_calls_of, rnn_pair

I, H, N = 5, 6, 3


def ran(args, result) -> bool:
    return result is not None


@pytest.fixture
def direct_calls(monkeypatch) -> list:
    """The calls rnnkern.RNN ran whole in C++ (rnnkern._C.eager_rnn returned a result)."""
    return count_calls_of(monkeypatch, modules, "eager_rnn", keep=ran)


def python_path_only(monkeypatch) -> None:
    monkeypatch.setattr(modules.RNN, "_direct_call", lambda self, input, hx: None)


def run(module, x, hx, seed):
    """output, h_n and the gradients of a random-weighted sum of both with respect to x, hx and
    the parameters, with dropout's generator at `seed`."""
    torch.manual_seed(seed)
    output, h_n = module(x, hx)
    gen = torch.Generator().manual_seed(7)
    total = sum(
        (t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (output, h_n)
    )
    inputs = [x] + ([hx] if hx is not None else []) + list(module.parameters())
    return [output, h_n, *torch.autograd.grad(total, inputs)]


CONFIGS = [
    dict(num_layers=1),
    dict(num_layers=1, nonlinearity="relu", bias=False, batch_first=True),
    dict(num_layers=2, bidirectional=True),
    dict(num_layers=3, dropout=0.4, batch_first=True),
    dict(num_layers=3, dropout=0.4, bidirectional=True, nonlinearity="relu", bias=False),
]


def config_id(config: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in config.items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "steps, batched, hx_given",
    list(itertools.product([1, 4], [True, False], [True, False])),
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_direct_call_gives_the_python_path_s_bits(
    monkeypatch, direct_calls, config, steps, batched, hx_given, dtype
):
    theirs, ours = rnn_pair(dtype=dtype, input_size=I, hidden_size=H, **config)
    ours.train()
    D = 2 if config.get("bidirectional") else 1
    L = config["num_layers"]
    torch.manual_seed(3)
    shape = ((N, steps) if config.get("batch_first") else (steps, N)) if batched else (steps,)
    x = torch.randn(*shape, I, dtype=dtype, requires_grad=True)
    hx = None
    if hx_given:
        hx = torch.randn(L * D, *((N,) if batched else ()), H, dtype=dtype, requires_grad=True)

    direct = run(ours, x, hx, seed=11)
    assert len(direct_calls) == 1
    with monkeypatch.context() as m:
        python_path_only(m)
        python = run(ours, x, hx, seed=11)
    assert len(direct_calls) == 1
    names = ["output", "h_n", "grad input"] + ["grad hx"] * hx_given
    names += [name for name, _ in ours.named_parameters()]
    for name, a, b in zip(names, direct, python, strict=True):
        assert a.shape == b.shape, name
        if steps > 1:  # the same operators
            assert torch.equal(a, b), f"{name}: the direct call differs from the Python path"
            assert a.stride() == b.stride(), name
        else:  # the cell operator against the layer operator: their sums differ in rounding
            assert_close(a, b, TOL[dtype] if name in ("output", "h_n") else GRAD_TOL[dtype], name)

    expected = run(theirs, x, hx, seed=11)  # nn.RNN, dropout's masks included
    tols = [TOL[dtype]] * 2 + [GRAD_TOL[dtype]] * (len(expected) - 2)
    for name, a, b, tol in zip(names, direct, expected, tols, strict=True):
        assert_close(a, b, tol, name)


@pytest.mark.parametrize(
    "steps, operators",
    [(1, ["rnnkern.elman_cell.default"] * 4), (3, ["rnnkern.elman_layer.default"] * 2)],
    ids=["one step: the cell operator per layer and direction", "a sequence: the layer operator"],
)
def test_direct_call_runs_the_fused_operators(direct_calls, steps, operators):
    theirs, ours = rnn_pair(input_size=I, hidden_size=H, num_layers=2, bidirectional=True)
    x = torch.randn(steps, N, I)
    with OperatorNames() as mode:
        output, h_n = ours(x)
    assert len(direct_calls) == 1
    assert mode.names == operators
    expected, expected_h_n = theirs(x)
    assert_close(output, expected, TOL[torch.float32], "output")
    assert_close(h_n, expected_h_n, TOL[torch.float32], "h_n")


def test_direct_call_declines_what_the_python_path_must_handle(monkeypatch, direct_calls):
    # Each of these is the Python path's: nn.RNN's error, torch's RNN with its warning, autocast.
    monkeypatch.setattr(modules, "_warned_fallback", set())  # the warning comes once a process
    ours = rnnkern.RNN(I, H, num_layers=2)
    x = torch.randn(4, N, I)
    with pytest.raises(ValueError, match="2D or 3D"):
        ours(torch.randn(4, N, I, 1))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
        ours(torch.randn(4, N, I + 1))
    with pytest.raises(RuntimeError, match="Expected hidden size"):
        ours(x, torch.randn(1, N, H))
    with pytest.raises(RuntimeError, match="hx has dtype torch.float64"):
        ours(x, torch.randn(2, N, H, dtype=torch.float64))
    with pytest.warns(UserWarning, match="no fused kernel"):
        ours.to(torch.bfloat16)(x.bfloat16())
    ours.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, _ = ours(x)
    assert output.dtype == torch.bfloat16
    with fwAD.dual_level(), pytest.raises(AttributeError):  # as before the direct call existed
        ours([[1.0] * I])
    assert not direct_calls
    # And the module still works, in C++.
    theirs = nn.RNN(I, H, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    assert_close(ours(x)[0], theirs(x)[0], TOL[torch.float32], "output")
    assert len(direct_calls) == 1


def test_functional_call_with_other_dtype_parameters_runs_as_nn_does(monkeypatch):
    # torch.func.functional_call puts its substitutes in _parameters; the checks of both paths see
    # them (nn.RNN refreshes _flat_weights on every call, and so does the Python path).
    theirs, ours = rnn_pair(input_size=I, hidden_size=H, num_layers=2)
    substitutes = {name: p.detach().double() for name, p in theirs.named_parameters()}
    x = torch.randn(4, N, I, dtype=torch.float64)
    expected, expected_h_n = torch.func.functional_call(theirs, substitutes, (x,))
    for python_only in (False, True):
        with monkeypatch.context() as m:
            if python_only:
                python_path_only(m)
            output, h_n = torch.func.functional_call(ours, substitutes, (x,))
        assert output.dtype == torch.float64
        assert_close(output, expected, TOL[torch.float64], "output")
        assert_close(h_n, expected_h_n, TOL[torch.float64], "h_n")
