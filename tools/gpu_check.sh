#!/usr/bin/env bash
# `make gpu-check`: everything the CUDA kernels need checked on a machine with an NVIDIA GPU, in one
# command, on the machine as it is (its python3 and torch; nothing is installed, so it runs where the network
# cannot be reached, such as the accelerator machine of DEVELOPERS.md).
#
#   1. builds rnnkern._C in place for this GPU's architecture (and sm_80/sm_90 as always);
#   2. runs the whole test suite with the CUDA kernels enabled (tests/cuda/test_cuda.py runs instead of
#      skipping), log in $OUT_DIR/tests.log;
#   3. runs the GPU benchmark (benchmarks/gpu_sweep.py): results.json, throughput.png, SUMMARY.md
#      and bench.log in $OUT_DIR.
#
# Exits non-zero if the build, a test or the benchmark failed; the benchmark runs even when a test
# failed, so that one session on a GPU learns as much as it can.
set -uo pipefail

PY=${PY:-python3}
OUT_DIR=${OUT_DIR:-benchmarks/results/cuda}
mkdir -p "$OUT_DIR"

# A compiler we have not seen must not stop the check on a new warning (CI keeps -Werror).
export RNNKERN_WERROR=0
if ! "$PY" setup.py -q build_ext --inplace >"$OUT_DIR/build.log" 2>&1; then
  tail -40 "$OUT_DIR/build.log"
  echo "gpu-check: the build failed (log in $OUT_DIR/build.log)"
  exit 1
fi

if ! "$PY" -c 'import sys, rnnkern; sys.exit(not rnnkern._C.has_cuda_kernels())'; then
  echo "gpu-check: the build has no CUDA kernels (torch without CUDA, or nvcc not found?)"
  exit 1
fi

export RNNKERN_CUDA_KERNELS=1 PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} 2>&1 | tee "$OUT_DIR/tests.log"
"$PY" -m pytest -q -p no:cacheprovider -rs tests 2>&1 | tee -a "$OUT_DIR/tests.log"
tests=${PIPESTATUS[0]}
"$PY" -m benchmarks.gpu_sweep --out "$OUT_DIR" ${GPU_SWEEP_ARGS:-} 2>&1 | tee "$OUT_DIR/bench.log"
bench=${PIPESTATUS[0]}

echo "gpu-check: tests exit $tests, benchmark exit $bench; results in $OUT_DIR"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
