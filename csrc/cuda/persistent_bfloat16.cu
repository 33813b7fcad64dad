// The persistent kernels for c10::BFloat16 (one file per dtype, so nvcc compiles them in parallel).
#include "persistent_kernels.cuh"

RNNKERN_INSTANTIATE_PERSISTENT(c10::BFloat16)
