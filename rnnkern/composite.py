"""One Elman layer in plain differentiable torch operations, step by step: what torch.func runs.

torch.func's transforms (vmap, grad, vjp, jacrev, jacfwd, hessian, ...) and forward-mode AD see
through ordinary torch operations but not through the fused operator's C++ autograd. Under them,
each layer runs this instead (see _routing.py): a linear projection of all steps, then per step
``h = act(Y_t + h W_hh^T)``, with the same contract as rnnkern::elman_layer (dense or packed input,
one or two directions). Every operation here has a batching rule and derivatives of every order,
so vmap over an rnnkern.RNN works, as do ensembles of stacked weights, which nn.RNN's ATen kernel
refuses (no batching rule for aten::rnn_tanh). It is as slow as any step-by-step loop: it serves
the transforms, not training.

A packed sequence's step t holds the first batch_sizes[t] sequences (sorted by length), so a
direction keeps the state of all N sequences, starting from h0, and updates the first rows[t] at
each step: forward, a sequence that has ended keeps its last state; reverse, a sequence that has
not begun still holds h0 when its last step comes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _C


def elman_layer(
    input: Tensor, hx: Tensor, weights: list[Tensor], batch_sizes: Tensor | None, relu: bool
) -> tuple[Tensor, Tensor]:
    """rnnkern::elman_layer's result, computed step by step in differentiable torch operations."""
    _C.check_layer_args(input, hx, weights, batch_sizes)  # the operator's own checks
    activation = torch.relu if relu else torch.tanh
    directions = hx.size(0)
    per_direction = len(weights) // directions
    if batch_sizes is None:
        rows = [input.size(1)] * input.size(0)
        x = input.reshape(input.size(0) * input.size(1), input.size(2))  # no -1: batch may be 0
    else:
        rows = batch_sizes.tolist()
        x = input
    offsets = [0]
    for n in rows:
        offsets.append(offsets[-1] + n)

    outputs, finals = [], []
    for d in range(directions):
        w_ih, w_hh = weights[d * per_direction], weights[d * per_direction + 1]
        bias = None
        if per_direction == 4:
            bias = weights[d * per_direction + 2] + weights[d * per_direction + 3]
        projected = F.linear(x, w_ih, bias)  # all steps at once: (rows, H)
        h = hx[d]
        step_outputs: list[Tensor | None] = [None] * len(rows)
        order = range(len(rows) - 1, -1, -1) if d == 1 else range(len(rows))
        for t in order:
            n = rows[t]
            new = activation(projected[offsets[t] : offsets[t + 1]] + F.linear(h[:n], w_hh))
            step_outputs[t] = new
            h = torch.cat([new, h[n:]]) if n < h.size(0) else new
        outputs.append(torch.cat(step_outputs))
        finals.append(h)
    output = torch.cat(outputs, dim=1)
    if batch_sizes is None:
        output = output.view(input.size(0), input.size(1), output.size(1))
    return output, torch.stack(finals)
