"""Which implementation an eager call runs, besides the fused kernels: the questions asked per call.

The fused operator's autograd is a C++ function (csrc/autograd.cpp), which keeps Python out of
every training step but is opaque to torch.func's transforms and to forward-mode AD. Under those,
a layer runs in plain differentiable torch operations instead (composite.py), which every
transform sees through. Under torch.onnx.export's dynamo exporter, a layer becomes the ONNX RNN
operator (onnx_export.py). Everything else (eager, torch.compile, torch.export, TorchScript) runs
the fused operator.

Each check is a few hundred nanoseconds; they run once per module call (and once per layer for
direct calls of rnnkern.elman_layer).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor


def exporting_to_onnx() -> bool:
    """Whether torch.onnx.export's dynamo exporter is tracing this call (its TorchScript exporter
    traces the operator itself and translates it with the symbolic in onnx_export.py)."""
    return torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


def needs_composite(tensors: Iterable[Tensor]) -> bool:
    """Whether a torch.func transform (vmap, grad, vjp, jacrev, jacfwd, ...) is active, or any of
    ``tensors`` carries a forward-mode AD tangent: then the layer runs in composite.py."""
    if torch.compiler.is_compiling():  # torch.compile and torch.export keep the fused operator
        return False
    if torch._C._are_functorch_transforms_active():
        return True
    # Outside a forward_ad.dual_level() block no tensor has a tangent: one integer comparison.
    return forward_ad._current_level >= 0 and any(
        forward_ad.unpack_dual(t).tangent is not None for t in tensors
    )
