"""TorchScript: torch.jit.script and torch.jit.trace of models holding rnnkern.RNN and RNNCell run the
fused operator, match eager rnnkern and nn.RNN, train, and survive torch.jit.save and torch.jit.load
in a fresh process."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence
from torch.utils._pytree import tree_leaves

import rnnkern
from tests.conftest import GRAD_TOL, TOL, assert_close, rnn_pair, run_in_fresh_process


class Tagger(nn.Module):
    """An RNN between an embedding-like projection and a head, with an optional initial state."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 2)

    def forward(self, x: Tensor, h0: Tensor | None = None) -> tuple[Tensor, Tensor]:
        out, h_n = self.rnn(x, h0)
        return self.head(out), h_n


class PackedTagger(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x: PackedSequence) -> tuple[Tensor, Tensor]:
        out, h_n = self.rnn(x)
        return out.data, h_n


class Unroll(nn.Module):
    """A Python loop over a cell, the way RNNs are commonly taught."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, xs: Tensor, h: Tensor) -> Tensor:
        outputs = []
        for x in xs.unbind(0):
            h = self.cell(x, h)
            outputs.append(h)
        return torch.stack(outputs)


def check_loads_in_a_fresh_process(module, args, reference, tmp_path):
    """torch.jit.save, then torch.jit.load and a call in a new process: nn.RNN's results."""
    path = tmp_path / "model.pt"
    torch.jit.save(module, path)
    got = run_in_fresh_process(f"model = torch.jit.load({str(path)!r})", args, tmp_path)
    with torch.no_grad():
        expected = reference(*args)
    for a, b in zip(tree_leaves(got), tree_leaves(expected), strict=True):
        assert_close(a, b, TOL[torch.float32], "loaded in a fresh process")


CONFIGS = [
    dict(input_size=3, hidden_size=6, num_layers=2, bidirectional=True, batch_first=True),
    dict(input_size=3, hidden_size=6, nonlinearity="relu", bias=False),
]


def runs_fused_operator(model, *args) -> bool:
    """Whether calling model(*args) runs rnnkern's operator (seen by the profiler)."""
    with torch.autograd.profiler.profile() as profile:
        model(*args)
    return any(event.name == "rnnkern::elman_layer" for event in profile.function_events)


@pytest.mark.parametrize("config", CONFIGS, ids=["bidirectional-2-layer", "relu-nobias"])
def test_script_matches_eager_and_nn_rnn(config, tmp_path):
    theirs, ours = rnn_pair(**config)
    scripted = torch.jit.script(Tagger(ours))
    reference = Tagger(theirs)
    reference.head.load_state_dict(scripted.head.state_dict())
    states = config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)
    x = torch.randn(4, 7, 3) if config.get("batch_first") else torch.randn(7, 4, 3)
    calls = [
        (x, None),
        (x, torch.randn(states, 4, 6)),
        (x[0], None),
        (x[0], torch.randn(states, 6)),
    ]
    assert runs_fused_operator(scripted, x)
    for args in calls:  # batched and unbatched, with and without h0
        for a, b in zip(scripted(*args), reference(*args)):
            assert_close(a, b, TOL[torch.float32], "scripted vs nn.RNN")

    # Gradients through the scripted module are nn.RNN's.
    ours_grads = torch.autograd.grad(scripted(x)[0].pow(2).sum(), list(scripted.parameters()))
    their_grads = torch.autograd.grad(reference(x)[0].pow(2).sum(), list(reference.parameters()))
    for a, b in zip(ours_grads, their_grads):
        assert_close(a, b, GRAD_TOL[torch.float32], "grad through scripted")

    check_loads_in_a_fresh_process(scripted, (x,), reference, tmp_path)


def test_script_packed_input():
    theirs, ours = rnn_pair(input_size=2, hidden_size=4, bidirectional=True)
    scripted = torch.jit.script(PackedTagger(ours))
    packed = pack_sequence([torch.randn(5, 2), torch.randn(3, 2), torch.randn(1, 2)])
    for a, b in zip(scripted(packed), PackedTagger(theirs)(packed)):
        assert_close(a, b, TOL[torch.float32], "scripted packed")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_script_cell_loop(nonlinearity, tmp_path):
    torch.manual_seed(0)
    theirs = nn.RNNCell(3, 5, nonlinearity=nonlinearity)
    ours = rnnkern.RNNCell(3, 5, nonlinearity=nonlinearity)
    ours.load_state_dict(theirs.state_dict())
    scripted = torch.jit.script(Unroll(ours))
    xs, h = torch.randn(6, 2, 3), torch.randn(2, 5)
    assert runs_fused_operator(scripted, xs, h)
    assert_close(scripted(xs, h), Unroll(theirs)(xs, h), TOL[torch.float32], "scripted cell loop")
    unbatched = torch.jit.script(ours)  # a cell's forward is not overloaded: it scripts on its own
    assert_close(unbatched(xs[0, 0], h[0]), theirs(xs[0, 0], h[0]), TOL[torch.float32], "1-D")

    check_loads_in_a_fresh_process(scripted, (xs, h), Unroll(theirs), tmp_path)


def test_scripted_module_in_other_dtypes():
    # float64 has a CPU kernel, bfloat16 has none: scripted code then runs torch's RNN, as eager does.
    theirs, ours = rnn_pair(input_size=3, hidden_size=4)
    for dtype, tol in ((torch.float64, TOL[torch.float64]), (torch.bfloat16, dict(atol=0, rtol=0))):
        scripted = torch.jit.script(Tagger(copy.deepcopy(ours)).to(dtype))
        reference = Tagger(copy.deepcopy(theirs)).to(dtype)
        reference.head.load_state_dict(scripted.head.state_dict())
        x = torch.randn(5, 2, 3, dtype=dtype)
        assert runs_fused_operator(scripted, x) == (dtype == torch.float64)
        for a, b in zip(scripted(x), reference(x)):
            assert a.dtype == dtype
            assert_close(a, b, tol, f"scripted {dtype}")


def test_scripted_kernel_choice_restates_the_cpu_dtype_list():
    # TorchScript cannot read KERNEL_DTYPES, so scripted_has_kernel restates the CPU's dtypes: it must
    # agree with the list the kernels are compiled for, dtype by dtype.
    from rnnkern import _ops

    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        tensors = [torch.zeros(2, dtype=dtype), torch.ones(3, dtype=dtype)]
        assert _ops.scripted_has_kernel(tensors) == _ops.has_kernel(torch.device("cpu"), dtype)
    assert not _ops.scripted_has_kernel([torch.zeros(2), torch.zeros(2, dtype=torch.float64)])


def test_scripted_errors_carry_nn_rnn_words():
    _, ours = rnn_pair(input_size=3, hidden_size=4)
    scripted = torch.jit.script(Tagger(ours))
    with pytest.raises(Exception, match="input.size\\(-1\\) must be equal to input_size"):
        scripted(torch.randn(5, 2, 7))
    with pytest.raises(Exception, match="Expected input to be 2D or 3D, got 4D"):
        scripted(torch.randn(5, 2, 3, 1))


@pytest.mark.parametrize("config", CONFIGS, ids=["bidirectional-2-layer", "relu-nobias"])
def test_trace_matches_nn_rnn_and_loads_in_a_fresh_process(config, tmp_path):
    theirs, ours = rnn_pair(**config)
    model, reference = Tagger(ours), Tagger(theirs)
    reference.head.load_state_dict(model.head.state_dict())
    x = torch.randn(4, 7, 3)
    traced = torch.jit.trace(model, (x,))
    other = torch.randn(4, 9, 3)  # another sequence length than the traced one
    assert runs_fused_operator(traced, other)
    for a, b in zip(traced(other), reference(other)):
        assert_close(a, b, TOL[torch.float32], "traced")
    check_loads_in_a_fresh_process(traced, (other,), reference, tmp_path)
