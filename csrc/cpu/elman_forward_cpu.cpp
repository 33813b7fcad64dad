// CPU forward of rnnkern::elman_layer: the time loop the layer driver (csrc/layer/layer_driver.h)
// runs between its input projection and the output, per direction, step by step:
//   h_t = act(Y_t + h_{t-1} @ W_hh^T), written over Y_t         (recurrence_cpu.h)
//
// The two directions of a bidirectional layer run on two threads. A single direction at small batch
// instead hands the projection to the second thread, block by block ahead of the recurrence.
#include "../layer/kernel_dtypes.h"
#include "../layer/layer_driver.h"
#include "elman_cpu.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

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
      for_each_direction(s.directions, [&](int64_t d) { run(d, [](int64_t) {}); });
      return;
    }
    // Block j is steps [32 j, 32 (j + 1)): the forward direction needs them in that order.
    constexpr int64_t S = kPipelineStepsPerBlock;
    ProjectedBlocks blocks(block_count(L.steps, S));
    auto project_block = [&](int64_t j) {
      const auto [first, rows] = L.rows_of_steps(j * S, std::min(L.steps, (j + 1) * S));
      c.project(first, rows);
    };
    with_helper_thread([&] { run(0, [&](int64_t t) { blocks.wait_for(t / S, project_block); }); },
                       [&] { blocks.help(project_block); });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> elman_layer_cpu(const at::Tensor& input, const at::Tensor& hx,
                                                   at::TensorList weights,
                                                   const std::optional<at::Tensor>& batch_sizes,
                                                   bool relu) {
  return run_forward("rnnkern::elman_layer", c10::DeviceType::CPU, input, hx, weights, batch_sizes,
                     relu, forward_loop);
}

}  // namespace rnnkern::cpu
