"""rnnkern: fused Elman RNN kernels for PyTorch, as drop-in replacements for nn.RNN and nn.RNNCell.

    import rnnkern
    rnn = rnnkern.RNN(input_size=8, hidden_size=64, num_layers=2, batch_first=True)
    model = rnnkern.replace_rnns(model)     # swap every nn.RNN / nn.RNNCell inside a model

See README.md for what is fused and how fast, and ARCHITECTURE.md for how a call reaches the kernels.
"""

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

try:
    from . import _C
except ImportError as error:
    _BUILD = (
        "Build it against the torch you are running, from the source tree:\n"
        "    pip install --no-build-isolation -e .      (or: make build)\n"
        "and rebuild whenever torch is upgraded."
    )
    if not any((Path(__file__).parent / f"_C{suffix}").exists() for suffix in EXTENSION_SUFFIXES):
        # Not built. Python's own message would speak of a circular import: say only this.
        raise ImportError(
            f"rnnkern: its compiled extension rnnkern._C is not built. {_BUILD}"
        ) from None
    # Built, but for another torch or Python, say: keep the cause.
    raise ImportError(
        f"rnnkern: its compiled extension rnnkern._C could not be loaded ({error}). {_BUILD}"
    ) from error

from . import _ops  # noqa: E402,F401  (fake tensors and autograd for the operators)
from .functional import elman_layer, elman_rnn  # noqa: E402
from .modules import RNN, RNNCell  # noqa: E402
from .replace import replace_rnns  # noqa: E402

__version__ = "0.1.0"


def cpu_isa() -> str:
    """The instruction set of the CPU kernels in use: ``'avx512'``, ``'avx2'`` or ``'generic'``."""
    return _C.cpu_isa()


__all__ = ["RNN", "RNNCell", "replace_rnns", "elman_layer", "elman_rnn", "cpu_isa", "__version__"]
