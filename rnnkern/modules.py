"""``rnnkern.RNN`` and ``rnnkern.RNNCell``: drop-in replacements for torch.nn.RNN and torch.nn.RNNCell.

Both keep torch's parameter names, shapes, initialisation and argument checks (they reuse
``nn.RNNBase`` / ``nn.RNNCell`` for all of that) and replace only the computation with the fused
rnnkern operators. Where this build has no kernel for a tensor's device or dtype, they run torch's
own RNN implementation instead (with a one-time warning), so results never differ from nn.RNN's.

``rnnkern.RNN`` derives from ``nn.RNNBase`` rather than ``nn.RNN`` on purpose: torch.compile graph-
breaks on every ``isinstance(m, nn.RNN)`` module, and a fused operator is exactly what lets it trace
through this one.

Both forwards are TorchScript code, as nn.RNN's are: the argument handling is shared, and what runs
the layers differs. A plain eager call on dense CPU input runs whole in C++ (``_direct_call``:
rnnkern._C.eager_rnn, which streams one-step calls through the cell operator); other eager calls go
through ``_eager_*`` (autocast, torch.func transforms, ONNX export, the fallback warning: see
_routing.py); a scripted module calls the fused operator for the CPU kernels and torch's RNN for
everything else. Error messages contain nn.RNN's own wording, so
code that matches nn.RNN's messages keeps working, and add what rnnkern knows.
"""

import warnings
from typing import Optional, overload  # TorchScript reads Optional, not "X | None"

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import _C, _routing, onnx_export
from ._ops import KERNEL_DTYPES, elman_cell_op, scripted_has_kernel
from .functional import _NONLINEARITIES, elman_rnn, run_layer

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


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know, such as meta
        return False


def _kernel_dtype(
    input: Tensor, hx: Tensor, weights: list[Tensor], device_type: str, autocast: bool
) -> torch.dtype | None:
    """The dtype a fused kernel runs this call in, or None for torch's own RNN implementation.
    ``device_type`` is input.device.type and ``autocast`` _autocast_enabled(device_type), which
    the caller has asked already (each question costs a cell call about 0.5 us).

    Under autocast, nn.RNN computes in autocast's lower-precision dtype (float16 on its cuDNN path;
    its float32 tensors are cast, float64 ones are not): a kernel for that dtype does the same, and
    where there is none, torch's RNN applies autocast's rules itself, so the result is nn.RNN's
    either way.
    """
    kernel_dtypes = KERNEL_DTYPES.get(device_type, ())
    if autocast and any(t.dtype != torch.float64 for t in (input, hx, *weights)):
        dtype = torch.get_autocast_dtype(device_type)
        if device_type == "cuda" and torch.backends.cudnn.enabled:
            # nn.RNN's cuDNN path casts to float16 whatever autocast's dtype (ATen's AutocastRNN).
            dtype = torch.float16
        return dtype if dtype in kernel_dtypes else None
    # A plain loop: this runs on every call of a cell, where a generator's cost shows.
    dtype = input.dtype
    if dtype not in kernel_dtypes or hx.dtype != dtype:
        return None
    for w in weights:
        if w.dtype != dtype:
            return None
    return dtype


_CELL_PARAMETERS = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]


def _parameter_values(module: nn.Module, names: list[str]) -> list[Optional[Tensor]]:
    """The named parameters' values as they are now, read from module._parameters: getattr goes
    through nn.Module.__getattr__, about 0.9 us per name, which a module called one step at a time
    pays on every call. torch.func.functional_call puts its substitutes there too; a parametrized
    weight (torch.nn.utils.parametrize) or one set as a plain attribute is not, and is read by
    name."""
    params = module._parameters
    try:
        return [params[name] for name in names]
    except KeyError:
        return [getattr(module, name) for name in names]


def _warn_if_no_kernel_for(module: str, input: Tensor, hx: Tensor, weights: list[Tensor]) -> None:
    # Only when the dtype is the reason: not for autocast, nor for mixed dtypes (which raise).
    if not _autocast_enabled(input.device.type) and all(
        t.dtype == input.dtype for t in (hx, *weights)
    ):
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
        if proj_size != 0:
            raise ValueError(
                "rnnkern.RNN: proj_size argument is only supported for LSTM, not RNN or GRU "
                f"(got proj_size={proj_size})"
            )
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(
                f"rnnkern.RNN: Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'."
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

    @overload
    @torch._jit_internal._overload_method
    def forward(
        self,
        input: Tensor,
        hx: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor]:
        pass

    @overload
    @torch._jit_internal._overload_method
    def forward(
        self,
        input: PackedSequence,
        hx: Optional[Tensor] = None,
    ) -> tuple[PackedSequence, Tensor]:
        pass

    def forward(self, input, hx=None):
        """Runs the RNN over ``input`` from state ``hx``; see the class docstring for shapes."""
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if not torch.jit.is_scripting():
            direct = self._direct_call(input, hx)
            if direct is not None:
                return direct
        return self._forward_tensor(input, hx)

    @torch.jit.unused
    def _direct_call(self, input: Tensor, hx: Optional[Tensor]) -> Optional[tuple[Tensor, Tensor]]:
        """The whole call in one step into C++ (rnnkern._C.eager_rnn, csrc/eager_rnn.h) in plain
        eager mode on the CPU: _forward_tensor's work with the same operators in the same order,
        without its Python, which was 79k of the 179k instructions of a call of 4 steps at batch
        1, hidden 64 (PERFORMANCE.md, version 25). None where _forward_tensor must run instead:
        anything to check, warn about, cast or route elsewhere."""
        try:
            weights = _parameter_values(self, self._flat_weights_names)
            tensors = (input, *weights) if hx is None else (input, hx, *weights)
            if not _routing.plain_eager_kernel_call(tensors):
                return None
            return _C.eager_rnn(
                input,
                hx,
                weights,
                self.input_size,
                self.hidden_size,
                self.num_layers,
                self.bidirectional,
                self.nonlinearity == "relu",
                self.batch_first,
                self.dropout,
                self.training,
            )
        except TypeError:
            return None  # arguments that are not tensors: _forward_tensor says what is wrong

    def _forward_packed(
        self, input: PackedSequence, hx: Optional[Tensor]
    ) -> tuple[PackedSequence, Tensor]:
        """A PackedSequence: the layers run on its rows sorted by length, longest first, so hx
        (given in the caller's batch order) is sorted the same way going in, and h_n unsorted
        coming out."""
        if not torch.jit.is_scripting():
            onnx_export.refuse_packed_input()
        self._update_flat_weights()
        data, batch_sizes, sorted_indices, unsorted_indices = input
        if hx is not None:
            hx = self.permute_hidden(hx, sorted_indices)
        output, h_n = self._layers(data, hx, int(batch_sizes[0]), batch_sizes)
        h_n = self.permute_hidden(h_n, unsorted_indices)
        return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), h_n

    def _forward_tensor(self, input: Tensor, hx: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """A padded (or unbatched) tensor: an unbatched call runs as a batch of one."""
        self._update_flat_weights()  # as nn.RNN: its checks read _flat_weights
        batched = self._check_dims(input, hx)
        batch_dim = 0 if self.batch_first else 1
        data = input
        if not batched:
            data = data.unsqueeze(batch_dim)
            if hx is not None:
                hx = hx.unsqueeze(1)
        output, h_n = self._layers(data, hx, data.size(batch_dim), None)
        if not batched:
            output = output.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
        return output, h_n

    def _check_dims(self, input: Tensor, hx: Optional[Tensor]) -> bool:
        """Whether the input is batched, once it and hx have dimensions that agree: nn.RNN's
        checks, in its order and with its words."""
        if input.dim() not in (2, 3):
            raise ValueError(
                f"rnnkern.RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead "
                f"(shape {list(input.shape)}): (L, H_in) unbatched or (L, N, H_in) batched"
            )
        batched = input.dim() == 3
        if not batched and hx is not None and hx.dim() != 2:
            raise RuntimeError(
                "rnnkern.RNN: For unbatched 2-D input, hx should also be 2-D but got "
                f"{hx.dim()}-D tensor (num_layers * num_directions, hidden_size)"
            )
        if batched and hx is not None and hx.dim() != 3:
            raise RuntimeError(
                "rnnkern.RNN: For batched 3-D input, hx should also be 3-D but got "
                f"{hx.dim()}-D tensor (num_layers * num_directions, batch, hidden_size)"
            )
        return batched

    def _layers(
        self, data: Tensor, hx: Optional[Tensor], batch: int, batch_sizes: Optional[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Every layer on batched data (sequence-first, batch-first, or packed rows with their
        batch_sizes), from hx or zeros, after nn.RNN's checks of the shapes and devices."""
        if hx is None:
            directions = 2 if self.bidirectional else 1
            shape = (self.num_layers * directions, batch, self.hidden_size)
            if data.device.type == "cpu":
                # One row of zeros, expanded: the layers copy their initial state anyway, and
                # zeroing more than 32k elements is an OpenMP team of torch's threads, whose
                # barrier a busy machine makes wait and whose second thread then spins on the core
                # rnnkern's helper thread would use (PERFORMANCE.md, version 19). Elsewhere torch's
                # RNN may run instead (cuDNN wants a contiguous hx).
                hx = torch.zeros(
                    1, 1, self.hidden_size, dtype=data.dtype, device=data.device
                ).expand(shape)
            else:
                hx = torch.zeros(shape, dtype=data.dtype, device=data.device)
        if (
            batch_sizes is not None
            or torch.jit.is_scripting()
            or not self._forward_args_are_fine(data, hx)
        ):
            self.check_forward_args(data, hx, batch_sizes)
        if hx.device != data.device:
            raise RuntimeError(
                "rnnkern.RNN: Input and hidden tensors are not at the same device, found input "
                f"tensor at {data.device} and hidden tensor at {hx.device}; move hx to "
                f"{data.device}"
            )
        if torch.jit.is_scripting():
            return self._scripted_layers(data, hx, batch_sizes)
        return self._eager_layers(data, hx, batch_sizes)

    @torch.jit.unused
    def _forward_args_are_fine(self, data: Tensor, hx: Tensor) -> bool:
        """Whether nn.RNNBase.check_forward_args would pass on dense input, asked in one go: its
        three methods cost a call streaming one step at a time 2-4 us. When this says no,
        check_forward_args itself runs and raises with nn.RNN's own words (or passes: it skips
        the dtype test under autocast)."""
        shape = data.shape
        directions = 2 if self.bidirectional else 1
        return (
            len(shape) == 3
            and shape[2] == self.input_size
            and data.dtype == self._flat_weights[0].dtype
            and hx.shape
            == (self.num_layers * directions, shape[0 if self.batch_first else 1], self.hidden_size)
        )

    def _scripted_layers(
        self, data: Tensor, hx: Tensor, batch_sizes: Optional[Tensor]
    ) -> tuple[Tensor, Tensor]:
        if scripted_has_kernel([data, hx] + self._flat_weights):
            return self._kernel_layers(data, hx, self._flat_weights, batch_sizes)
        return self._torch_rnn(data, hx, self._flat_weights, batch_sizes)

    @torch.jit.unused
    def _eager_layers(
        self, data: Tensor, hx: Tensor, batch_sizes: Optional[Tensor]
    ) -> tuple[Tensor, Tensor]:
        # By name, so that torch.func.functional_call's substitutes are what runs.
        weights = _parameter_values(self, self._flat_weights_names)
        device_type = data.device.type
        autocast = _autocast_enabled(device_type)
        if hx.dtype != data.dtype and not autocast:
            raise RuntimeError(
                f"rnnkern.RNN: {_dtype_mismatch(hx.dtype, data.dtype)}: hx has dtype {hx.dtype} "
                f"but input has {data.dtype}; they must match (hx.to({data.dtype}))"
            )
        dtype = _kernel_dtype(data, hx, weights, device_type, autocast)

        if dtype is None:
            _warn_if_no_kernel_for("RNN", data, hx, weights)
            return self._torch_rnn(data, hx, weights, batch_sizes)
        if dtype != data.dtype or any(w.dtype != dtype for w in weights):
            # Only under autocast (differentiable: gradients reach the float32 parameters).
            data, hx, weights = data.to(dtype), hx.to(dtype), [w.to(dtype) for w in weights]
        return self._kernel_layers(data, hx, weights, batch_sizes)

    def _kernel_layers(
        self, data: Tensor, hx: Tensor, weights: list[Tensor], batch_sizes: Optional[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """The fused operator, one call per layer (the kernels take the sequence first)."""
        transposed = self.batch_first and batch_sizes is None
        if transposed:
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
        if transposed:
            output = output.transpose(0, 1)
        return output, h_n

    def _torch_rnn(
        self, data: Tensor, hx: Tensor, weights: list[Tensor], batch_sizes: Optional[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """torch's own implementation (what nn.RNN runs), for devices and dtypes without a kernel."""
        # (TorchScript cannot hold a function in a variable: each call is spelled out.)
        common = (self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)
        if batch_sizes is None:
            if self.nonlinearity == "relu":
                return torch._VF.rnn_relu(data, hx, weights, *common, self.batch_first)
            return torch._VF.rnn_tanh(data, hx, weights, *common, self.batch_first)
        if self.nonlinearity == "relu":
            return torch._VF.rnn_relu(data, batch_sizes, hx, weights, *common)
        return torch._VF.rnn_tanh(data, batch_sizes, hx, weights, *common)


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

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        """One step from state ``hx`` on input ``input``; see the class docstring for shapes."""
        if input.dim() not in (1, 2):
            raise ValueError(
                f"rnnkern.RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead "
                f"(shape {list(input.shape)}): (N, H_in) batched or (H_in) unbatched"
            )
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(
                f"rnnkern.RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead "
                f"(shape {list(hx.shape)}): (N, H_out) batched or (H_out) unbatched"
            )
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        if hx is None:
            h = torch.zeros(x.size(0), self.hidden_size, dtype=x.dtype, device=x.device)
        else:
            if hx.dim() != input.dim():
                # nn.RNNCell's words for the same call (its checks read the sizes of hx as given)
                if batched:
                    words = f"Input batch size {x.size(0)} doesn't match hidden0 batch size"
                    words += f" {hx.size(0)}"
                else:
                    words = f"hidden0 has inconsistent hidden_size: got {hx.size(0)}, expected"
                    words += f" {self.hidden_size}"
                raise RuntimeError(
                    f"rnnkern.RNNCell: {words}: hx must be {input.dim()}-D like input ("
                    f"{'(N, H_out)' if batched else '(H_out)'}), got shape {list(hx.shape)}"
                )
            h = hx if batched else hx.unsqueeze(0)
        self._check_shapes(x, h)
        if self.nonlinearity != "tanh" and self.nonlinearity != "relu":
            raise RuntimeError(
                f"rnnkern.RNNCell: Unknown nonlinearity: {self.nonlinearity} (use 'tanh' or 'relu')"
            )
        if torch.jit.is_scripting():
            weights = [self.weight_ih, self.weight_hh]
            bias_ih, bias_hh = self.bias_ih, self.bias_hh
            if bias_ih is not None and bias_hh is not None:
                weights += [bias_ih, bias_hh]
            if scripted_has_kernel([x, h] + weights):
                out = self._kernel_step(x, h, weights)
            else:
                out = self._torch_step(x, h)
        else:
            out = self._eager_step(x, h, self._current_weights())
        return out if batched else out.squeeze(0)

    @torch.jit.unused
    def _current_weights(self) -> list[Tensor]:
        """[weight_ih, weight_hh] (+ [bias_ih, bias_hh]) as they are now."""
        w_ih, w_hh, b_ih, b_hh = _parameter_values(self, _CELL_PARAMETERS)
        return [w_ih, w_hh] if b_ih is None or b_hh is None else [w_ih, w_hh, b_ih, b_hh]

    def _check_shapes(self, x: Tensor, h: Tensor) -> None:
        # nn.RNNCell's checks (ATen's check_rnn_cell_forward_*), in its order and words. Each shape
        # is read once: every x.size(i) is a call, and a cell runs this on every step.
        xs, hs = x.shape, h.shape
        if xs[1] != self.input_size:
            raise RuntimeError(
                f"rnnkern.RNNCell: input has inconsistent input_size: got {xs[1]} expected "
                f"{self.input_size} (input of shape {list(xs)})"
            )
        if xs[0] != hs[0]:
            raise RuntimeError(
                f"rnnkern.RNNCell: Input batch size {xs[0]} doesn't match hidden0 batch size "
                f"{hs[0]} (input of shape {list(xs)}, hx of shape {list(hs)})"
            )
        if hs[1] != self.hidden_size:
            raise RuntimeError(
                f"rnnkern.RNNCell: hidden0 has inconsistent hidden_size: got {hs[1]}, "
                f"expected {self.hidden_size} (hx of shape {list(hs)})"
            )

    @torch.jit.unused
    def _eager_step(self, x: Tensor, h: Tensor, weights: list[Tensor]) -> Tensor:
        """One step in eager mode (and under torch.compile), where this runs on every call of a
        cell in a Python loop: the common case asks only cheap questions (see PERFORMANCE.md)."""
        device_type = x.device.type
        autocast = _autocast_enabled(device_type)
        weight_dtype = weights[0].dtype
        if (x.dtype != weight_dtype or h.dtype != weight_dtype) and not autocast:
            name, t = ("input", x) if x.dtype != weight_dtype else ("hx", h)
            raise RuntimeError(
                f"rnnkern.RNNCell: {_dtype_mismatch(t.dtype, weight_dtype)}: {name} is "
                f"{t.dtype} and the parameters are {weight_dtype}. Convert {name} "
                f"({name}.to({weight_dtype})) or the module (cell.to({t.dtype}))"
            )
        route = _routing.layer_route([x, h, *weights])
        if route is _routing.COMPOSITE:
            return self._torch_step(x, h)  # nn.RNNCell's own cell: torch.func sees through it
        dtype = _kernel_dtype(x, h, weights, device_type, autocast)
        if dtype is None:
            _warn_if_no_kernel_for("RNNCell", x, h, weights)
            return self._torch_step(x, h)
        if autocast and (dtype != x.dtype or any(w.dtype != dtype for w in weights)):
            # Only under autocast (differentiable: gradients reach the float32 parameters).
            x, h, weights = x.to(dtype), h.to(dtype), [w.to(dtype) for w in weights]
        if route is _routing.KERNEL and device_type == "cpu" and not torch.jit.is_tracing():
            # The one-step operator (CPU): straight into the dispatcher (_C.elman_cell) in plain
            # eager mode, else through torch.ops (torch.compile traces it; __torch_function__ is
            # honoured there). Traced graphs keep the layer operator, which the ONNX exporter
            # translates.
            direct = _routing.direct_dispatch_allowed((x, h, *weights))
            cell = _C.elman_cell if direct else elman_cell_op
            biases = (weights[2], weights[3]) if len(weights) == 4 else (None, None)
            return cell(x, h, weights[0], weights[1], *biases, self.nonlinearity == "relu")
        return self._kernel_step(x, h, weights)

    def _kernel_step(self, x: Tensor, h: Tensor, weights: list[Tensor]) -> Tensor:
        """The fused operator on a one-step sequence."""
        out, _ = run_layer(
            x.unsqueeze(0), h.unsqueeze(0), weights, None, self.nonlinearity == "relu"
        )
        return out[0]

    def _torch_step(self, x: Tensor, h: Tensor) -> Tensor:
        """torch's own cell (what nn.RNNCell runs)."""
        if self.nonlinearity == "relu":
            return torch._VF.rnn_relu_cell(
                x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
            )
        return torch._VF.rnn_tanh_cell(
            x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh
        )


# ATen's names of the dtypes, for the wording of nn.RNN's dtype errors (which come from its matmul).
_ATEN_DTYPE_NAMES = {
    torch.float64: "Double",
    torch.float32: "Float",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.bool: "Bool",
}


def _dtype_mismatch(first: torch.dtype, second: torch.dtype) -> str:
    """nn.RNN's (and nn.RNNCell's) words for a tensor whose dtype is not the weights'."""
    names = [_ATEN_DTYPE_NAMES.get(d, str(d)) for d in (first, second)]
    return f"mat1 and mat2 must have the same dtype, but got {names[0]} and {names[1]}"
