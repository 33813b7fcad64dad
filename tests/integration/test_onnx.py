"""ONNX export with both of torch.onnx.export's exporters: each rnnkern layer becomes the standard ONNX
RNN operator, and the file runs in ONNX Runtime (a real runtime, no rnnkern in the process's graph)
with dynamic batch and sequence axes, matching eager rnnkern, eager nn.RNN and nn.RNN's own export."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkern
from tests.conftest import RNN_ARGS

ONNX_TOL = {"atol": 1e-5, "rtol": 1e-5}


class Model(nn.Module):
    """An RNN (or a cell) between other layers; called with or without the initial state."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        directions = 2 if getattr(rnn, "bidirectional", False) else 1
        self.head = nn.Linear(rnn.hidden_size * directions, 2)

    def forward(self, x, h0=None):
        if isinstance(self.rnn, nn.RNNCell):  # rnnkern.RNNCell is one too
            h = self.rnn(x, h0)
            return self.head(h), h
        out, h_n = self.rnn(x, h0)
        return self.head(out), h_n


def export(model: nn.Module, args: tuple, dynamo: bool, dynamic: dict) -> onnx.ModelProto:
    """Exports with inputs named x (and h0, when args has it) and the given dynamic axes
    ({input: {axis: name}})."""
    names = ["x", "h0"][: len(args)]
    if dynamo:
        shapes = {
            name: {axis: torch.export.Dim(label, min=1) for axis, label in dynamic[name].items()}
            for name in names
        }
        return torch.onnx.export(model, args, dynamo=True, dynamic_shapes=shapes).model_proto
    buffer = io.BytesIO()
    dynamic = {name: dynamic[name] for name in names}
    torch.onnx.export(model, args, buffer, dynamo=False, input_names=names, dynamic_axes=dynamic)
    return onnx.load_from_string(buffer.getvalue())


def run(proto: onnx.ModelProto, *inputs: torch.Tensor) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: t.numpy() for name, t in zip(names, inputs)})


def ops(proto: onnx.ModelProto) -> list[str]:
    return [
        f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        for node in proto.graph.node
    ]


def all_ops(graph: onnx.GraphProto) -> list[str]:
    """The op types of a graph and of every subgraph inside it (If branches, Loop bodies)."""
    found = []
    for node in graph.node:
        found.append(f"{node.domain}::{node.op_type}" if node.domain else node.op_type)
        for attribute in node.attribute:
            for sub in [attribute.g, *attribute.graphs]:
                found += all_ops(sub)
    return found


# Each option on both sides across the configurations.
CONFIG_KEYS = ("num_layers", "bidirectional", "nonlinearity", "bias", "batch_first", "h0")
CONFIGS = [
    dict(zip(CONFIG_KEYS, values))
    for values in [
        (1, False, "tanh", True, False, True),
        (2, True, "tanh", True, True, False),
        (3, False, "relu", False, True, True),
        (2, True, "relu", False, False, True),
        (1, True, "tanh", False, False, False),
    ]
]


def config_id(c: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in c.items())


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("config", CONFIGS, ids=[config_id(c) for c in CONFIGS])
def test_rnn_exports_to_onnx_rnn_nodes_that_match_eager(config, dynamo):
    config = dict(config)
    with_h0 = config.pop("h0")
    torch.manual_seed(0)
    theirs = nn.RNN(input_size=3, hidden_size=6, **config)
    ours = rnnkern.RNN(input_size=3, hidden_size=6, **config)
    ours.load_state_dict(theirs.state_dict())
    model_ours, model_theirs = Model(ours).eval(), Model(theirs).eval()
    model_theirs.head.load_state_dict(model_ours.head.state_dict())
    D = 2 if config["bidirectional"] else 1
    batch_axis, seq_axis = (0, 1) if config["batch_first"] else (1, 0)

    def inputs(batch, steps):
        shape = [0, 0, 3]
        shape[batch_axis], shape[seq_axis] = batch, steps
        x = torch.randn(shape)
        return (x, torch.randn(config["num_layers"] * D, batch, 6)) if with_h0 else (x,)

    dynamic = {"x": {batch_axis: "batch", seq_axis: "steps"}, "h0": {1: "batch"}}
    proto = export(model_ours, inputs(2, 5), dynamo, dynamic)
    onnx.checker.check_model(proto)
    rnn_nodes = [n for n in proto.graph.node if n.op_type == "RNN" and n.domain == ""]
    assert len(rnn_nodes) == config["num_layers"], ops(proto)
    assert not any("rnnkern" in op for op in ops(proto)), ops(proto)
    activation = b"Relu" if config["nonlinearity"] == "relu" else b"Tanh"
    for node in rnn_nodes:
        attributes = {a.name: a for a in node.attribute}
        assert list(attributes["activations"].strings) == [activation] * D

    # Dynamic axes: other batch sizes and sequence lengths than the exported ones.
    for batch, steps in [(3, 7), (1, 2)]:
        args = inputs(batch, steps)
        with torch.no_grad():
            expected = model_ours(*args)
            reference = model_theirs(*args)
        got = run(proto, *args)
        for g, e, r in zip(got, expected, reference):
            torch.testing.assert_close(torch.from_numpy(g), e, **ONNX_TOL)
            torch.testing.assert_close(torch.from_numpy(g), r, **ONNX_TOL)

    # nn.RNN's own export of the same model gives the same numbers at the exported shape (its dynamo
    # export unrolls the sequence, so its length is fixed there).
    args = inputs(2, 5)
    proto_theirs = export(model_theirs, args, dynamo, dynamic)
    for a, b in zip(run(proto, *args), run(proto_theirs, *args)):
        np.testing.assert_allclose(a, b, **ONNX_TOL)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("nonlinearity, bias", [("tanh", True), ("relu", False)])
@pytest.mark.parametrize("with_h0", [True, False])
def test_cell_exports_to_one_onnx_rnn_step(dynamo, nonlinearity, bias, with_h0):
    torch.manual_seed(1)
    theirs = nn.RNNCell(4, 5, bias=bias, nonlinearity=nonlinearity)
    ours = rnnkern.RNNCell(4, 5, bias=bias, nonlinearity=nonlinearity)
    ours.load_state_dict(theirs.state_dict())
    model = Model(ours).eval()
    count = 2 if with_h0 else 1
    example = (torch.randn(2, 4), torch.randn(2, 5))[:count]
    proto = export(model, example, dynamo, {"x": {0: "batch"}, "h0": {0: "batch"}})
    assert [n.op_type for n in proto.graph.node].count("RNN") == 1, ops(proto)
    args = (torch.randn(3, 4), torch.randn(3, 5))[:count]
    got = run(proto, *args)
    with torch.no_grad():
        expected = model(*args)
        reference = theirs(*args)
    torch.testing.assert_close(torch.from_numpy(got[1]), reference, **ONNX_TOL)
    for g, e in zip(got, expected):
        torch.testing.assert_close(torch.from_numpy(g), e, **ONNX_TOL)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_packed_input_export_names_the_alternative(dynamo):
    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = rnnkern.RNN(2, 3)

        def forward(self, x):
            return self.rnn(pack_padded_sequence(x, [4, 2]))[1]

    args = (torch.randn(4, 2, 2),)
    with pytest.raises(Exception, match="PackedSequence input is not supported.*padded"):
        if dynamo:
            torch.onnx.export(Packed(), args, dynamo=True)
        else:
            torch.onnx.export(Packed(), args, io.BytesIO(), dynamo=False)
    # and the module still works in eager mode
    assert Packed()(*args).shape == (1, 2, 3)


def test_configs_cover_each_option_both_ways():
    for key in ("num_layers", "bidirectional", "nonlinearity", "bias", "batch_first", "h0"):
        assert len({c[key] for c in CONFIGS}) >= 2, key
    assert set(RNN_ARGS) - {"input_size", "hidden_size"} <= set(CONFIGS[0])


class ScriptableModel(nn.Module):
    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * 2, 2)

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h_n = self.rnn(x, h0)
        return self.head(out), h_n


def test_scripted_model_exports_with_the_torchscript_exporter():
    torch.manual_seed(2)
    theirs = nn.RNN(3, 6, num_layers=2, bidirectional=True)
    ours = rnnkern.RNN(3, 6, num_layers=2, bidirectional=True)
    ours.load_state_dict(theirs.state_dict())
    scripted = torch.jit.script(ScriptableModel(ours).eval())
    reference = ScriptableModel(theirs).eval()
    reference.head.load_state_dict(scripted.head.state_dict())
    args = (torch.randn(5, 2, 3), torch.randn(4, 2, 6))
    proto = export(scripted, args, False, {"x": {0: "steps", 1: "batch"}, "h0": {1: "batch"}})
    # Scripted control flow (the loop over layers, the kernel-or-not test) stays in the graph as
    # ONNX Loop and If; the layers inside are RNN nodes all the same.
    assert "RNN" in all_ops(proto.graph) and not any("rnnkern" in op for op in all_ops(proto.graph))
    args = (torch.randn(7, 3, 3), torch.randn(4, 3, 6))
    with torch.no_grad():
        for got, expected in zip(run(proto, *args), reference(*args)):
            torch.testing.assert_close(torch.from_numpy(got), expected, **ONNX_TOL)
