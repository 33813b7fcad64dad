// The per-step CPU kernels of the Elman recurrence, as a table of function pointers.
//
// Each instruction set (AVX-512, AVX2+FMA, and a portable generic build) fills one table from the
// same templated code in kernels_impl.h; kernels_dispatch.cpp picks the best table the running CPU
// supports, once. The drivers (elman_forward_cpu.cpp, elman_backward_cpu.cpp) only ever see this
// header.
#pragma once

#include <cstdint>

namespace rnnkern::cpu {

enum class Activation : int { kTanh = 0, kRelu = 1 };

// What rows_times_matrix does with the product P = x @ m of its operands.
enum class Epilogue : int {
  kStore = 0,        // out = P
  kAddActivate = 1,  // out = act(out + P): one forward step, out holding the input projection
  kAdd = 2,          // out = out + P: a block's product added to a running sum (or to a bias)
};

template <typename T>
struct Kernels {
  const char* isa;  // "avx2" or "generic"
  int64_t width;    // SIMD lanes (the kernels read any row length; tails are masked)

  // out[r, 0:n] (op)= x[r, 0:k] @ m[0:k, 0:n] for r < rows. `m` is row-major with row stride
  // m_stride >= n; nothing past column n is read. Row-blocked so each load of `m` feeds several
  // rows of x: this is the small-batch mat-vec of the recurrence. Each element's sum over k runs in
  // an order fixed by the shape (a block with few accumulators keeps interleaved partial sums:
  // kernels_impl.h, partial_sums), the same on either thread.
  void (*rows_times_matrix)(Epilogue epilogue, Activation act, int64_t rows, const T* x,
                            int64_t x_stride, int64_t k, const T* m, int64_t m_stride, int64_t n,
                            T* out, int64_t out_stride);

  // rows_times_matrix with x given transposed: out[r, 0:n] (op)= sum over i < k of
  // x[i * x_stride + r] * m[i, 0:n]. A weight gradient dZ^T @ X of a block of steps, read from dZ
  // (k rows of steps, the units as columns) as it lies. Each element's sum runs over i in order,
  // the same bits however the rows are blocked and whichever thread computes it.
  void (*transposed_rows_times_matrix)(Epilogue epilogue, Activation act, int64_t rows, const T* x,
                                       int64_t x_stride, int64_t k, const T* m, int64_t m_stride,
                                       int64_t n, T* out, int64_t out_stride);

  // y[r, 0:n] = act(y[r, 0:n]) in place (after a BLAS step on large batches).
  void (*activate_rows)(Activation act, int64_t rows, int64_t n, T* y, int64_t y_stride);

  // dz[r, 0:n] = (dh[r, 0:n] + dy[r, 0:n]) * act'(y[r, 0:n]), where act' is written in terms of the
  // activation's output y: 1 - y^2 for tanh, [y > 0] for relu (as ATen's tanh/threshold backward).
  // dy may be null: dz = dh * act'(y).
  void (*activation_backward_rows)(Activation act, int64_t rows, int64_t n, const T* dh,
                                   int64_t dh_stride, const T* dy, int64_t dy_stride, const T* y,
                                   int64_t y_stride, T* dz, int64_t dz_stride);

  // One cell step on weights in nn.RNNCell's own layout (no transposed copy):
  //   out[r, j] = act(bias_a[j] + bias_b[j] + a[r, 0:ka] . A[j, 0:ka] + b[r, 0:kb] . B[j, 0:kb])
  // for r < rows, j < n. A (n, ka) and B (n, kb) are contiguous row-major; either bias may be null.
  // With one row, out may be bias_a itself: each unit's bias is read before its output is written
  // (a step whose projection is in out already: shared_steps.h).
  void (*cell_forward)(Activation act, int64_t rows, const T* a, int64_t a_stride, int64_t ka,
                       const T* A, const T* b, int64_t b_stride, int64_t kb, const T* B,
                       const T* bias_a, const T* bias_b, int64_t n, T* out, int64_t out_stride);
};

// The tables one instruction set provides (defined in kernels_<isa>.cpp).
const Kernels<float>& generic_kernels_f32();
const Kernels<double>& generic_kernels_f64();
#if defined(__x86_64__) || defined(_M_X64)
#define RNNKERN_HAVE_X86_KERNELS 1
const Kernels<float>& avx2_kernels_f32();
const Kernels<double>& avx2_kernels_f64();
const Kernels<float>& avx512_kernels_f32();
#endif

// The table for this CPU: AVX-512 (float32) or AVX2+FMA where the processor has them, generic
// otherwise. The environment variable RNNKERN_CPU_ISA=generic|avx2 caps the choice (the tests use
// it to cover every table on one machine).
template <typename T>
const Kernels<T>& kernels();

}  // namespace rnnkern::cpu
