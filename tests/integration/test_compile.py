"""torch.compile(fullgraph=True) runs models containing rnnkern.RNN without a graph break."""

from __future__ import annotations

import torch
from torch import nn

import rnnkern
from tests.conftest import GRAD_TOL, TOL, assert_close, rnn_pair


class Regressor(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 1)

    def forward(self, x, h0=None):
        out, h_n = self.rnn(x, h0)
        return self.head(out), h_n


def test_compile_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    _, ours = rnn_pair(
        input_size=3, hidden_size=16, num_layers=2, bidirectional=True, batch_first=True
    )
    model = Regressor(ours)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 9, 3, requires_grad=True)
    y_eager, hn_eager = model(x)
    y_comp, hn_comp = compiled(x)
    assert_close(y_comp, y_eager, TOL[torch.float32], "compiled output")
    assert_close(hn_comp, hn_eager, TOL[torch.float32], "compiled h_n")
    g_eager = torch.autograd.grad(y_eager.sum(), [x, *model.parameters()])
    g_comp = torch.autograd.grad(y_comp.sum(), [x, *model.parameters()])
    for a, b in zip(g_comp, g_eager):
        assert_close(a, b, GRAD_TOL[torch.float32], "compiled grad")


def test_compile_inductor_matches_nn_rnn():
    torch._dynamo.reset()
    theirs, ours = rnn_pair(input_size=2, hidden_size=8, nonlinearity="relu")
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(5, 3, 2)
    h0 = torch.randn(1, 3, 8)
    assert_close(compiled(x, h0)[0], theirs(x, h0)[0], TOL[torch.float32], "inductor output")


def test_compile_cell_loop():
    torch._dynamo.reset()
    cell = rnnkern.RNNCell(3, 5)
    ref = nn.RNNCell(3, 5)
    ref.load_state_dict(cell.state_dict())

    def unroll(c, xs, h):
        for x in xs:
            h = c(x, h)
        return h

    xs = torch.randn(4, 2, 3)
    h = torch.randn(2, 5)
    compiled = torch.compile(unroll, fullgraph=True, backend="aot_eager")
    assert_close(compiled(cell, xs, h), unroll(ref, xs, h), TOL[torch.float32], "cell loop")


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given (one per (re)compilation)."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_dynamic_sequence_lengths_compile_once():
    torch._dynamo.reset()
    theirs, ours = rnn_pair(input_size=3, hidden_size=8, num_layers=2)
    backend = CountingBackend()
    compiled = torch.compile(ours, fullgraph=True, dynamic=True, backend=backend)
    for steps in (5, 9, 17, 33, 64):
        x = torch.randn(steps, 2, 3)
        assert_close(compiled(x)[0], theirs(x)[0], TOL[torch.float32], f"{steps} steps")
    assert backend.graphs == 1, f"compiled {backend.graphs} times for 5 sequence lengths"

    # By default dynamo compiles a static graph first, then one dynamic graph for the rest.
    torch._dynamo.reset()
    backend = CountingBackend()
    compiled = torch.compile(ours, fullgraph=True, backend=backend)
    for steps in (5, 9, 17, 33, 64):
        compiled(torch.randn(steps, 2, 3))
    assert backend.graphs <= 2, f"compiled {backend.graphs} times for 5 sequence lengths"


def test_dynamic_shapes_training_with_an_output_unused():
    """A compiled training step that uses only the output, or only h_n, with dynamic shapes, gets
    nn.RNN's gradients (an unused output's gradient is zeros, whoever makes them)."""
    torch._dynamo.reset()
    theirs, ours = rnn_pair(input_size=3, hidden_size=8, num_layers=2)
    for pick in (0, 1):
        compiled = torch.compile(
            lambda x, pick=pick: ours(x)[pick].tanh().sum(),
            fullgraph=True,
            dynamic=True,
            backend="aot_eager",
        )
        for steps, batch in ((5, 2), (9, 3)):
            x = torch.randn(steps, batch, 3, requires_grad=True)
            ours.zero_grad()
            theirs.zero_grad()
            compiled(x).backward()
            x_ref = x.detach().requires_grad_()
            theirs(x_ref)[pick].tanh().sum().backward()
            assert_close(x.grad, x_ref.grad, GRAD_TOL[torch.float32], f"output {pick}: input grad")
            for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
                assert_close(p.grad, q.grad, GRAD_TOL[torch.float32], f"output {pick}: {name}")


def train(model: nn.Module, steps: int, data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        for x, y in data:
            optimizer.zero_grad()
            prediction, _ = model(x)
            nn.functional.mse_loss(prediction.mean(1), y).backward()
            optimizer.step()


def test_model_trains_under_compile_to_the_same_weights_as_eager():
    # rnnkern.RNN between other layers, trained with SGD and momentum: torch.compile (inductor)
    # reaches the weights eager training reaches.
    torch._dynamo.reset()
    torch.manual_seed(5)
    config = dict(input_size=3, hidden_size=12, num_layers=2, batch_first=True, bidirectional=True)
    eager = Regressor(rnnkern.RNN(**config))
    compiled_model = Regressor(rnnkern.RNN(**config))
    compiled_model.load_state_dict(eager.state_dict())
    initial = {k: v.clone() for k, v in eager.state_dict().items()}
    data = [(torch.randn(4, 10, 3), torch.randn(4, 1)) for _ in range(3)]
    train(eager, 4, data)
    train(torch.compile(compiled_model, fullgraph=True), 4, data)
    for name, trained in eager.state_dict().items():
        assert not torch.equal(trained, initial[name]), f"{name} did not train"
        assert_close(compiled_model.state_dict()[name], trained, GRAD_TOL[torch.float32], name)
