#!/usr/bin/env bash
# `make asan`: the C++ built with AddressSanitizer (CPU only, in build/asan/, apart from the normal
# build), then the tests that throw malformed and random input at it: the fuzz test, the property
# tests, the error tests, packed sequences, short layers (the cell kernels on strided rows) and the
# persistent kernels' emulation. An out-of-bounds access or a use after free stops the run with
# ASan's report, even where it would not crash.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute, symlink kept (a venv)
DIR=build/asan

rm -rf "$DIR"
mkdir -p "$DIR"
cp -r rnnkern csrc tests setup.py pyproject.toml README.md "$DIR"/
rm -f "$DIR"/rnnkern/_C*.so
cd "$DIR"
RNNKERN_NO_CUDA=1 RNNKERN_SANITIZE=address "$PY" setup.py -q build_ext --inplace >build.log 2>&1 ||
  { tail -30 build.log; exit 1; }

# Python is not instrumented: the ASan runtime is preloaded, and leak checking (which would report
# the interpreter's own allocations) is off. libstdc++ is preloaded too: without it ASan's
# __cxa_throw interceptor finds no real __cxa_throw and aborts at torch's first C++ exception.
export LD_PRELOAD
LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
# --capture=sys: ASan writes its report to file descriptor 2, which must not be captured.
"$PY" -m pytest -q -p no:cacheprovider --capture=sys tests/ops/test_fuzz.py tests/module/test_properties.py \
  tests/module/test_errors.py tests/module/test_packed.py tests/ops/test_short_sequences.py \
  tests/cuda/test_persistent_emulation.py
