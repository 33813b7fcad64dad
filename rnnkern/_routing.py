"""Which implementation an eager layer call runs: the fused operator, or one of two others.

The fused operator's autograd is a C++ function (csrc/autograd_layer.cpp), which keeps Python out of
every training step but is opaque to torch.func's transforms and to forward-mode AD. Under those,
a layer runs in plain differentiable torch operations instead (composite.py), which every
transform sees through. Under torch.onnx.export's dynamo exporter, a layer becomes the ONNX RNN
operator (onnx_export.py; the TorchScript exporter traces the operator itself and translates it
with the symbolic registered there). Everything else (eager, torch.compile, torch.export,
TorchScript) runs the fused operator.

This runs on every layer call, so the common case is three cheap tests, about 0.3 us in all:
torch.onnx.is_in_onnx_export() alone costs 3 us, and is asked only while tracing for an export.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

KERNEL, COMPOSITE, ONNX = "kernel", "composite", "onnx"


def layer_route(tensors: Iterable[Tensor]) -> str:
    """KERNEL, COMPOSITE or ONNX for a layer call on ``tensors`` (its input, hx and weights)."""
    # First, so that torch.compile of a torch.func transform (which dynamo traces) gets the
    # composite layer too.
    if torch._C._are_functorch_transforms_active():
        return COMPOSITE
    if torch.compiler.is_compiling():  # torch.compile, torch.export, and ONNX's dynamo exporter
        return ONNX if torch.onnx.is_in_onnx_export() else KERNEL
    # Outside a forward_ad.dual_level() block no tensor has a tangent: one integer comparison.
    if forward_ad._current_level >= 0 and any(
        forward_ad.unpack_dual(t).tangent is not None for t in tensors
    ):
        return COMPOSITE
    return KERNEL


def exporting_to_onnx() -> bool:
    """Whether torch.onnx.export's dynamo exporter is tracing this call."""
    return torch.compiler.is_compiling() and torch.onnx.is_in_onnx_export()


def direct_dispatch_allowed(tensors: tuple[Tensor, ...]) -> bool:
    """Whether an operator on ``tensors`` may be called through rnnkern._C (pybind, straight into
    the dispatcher) rather than torch.ops: not under torch.jit.trace (whose graph must hold the
    operators the ONNX exporter translates) nor torch.compile (which traces torch.ops), and with
    no __torch_function__ to honour (a tensor subclass, or a TorchFunctionMode), which only
    torch.ops' Python half calls. The dispatcher itself (autograd, dispatch modes, fake tensors)
    is the same either way."""
    return (
        not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not torch._C._has_torch_function(tensors)
    )


def plain_eager_kernel_call(tensors: tuple[Tensor, ...]) -> bool:
    """Whether a call on ``tensors`` runs the fused kernels in plain eager mode, its operators
    called through rnnkern._C (direct_dispatch_allowed), and not under a torch.func transform or
    forward AD. Only then may a module call the one-step cell operator for a layer."""
    return direct_dispatch_allowed(tensors) and layer_route(tensors) is KERNEL
