// CPU implementations of rnnkern::elman_layer and rnnkern::elman_layer_backward.
//
// Forward:  Y = X @ W_ih^T + (b_ih + b_hh)         one GEMM for all steps and both directions
//           then per direction, step by step:  h_t = act(Y_t + h_{t-1} @ W_hh^T), written over Y_t
// Backward: per direction, step by step:       dZ_t = (dh + dY_t) * act'(h_t),  dh <- dZ_t @ W_hh
//           then dW_ih = dZ^T X, dW_hh = dZ^T H_prev, db = sum dZ, dX = dZ W_ih: a few GEMMs.
// The two directions of a bidirectional layer are independent and run on two threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <tuple>
#include <vector>

#include "../elman_layer_args.h"
#include "kernels.h"
#include "recurrence.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

using at::Tensor;

void check_cpu(const char* op, const Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), op, ": expected CPU tensors, got ", input.device());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64, got ", input.scalar_type());
}

// Runs fn(d) for each direction; both directions at once when there are two and threads to spare.
template <typename Fn>
void for_each_direction(int64_t directions, const Fn& fn) {
  if (directions == 2 && at::get_num_threads() > 1 && !at::in_parallel_region()) {
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      // Worker threads do not inherit the caller's thread-local dispatch state.
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t d = begin; d < end; ++d) fn(d);
    });
  } else {
    for (int64_t d = 0; d < directions; ++d) fn(d);
  }
}

Tensor stack_directions(const LayerShape& s, at::TensorList w,
                        const Tensor& (*role)(at::TensorList, const LayerShape&, int64_t)) {
  if (s.directions == 1) return role(w, s, 0);
  return at::cat({role(w, s, 0), role(w, s, 1)});
}

Activation activation(bool relu) { return relu ? Activation::kRelu : Activation::kTanh; }

// Steps per block of the projection pipeline: large enough that each block is a real GEMM, small
// enough that the recurrence does not wait long for the first one.
constexpr int64_t kPipelineStepsPerBlock = 32;

// Whether the forward overlaps the input projection with the recurrence (see step_blocks.h): one
// direction (two use both threads already), the register kernel (small batch: the recurrence leaves
// a core idle), a second thread, and enough steps for a few blocks.
bool pipeline_projection(const LayerShape& s) {
  return s.directions == 1 && use_register_kernel(s.layout) && at::get_num_threads() > 1 &&
         !at::in_parallel_region() && s.layout.steps >= 4 * kPipelineStepsPerBlock;
}

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
    if (!pipeline_projection(s)) {
      project(0, L.total_rows);
      for_each_direction(D, [&](int64_t d) { run(d, [](int64_t) {}); });
      return;
    }
    // One direction, a long sequence: the second thread projects blocks of steps ahead of the
    // recurrence (step_blocks.h says why this cannot deadlock).
    StepBlocks blocks(L.steps, kPipelineStepsPerBlock);
    auto project_block = [&](int64_t j) {
      const int64_t first = j * blocks.steps_per_block();
      const int64_t last = std::min(L.steps, first + blocks.steps_per_block());
      const int64_t end_row = last < L.steps ? L.offset[last] : L.total_rows;
      project(L.offset[first], end_row - L.offset[first]);
    };
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      const at::AutoDispatchBelowADInplaceOrView below_autograd;
      if (begin == 0) {
        run(0, [&](int64_t t) { blocks.wait_for(t / blocks.steps_per_block(), project_block); });
      }
      if (end == 2) blocks.help(project_block);
    });
  });
  if (!s.packed) out = out.view({L.steps, L.batch, D * H});
  return {out, h_n};
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> elman_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    at::TensorList weights, const Tensor& output, const std::optional<Tensor>& batch_sizes,
    bool relu, std::array<bool, 3> output_mask) {
  constexpr const char* op = "rnnkern::elman_layer_backward";
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LayerShape s = check_layer_args(op, input, hx, weights, batch_sizes);
  check_cpu(op, input);
  const SequenceLayout& L = s.layout;
  const int64_t H = s.hidden, D = s.directions, N = L.total_rows;
  const std::vector<int64_t> out_shape =
      s.packed ? std::vector<int64_t>{N, D * H} : std::vector<int64_t>{L.steps, L.batch, D * H};
  TORCH_CHECK(output.sizes() == c10::IntArrayRef(out_shape) &&
                  grad_output.sizes() == c10::IntArrayRef(out_shape),
              op, ": output and grad_output must have shape ", c10::IntArrayRef(out_shape),
              ", got ", output.sizes(), " and ", grad_output.sizes());
  TORCH_CHECK(grad_h_n.sizes() == hx.sizes(), op, ": grad_h_n must have the shape of hx ",
              hx.sizes(), ", got ", grad_h_n.sizes());
  for (const Tensor* t : {&grad_output, &grad_h_n, &output})
    TORCH_CHECK(t->scalar_type() == input.scalar_type() && t->device() == input.device(), op,
                ": gradients and output must match input's dtype and device");
  const auto [need_input, need_hx, need_weights] = output_mask;

  const Tensor x = input.reshape({N, s.input_size});
  const Tensor y = output.reshape({N, D * H}).contiguous();
  const Tensor dy = grad_output.reshape({N, D * H}).contiguous();
  Tensor dz = at::empty({N, D * H}, input.options());
  Tensor dhx = grad_h_n.contiguous().clone();

  std::vector<Tensor> grad_weights;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "elman_layer_backward_cpu", [&] {
    const Kernels<scalar_t>& k = kernels<scalar_t>();
    for_each_direction(D, [&](int64_t d) {
      Tensor dstate = dhx.select(0, d);
      backward_direction<scalar_t>(
          k, L, /*reverse=*/d == 1, activation(relu), weight_hh(weights, s, d),
          Columns<const scalar_t>{dy.data_ptr<scalar_t>() + d * H, D * H},
          Columns<const scalar_t>{y.data_ptr<scalar_t>() + d * H, D * H},
          Columns<scalar_t>{dz.data_ptr<scalar_t>() + d * H, D * H}, dz, d * H, dstate);
    });
    if (!need_weights) return;
    const Tensor h0 = hx.contiguous();
    for (int64_t d = 0; d < D; ++d) {
      const Tensor dz_d = dz.narrow(1, d * H, H);
      Tensor prev = at::empty({N, H}, input.options());
      gather_previous_states<scalar_t>(
          L, /*reverse=*/d == 1, Columns<const scalar_t>{y.data_ptr<scalar_t>() + d * H, D * H},
          h0.select(0, d).data_ptr<scalar_t>(), H, prev.data_ptr<scalar_t>());
      grad_weights.push_back(at::mm(dz_d.t(), x));
      grad_weights.push_back(at::mm(dz_d.t(), prev));
      if (s.has_bias) {
        Tensor db = dz_d.sum(0);
        grad_weights.push_back(db.clone());
        grad_weights.push_back(db);
      }
    }
  });

  Tensor grad_input = need_input
                          ? at::mm(dz, stack_directions(s, weights, weight_ih)).view(input.sizes())
                          : at::empty({0}, input.options());
  if (!need_hx) dhx = at::empty({0}, input.options());
  return {grad_input, dhx, grad_weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkern, CPU, m) {
  m.impl("elman_layer", &elman_layer_cpu);
  m.impl("elman_layer_backward", &elman_layer_backward_cpu);
}

}  // namespace rnnkern::cpu
