"""torch.export and AOTInductor: a model holding rnnkern.RNN exports with a dynamic sequence length
(the fused operator in the graph), saves, and loads in a fresh process, matching nn.RNN at other
lengths than the exported one."""

from __future__ import annotations

import torch
from torch import nn

from tests.conftest import TOL, assert_close, rnn_pair, run_in_fresh_process


class Model(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 1)

    def forward(self, x, h0):
        out, h_n = self.rnn(x, h0)
        return self.head(out), h_n


def models():
    theirs, ours = rnn_pair(
        input_size=3, hidden_size=8, num_layers=2, bidirectional=True, batch_first=True
    )
    model, reference = Model(ours).eval(), Model(theirs).eval()
    reference.head.load_state_dict(model.head.state_dict())
    return model, reference


def exported(model):
    steps = torch.export.Dim("steps", min=2, max=4096)
    args = (torch.randn(2, 10, 3), torch.randn(4, 2, 8))
    program = torch.export.export(model, args, dynamic_shapes=({1: steps}, None))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert "rnnkern.elman_layer.default" in targets, targets
    return program


def test_export_with_dynamic_sequence_length_saves_and_loads_in_a_fresh_process(tmp_path):
    model, reference = models()
    program = exported(model)
    for steps in (3, 17):
        args = (torch.randn(2, steps, 3), torch.randn(4, 2, 8))
        for a, b in zip(program.module()(*args), reference(*args)):
            assert_close(a, b, TOL[torch.float32], f"exported, {steps} steps")
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    args = (torch.randn(2, 23, 3), torch.randn(4, 2, 8))
    got = run_in_fresh_process(f"model = torch.export.load({str(path)!r}).module()", args, tmp_path)
    with torch.no_grad():
        for a, b in zip(got, reference(*args)):
            assert_close(a, b, TOL[torch.float32], "exported, loaded in a fresh process")


def test_aot_inductor_package_loads_in_a_fresh_process(tmp_path):
    model, reference = models()
    path = torch._inductor.aoti_compile_and_package(
        exported(model), package_path=str(tmp_path / "model.pt2")
    )
    args = (torch.randn(2, 31, 3), torch.randn(4, 2, 8))
    got = run_in_fresh_process(
        f"model = torch._inductor.aoti_load_package({path!r})", args, tmp_path
    )
    with torch.no_grad():
        for a, b in zip(got, reference(*args)):
            assert_close(a, b, TOL[torch.float32], "AOTInductor package in a fresh process")
