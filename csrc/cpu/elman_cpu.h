// What the CPU implementations of the two operators share: the entry points registered in
// register_cpu.cpp, and the small decisions both directions of the computation make the same way.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <array>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "../layer/layer_args.h"
#include "helper_thread.h"
#include "kernels.h"
#include "recurrence_cpu.h"
#include "step_blocks.h"

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
// start at d * H (or at `column`, in a buffer of the helper's own).
template <typename T>
DirectionLoop<T> direction_loop(const LayerShape& s, int64_t d, bool relu, const at::Tensor& w_hh,
                                int64_t column = -1) {
  return {kernels<T>(),     s.layout, /*reverse=*/d == 1,
          activation(relu), w_hh,     column < 0 ? d * s.hidden : column};
}

// Steps per block of the pipelines (step_blocks.h): large enough that each block is a real GEMM,
// small enough that the recurrence does not wait long for the first one.
constexpr int64_t kPipelineStepsPerBlock = 32;

// Whether a layer's GEMMs are pipelined with its recurrence on a second thread (step_blocks.h): one
// direction (two use both threads already), the register kernel (small batch: the recurrence leaves
// a core idle), and enough steps for a few blocks. It depends on the shape only, never on the
// thread count, so the blocking (and so the rounding) is the same on one thread or two.
inline bool pipelined(int64_t directions, int64_t batch, int64_t steps) {
  return directions == 1 && use_register_kernel(batch) && steps >= 4 * kPipelineStepsPerBlock;
}
inline bool pipelined(const LayerShape& s) {
  return pipelined(s.directions, s.layout.batch, s.layout.steps);
}

// Whether a pipelined layer's blocks (the projection ahead, the weight gradients behind) run on the
// register kernel rather than one ATen GEMM each. A small block is a few microseconds of
// arithmetic, which an ATen call's views, dispatch and BLAS packing doubled; a large one is BLAS's
// home ground (its cache blocking beat the kernel by 1.25x at batch 16, hidden 256). Measured
// (PERFORMANCE.md, version 12): the kernel 1.05x-1.3x faster up to 2^21 multiply-adds a block
// (32 steps at batch 8, hidden 64, or batch 2, hidden 128), mixed at 2^22 (batch 1, hidden 256).
// A function of the shape only, like pipelined(): the same blocks and bits on one thread or two.
constexpr int64_t kMaxKernelBlockFmas = int64_t{1} << 21;
inline bool blocks_on_kernel(const LayerShape& s) {
  return kPipelineStepsPerBlock * s.layout.batch * s.hidden * (s.input_size + s.hidden) <=
         kMaxKernelBlockFmas;
}

// Whether a call runs single-threaded on its own thread, the helper thread being its parallelism:
// at register batch (the recurrence runs on one core), read off an operator's arguments before they
// are checked (arguments that fail the checks make it false or true, harmlessly: the checks come
// next). Its GEMMs outside the recurrence are then blocks shared with the helper (the pipelines,
// split_rows.h), and its small ATen operations (zeroing the sums, contiguous copies)
// single-threaded: an OpenMP team or a two-thread BLAS call ends in a barrier, which on a machine
// busy with other programs can wait milliseconds for a thread that is not scheduled (torch.zeros of
// 256 x 256 there: 7 us typically, 450 us on average; 16,256,64 inference 1.7x-2.3x slower on two
// threads than on one: PERFORMANCE.md, versions 10 and 17). At BLAS batch the GEMMs per step are
// MKL's.
inline bool single_threaded_call(const at::Tensor& hx) {
  return hx.dim() == 3 && use_register_kernel(hx.size(1));
}

// Both directions of a bidirectional layer at once, never waiting for the helper thread: the
// helper runs the second direction on buffers of its own (`aside`, shared with its task, which may
// outlive the call) while the caller runs the first; then the caller copies the helper's result
// back, or, if the helper has not finished, runs the second direction itself. Aside provides
// help() (compute on the helper), first() and second() (compute in place, on the caller) and
// take_result() (copy the helper's result back), and a SharedBlocks `blocks` of one block.
template <typename Aside>
void both_directions(const std::shared_ptr<Aside>& aside) {
  const SingleThreaded single_threaded;  // each direction's BLAS steps: as on the helper
  {
    const CloseOnExit close(aside->blocks);
    aside->blocks.ready(1);
    if (helper_available()) offer_to_helper([aside] { aside->help(); });
    aside->first();
    if (aside->blocks.take(0)) {
      aside->take_result();
      return;
    }
  }
  aside->second();
}

}  // namespace rnnkern::cpu
