// CPU forward of rnnkern::elman_layer: one layer, one or two directions.
//
//   Y = X @ W_ih^T + (b_ih + b_hh)        one GEMM for all steps and both directions
//   then per direction, step by step:    h_t = act(Y_t + h_{t-1} @ W_hh^T), written over Y_t
//
// The two directions of a bidirectional layer run on two threads. A single direction at small batch
// instead hands the projection to the second thread, block by block ahead of the recurrence.
#include "elman_cpu.h"
#include "step_blocks.h"

namespace rnnkern::cpu {

using at::Tensor;

std::tuple<Tensor, Tensor> elman_layer_cpu(const Tensor& input, const Tensor& hx,
                                           at::TensorList weights,
                                           const std::optional<Tensor>& batch_sizes, bool relu) {
  constexpr const char* op = "rnnkern::elman_layer";
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // inner ATen calls are not recorded
  const LayerShape s = check_layer_args(op, input, hx, weights, batch_sizes);
  check_cpu(op, input);
  const SequenceLayout& L = s.layout;
  const int64_t H = s.hidden, D = s.directions;

  const Tensor x = input.reshape({L.total_rows, s.input_size});
  const Tensor w_ih_t = stack_directions(s, weights, weight_ih).t();
  const std::optional<Tensor> bias =
      s.has_bias ? std::optional<Tensor>(stack_directions(s, weights, bias_ih) +
                                         stack_directions(s, weights, bias_hh))
                 : std::nullopt;
  Tensor out = at::empty({L.total_rows, D * H}, input.options());
  // out[rows] = x[rows] @ W_ih^T + (b_ih + b_hh), for a block of rows (all steps, or some).
  auto project = [&](int64_t first_row, int64_t rows) {
    Tensor o = out.narrow(0, first_row, rows);
    const Tensor xr = x.narrow(0, first_row, rows);
    if (bias)
      at::addmm_out(o, *bias, xr, w_ih_t);
    else
      at::mm_out(o, xr, w_ih_t);
  };
  Tensor h_n = hx.contiguous().clone();

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "elman_layer_cpu", [&] {
    const Kernels<scalar_t>& k = kernels<scalar_t>();
    auto run = [&](int64_t d, const auto& before_step) {
      Tensor state = h_n.select(0, d);
      forward_direction<scalar_t>(k, L, /*reverse=*/d == 1, activation(relu),
                                  weight_hh(weights, s, d),
                                  Columns<scalar_t>{out.data_ptr<scalar_t>() + d * H, D * H}, out,
                                  d * H, state, before_step);
    };
    if (!pipelined(s)) {
      project(0, L.total_rows);
      for_each_direction(D, [&](int64_t d) { run(d, [](int64_t) {}); });
      return;
    }
    // Block j is steps [32 j, 32 (j + 1)): the forward direction needs them in that order.
    constexpr int64_t S = kPipelineStepsPerBlock;
    ProjectedBlocks blocks(block_count(L.steps, S));
    auto project_block = [&](int64_t j) {
      const auto [first, rows] = block_rows(L, j * S, std::min(L.steps, (j + 1) * S));
      project(first, rows);
    };
    with_helper_thread([&] { run(0, [&](int64_t t) { blocks.wait_for(t / S, project_block); }); },
                       [&] { blocks.help(project_block); });
  });
  if (!s.packed) out = out.view({L.steps, L.batch, D * H});
  return {out, h_n};
}

}  // namespace rnnkern::cpu
