// The persistent kernels for float (one file per dtype, so nvcc compiles them in parallel).
#include "persistent_kernels.cuh"

RNNKERN_INSTANTIATE_PERSISTENT(float)
