// What the CPU implementations of the two operators share: the entry points registered in
// register_cpu.cpp, and the small decisions both directions of the computation make the same way.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "../layer/layer_args.h"
#include "kernels.h"
#include "recurrence_cpu.h"

namespace rnnkern::cpu {

std::tuple<at::Tensor, at::Tensor> elman_layer_cpu(const at::Tensor& input, const at::Tensor& hx,
                                                   at::TensorList weights,
                                                   const std::optional<at::Tensor>& batch_sizes,
                                                   bool relu);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_layer_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const at::Tensor& hx, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& output, const std::optional<at::Tensor>& batch_sizes, bool relu,
    std::array<bool, 4> output_mask);

at::Tensor elman_cell_cpu(const at::Tensor& input, const at::Tensor& hx,
                          const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                          const std::optional<at::Tensor>& bias_ih,
                          const std::optional<at::Tensor>& bias_hh, bool relu);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_cell_backward_cpu(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& output, bool relu,
    std::array<bool, 4> output_mask);

inline Activation activation(bool relu) { return relu ? Activation::kRelu : Activation::kTanh; }

// Direction d of a layer's time loop: the second direction is the reversed one, and its columns
// start at d * H.
template <typename T>
DirectionLoop<T> direction_loop(const LayerShape& s, int64_t d, bool relu, const at::Tensor& w_hh) {
  return {kernels<T>(), s.layout, /*reverse=*/d == 1, activation(relu), w_hh, d * s.hidden};
}

// Steps per block of the pipelines (step_blocks.h): large enough that each block is a real GEMM,
// small enough that the recurrence does not wait long for the first one.
constexpr int64_t kPipelineStepsPerBlock = 32;

// Whether a layer's GEMMs are pipelined with its recurrence on a second thread (step_blocks.h): one
// direction (two use both threads already), the register kernel (small batch: the recurrence leaves
// a core idle), and enough steps for a few blocks. It depends on the shape only, never on the
// thread count, so the blocking (and so the rounding) is the same on one thread or two.
inline bool pipelined(const LayerShape& s) {
  return s.directions == 1 && use_register_kernel(s.layout) &&
         s.layout.steps >= 4 * kPipelineStepsPerBlock;
}

// Runs fn(d) for each direction; both directions at once when there are two.
template <typename Fn>
void for_each_direction(int64_t directions, const Fn& fn) {
  if (directions == 1) {
    fn(0);
    return;
  }
  at::parallel_for(0, directions, 1, [&](int64_t begin, int64_t end) {
    // Worker threads do not inherit the caller's thread-local dispatch state.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t d = begin; d < end; ++d) fn(d);
  });
}

// Runs recurrence() and helper() on two threads when there are two, else one after the other; the
// step_blocks.h protocols make either order safe.
template <typename Recurrence, typename Helper>
void with_helper_thread(const Recurrence& recurrence, const Helper& helper) {
  at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (begin == 0) recurrence();
    if (end == 2) helper();
  });
}

}  // namespace rnnkern::cpu
