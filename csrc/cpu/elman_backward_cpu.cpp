// CPU backward of rnnkern::elman_layer (fused BPTT): the time loop the layer driver
// (csrc/layer/layer_driver.h) runs before its weight and input gradients, per direction, step by
// step in the reverse of processing order:
//   dZ_t = (dh + dY_t) * act'(h_t),   dh <- dZ_t @ W_hh           (recurrence_cpu.h)
//
// A single direction at small batch hands the weight gradients to the second thread block by block
// as the recurrence finishes them, and computes dX itself once its loop is done, while the helper
// finishes.
#include <ATen/ops/empty.h>

#include "../layer/kernel_dtypes.h"
#include "../layer/layer_driver.h"
#include "elman_cpu.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

using at::Tensor;

// The driver's GatherPrevious on the CPU: the rows each step of [t_begin, t_end) started from.
void gather_previous(const BackwardCall& c, int64_t d, int64_t t_begin, int64_t t_end,
                     Tensor& prev) {
  const int64_t H = c.shape.hidden;
  RNNKERN_DISPATCH_CPU_DTYPES(c.y.scalar_type(), "gather_previous_cpu", [&] {
    gather_previous_states<scalar_t>(
        c.shape.layout, /*reverse=*/d == 1,
        Columns<const scalar_t>{c.y.data_ptr<scalar_t>() + d * H, c.y.size(1)},
        c.h0.select(0, d).data_ptr<scalar_t>(), H, t_begin, t_end, prev.data_ptr<scalar_t>());
  });
}

void backward_loop(BackwardCall& c) {
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  RNNKERN_DISPATCH_CPU_DTYPES(c.x.scalar_type(), "elman_layer_backward_cpu", [&] {
    auto recur = [&](int64_t d, const auto& after_step) {
      const auto p = direction_loop<scalar_t>(s, d, c.relu, c.weight_hh.select(0, d));
      Tensor dstate = c.grad_h0.select(0, d);
      backward_direction<scalar_t>(p, c.dy, c.y, c.dz, dstate, after_step);
    };
    if (!pipelined(s) || !(c.need_weights || c.need_bias)) {
      // The driver adds the weight gradients and dX after the loop.
      for_each_direction(s.directions, [&](int64_t d) { recur(d, [](int64_t) {}); });
      return;
    }
    // One direction, visited t = T-1 .. 0: block j is steps [T - 32 (j + 1), T - 32 j).
    constexpr int64_t S = kPipelineStepsPerBlock;
    Tensor scratch = c.need_weights
                         ? at::empty({std::max<int64_t>(S * L.batch, 1), s.hidden}, c.x.options())
                         : Tensor();
    FinishedBlocks blocks(block_count(L.steps, S));
    auto add_block = [&](int64_t j) {
      c.add_weight_gradients(0, std::max<int64_t>(0, L.steps - (j + 1) * S), L.steps - j * S,
                             scratch, gather_previous);
    };
    with_helper_thread(
        [&] {
          blocks.start();
          try {
            recur(0, [&](int64_t t) {
              if ((L.steps - t) % S == 0 || t == 0) blocks.finished((L.steps - 1 - t) / S);
            });
          } catch (...) {
            blocks.fail();
            throw;
          }
          c.input_gradient();  // while the helper is still on the weight gradients
          blocks.finish(add_block);
        },
        [&] { blocks.help(add_block); });
    c.weight_gradients_added = true;
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> elman_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& output,
    const std::optional<Tensor>& batch_sizes, bool relu, std::array<bool, 4> output_mask) {
  return run_backward("rnnkern::elman_layer_backward", c10::DeviceType::CPU, grad_output, grad_h_n,
                      input, hx, weight_ih, weight_hh, output, batch_sizes, relu, output_mask,
                      backward_loop, gather_previous);
}

}  // namespace rnnkern::cpu
