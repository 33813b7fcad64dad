"""What a user who wants a fast CPU RNN would otherwise pick outside PyTorch, as implementations of
the benchmark runner, each used only where its package is installed (the ``peers`` extra):

- ``onnxruntime``: the reference nn.RNN exported to ONNX (the standard ``RNN`` operator) and run by
  ONNX Runtime on the CPU; inference only.
- ``jax``: ``jax.jit`` of a ``lax.scan`` over the Elman step, layer by layer and direction by
  direction; forward+backward is ``jax.value_and_grad`` of the loss the runner backpropagates for
  the others (the sum of the output and the final state), with respect to the input, h0 and every
  weight.

They are named with --implementations (not in the default sweep). Both use their own thread pools,
which by default take every core, as torch's does, and which would slow whatever else is timed in
their process (JAX's idle threads spin; ONNX Runtime's are told not to). So where anything besides
nn.RNN is timed with them, the runner times each peer in a process of its own: it runs itself
again on that peer alone, where nn.RNN is timed again beside it, and merges the peer's rows into
its results, each with its ratio against that process's nn.RNN. The runner's own process then
never imports them. Each is built from the reference nn.RNN's weights, checked against nn.RNN like
every other implementation before it is timed, and timed on arrays already in its own format
(converting from torch is not part of the work timed).
"""

from __future__ import annotations

import importlib.util
import io

import numpy as np
import torch
from torch import Tensor, nn

from .rnn_weights import parameter_suffixes


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def weights_by_layer(reference: nn.RNN) -> list[list[tuple[np.ndarray, ...]]]:
    """[layer][direction] = (W_ih, W_hh, b_ih + b_hh) as NumPy arrays (zero bias without bias)."""
    layers = []
    for suffixes in parameter_suffixes(reference):
        row = []
        for suffix in suffixes:
            w_ih = getattr(reference, "weight_ih" + suffix).detach().cpu().numpy()
            w_hh = getattr(reference, "weight_hh" + suffix).detach().cpu().numpy()
            if reference.bias:
                bias = (
                    getattr(reference, "bias_ih" + suffix) + getattr(reference, "bias_hh" + suffix)
                ).detach()
                b = bias.cpu().numpy()
            else:
                b = np.zeros(reference.hidden_size, dtype=w_hh.dtype)
            row.append((w_ih, w_hh, b))
        layers.append(row)
    return layers


class JaxRNN:
    """The reference RNN in JAX; ``fn(x, h0)`` gives torch tensors (for the runner's check), and
    ``make_call(x, h0, mode)`` the unit of work to time."""

    def __init__(self, reference: nn.RNN):
        import jax

        if next(reference.parameters()).dtype == torch.float64:
            jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.params = jax.tree_util.tree_map(jnp.asarray, weights_by_layer(reference))
        act = jax.nn.relu if reference.nonlinearity == "relu" else jnp.tanh

        def direction(x, h0, w_ih, w_hh, b, reverse):
            projected = x @ w_ih.T + b  # (T, B, H): all steps at once, as the fused kernels do

            def step(h, p):
                h = act(p + h @ w_hh.T)
                return h, h

            h_n, out = jax.lax.scan(step, h0, projected, reverse=reverse)
            return out, h_n

        def rnn(params, x, h0):
            layer_input, finals = x, []
            for layer, row in enumerate(params):
                outputs = []
                for d, (w_ih, w_hh, b) in enumerate(row):
                    out, h_n = direction(
                        layer_input, h0[layer * len(row) + d], w_ih, w_hh, b, d == 1
                    )
                    outputs.append(out)
                    finals.append(h_n)
                layer_input = jnp.concatenate(outputs, -1) if len(outputs) == 2 else outputs[0]
            return layer_input, jnp.stack(finals)

        def loss(params, x, h0):
            out, h_n = rnn(params, x, h0)
            return out.sum() + h_n.sum()

        self.forward = jax.jit(rnn)
        self.train_step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))

    def __call__(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n = self.forward(
            self.params, self.jnp.asarray(x.numpy()), self.jnp.asarray(h0.numpy())
        )
        return torch.from_numpy(np.asarray(out)), torch.from_numpy(np.asarray(h_n))

    def make_call(self, x: Tensor, h0: Tensor, mode: str):
        xj, hj = self.jnp.asarray(x.detach().numpy()), self.jnp.asarray(h0.detach().numpy())
        work = self.forward if mode in ("inference", "forward") else self.train_step
        return lambda: self.jax.block_until_ready(work(self.params, xj, hj))


class OnnxRuntimeRNN:
    """The reference RNN exported to ONNX and run by ONNX Runtime (inference only)."""

    def __init__(self, reference: nn.RNN):
        import onnxruntime

        buffer = io.BytesIO()
        directions = 2 if reference.bidirectional else 1
        parameter = next(reference.parameters())
        x = torch.randn(3, 2, reference.input_size, dtype=parameter.dtype)
        h0 = torch.randn(reference.num_layers * directions, 2, reference.hidden_size)
        torch.onnx.export(
            reference,
            (x, h0.to(parameter.dtype)),
            buffer,
            input_names=["x", "h0"],
            output_names=["out", "h_n"],
            dynamic_axes={"x": {0: "steps", 1: "batch"}, "h0": {1: "batch"}},
            dynamo=False,
        )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # Idle pool threads that spin would take the cores from whatever is timed next.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            buffer.getvalue(), options, providers=["CPUExecutionProvider"]
        )

    def __call__(self, x: Tensor, h0: Tensor) -> tuple[Tensor, Tensor]:
        out, h_n = self.session.run(None, {"x": x.detach().numpy(), "h0": h0.detach().numpy()})
        return torch.from_numpy(out), torch.from_numpy(h_n)

    def make_call(self, x: Tensor, h0: Tensor, mode: str):
        if mode != "inference":
            raise ValueError("ONNX Runtime runs inference only")
        feeds = {"x": x.detach().numpy(), "h0": h0.detach().numpy()}
        return lambda: self.session.run(None, feeds)
