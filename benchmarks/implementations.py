"""The things a user would otherwise pick, each built from one reference torch.nn.RNN's weights.

Every implementation is a callable ``fn(x, h0) -> (output, h_n)`` on sequence-first input, so the
runner can check it against nn.RNN and time it the same way:

- ``rnnkern``: rnnkern.RNN with the same weights.
- ``nn.RNN``: torch.nn.RNN itself (cuDNN on GPU, ATen on CPU).
- ``RNNCell-loop``: a Python loop over nn.RNNCell, layer by layer and direction by direction, the
  way RNNs are commonly taught.
- ``RNNCell-loop-compiled``: the same loop with the cell's step under torch.compile (compiling
  the whole loop would unroll thousands of steps). The compiled step takes the weights as
  arguments, so it compiles once per shape, not once per module.
- ``rnnkern-RNNCell-loop``: the same loop over rnnkern.RNNCell: what a user who calls cells
  meets (one operator call per step).
- ``rnnkern-streaming``, ``nn.RNN-streaming``: the module called one step at a time, carrying the
  state, as streaming inference does (one direction only: the reverse one needs the future).
- ``jax``, ``onnxruntime`` (CPU, where installed, named with --implementations): the compiled
  peers outside PyTorch (benchmarks/peers.py). Their thread pools would slow whatever else is
  timed in their process, so each is timed in a process of its own (``own_process``), against
  nn.RNN timed again there; the runner merges their rows into its results.
- ``rnnkern-floor`` (CUDA, one layer, forward only): rnnkern's persistent kernel with its mat-vec
  left out, so only its barriers and loads remain: the floor a persistent kernel can reach. Its
  output is wrong by design and is not checked.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rnnkern

from . import peers
from .rnn_weights import parameter_suffixes

RnnFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class Implementation:
    name: str
    build: Callable[[nn.RNN], RnnFn]
    devices: tuple[str, ...] = ("cpu", "cuda")
    packed: bool = True  # takes PackedSequence input
    checked: bool = True  # its output must match nn.RNN's before it is timed
    backward: bool = True  # can run forward+backward
    bidirectional: bool = True  # can run bidirectional RNNs
    inference_only: bool = False  # no autograd at all (not even the forward mode's graph)
    dtypes: tuple[str, ...] | None = None  # the dtypes it runs; None: all
    default: bool = True  # in the default sweep (the others are named with --implementations)
    # Timed in a process of its own, with nn.RNN timed again beside it there, whenever anything
    # else is timed besides nn.RNN: it would slow what shares its process (or be slowed by it).
    own_process: bool = False


def build_rnnkern(reference: nn.RNN) -> RnnFn:
    # A copy: the timed modules must not share parameters (or their .grad) with the reference.
    return rnnkern.replace_rnns(copy.deepcopy(reference))


def build_nn_rnn(reference: nn.RNN) -> RnnFn:
    return reference


def cells_of(reference: nn.RNN, cell_class: type = nn.RNNCell) -> list[list[nn.RNNCell]]:
    """Cells (nn.RNNCell, or another class with its arguments) copying each layer and direction of
    ``reference``: cells[layer][direction]."""
    cells = []
    for suffixes in parameter_suffixes(reference):
        row = []
        for suffix in suffixes:
            w_ih = getattr(reference, "weight_ih" + suffix)
            cell = cell_class(
                w_ih.shape[1],
                reference.hidden_size,
                bias=reference.bias,
                nonlinearity=reference.nonlinearity,
                device=w_ih.device,
                dtype=w_ih.dtype,
            )
            names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if reference.bias else [])
            with torch.no_grad():
                for name in names:
                    getattr(cell, name).copy_(getattr(reference, name + suffix))
            row.append(cell)
        cells.append(row)
    return cells


def cell_loop(cells: list[list[Callable[[Tensor, Tensor], Tensor]]]) -> RnnFn:
    """The stacked, possibly bidirectional RNN as a Python loop over per-step cell calls."""

    def run(x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        directions = len(cells[0])
        layer_input = x
        finals = []
        for layer, row in enumerate(cells):
            outputs = []
            for d, cell in enumerate(row):
                h = h0[layer * directions + d]
                steps = range(x.shape[0] - 1, -1, -1) if d == 1 else range(x.shape[0])
                per_step = [None] * x.shape[0]
                for t in steps:
                    h = cell(layer_input[t], h)
                    per_step[t] = h
                outputs.append(torch.stack(per_step))
                finals.append(h)
            layer_input = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
        return layer_input, torch.stack(finals)

    return run


def build_cell_loop(reference: nn.RNN) -> RnnFn:
    return cell_loop(cells_of(reference))


def build_rnnkern_cell_loop(reference: nn.RNN) -> RnnFn:
    return cell_loop(cells_of(reference, rnnkern.RNNCell))


def streaming(module: nn.Module) -> RnnFn:
    """The RNN called one step at a time, the state carried from call to call."""

    def run(x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        h, outputs = h0, []
        for t in range(x.shape[0]):
            out, h = module(x[t : t + 1], h)
            outputs.append(out)
        return torch.cat(outputs), h

    return run


def build_rnnkern_streaming(reference: nn.RNN) -> RnnFn:
    return streaming(build_rnnkern(reference))


def build_nn_streaming(reference: nn.RNN) -> RnnFn:
    return streaming(copy.deepcopy(reference))


def build_jax(reference: nn.RNN) -> RnnFn:
    return peers.JaxRNN(reference)


def build_onnxruntime(reference: nn.RNN) -> RnnFn:
    return peers.OnnxRuntimeRNN(reference)


def cell_step(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    relu: bool,
) -> Tensor:
    """nn.RNNCell's step as a function of its weights."""
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return torch.relu(pre) if relu else torch.tanh(pre)


compiled_cell_step = torch.compile(cell_step, dynamic=False)


def build_compiled_cell_loop(reference: nn.RNN) -> RnnFn:
    # One compiled entry per shape, dtype and requires_grad pattern: a sweep needs more than
    # dynamo's default of 8, and past the limit dynamo would silently run the step eagerly, so
    # raise the limit and make hitting it an error (reported by the runner, not timed).
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    torch._dynamo.config.accumulated_recompile_limit = max(
        torch._dynamo.config.accumulated_recompile_limit, 1024
    )
    torch._dynamo.config.fail_on_recompile_limit_hit = True

    def compiled(cell: nn.RNNCell) -> Callable[[Tensor, Tensor], Tensor]:
        relu = cell.nonlinearity == "relu"
        return lambda x, h: compiled_cell_step(
            x, h, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh, relu
        )

    return cell_loop([[compiled(cell) for cell in row] for row in cells_of(reference)])


def build_floor(reference: nn.RNN) -> RnnFn:
    if reference.num_layers != 1:
        raise ValueError("rnnkern-floor times one layer")
    weights = [w.detach() for w in reference._flat_weights]
    relu = reference.nonlinearity == "relu"

    def run(x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ops.rnnkern._elman_layer_barriers_only(x, h0, weights, None, relu)

    return run


IMPLEMENTATIONS = {
    impl.name: impl
    for impl in (
        Implementation("rnnkern", build_rnnkern),
        Implementation("nn.RNN", build_nn_rnn),
        Implementation("RNNCell-loop", build_cell_loop, packed=False),
        Implementation("RNNCell-loop-compiled", build_compiled_cell_loop, packed=False),
        # The per-call cases: opt-in, as each times thousands of Python-level calls.
        Implementation(
            "rnnkern-RNNCell-loop", build_rnnkern_cell_loop, packed=False, default=False
        ),
        Implementation(
            "nn.RNN-streaming",
            build_nn_streaming,
            packed=False,
            bidirectional=False,
            default=False,
        ),
        Implementation(
            "rnnkern-streaming",
            build_rnnkern_streaming,
            packed=False,
            bidirectional=False,
            default=False,
        ),
        Implementation(
            "rnnkern-floor", build_floor, ("cuda",), packed=False, checked=False, backward=False
        ),
    )
}
# The peers are opt-in: each needs its package, and is timed in a process of its own (their idle
# pool threads spin, and would slow what is timed beside them), with nn.RNN timed again there.
# Only find_spec looks for them here: a process that merely delegates them never imports them.
if peers.installed("jax"):
    IMPLEMENTATIONS["jax"] = Implementation(
        "jax", build_jax, ("cpu",), packed=False, default=False, own_process=True
    )
if peers.installed("onnxruntime"):
    IMPLEMENTATIONS["onnxruntime"] = Implementation(
        "onnxruntime",
        build_onnxruntime,
        ("cpu",),
        packed=False,
        backward=False,
        inference_only=True,
        dtypes=("float32",),  # ONNX Runtime's CPU RNN kernel is float32 only
        default=False,
        own_process=True,
    )
BASELINE = "nn.RNN"
