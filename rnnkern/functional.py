"""Functional form of the Elman RNN: a stack of fused layers, as torch.nn.RNN computes it.

``elman_rnn`` is what ``rnnkern.RNN.forward`` calls once it has normalised its arguments: it runs
one ``rnnkern::elman_layer`` operator per layer (both directions in one call) and applies
inter-layer dropout exactly where nn.RNN does, on the same tensor shapes, so that with the same
random seed the dropout masks are the same as nn.RNN's.

``elman_rnn`` is TorchScript code (a scripted rnnkern.RNN calls it). In eager mode each layer goes
through ``run_layer``, which also serves torch.func transforms and forward-mode AD (composite.py)
and the ONNX exporter (onnx_export.py): see _routing.py.
"""

from typing import Optional  # TorchScript reads Optional, not "X | None"

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _C, _routing, composite, onnx_export
from ._ops import elman_layer_op

_NONLINEARITIES = ("tanh", "relu")


def elman_layer(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    batch_sizes: Optional[Tensor] = None,
    nonlinearity: str = "tanh",
) -> tuple[Tensor, Tensor]:
    """One Elman layer, one or two directions, in one fused call.

    Args:
        input: ``(L, N, H_in)``, or ``(rows, H_in)`` packed data when ``batch_sizes`` is given.
        hx: ``(D, N, H_out)`` initial state, D = 2 for a bidirectional layer.
        weights: per direction ``weight_ih, weight_hh[, bias_ih, bias_hh]`` (nn.RNN's order).
        batch_sizes: a PackedSequence's batch sizes, or None for dense input.
        nonlinearity: ``'tanh'`` or ``'relu'``.

    Returns:
        ``(output, h_n)``: output ``(L, N, D * H_out)`` (or ``(rows, D * H_out)`` packed), and
        h_n ``(D, N, H_out)``.
    """
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(
            f"rnnkern.elman_layer: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or "
            "'relu'."
        )
    return run_layer(input, hx, list(weights), batch_sizes, nonlinearity == "relu")


def elman_rnn(
    input: Tensor,
    hx: Tensor,
    flat_weights: list[Tensor],
    num_layers: int,
    bidirectional: bool,
    nonlinearity: str,
    dropout: float,
    training: bool,
    batch_sizes: Optional[Tensor],
) -> tuple[Tensor, Tensor]:
    """A stack of Elman layers on sequence-first (or packed) input, nn.RNN's ``_VF.rnn_tanh`` contract.

    ``flat_weights`` is nn.RNN's ``_flat_weights`` list and ``hx`` is ``(num_layers * D, N, H)``.
    """
    directions = 2 if bidirectional else 1
    per_layer = len(flat_weights) // num_layers
    relu = nonlinearity == "relu"
    layer_input = input
    finals: list[Tensor] = []
    for layer in range(num_layers):
        weights = flat_weights[layer * per_layer : (layer + 1) * per_layer]
        # One layer takes hx whole: a slice is an ATen call, a few microseconds of a short call.
        layer_hx = hx if num_layers == 1 else hx[layer * directions : (layer + 1) * directions]
        output, h_n = run_layer(layer_input, layer_hx, weights, batch_sizes, relu)
        finals.append(h_n)
        if dropout > 0 and training and layer < num_layers - 1:
            output = F.dropout(output, dropout, training=True)
        layer_input = output
    return layer_input, finals[0] if num_layers == 1 else torch.cat(finals, 0)


def run_layer(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    batch_sizes: Optional[Tensor],
    relu: bool,
) -> tuple[Tensor, Tensor]:
    """elman_layer's work once its arguments are checked: the fused operator in TorchScript, and in
    eager mode whatever _routing.py says this call needs."""
    if torch.jit.is_scripting():
        return torch.ops.rnnkern.elman_layer(input, hx, weights, batch_sizes, relu)
    return _eager_layer(input, hx, weights, batch_sizes, relu)


@torch.jit.unused
def _eager_layer(
    input: Tensor,
    hx: Tensor,
    weights: list[Tensor],
    batch_sizes: Optional[Tensor],
    relu: bool,
) -> tuple[Tensor, Tensor]:
    tensors = (input, hx, *weights)
    route = _routing.layer_route(tensors)
    if route is _routing.KERNEL:
        if (
            isinstance(input, Tensor)
            and input.device.type == "cpu"
            and _routing.direct_dispatch_allowed(tensors)
        ):
            # Straight into the dispatcher, as the cell does: torch.ops' parsing of the arguments
            # is a third of the operator's call at a few steps (PERFORMANCE.md, version 24b).
            try:
                return _C.elman_layer(input, hx, weights, batch_sizes, relu)
            except TypeError:
                pass  # arguments pybind cannot take (None, a list): torch.ops says what is wrong
        return elman_layer_op(input, hx, weights, batch_sizes, relu)
    if route is _routing.ONNX:
        return onnx_export.rnn_layer(input, hx, weights, batch_sizes, relu)
    return composite.elman_layer(input, hx, weights, batch_sizes, relu)
