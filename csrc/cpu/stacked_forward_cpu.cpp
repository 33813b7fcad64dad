// Two stacked layers' forward at once on two cores, as a wavefront: the caller runs the lower layer
// block by block (its projection, then its recurrence), and torch's OpenMP worker runs the upper
// layer one block behind it (the projection of each block of the lower layer's output as soon as it
// is written, then that block's recurrence).
//
// Why: at small batch a layer's recurrence is a chain of mat-vecs that keeps one core busy, and a
// one-layer call can give the second core only the projection, from a sixth of the work (batch 1,
// hidden 64) to nearly half (batch 16, hidden 256: PERFORMANCE.md, version 28). Two layers one
// after the other so cost two recurrences; as a wavefront, the two recurrences run at the same
// time, each beside its own projection.
//
// The caller never waits for a helper that is not running (step_blocks.h). The helper writes the
// upper layer's blocks into the call's output, with the state after each; once the lower layer is
// done, the caller waits for a block the helper is computing only while the helper runs (and, for
// each such block, at most about two of the helper's blocks), and computes from the last state
// every block the helper has not finished. Every block is computed by the same code on the same
// rows on either thread, exactly as the layer operator's pipeline computes it (the same projection
// blocks, the same steps): the output is the same bits as two layer calls, on one thread or two.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/record_function.h>

#include <chrono>
#include <cstring>
#include <memory>

#include "../layer/kernel_dtypes.h"
#include "../layer/layer_driver.h"
#include "elman_cpu.h"
#include "helper_thread.h"
#include "openmp_teammate.h"
#include "row_projection.h"
#include "shared_steps.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

using Clock = std::chrono::steady_clock;

// The upper layer as the helper computes it, shared with the helper's task (which may outlive the
// call): its own copies of what it reads (the upper call's projection operands, whose input is a
// view of the lower layer's output; W_hh), a handle to the output it writes its blocks into, and
// the state after each block.
//
// The helper writes the call's output directly: a copy through buffers of its own cost the caller
// as much as a third of the lower layer's time (on this VM a block's rows written by one core
// come to the other at a few GB/s). That is safe because the caller returns that output only when
// every block was either finished by the helper or never started by it; if it takes over a block
// the helper has started (which may still write its rows), it returns a fresh output instead
// (forward_pair).
template <typename T>
struct UpperLayer {
  explicit UpperLayer(const ForwardCall& c)
      : layout(c.shape.layout),
        steps_per_block(cpu::steps_per_block(c.shape)),
        hidden(c.shape.hidden),
        projection(c),
        steps(direction_loop<T>(c.shape, 0, c.relu, weight_hh(c.weights, c.shape, 0).alias(),
                                StepSplit::kWhole)),
        blocks(block_count(layout.steps, steps_per_block),
               block_count(layout.steps, steps_per_block)),
        out(c.out),
        states(at::empty({blocks.count(), layout.batch * hidden}, c.out.options())),
        h0(c.h0.select(0, 0).clone()) {}

  // Helper: the upper layer's blocks in order, each once the lower layer's block is written, into
  // `out`, with the state after each, until the caller takes one over.
  void help() {
    clock.publish();
    at::Tensor state = h0.clone();
    T* S = state.data_ptr<T>();
    for (int64_t j = blocks.claim_in_order(); j >= 0; j = blocks.claim_in_order()) {
      compute(j, out, S);
      std::memcpy(state_after(j), S, layout.batch * hidden * sizeof(T));
      if (!blocks.finish(j)) return;  // taken over: the caller goes on from there
    }
  }

  // Block j into `dest` (N, H), from `state` (the state after block j - 1), on either thread.
  void compute(int64_t j, const at::Tensor& dest, T* state) const {
    const auto [first, rows] = block_rows(layout, steps_per_block, j);
    const Columns<T> y{dest.data_ptr<T>(), hidden};
    projection.into(first, rows, y.row(first));
    const int64_t end = std::min(layout.steps, (j + 1) * steps_per_block);
    for (int64_t t = j * steps_per_block; t < end; ++t) steps.step(layout, t, y, state);
  }

  // The state after block j, once the helper has finished it.
  T* state_after(int64_t j) const { return states.data_ptr<T>() + j * states.size(1); }

  const SequenceLayout layout;
  const int64_t steps_per_block, hidden;
  const RowProjection<T> projection;
  const RegisterSteps<T> steps;
  SharedBlocks blocks;      // a slot per block: the helper never waits for the caller to read one
  const at::Tensor out;     // (N, H): the call's output, which the helper writes into
  const at::Tensor states;  // (blocks, B x H)
  const at::Tensor h0;      // (B, H)
  HelperClock clock;
};

// Caller: waits while the helper computes block j and is running (RunningWatch), for at most
// `limit`: a preempted helper (a busy machine) is given up on within one check.
template <typename T>
void wait_while_running(const UpperLayer<T>& upper, int64_t j, Clock::duration limit) {
  const auto start = Clock::now();
  RunningWatch helper(upper.clock);
  for (int64_t spins = 1; upper.blocks.in_progress(j); ++spins) {
    cpu_pause();
    if (spins % 64 != 0) continue;
    const auto now = Clock::now();
    if (now - start > limit || !helper.running(now)) return;
  }
}

// An output of out's shape holding its first `rows` rows (the blocks the helper finished).
at::Tensor fresh_output(const at::Tensor& out, int64_t rows) {
  at::Tensor fresh = at::empty_like(out);
  fresh.narrow(0, 0, rows).copy_(out.narrow(0, 0, rows));
  return fresh;
}

template <typename T>
void forward_pair(ForwardCall& lower, ForwardCall& upper_call) {
  const SequenceLayout& L = lower.shape.layout;
  const int64_t S = steps_per_block(lower.shape);
  const RowProjection<T> lower_projection(lower);
  const RegisterSteps<T> lower_steps(direction_loop<T>(
      lower.shape, 0, lower.relu, weight_hh(lower.weights, lower.shape, 0), StepSplit::kWhole));
  auto upper = std::make_shared<UpperLayer<T>>(upper_call);
  beside_helper(
      [upper] { upper->help(); },
      [&](bool) {
        const CloseOnExit close(upper->blocks);
        const int64_t count = upper->blocks.count();

        // The lower layer, block by block, each handed on to the upper layer once written.
        const Columns<T> lower_y{lower.out.data_ptr<T>(), lower.shape.hidden};
        T* lower_state = lower.h_n.data_ptr<T>();
        const auto start = Clock::now();
        for (int64_t j = 0; j < count; ++j) {
          const auto [first, rows] = block_rows(L, S, j);
          lower_projection.into(first, rows, lower_y.row(first));
          for (int64_t t = j * S; t < std::min(L.steps, (j + 1) * S); ++t)
            lower_steps.step(L, t, lower_y, lower_state);
          upper->blocks.ready(j + 1);
        }
        // A running helper is waited for up to two of its blocks, at the caller's pace: it started
        // its block before the caller could, so it finishes first unless it runs at less than
        // half that pace. An upper block costs the lower one's time in the ratio of their
        // multiply-adds a row (a first layer of few inputs is the cheaper: with a limit of two
        // lower blocks, a first layer of one input took over blocks the helper had started often).
        const double upper_per_lower =
            static_cast<double>(upper->hidden * (upper_call.shape.input_size + upper->hidden)) /
            static_cast<double>(lower.shape.hidden * (lower.shape.input_size + lower.shape.hidden));
        const auto wait_limit = std::chrono::duration_cast<Clock::duration>(
            2 * upper_per_lower * (Clock::now() - start) / count);

        // The upper layer: the helper's blocks, then the caller's from the last state on.
        T* upper_state = upper_call.h_n.data_ptr<T>();  // h0 on entry
        int64_t j = 0;
        for (; j < count; ++j) {
          if (!stacked_pairs.never_wait.load(std::memory_order_relaxed))
            wait_while_running(*upper, j, wait_limit);
          bool started = false;
          if (!upper->blocks.take(j, &started)) {
            // The helper may still be writing block j's rows: the rest goes to a fresh output.
            if (started) {
              upper_call.out = fresh_output(upper_call.out, L.rows_of_steps(0, j * S).second);
              stacked_pairs.outputs_replaced.fetch_add(1, std::memory_order_relaxed);
            }
            break;
          }
        }
        if (j > 0)
          std::memcpy(upper_state, upper->state_after(j - 1), L.batch * upper->hidden * sizeof(T));
        stacked_pairs.blocks_by_caller.fetch_add(count - j, std::memory_order_relaxed);
        for (; j < count; ++j) upper->compute(j, upper_call.out, upper_state);
      });
}

// A dense one-direction layer of these sizes, as the layer operator would see it.
LayerShape dense_shape(int64_t steps, int64_t batch, int64_t input_size, int64_t hidden) {
  LayerShape s;
  s.hidden = hidden;
  s.input_size = input_size;
  s.layout = dense_layout(steps, batch);
  return s;
}

}  // namespace

// The most units a step (batch x hidden) of stacked layers that run as a wavefront. A wavefront
// gives each thread a whole layer, projection and recurrence, where one layer at a time gives the
// second thread only the projection: it wins by as much as the recurrence costs more than its
// projection, which it does by several times where a step is a mat-vec or nearly (small batch
// x hidden), and less and less as the register kernel runs larger steps at GEMM speed. Measured
// (benchmarks/results/cpu/stacked_pairs_v28.txt; PERFORMANCE.md, version 28), pairs against one
// layer at a time: 1.1x-1.5x at 1,64 (once 0.91x), 1,256 and 2,64, 1.0x-1.3x at 4,64, a tie or a
// small loss at 1,128 (0.87x-1.09x) and 1,512; from 512 units mixed or lost: 8,64 and 8,128 1.2x
// in one run and 0.92x-1.02x in another, 16,64 and 32,64 0.94x-1.37x, 2,256 to 8,512
// 0.83x-0.95x.
constexpr int64_t kMaxWavefrontUnits = 256;

bool runs_as_wavefront(const LayerShape& s) {
  return s.directions == 1 && pipelined(s) && !short_forward_on_cell_kernel(s) &&
         !shares_steps(s) && s.layout.batch * s.hidden <= kMaxWavefrontUnits;
}

std::optional<std::tuple<at::Tensor, at::Tensor, at::Tensor>> elman_layer_pair_cpu(
    const at::Tensor& input, const at::Tensor& hx_lower, at::TensorList weights_lower,
    const at::Tensor& hx_upper, at::TensorList weights_upper, bool relu) {
  // Sizes read before the layer driver checks them: anything unexpected declines, and the layer
  // operator called per layer says what is wrong.
  if (!stacked_pairs.enabled.load(std::memory_order_relaxed) || input.dim() != 3 ||
      weights_lower.size() < 2 || weights_upper.size() < 2 || weights_lower[1].dim() != 2 ||
      weights_upper[1].dim() != 2)
    return std::nullopt;
  const int64_t steps = input.size(0), batch = input.size(1);
  const int64_t lower_hidden = weights_lower[1].size(0), upper_hidden = weights_upper[1].size(0);
  if (!runs_as_wavefront(dense_shape(steps, batch, input.size(2), lower_hidden)) ||
      !runs_as_wavefront(dense_shape(steps, batch, lower_hidden, upper_hidden)))
    return std::nullopt;

  // On the helper thread (not torch's OpenMP worker: openmp_teammate.h) the upper layer's blocks
  // ran 1.3x-1.4x slower than the caller's lower ones (8,128), and the pairs lost: 0.90x-0.98x at
  // 1,64, 16,64 and 8,128 (PERFORMANCE.md, version 28).
  if (!helper_part_on_a_team()) return std::nullopt;

  RECORD_FUNCTION("rnnkern::elman_layer_pair", std::vector<c10::IValue>());
  stacked_pairs.calls.fetch_add(1, std::memory_order_relaxed);
  const SingleThreaded single_threaded;  // the blocks this thread computes: as the helper does
  const char* op = "rnnkern::elman_layer";
  at::Tensor output, h_n_upper;
  auto lower_result = run_forward(
      op, c10::DeviceType::CPU, input, hx_lower, weights_lower, std::nullopt, relu,
      [&](ForwardCall& lower) {
        const at::Tensor upper_input = lower.out.view({steps, batch, lower_hidden});
        std::tie(output, h_n_upper) = run_forward(
            op, c10::DeviceType::CPU, upper_input, hx_upper, weights_upper, std::nullopt, relu,
            [&](ForwardCall& upper) {
              RNNKERN_DISPATCH_CPU_DTYPES(input.scalar_type(), "elman_layer_pair_cpu",
                                          [&] { forward_pair<scalar_t>(lower, upper); });
            });
      });
  return std::make_tuple(output, std::get<1>(lower_result), h_n_upper);
}

}  // namespace rnnkern::cpu
