"""``rnnkern.RNN`` and ``rnnkern.RNNCell``: drop-in replacements for torch.nn.RNN and torch.nn.RNNCell.

Both keep torch's parameter names, shapes, initialisation and argument checks (they reuse
``nn.RNNBase`` / ``nn.RNNCell`` for all of that) and replace only the computation with the fused
rnnkern operators. Where this build has no kernel for a tensor's device or dtype, they run torch's
own RNN implementation instead (with a one-time warning), so results never differ from nn.RNN's.

``rnnkern.RNN`` derives from ``nn.RNNBase`` rather than ``nn.RNN`` on purpose: torch.compile graph-
breaks on every ``isinstance(m, nn.RNN)`` module, and a fused operator is exactly what lets it trace
through this one.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ._ops import KERNEL_DTYPES, has_kernel
from .functional import elman_layer, elman_rnn

_NONLINEARITIES = ("tanh", "relu")
_warned_fallback: set[tuple[str, torch.dtype]] = set()


def kernels_in_use() -> str:
    return "; ".join(
        f"{device} " + "/".join(str(d).removeprefix("torch.") for d in dtypes)
        for device, dtypes in KERNEL_DTYPES.items()
        if device != "meta"
    )


def _warn_fallback(module: str, device: torch.device, dtype: torch.dtype) -> None:
    key = (device.type, dtype)
    if key not in _warned_fallback:
        _warned_fallback.add(key)
        warnings.warn(
            f"rnnkern.{module}: this build has no fused kernel for {device.type} tensors of dtype "
            f"{dtype}; running torch's own RNN implementation (same results, nn.RNN's speed). "
            f"Fused kernels in use: {kernels_in_use()}.",
            stacklevel=3,
        )


def _autocast_enabled(device: torch.device) -> bool:
    try:
        return torch.is_autocast_enabled(device.type)
    except RuntimeError:  # a device type autocast does not know, such as meta
        return False


def _kernel_dtype(input: Tensor, hx: Tensor, weights: list[Tensor]) -> torch.dtype | None:
    """The dtype a fused kernel runs this call in, or None for torch's own RNN implementation.

    Under autocast, nn.RNN computes in autocast's lower-precision dtype (float16 on its cuDNN path;
    its float32 tensors are cast, float64 ones are not): a kernel for that dtype does the same, and where there is none,
    torch's RNN applies autocast's rules itself, so the result is nn.RNN's either way.
    """
    tensors = (input, hx, *weights)
    device = input.device
    if _autocast_enabled(device) and any(t.dtype != torch.float64 for t in tensors):
        dtype = torch.get_autocast_dtype(device.type)
        if device.type == "cuda" and torch.backends.cudnn.enabled:
            # nn.RNN's cuDNN path casts to float16 whatever autocast's dtype (ATen's AutocastRNN).
            dtype = torch.float16
        return dtype if has_kernel(device, dtype) else None
    dtype = input.dtype
    return dtype if has_kernel(device, dtype) and all(t.dtype == dtype for t in tensors) else None


def _warn_if_no_kernel_for(module: str, input: Tensor, hx: Tensor, weights: list[Tensor]) -> None:
    # Only when the dtype is the reason: not for autocast, nor for mixed dtypes (which raise).
    if not _autocast_enabled(input.device) and all(t.dtype == input.dtype for t in (hx, *weights)):
        _warn_fallback(module, input.device, input.dtype)


class RNN(nn.RNNBase):
    r"""Applies a multi-layer Elman RNN with :math:`\tanh` or :math:`\text{ReLU}` non-linearity.

    A drop-in replacement for :class:`torch.nn.RNN` computed by fused kernels. For each element of
    the input sequence, each layer computes

    .. math::
        h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})

    Args:
        input_size: The number of expected features in the input `x`.
        hidden_size: The number of features in the hidden state `h`.
        num_layers: Number of recurrent layers (stacked). Default: 1.
        nonlinearity: ``'tanh'`` or ``'relu'``. Default: ``'tanh'``.
        bias: If ``False``, the layers use no bias weights `b_ih` and `b_hh`. Default: ``True``.
        batch_first: If ``True``, input and output are ``(batch, seq, feature)``; this does not
            apply to hidden states. Default: ``False``.
        dropout: If non-zero, a dropout layer with this probability on the outputs of each layer
            except the last, in training mode (same masks as nn.RNN for the same seed). Default: 0.
        bidirectional: If ``True``, becomes a bidirectional RNN. Default: ``False``.
        device, dtype: Where and in which dtype to create the parameters.

    Inputs: input, hx
        * **input**: ``(L, H_in)`` unbatched, ``(L, N, H_in)``, ``(N, L, H_in)`` with
          ``batch_first=True``, or a :class:`~torch.nn.utils.rnn.PackedSequence`.
        * **hx**: ``(D * num_layers, H_out)`` unbatched or ``(D * num_layers, N, H_out)``; zeros if
          not given. D = 2 if bidirectional, else 1.

    Outputs: output, h_n
        * **output**: ``(L, D * H_out)``, ``(L, N, D * H_out)`` or ``(N, L, D * H_out)`` (or a
          PackedSequence, for packed input): the last layer's `h_t` for every `t`.
        * **h_n**: ``(D * num_layers, H_out)`` or ``(D * num_layers, N, H_out)``: the final state
          of every layer and direction.

    Attributes:
        weight_ih_l[k], weight_hh_l[k], bias_ih_l[k], bias_hh_l[k] (and ``_reverse``): exactly as in
        :class:`torch.nn.RNN`, initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`,
        :math:`k = 1/\text{hidden\_size}`; state_dicts load in both directions.

    Fused kernels exist for CPU float32 and float64; other devices and dtypes run torch's own
    implementation after a one-time warning.

    Examples::

        >>> rnn = rnnkern.RNN(10, 20, 2)
        >>> input = torch.randn(5, 3, 10)
        >>> h0 = torch.randn(2, 3, 20)
        >>> output, hn = rnn(input, h0)
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        proj_size: int = 0,
    ) -> None:
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(
                f"rnnkern.RNN: unknown nonlinearity '{nonlinearity}'; use 'tanh' or 'relu'"
            )
        if proj_size != 0:
            raise ValueError(
                "rnnkern.RNN: proj_size is only supported for LSTM, not RNN (as in torch.nn.RNN)"
            )
        mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(
            mode,
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            device=device,
            dtype=dtype,
        )
        self.nonlinearity = nonlinearity

    def forward(
        self, input: Tensor | PackedSequence, hx: Tensor | None = None
    ) -> tuple[Tensor | PackedSequence, Tensor]:
        """Runs the RNN over ``input`` from state ``hx``; see the class docstring for shapes."""
        directions = 2 if self.bidirectional else 1
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
        else:
            data, batch_sizes, sorted_indices, unsorted_indices = input, None, None, None
            if input.dim() not in (2, 3):
                raise ValueError(
                    f"rnnkern.RNN: expected input to be 2-D (unbatched) or 3-D (batched), got a "
                    f"{input.dim()}-D tensor of shape {list(input.shape)}"
                )
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not batched:
                data = input.unsqueeze(batch_dim)
                if hx is not None:
                    if hx.dim() != 2:
                        raise RuntimeError(
                            "rnnkern.RNN: for unbatched 2-D input, hx should also be 2-D "
                            f"(num_layers * num_directions, hidden_size), got {hx.dim()}-D"
                        )
                    hx = hx.unsqueeze(1)
            elif hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    "rnnkern.RNN: for batched 3-D input, hx should also be 3-D "
                    f"(num_layers * num_directions, batch, hidden_size), got {hx.dim()}-D"
                )
            batch = data.size(batch_dim)
        if hx is None:
            hx = torch.zeros(
                self.num_layers * directions,
                batch,
                self.hidden_size,
                dtype=data.dtype,
                device=data.device,
            )
        else:
            hx = self.permute_hidden(hx, sorted_indices)
        self.check_forward_args(data, hx, batch_sizes)
        if hx.device != data.device:
            raise RuntimeError(
                f"rnnkern.RNN: hx is on {hx.device} but input is on {data.device}; move hx to "
                f"{data.device}"
            )
        if hx.dtype != data.dtype and not _autocast_enabled(data.device):
            raise RuntimeError(
                f"rnnkern.RNN: hx has dtype {hx.dtype} but input has {data.dtype}; they must match "
                f"(hx.to({data.dtype}))"
            )

        weights = [getattr(self, name) for name in self._flat_weights_names]
        dtype = _kernel_dtype(data, hx, weights)
        if dtype is None:
            _warn_if_no_kernel_for("RNN", data, hx, weights)
            output, h_n = self._torch_rnn(data, hx, weights, batch_sizes)
        else:
            # Casts only under autocast (differentiable: gradients reach the float32 parameters).
            data, hx, weights = data.to(dtype), hx.to(dtype), [w.to(dtype) for w in weights]
            if self.batch_first and not packed:
                data = data.transpose(0, 1)
            output, h_n = elman_rnn(
                data,
                hx,
                weights,
                self.num_layers,
                self.bidirectional,
                self.nonlinearity,
                self.dropout,
                self.training,
                batch_sizes,
            )
            if self.batch_first and not packed:
                output = output.transpose(0, 1)

        if packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
        elif not batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, self.permute_hidden(h_n, unsorted_indices)

    def _torch_rnn(
        self, data: Tensor, hx: Tensor, weights: list[Tensor], batch_sizes: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """torch's own implementation (what nn.RNN runs), for devices and dtypes without a kernel."""
        fn = torch._VF.rnn_tanh if self.nonlinearity == "tanh" else torch._VF.rnn_relu
        common = (self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if batch_sizes is None:
            return fn(data, hx, weights, *common, self.batch_first)
        return fn(data, batch_sizes, hx, weights, *common)


class RNNCell(nn.RNNCell):
    r"""An Elman RNN cell with tanh or ReLU non-linearity: a drop-in for :class:`torch.nn.RNNCell`.

    .. math::
        h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})

    Args:
        input_size: The number of expected features in the input `x`.
        hidden_size: The number of features in the hidden state `h`.
        bias: If ``False``, the cell uses no bias weights `b_ih` and `b_hh`. Default: ``True``.
        nonlinearity: ``'tanh'`` or ``'relu'``. Default: ``'tanh'``.
        device, dtype: Where and in which dtype to create the parameters.

    Inputs: input, hidden
        * **input**: ``(N, H_in)`` or ``(H_in)``.
        * **hidden**: ``(N, H_out)`` or ``(H_out)``; zeros if not given.

    Outputs: h'
        * **h'**: ``(N, H_out)`` or ``(H_out)``: the next hidden state.

    Attributes:
        weight_ih, weight_hh, bias_ih, bias_hh: as in :class:`torch.nn.RNNCell`.

    Examples::

        >>> cell = rnnkern.RNNCell(10, 20)
        >>> hx = torch.randn(3, 20)
        >>> for x_t in torch.randn(6, 3, 10):
        ...     hx = cell(x_t, hx)
    """

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        """One step from state ``hx`` on input ``input``; see the class docstring for shapes."""
        if input.dim() not in (1, 2):
            raise ValueError(
                f"rnnkern.RNNCell: expected input to be 1-D (unbatched) or 2-D (batch, input_size), "
                f"got a {input.dim()}-D tensor of shape {list(input.shape)}"
            )
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(
                f"rnnkern.RNNCell: expected hx to be 1-D (unbatched) or 2-D (batch, hidden_size), "
                f"got a {hx.dim()}-D tensor of shape {list(hx.shape)}"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            h = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            h = hx if batched else hx.unsqueeze(0)
        self._check(x, h)

        weights = [self.weight_ih, self.weight_hh]
        if self.bias:
            weights += [self.bias_ih, self.bias_hh]
        dtype = _kernel_dtype(x, h, weights)
        if dtype is not None:
            x, h, weights = x.to(dtype), h.to(dtype), [w.to(dtype) for w in weights]
            out, _ = elman_layer(x.unsqueeze(0), h.unsqueeze(0), weights, None, self.nonlinearity)
            out = out[0]
        else:
            _warn_if_no_kernel_for("RNNCell", x, h, weights)
            fn = torch._VF.rnn_tanh_cell if self.nonlinearity == "tanh" else torch._VF.rnn_relu_cell
            out = fn(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return out if batched else out.squeeze(0)

    def _check(self, x: Tensor, h: Tensor) -> None:
        if x.size(1) != self.input_size:
            raise RuntimeError(
                f"rnnkern.RNNCell: input has {x.size(1)} features, expected input_size="
                f"{self.input_size} (input shape {list(x.shape)})"
            )
        if h.shape != (x.size(0), self.hidden_size):
            raise RuntimeError(
                f"rnnkern.RNNCell: hx must have shape {[x.size(0), self.hidden_size]} (batch, "
                f"hidden_size) to match input, got {list(h.shape)}"
            )
        weight_dtype = self.weight_ih.dtype
        if not _autocast_enabled(x.device) and (x.dtype != weight_dtype or h.dtype != weight_dtype):
            raise ValueError(
                f"rnnkern.RNNCell: input ({x.dtype}) and hx ({h.dtype}) must have the parameters' "
                f"dtype {weight_dtype}. Convert the input (input.to({weight_dtype})) or the module "
                f"(cell.to({x.dtype}))"
            )
