// The input projection of a pipelined layer, a block of rows at a time, on either thread: shared
// by the one-layer pipeline (elman_forward_cpu.cpp) and the stacked layers'
// (stacked_forward_cpu.cpp).
#pragma once

#include <ATen/ops/from_blob.h>

#include <cstring>
#include <vector>

#include "../layer/layer_driver.h"
#include "elman_cpu.h"

namespace rnnkern::cpu {

// What the input projection reads of a call, as a helper's task (which may outlive the call) keeps
// it: neither its list of weights (a view of the caller's arguments) nor its outputs (returned to
// the user while the task may live on); x contiguous, for the kernel. The bias is a sum the driver
// made, contiguous.
inline ForwardCall projection_inputs(ForwardCall c) {
  c.weights = {};
  c.out = c.h0 = c.h_n = at::Tensor();
  c.x = c.x.contiguous();
  return c;
}

// The input projection of a pipelined layer (one direction), a block of rows at a time:
//   rows of out = x W_ih^T + (b_ih + b_hh)
// on the register kernel with no ATen call where blocks are small (blocks_on_kernel), by an ATen
// GEMM otherwise. Each element is then its dot product in the kernel's fixed order plus the bias,
// or single-threaded BLAS's, so the bits are the same whichever thread computes a block.
template <typename T>
struct RowProjection {
  explicit RowProjection(const ForwardCall& c)
      : k(kernels<T>()),
        on_kernel(blocks_on_kernel(c.shape)),
        call(projection_inputs(c)),
        w_stride(padded(c.shape.hidden, k.width)),
        padded_w_ih_t(
            on_kernel ? padded_matrix(
                            weight_ih(c.weights, c.shape, 0).contiguous().template data_ptr<T>(),
                            c.shape.input_size, c.shape.hidden, k.width,
                            /*transpose=*/true)
                      : std::vector<T>()) {}

  // Rows [first, first + rows) of the projection into dest (rows, H), contiguous.
  void into(int64_t first, int64_t rows, T* dest) const {
    const int64_t I = call.shape.input_size, H = call.shape.hidden;
    if (!on_kernel) {
      call.project_into(first, rows, at::from_blob(dest, {rows, H}, call.x.options()));
      return;
    }
    const T* b = call.bias ? call.bias->template data_ptr<T>() : nullptr;
    if (b)
      for (int64_t r = 0; r < rows; ++r) std::memcpy(dest + r * H, b, H * sizeof(T));
    k.rows_times_matrix(b ? Epilogue::kAdd : Epilogue::kStore, Activation::kTanh, rows,
                        call.x.template data_ptr<T>() + first * I, I, I, padded_w_ih_t.data(),
                        w_stride, H, dest, H);
  }

  int64_t hidden() const { return call.shape.hidden; }

 private:
  const Kernels<T>& k;
  const bool on_kernel;
  const ForwardCall call;
  const int64_t w_stride;
  const std::vector<T> padded_w_ih_t;  // (I, H padded): W_ih transposed, for the kernel
};

}  // namespace rnnkern::cpu
