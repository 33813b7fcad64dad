// CPU forward of rnnkern::elman_layer: the time loop the layer driver (csrc/layer/layer_driver.h)
// runs between its input projection and the output, per direction, step by step:
//   h_t = act(Y_t + h_{t-1} @ W_hh^T), written over Y_t         (recurrence_cpu.h)
//
// The two directions of a bidirectional layer run on two threads. A single direction at small batch
// instead hands the projection to the helper thread, block by block ahead of the recurrence
// (step_blocks.h), never waiting for it.
#include <ATen/ops/empty.h>

#include <algorithm>
#include <memory>

#include "../layer/kernel_dtypes.h"
#include "../layer/layer_driver.h"
#include "elman_cpu.h"
#include "helper_thread.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

// The input projection in blocks of kPipelineStepsPerBlock steps, which the helper computes ahead
// of the recurrence into its slots and the recurrence fetches (or computes itself) at the start of
// each block. Shared with the helper's task, which may outlive the call: it holds its own handles
// to the tensors it reads.
struct ProjectionAhead {
  static constexpr int64_t kSlots = 4;  // blocks the helper may run ahead

  explicit ProjectionAhead(const ForwardCall& c)
      : call(inputs_only(c)),
        blocks(block_count(c.shape.layout.steps, kPipelineStepsPerBlock), kSlots),
        slots(at::empty({kSlots * kPipelineStepsPerBlock * c.shape.layout.batch, c.out.size(1)},
                        c.out.options())) {
    blocks.ready(blocks.count());
  }

  // Helper: computes blocks into its slots until there are none left.
  void help() {
    for (int64_t j = blocks.claim(); j >= 0; j = blocks.claim()) {
      const auto [first, rows] = rows_of(j);
      call.project_into(first, rows, slot_rows(j, rows));
      blocks.finish(j);
    }
  }

  // Caller: block j's projection into out, from the helper's slot or computed here.
  void fill(int64_t j, const ForwardCall& c) {
    const auto [first, rows] = rows_of(j);
    if (blocks.take(j))
      c.out.narrow(0, first, rows).copy_(slot_rows(j, rows));
    else
      c.project(first, rows);
    blocks.consumed(j);
  }

  const ForwardCall call;
  SharedBlocks blocks;
  const at::Tensor slots;  // kSlots blocks of rows

 private:
  // What the projection reads of the call: neither its list of weights (a view of the caller's
  // arguments) nor its outputs (returned to the user while the task may live on).
  static ForwardCall inputs_only(ForwardCall c) {
    c.weights = {};
    c.out = c.h0 = c.h_n = at::Tensor();
    return c;
  }
  std::pair<int64_t, int64_t> rows_of(int64_t j) const {
    const int64_t S = kPipelineStepsPerBlock, T = call.shape.layout.steps;
    return call.shape.layout.rows_of_steps(j * S, std::min(T, (j + 1) * S));
  }
  at::Tensor slot_rows(int64_t j, int64_t rows) const {
    return slots.narrow(0, blocks.slot(j) * kPipelineStepsPerBlock * call.shape.layout.batch, rows);
  }
};

// The reverse direction of a bidirectional layer, for both_directions: the helper runs it over
// copies of its projection columns and initial state, taken before the caller starts.
template <typename T>
struct ReverseForward {
  explicit ReverseForward(ForwardCall& c)
      : call(c),
        relu(c.relu),
        shape(c.shape),
        w_hh(weight_hh(c.weights, c.shape, 1).alias()),  // not the parameter itself: see below
        // A copy always: contiguous() would hand back the caller's own columns when they are
        // contiguous already (a single row), and the helper would activate them a second time.
        out(c.out.narrow(1, c.shape.hidden, c.shape.hidden).clone(at::MemoryFormat::Contiguous)),
        state(c.h_n.select(0, 1).clone()) {}

  void help() {
    if (blocks.claim() != 0) return;
    forward_direction<T>(direction_loop<T>(shape, 1, relu, w_hh, /*column=*/0), out, state);
    blocks.finish(0);
  }
  void first() { run(0); }
  void second() { run(1); }
  void take_result() {
    call.out.narrow(1, shape.hidden, shape.hidden).copy_(out);
    call.h_n.select(0, 1).copy_(state);
  }

  SharedBlocks blocks{1, 1};

 private:
  void run(int64_t d) {
    at::Tensor h = call.h_n.select(0, d);
    forward_direction<T>(
        direction_loop<T>(call.shape, d, relu, weight_hh(call.weights, call.shape, d)), call.out,
        h);
  }

  ForwardCall& call;  // the caller's: read by first(), second() and take_result() only
  const bool relu;
  const LayerShape shape;  // the helper's own copies, from here on

  // w_hh is an alias, never the caller's parameter tensor itself: a finished task lives until the
  // next offer, and a second handle to a parameter stops torch's swap_tensors (module.to()).
  const at::Tensor w_hh, out;
  at::Tensor state;
};

void forward_loop(ForwardCall& c) {
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  RNNKERN_DISPATCH_CPU_DTYPES(c.x.scalar_type(), "elman_layer_cpu", [&] {
    auto run = [&](int64_t d, const auto& before_step) {
      const auto p = direction_loop<scalar_t>(s, d, c.relu, weight_hh(c.weights, s, d));
      at::Tensor state = c.h_n.select(0, d);
      forward_direction<scalar_t>(p, c.out, state, before_step);
    };
    if (!pipelined(s)) {
      c.project(0, L.total_rows);
      if (s.directions == 1)
        run(0, [](int64_t) {});
      else
        both_directions(std::make_shared<ReverseForward<scalar_t>>(c));
      return;
    }

    // One direction, visited t = 0 .. T-1: block j is steps [32 j, 32 (j + 1)).
    const SingleThreaded single_threaded;  // the blocks this thread computes: as the helper does
    auto ahead = std::make_shared<ProjectionAhead>(c);
    const CloseOnExit close(ahead->blocks);
    if (helper_available()) offer_to_helper([ahead] { ahead->help(); });
    run(0, [&](int64_t t) {
      if (t % kPipelineStepsPerBlock == 0) ahead->fill(t / kPipelineStepsPerBlock, c);
    });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> elman_layer_cpu(const at::Tensor& input, const at::Tensor& hx,
                                                   at::TensorList weights,
                                                   const std::optional<at::Tensor>& batch_sizes,
                                                   bool relu) {
  std::optional<SingleThreaded> single_threaded;  // see pipelined_arguments
  if (pipelined_arguments(input, hx, batch_sizes)) single_threaded.emplace();
  return run_forward("rnnkern::elman_layer", c10::DeviceType::CPU, input, hx, weights, batch_sizes,
                     relu, forward_loop);
}

}  // namespace rnnkern::cpu
