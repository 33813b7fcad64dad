#!/usr/bin/env bash
# `make wheel-check`: the package as a user gets it. Builds a wheel from a copy of the tracked files
# (CPU kernels only, which keeps CI short: `make build` compiles the CUDA sources already), installs
# it with no compiler on PATH into an empty directory, and runs it there, outside the source tree,
# against torch.nn.RNN. Fails on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, still the venv's
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir "$work/src"
git ls-files -z | xargs -0 cp --parents -t "$work/src"
RNNKERN_NO_CUDA=1 "$PY" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/rnnkern-*.whl)
echo "built $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"

mkdir "$work/nocompiler"
CC=false CXX=false PATH="$work/nocompiler:$(dirname "$PY")" \
  "$PY" -m pip install -q --no-deps --target "$work/site" "$wheel"

cd "$work"
PYTHONPATH="$work/site" "$PY" - "$work/site" <<'PYTHON'
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

import rnnkern

site = Path(sys.argv[1])
assert Path(rnnkern.__file__).is_relative_to(site), f"imported {rnnkern.__file__}, not the wheel"
assert rnnkern.__version__ == version("rnnkern"), (rnnkern.__version__, version("rnnkern"))
torch.manual_seed(0)
theirs = nn.RNN(4, 8, 2, bidirectional=True)
ours = rnnkern.RNN(4, 8, 2, bidirectional=True)
ours.load_state_dict(theirs.state_dict())
x = torch.randn(12, 3, 4, requires_grad=True)
torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=2e-5, rtol=1e-4)
(g_ours,) = torch.autograd.grad(ours(x)[0].sum(), x)
(g_theirs,) = torch.autograd.grad(theirs(x)[0].sum(), x)
torch.testing.assert_close(g_ours, g_theirs, atol=1e-4, rtol=1e-3)
print(f"rnnkern {rnnkern.__version__} from the wheel matches nn.RNN ({rnnkern.cpu_isa()} kernels)")
PYTHON
