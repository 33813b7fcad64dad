"""A plain NumPy reference of the Elman RNN: forward and full backpropagation through time.

Independent of torch and of rnnkern's kernels, written for reading rather than speed; the tests use it
as an oracle. Everything is float64. Shapes follow nn.RNN, sequence first:

    x   (T, B, I)   input                       h0 (B, H)   initial state
    W_ih (H, I), W_hh (H, H), b_ih (H), b_hh (H)
    z_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh          (pre-activation)
    h_t = f(z_t)                                         (f = tanh or relu)

Variable lengths: sequence b only exists for t < lengths[b]. A reverse direction starts at
t = lengths[b] - 1 from h0. Past its end a sequence's output is 0 and its state no longer changes,
which is what nn.RNN returns for a PackedSequence (after padding).

Backward, for one layer and direction, walking the steps in the reverse of processing order, with
dh the gradient of the loss with respect to the current state (dL/dh_n to begin with):

    dz_t  = (dh + dy_t) * f'(z_t)        f'(z) = 1 - h_t^2 (tanh) or [h_t > 0] (relu)
    dW_ih += dz_t^T x_t     dW_hh += dz_t^T h_{t-1}     db_ih = db_hh += sum_b dz_t
    dx_t  = dz_t W_ih
    dh    = dz_t W_hh                    (the gradient reaching h_{t-1})

and after the first step dh is dL/dh0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def activation(z: Array, nonlinearity: str) -> Array:
    if nonlinearity == "tanh":
        return np.tanh(z)
    if nonlinearity == "relu":
        return np.maximum(z, 0.0)
    raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def activation_derivative(h: Array, nonlinearity: str) -> Array:
    """f'(z) written in terms of h = f(z)."""
    if nonlinearity == "tanh":
        return 1.0 - h * h
    return (h > 0).astype(h.dtype)


def _steps(num_steps: int, reverse: bool) -> range:
    return range(num_steps - 1, -1, -1) if reverse else range(num_steps)


def _lengths(lengths: Array | None, num_steps: int, batch: int) -> Array:
    return np.full(batch, num_steps) if lengths is None else np.asarray(lengths)


def layer_forward(
    x: Array,
    h0: Array,
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None = None,
    b_hh: Array | None = None,
    nonlinearity: str = "tanh",
    reverse: bool = False,
    lengths: Array | None = None,
) -> tuple[Array, Array]:
    """One direction of one layer. Returns (h (T, B, H) with zeros past each length, h_n (B, H))."""
    num_steps, batch, _ = x.shape
    hidden = w_hh.shape[0]
    lengths = _lengths(lengths, num_steps, batch)
    b = np.zeros(hidden) if b_ih is None else b_ih + b_hh
    h = np.zeros((num_steps, batch, hidden))
    state = np.array(h0, dtype=np.float64)
    for t in _steps(num_steps, reverse):
        running = (t < lengths)[:, None]
        new = activation(x[t] @ w_ih.T + state @ w_hh.T + b, nonlinearity)
        state = np.where(running, new, state)
        h[t] = np.where(running, new, 0.0)
    return h, state


def layer_backward(
    dy: Array,
    dh_n: Array,
    x: Array,
    h0: Array,
    w_ih: Array,
    w_hh: Array,
    h: Array,
    nonlinearity: str = "tanh",
    reverse: bool = False,
    lengths: Array | None = None,
) -> dict[str, Array]:
    """BPTT for one direction of one layer, given its forward output h.

    Returns a dict with dx, dh0, dw_ih, dw_hh, db_ih, db_hh (db_ih == db_hh).
    """
    num_steps, batch, _ = x.shape
    lengths = _lengths(lengths, num_steps, batch)
    # The state each step started from, replayed in processing order.
    before = np.zeros_like(h)
    state = np.array(h0, dtype=np.float64)
    for t in _steps(num_steps, reverse):
        running = (t < lengths)[:, None]
        before[t] = state
        state = np.where(running, h[t], state)

    dx = np.zeros_like(x, dtype=np.float64)
    dw_ih = np.zeros_like(w_ih, dtype=np.float64)
    dw_hh = np.zeros_like(w_hh, dtype=np.float64)
    db = np.zeros(w_hh.shape[0])
    dh = np.array(dh_n, dtype=np.float64)
    for t in reversed(list(_steps(num_steps, reverse))):
        running = (t < lengths)[:, None]
        dz = np.where(running, (dh + dy[t]) * activation_derivative(h[t], nonlinearity), 0.0)
        dw_ih += dz.T @ x[t]
        dw_hh += dz.T @ before[t]
        db += dz.sum(axis=0)
        dx[t] = dz @ w_ih
        dh = np.where(running, dz @ w_hh, dh)
    return {"dx": dx, "dh0": dh, "dw_ih": dw_ih, "dw_hh": dw_hh, "db_ih": db, "db_hh": db.copy()}


@dataclass
class Cache:
    """What rnn_backward needs from rnn_forward."""

    layer_inputs: list[Array]
    layer_outputs: list[list[Array]]  # [layer][direction] -> h (T, B, H)
    h0: Array
    flat_weights: list[Array]
    num_layers: int
    directions: int
    nonlinearity: str
    lengths: Array | None


def _layer_weights(flat_weights: list[Array], num_layers: int, directions: int, layer: int, d: int):
    per_direction = len(flat_weights) // (num_layers * directions)
    start = (layer * directions + d) * per_direction
    w = flat_weights[start : start + per_direction]
    return (w[0], w[1], w[2], w[3]) if per_direction == 4 else (w[0], w[1], None, None)


def rnn_forward(
    x: Array,
    h0: Array,
    flat_weights: list[Array],
    num_layers: int = 1,
    bidirectional: bool = False,
    nonlinearity: str = "tanh",
    lengths: Array | None = None,
) -> tuple[Array, Array, Cache]:
    """A stack of layers, nn.RNN style (no dropout).

    Args:
        x: (T, B, I). h0: (num_layers * D, B, H).
        flat_weights: nn.RNN's ``_flat_weights`` order, as NumPy arrays.
        lengths: (B,) sequence lengths, or None for all T.

    Returns:
        (output (T, B, D * H), h_n (num_layers * D, B, H), cache for rnn_backward)
    """
    directions = 2 if bidirectional else 1
    cache = Cache([], [], h0, flat_weights, num_layers, directions, nonlinearity, lengths)
    layer_input = np.asarray(x, dtype=np.float64)
    finals = []
    for layer in range(num_layers):
        outs = []
        for d in range(directions):
            w_ih, w_hh, b_ih, b_hh = _layer_weights(flat_weights, num_layers, directions, layer, d)
            h, h_n = layer_forward(
                layer_input,
                h0[layer * directions + d],
                w_ih,
                w_hh,
                b_ih,
                b_hh,
                nonlinearity,
                reverse=d == 1,
                lengths=lengths,
            )
            outs.append(h)
            finals.append(h_n)
        cache.layer_inputs.append(layer_input)
        cache.layer_outputs.append(outs)
        layer_input = np.concatenate(outs, axis=-1)
    return layer_input, np.stack(finals), cache


def rnn_backward(d_output: Array, d_h_n: Array, cache: Cache) -> dict[str, object]:
    """Gradients of rnn_forward: {"dx": (T, B, I), "dh0": like h0, "d_flat_weights": [...]}."""
    directions, num_layers = cache.directions, cache.num_layers
    per_direction = len(cache.flat_weights) // (num_layers * directions)
    d_flat = [None] * len(cache.flat_weights)
    dh0 = np.zeros_like(cache.h0, dtype=np.float64)
    d_layer_output = np.asarray(d_output, dtype=np.float64)
    for layer in reversed(range(num_layers)):
        x = cache.layer_inputs[layer]
        dx = np.zeros_like(x)
        hidden = cache.layer_outputs[layer][0].shape[-1]
        for d in range(directions):
            w_ih, w_hh, _, _ = _layer_weights(cache.flat_weights, num_layers, directions, layer, d)
            index = layer * directions + d
            g = layer_backward(
                d_layer_output[..., d * hidden : (d + 1) * hidden],
                d_h_n[index],
                x,
                cache.h0[index],
                w_ih,
                w_hh,
                cache.layer_outputs[layer][d],
                cache.nonlinearity,
                reverse=d == 1,
                lengths=cache.lengths,
            )
            dx += g["dx"]
            dh0[index] = g["dh0"]
            names = ["dw_ih", "dw_hh", "db_ih", "db_hh"][:per_direction]
            for i, name in enumerate(names):
                d_flat[index * per_direction + i] = g[name]
        d_layer_output = dx
    return {"dx": d_layer_output, "dh0": dh0, "d_flat_weights": d_flat}
