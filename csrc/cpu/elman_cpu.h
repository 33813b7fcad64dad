// What the CPU implementations of the two operators share: the entry points registered in
// register_cpu.cpp, and the small decisions both directions of the computation make the same way.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
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

// Whether a layer of this shape runs as one half of a wavefront of two stacked layers
// (elman_layer_pair_cpu): one direction, pipelined (a register batch and enough steps), none of
// the paths that replace the pipeline (the cell kernel for a few rows, the shared steps at large
// hidden), and at most 256 units a step (batch x hidden: stacked_forward_cpu.cpp).
bool runs_as_wavefront(const LayerShape& s);

// Two stacked one-direction layers' forward at once, the lower layer on the caller and the upper
// one block behind it on torch's OpenMP worker (stacked_forward_cpu.cpp), for inference (no
// autograd): input (T, B, I) dense, each layer's hx (1, B, H) and weights as elman_layer's. Returns
// the upper layer's output and both layers' h_n, the same bits as elman_layer_cpu on each layer in
// turn; or nullopt, having done nothing, where either layer would not run as a wavefront
// (runs_as_wavefront), the sizes are not those of two such layers, the second thread would not be
// torch's OpenMP worker as a team of two (helper_part_on_a_team), or stacked_pairs is not
// enabled. The arguments are checked as elman_layer's are. The caller makes sure no autograd
// graph is wanted and the tensors dispatch as plain CPU tensors: this reads their data directly.
std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> elman_layer_pair_cpu(
    const at::Tensor& input, const at::Tensor& hx_lower, at::TensorList weights_lower,
    const at::Tensor& hx_upper, at::TensorList weights_upper, bool relu);

// For the tests and the benchmarks (rnnkern._C.set_stacked_pairs, stacked_pair_counts).
struct StackedPairs {
  std::atomic<bool> enabled{true};      // the module's direct call may use elman_layer_pair_cpu
  std::atomic<bool> never_wait{false};  // the caller takes over the upper layer's first block the
                                        // helper has not finished, without waiting for it
  std::atomic<int64_t> calls{0};        // pairs run
  std::atomic<int64_t> blocks_by_caller{0};  // upper blocks the caller computed
  std::atomic<int64_t> outputs_replaced{0};  // calls that took over a block the helper had started
};
inline StackedPairs stacked_pairs;

inline Activation activation(bool relu) { return relu ? Activation::kRelu : Activation::kTanh; }

// The most threads torch may have (as the caller set it) for a call at BLAS batch to run on its own
// thread and the helper's alone (on_caller_and_helper): the helper is one second core, and a
// machine given more threads runs the large GEMMs of such a call faster on MKL's whole team.
constexpr int kMaxThreadsForHelperCalls = 2;

// Whether a call runs on its own thread and the helper's, never on an OpenMP team or MKL's threads:
// always at register batch (the recurrence runs on one core; its parallelism is the pipelines and
// split_rows); at BLAS batch when torch has at most two threads. On the caller's thread only.
inline bool on_caller_and_helper(int64_t batch) {
  return use_register_kernel(batch) || caller_threads() <= kMaxThreadsForHelperCalls;
}

// How a single-direction call's steps at BLAS batch are computed (StepSplit, recurrence_cpu.h): in
// blocks of columns shared with the helper when the call runs on the caller and the helper, else
// one GEMM on MKL's threads. Depends on torch's thread count being at most
// kMaxThreadsForHelperCalls or not, never on 1 or 2. On the caller's thread only. The two
// directions of a bidirectional layer (both_directions) take StepSplit::kWhole instead: the helper
// runs one of them, and under both_directions' guard each step is one single-threaded GEMM, the
// same bits on either thread, and on one thread or two.
inline StepSplit step_split() {
  return caller_threads() <= kMaxThreadsForHelperCalls ? StepSplit::kColumns : StepSplit::kWhole;
}

// Direction d of a layer's time loop: the second direction is the reversed one, and its columns
// start at d * H (or at `column`, in a buffer of the helper's own).
template <typename T>
DirectionLoop<T> direction_loop(const LayerShape& s, int64_t d, bool relu, const at::Tensor& w_hh,
                                StepSplit split, int64_t column = -1) {
  const int64_t first_column = column < 0 ? d * s.hidden : column;
  return {kernels<T>(), s.layout, /*reverse=*/d == 1, activation(relu), w_hh, first_column, split};
}

// The pipelines (step_blocks.h) split a layer's steps into blocks of 32 steps (large enough that
// each block is a real GEMM, small enough that the recurrence does not wait long for the first
// one), or, for a sequence shorter than four such blocks, into four blocks of at least 8 steps:
// the caller computes the first block's projection while the helper starts on the others, which
// it then hands over while the recurrence runs.
constexpr int64_t kPipelineBlocks = 4;
constexpr int64_t kMaxStepsPerBlock = 32;
constexpr int64_t kMinStepsPerBlock = 8;

// Steps per block of a pipelined layer of `steps` steps: a function of the shape only.
inline int64_t steps_per_block(int64_t steps) {
  const int64_t quarter = (steps + kPipelineBlocks - 1) / kPipelineBlocks;  // four blocks at most
  return std::clamp(quarter, kMinStepsPerBlock, kMaxStepsPerBlock);
}
inline int64_t steps_per_block(const LayerShape& s) { return steps_per_block(s.layout.steps); }

// The rows of block j of a pipelined layer of S steps a block: steps [j S, (j + 1) S), as (first
// row, rows).
inline std::pair<int64_t, int64_t> block_rows(const SequenceLayout& L, int64_t S, int64_t j) {
  return L.rows_of_steps(j * S, std::min(L.steps, (j + 1) * S));
}

// The least projection work (multiply-adds) of a block of a short pipelined sequence (fewer than
// four blocks of 32 steps): below it, four GEMMs cost more than one on a single thread (8%-20% at
// batch 8, hidden 128, 48 steps), and such a layer shares its one projection GEMM with the helper
// in blocks of rows instead (split_rows.h). Measured: PERFORMANCE.md, version 18.
constexpr int64_t kMinShortBlockFmas = int64_t{1} << 22;

// Whether a layer's GEMMs are pipelined with its recurrence on a second thread (step_blocks.h): one
// direction (two use both threads already), the register kernel (small batch: the recurrence leaves
// a core idle), and enough steps for four blocks, each large enough (kMinShortBlockFmas) when the
// sequence is short. It depends on the shape only, never on the thread count, so the blocking (and
// so the rounding) is the same on one thread or two.
inline bool pipelined(const LayerShape& s) {
  const int64_t steps = s.layout.steps;
  if (s.directions != 1 || !use_register_kernel(s.layout) ||
      steps < kPipelineBlocks * kMinStepsPerBlock)
    return false;
  return steps >= kPipelineBlocks * kMaxStepsPerBlock ||
         steps_per_block(s) * s.layout.batch * s.input_size * s.hidden >= kMinShortBlockFmas;
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
  return steps_per_block(s) * s.layout.batch * s.hidden * (s.input_size + s.hidden) <=
         kMaxKernelBlockFmas;
}

// Whether a layer runs step by step on the cell kernel, its weights read as they are stored
// (forward_on_cell_kernel, backward_on_cell_kernel): a short sequence at small batch, at most
// kMaxCellKernelRows rows in all (steps x batch) and kMaxCellKernelBatch rows a step. Such a call
// otherwise spends more on its fixed costs (a transposed, padded copy of W_hh, the projection's
// GEMM, the weight gradients' and dX's ATen calls) than on its steps. Measured against those
// paths, hidden 64 to 1024, one thread and two (PERFORMANCE.md, version 24): the cell kernel is
// faster at every shape up to 32 rows (inference 1.02x-8.6x, training 1.04x-3.5x), mixed from 64
// rows at batch 8 (hidden 256: 0.93x-1.0x inference). A function of the shape only: the same
// bits on one thread or two.
constexpr int64_t kMaxCellKernelRows = 32;
constexpr int64_t kMaxCellKernelBatch = 8;
inline bool short_on_cell_kernel(const LayerShape& s) {
  return s.layout.total_rows <= kMaxCellKernelRows && s.layout.batch <= kMaxCellKernelBatch;
}

// The forward of such a layer, except at batch 1 with large weights: there the other paths make no
// copy of W_hh (dot_form, from hidden 256) and read W_ih once, in one projection GEMM (shared with
// the helper where it is large enough), while the cell kernel reads W_ih at every step on one
// core. From kMaxCellKernelWeights multiply-adds a step ((I + H) x H), a batch-1 layer's forward
// takes the other paths; its backward stays on the cell kernel (the other backward was slower
// there). Measured (PERFORMANCE.md, version 30), two threads, inference against nn.RNN, the cell
// kernel / the other paths: 1,512,4 and 1,512,16 (input 512) 0.77x-0.97x / 1.24x-1.47x,
// 1,1024,4 and 1,1024,16 0.36x-0.55x / 0.93x-0.97x; 1,384,8 with input 1024 0.73x-0.75x /
// 1.30x-1.31x; below it, 1,384 (input 384) a tie, 1,256,4 2.2x-2.5x / 1.9x.
constexpr int64_t kMaxCellKernelWeights = 3 << 17;
inline bool short_forward_on_cell_kernel(const LayerShape& s) {
  if (s.layout.batch == 1 && (s.input_size + s.hidden) * s.hidden > kMaxCellKernelWeights)
    return false;
  return short_on_cell_kernel(s);
}

// Whether a call runs single-threaded on its own thread, the helper thread being its parallelism
// (on_caller_and_helper), read off an operator's arguments before they are checked (arguments that
// fail the checks make it false or true, harmlessly: the checks come next). Its GEMMs are then
// blocks shared with the helper (the pipelines, split_rows.h), and its small ATen operations
// (zeroing the sums, contiguous copies) single-threaded: an OpenMP team or a two-thread BLAS call
// ends in a barrier, which on a machine busy with other programs can wait milliseconds for a
// thread that is not scheduled (torch.zeros of 256 x 256 there: 7 us typically, 450 us on
// average; 16,256,64 inference 1.7x-2.3x slower on two threads than on one; 64,1024,32 1.4x:
// PERFORMANCE.md, versions 10, 17 and 19).
inline bool single_threaded_call(const at::Tensor& hx) {
  return hx.dim() == 3 && on_caller_and_helper(hx.size(1));
}

// Waits while the helper, running a bidirectional layer's second direction, would finish it sooner
// than the caller could run it again: the helper starts later than the caller (its own projection,
// buffers of its own), and running the direction again cost the whole of the second core's gain at
// batch 64 (PERFORMANCE.md, version 18). The helper's pace is measured over windows of 4 of the
// caller's steps (at least 50 us) from aside.steps_done: a helper that did not move in a window
// (preempted on a busy machine, or still projecting), or whose remaining steps at its pace take
// longer than the caller's own direction took, is given up on. So a waiting caller loses at most
// one window to a helper that does not finish.
template <typename Aside>
void wait_while_worthwhile(const Aside& aside, int64_t steps, std::chrono::nanoseconds first) {
  using Clock = std::chrono::steady_clock;
  const auto window = std::max<std::chrono::nanoseconds>(std::chrono::microseconds(50),
                                                         4 * first / std::max<int64_t>(steps, 1));
  auto since = Clock::now();
  int64_t done_since = aside.steps_done.load(std::memory_order_acquire);
  for (int64_t spins = 1; aside.blocks.in_progress(0); ++spins) {
    cpu_pause();  // never a yield: the wait is short
    if (spins % 64 != 0) continue;
    const auto now = Clock::now();
    if (now - since < window) continue;
    const int64_t done = aside.steps_done.load(std::memory_order_acquire);
    if (done == done_since) return;
    if ((steps - done) * (now - since) / (done - done_since) > first) return;
    since = now;
    done_since = done;
  }
}

// Both directions of a bidirectional layer at once: the helper runs the second direction on
// buffers of its own (`aside`, shared with its task, which may outlive the call) while the caller
// runs the first; then the caller copies the helper's result back or, if the helper has not
// finished (after wait_while_worthwhile), runs the second direction itself. Aside provides help()
// (compute on the helper), first() (compute in place, on the caller), second(buffers_free) (compute
// on the caller, in the aside's own buffers when the helper never started, which it then never
// will, else in fresh ones, and copy the result back), take_result() (copy the helper's result
// back), a SharedBlocks `blocks` of one block and an atomic `steps_done` the helper advances step
// by step.
template <typename Aside>
void both_directions(const std::shared_ptr<Aside>& aside, int64_t steps) {
  const SingleThreaded single_threaded;  // each direction's BLAS steps: as on the helper
  bool helper_never_started = false;
  {
    const CloseOnExit close(aside->blocks);
    aside->blocks.ready(1);
    if (helper_available()) offer_to_helper([aside] { aside->help(); });
    const auto start = std::chrono::steady_clock::now();
    aside->first();
    wait_while_worthwhile(*aside, steps, std::chrono::steady_clock::now() - start);
    helper_never_started = aside->blocks.claim_free(0);
    if (!helper_never_started && aside->blocks.take(0)) {
      aside->take_result();
      return;
    }
  }
  aside->second(helper_never_started);
}

}  // namespace rnnkern::cpu
