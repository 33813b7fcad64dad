"""ONNX export: every rnnkern layer becomes the standard ONNX ``RNN`` operator.

Both of torch.onnx.export's exporters are served, so an exported model runs in ONNX Runtime or any
other ONNX backend without rnnkern:

- the dynamo exporter (``dynamo=True``, the default) runs the module's Python; while it does, each
  layer emits the ONNX node itself through ``torch.onnx.ops.symbolic_multi_out`` (``rnn_layer``);
- the TorchScript exporter (``dynamo=False``) traces the operator ``rnnkern::elman_layer`` and
  translates it with the symbolic registered here (``_elman_layer_symbolic``), which also serves
  models traced or scripted with torch.jit before export (a scripted model keeps its control flow,
  the loop over layers and the kernel test, as ONNX Loop and If around the RNN nodes).

The two build the same graph, one ONNX ``RNN`` node per layer (both directions in one node, as
rnnkern's operator has them) between the layout changes nn.RNN's layout needs:

    W = [W_ih of each direction]  (D, H, I)       R = [W_hh of each direction]  (D, H, H)
    B = [b_ih ++ b_hh of each direction]  (D, 2H), omitted without bias
    Y, Y_h = RNN(X, W, R, B, initial_h=h0, activations=[Tanh or Relu] * D, hidden_size=H)
    output = Y (T, D, N, H) -> (T, N, D, H) -> (T, N, D * H);   h_n = Y_h (D, N, H)

PackedSequence input is refused with a clear error: its data layout is not ONNX's, and export with
padded input and sequence lengths is what ONNX RNN supports.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _routing

_PACKED_ERROR = (
    "rnnkern: ONNX export of PackedSequence input is not supported; export the model with "
    "padded (L, N, H_in) input, as torch.nn.RNN's export needs"
)


@torch.jit.unused
def refuse_packed_input() -> None:
    """Raises the clear error when the dynamo exporter traces a PackedSequence (it would otherwise
    fail on reading the batch sizes, with a message about data-dependent shapes)."""
    if _routing.exporting_to_onnx():
        raise RuntimeError(_PACKED_ERROR)


def _roles(weights: list, directions: int) -> tuple[list, list, list | None]:
    """weights per direction (w_ih, w_hh[, b_ih, b_hh]) -> the W, R and B lists of ONNX RNN."""
    per_direction = len(weights) // directions
    w = weights[0::per_direction]
    r = weights[1::per_direction]
    if per_direction == 2:
        return w, r, None
    return w, r, [(weights[d * 4 + 2], weights[d * 4 + 3]) for d in range(directions)]


def _attributes(directions: int, hidden: int, relu: bool) -> dict:
    return {
        "hidden_size": hidden,
        "direction": "bidirectional" if directions == 2 else "forward",
        "activations": ["Relu" if relu else "Tanh"] * directions,
    }


def rnn_layer(
    input: Tensor, hx: Tensor, weights: list[Tensor], batch_sizes: Tensor | None, relu: bool
) -> tuple[Tensor, Tensor]:
    """One layer as an ONNX RNN node, for the dynamo exporter (elman_layer's contract)."""
    if batch_sizes is not None:
        raise RuntimeError(_PACKED_ERROR)
    directions, batch, hidden = hx.shape
    steps = input.shape[0]
    w, r, b = _roles(weights, directions)
    bias = None if b is None else torch.stack([torch.cat(pair) for pair in b])
    y, y_h = torch.onnx.ops.symbolic_multi_out(
        "RNN",
        [input, torch.stack(w), torch.stack(r), bias, None, hx],
        _attributes(directions, hidden, relu),
        dtypes=[input.dtype, input.dtype],
        shapes=[[steps, directions, batch, hidden], [directions, batch, hidden]],
    )
    return y.permute(0, 2, 1, 3).reshape(steps, batch, directions * hidden), y_h


def _elman_layer_symbolic(g, input, hx, weights, batch_sizes, relu):
    """The TorchScript exporter's translation of rnnkern::elman_layer (same graph as rnn_layer)."""
    from torch.onnx import errors, symbolic_helper

    if not symbolic_helper._is_none(batch_sizes):
        raise errors.SymbolicValueError(_PACKED_ERROR, input)
    weights = symbolic_helper._unpack_list(weights)
    relu = bool(symbolic_helper._maybe_get_const(relu, "b"))
    # With bias, each direction's third weight is the 1-D bias_ih; without, it is the next
    # direction's 2-D weight_ih.
    third_rank = symbolic_helper._get_tensor_rank(weights[2]) if len(weights) >= 4 else None
    hidden_sizes = symbolic_helper._get_tensor_sizes(weights[1])
    if (len(weights) >= 4 and third_rank is None) or not hidden_sizes or hidden_sizes[0] is None:
        raise errors.SymbolicValueError(
            "rnnkern: the ONNX export of elman_layer needs the weights' shapes, which this graph "
            "does not record; export the model in eager mode (torch.onnx.export of the module)",
            input,
        )
    with_bias = third_rank == 1
    directions = len(weights) // (4 if with_bias else 2)
    hidden = hidden_sizes[0]
    w, r, b = _roles(weights, directions)

    def stacked(values):
        return g.op(
            "Concat", *[symbolic_helper._unsqueeze_helper(g, v, [0]) for v in values], axis_i=0
        )

    bias = (
        symbolic_helper._optional_input_placeholder_tensor(g)
        if b is None
        else stacked([g.op("Concat", b_ih, b_hh, axis_i=0) for b_ih, b_hh in b])
    )
    no_sequence_lens = symbolic_helper._optional_input_placeholder_tensor(g)
    attrs = _attributes(directions, hidden, relu)
    y, y_h = g.op(
        "RNN",
        input,
        stacked(w),
        stacked(r),
        bias,
        no_sequence_lens,
        hx,
        hidden_size_i=attrs["hidden_size"],
        direction_s=attrs["direction"],
        activations_s=attrs["activations"],
        outputs=2,
    )
    y = g.op("Transpose", y, perm_i=[0, 2, 1, 3])
    output = g.op("Reshape", y, g.op("Constant", value_t=torch.tensor([0, 0, -1])))
    return output, y_h


# ONNX RNN has been in every opset the TorchScript exporter writes (7 and up); registered at 9, the
# symbolic serves every opset from 9 on.
torch.onnx.register_custom_op_symbolic("rnnkern::elman_layer", _elman_layer_symbolic, 9)
