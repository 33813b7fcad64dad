// The Elman cell's elementwise math and the order in which a direction visits its steps: plain
// C++ that nvcc also compiles for the device, so that the CPU and CUDA time loops, the persistent
// kernels and their CPU emulation all take these facts from one place. (rnnkern/reference.py, the
// NumPy oracle the tests compare with, restates them on purpose: it must not share our code.)
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define RNNKERN_HD __host__ __device__
#define RNNKERN_UNROLL _Pragma("unroll")
#else
#define RNNKERN_HD
#define RNNKERN_UNROLL
#endif

namespace rnnkern {

// The step visited i-th of `steps`. The forward pass visits 0..T-1 in direction 0 and T-1..0 in
// direction 1 (reverse); the backward pass (BPTT) visits them in the opposite order.
RNNKERN_HD inline int64_t visited_step(int64_t steps, bool reverse, int64_t i, bool backward) {
  return reverse != backward ? steps - 1 - i : i;
}

// h = act(z). relu keeps NaN (z <= 0 is false for NaN), as torch.relu does.
template <typename S>
RNNKERN_HD inline S activate(S z, bool relu) {
  if (relu) return z <= S(0) ? S(0) : z;
#if defined(__CUDA_ARCH__)
  return ::tanh(z);
#else
  return std::tanh(z);
#endif
}

// dL/dz from dL/dh = g and h = act(z), act' written in terms of h (what the backward has kept).
template <typename S>
RNNKERN_HD inline S activation_backward(S g, S h, bool relu) {
  return relu ? (h <= S(0) ? S(0) : g) : g * (S(1) - h * h);
}

}  // namespace rnnkern
