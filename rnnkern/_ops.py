"""The rnnkern operators as Python sees them: fake-tensor shapes and autograd for the compiled ops.

The operators are declared once in csrc/ops.cpp (``torch.ops.rnnkern.elman_layer`` and its backward)
and implemented per device in csrc/. This module adds what the dispatcher needs on top:

- a fake (meta) implementation of each op, so torch.compile and FakeTensor can trace them without
  running a kernel.

The autograd formula of elman_layer (the fused BPTT op elman_layer_backward) is registered in C++
(csrc/autograd_layer.cpp), so no Python runs per call. Nothing here computes; the kernels do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from . import _C  # noqa: F401  (importing the extension registers the operators)

elman_layer_op = torch.ops.rnnkern.elman_layer.default
elman_cell_op = torch.ops.rnnkern.elman_cell.default


def _dtypes(device: str) -> tuple[torch.dtype, ...]:
    """The dtypes this build's kernels for ``device`` are compiled for (csrc/layer/kernel_dtypes.h)."""
    return tuple(getattr(torch, name) for name in _C.kernel_dtypes(device))


# Devices and dtypes with a compiled kernel in use. Anything else is run by torch's own RNN.
KERNEL_DTYPES = {
    "cpu": _dtypes("cpu"),
    "meta": _dtypes("cpu"),  # shapes only, from the fake implementations below
}
# The CUDA kernels (csrc/cuda/) are compiled wherever torch has CUDA and nvcc is found, but have not
# yet run on a GPU: until they have, they are used only when asked for with RNNKERN_CUDA_KERNELS=1.
CUDA_KERNELS_ENABLED = _C.has_cuda_kernels() and os.environ.get("RNNKERN_CUDA_KERNELS") == "1"
if CUDA_KERNELS_ENABLED:
    KERNEL_DTYPES["cuda"] = _dtypes("cuda")


def has_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this build of rnnkern has a fused kernel for tensors of this device and dtype."""
    return dtype in KERNEL_DTYPES.get(device.type, ())


def scripted_has_kernel(tensors: list[Tensor]) -> bool:
    """has_kernel for a TorchScript module, where all of ``tensors`` must share one dtype. Scripted
    code cannot read KERNEL_DTYPES: it runs the CPU kernels (KERNEL_DTYPES["cpu"], restated here and
    checked against it by tests/integration/test_torchscript.py), and torch's own RNN on other
    devices, whatever RNNKERN_CUDA_KERNELS says."""

    first = tensors[0]
    usable = first.device.type == "cpu" and (
        first.dtype == torch.float32 or first.dtype == torch.float64
    )
    # No return inside the loop: TorchScript would leave a value the ONNX exporter cannot read.
    for t in tensors:
        usable = usable and t.dtype == first.dtype and t.device == first.device
    return usable


def cuda_launch_plan(
    hidden: int, batch: int, directions: int, dtype: torch.dtype, algorithm: str | None = None
) -> dict:
    """The plan rnnkern's CUDA kernels choose for one layer on the current GPU (which algorithm,
    how many blocks, threads and lanes, how much shared memory), from csrc/cuda/persistent_launch.cpp
    itself. ``algorithm`` forces one (block, grid, per_step), as RNNKERN_CUDA_ALGORITHM does, whose
    value is the default; a forced one that does not fit gives per_step and says why."""
    algorithm = algorithm or os.environ.get("RNNKERN_CUDA_ALGORITHM", "auto")
    return _C.cuda_launch_plan(
        hidden, batch, directions, str(dtype).removeprefix("torch."), algorithm
    )


def _check_same_device(op: str, input: Tensor, others: Sequence[Tensor]) -> None:
    # The dispatcher picks this (meta) implementation as soon as one argument is on the meta device;
    # mixing devices must fail here as the real kernels would, not return an uninitialised tensor.
    for t in others:
        if t.device != input.device:
            raise RuntimeError(
                f"{op}: all tensors must be on the device of input ({input.device}), "
                f"got one on {t.device}"
            )


def _check_batch_sizes_device(op: str, input: Tensor, batch_sizes: Tensor | None) -> None:
    # The kernels of every device read batch_sizes on the CPU, as a PackedSequence holds it, and
    # refuse it elsewhere; so must this (a meta batch_sizes with tensors elsewhere lands here too).
    # Only shapes on meta may come with it on meta.
    allowed = ("cpu", "meta") if input.device.type == "meta" else ("cpu",)
    if batch_sizes is not None and batch_sizes.device.type not in allowed:
        raise RuntimeError(
            f"{op}: batch_sizes must be on the CPU (as in a PackedSequence), got "
            f"{batch_sizes.device}"
        )


@torch.library.register_fake("rnnkern::elman_layer")
def _elman_layer_fake(
    input: Tensor, hx: Tensor, weights: Sequence[Tensor], batch_sizes: Tensor | None, relu: bool
) -> tuple[Tensor, Tensor]:
    _check_same_device("rnnkern::elman_layer", input, [hx, *weights])
    _check_batch_sizes_device("rnnkern::elman_layer", input, batch_sizes)
    directions, _, hidden = hx.shape
    output = input.new_empty((*input.shape[:-1], directions * hidden))
    return output, hx.new_empty(hx.shape)


@torch.library.register_fake("rnnkern::elman_layer_backward")
def _elman_layer_backward_fake(
    grad_output: Tensor,
    grad_h_n: Tensor,
    input: Tensor,
    hx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    output: Tensor,
    batch_sizes: Tensor | None,
    relu: bool,
    output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_same_device(
        "rnnkern::elman_layer_backward",
        input,
        [grad_output, grad_h_n, hx, weight_ih, weight_hh, output],
    )
    _check_batch_sizes_device("rnnkern::elman_layer_backward", input, batch_sizes)
    need_input, need_hx, need_weights, need_bias = output_mask

    def empty_unless(needed: bool, like: Tensor, shape) -> Tensor:
        return like.new_empty(shape if needed else (0,))

    directions, _, hidden = hx.shape
    return (
        empty_unless(need_input, input, input.shape),
        empty_unless(need_hx, hx, hx.shape),
        empty_unless(need_weights, weight_ih, weight_ih.shape),
        empty_unless(need_weights, weight_hh, weight_hh.shape),
        empty_unless(need_bias, hx, (directions, hidden)),
    )


@torch.library.register_fake("rnnkern::elman_cell")
def _elman_cell_fake(
    input: Tensor,
    hx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None,
    bias_hh: Tensor | None,
    relu: bool,
) -> Tensor:
    biases = [b for b in (bias_ih, bias_hh) if b is not None]
    _check_same_device("rnnkern::elman_cell", input, [hx, weight_ih, weight_hh, *biases])
    return hx.new_empty(hx.shape)


@torch.library.register_fake("rnnkern::elman_cell_backward")
def _elman_cell_backward_fake(
    grad: Tensor,
    input: Tensor,
    hx: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    output: Tensor,
    relu: bool,
    output_mask: Sequence[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_same_device(
        "rnnkern::elman_cell_backward", input, [grad, hx, weight_ih, weight_hh, output]
    )
    need_input, need_hx, need_weights, need_bias = output_mask
    return (
        input.new_empty(input.shape if need_input else (0,)),
        hx.new_empty(hx.shape if need_hx else (0,)),
        weight_ih.new_empty(weight_ih.shape if need_weights else (0,)),
        weight_hh.new_empty(weight_hh.shape if need_weights else (0,)),
        hx.new_empty((hx.shape[1],) if need_bias else (0,)),
    )
