// layer_driver.h: the argument preparation, the GEMMs around the time loop and the output assembly
// of both operators, written once for every device. The GEMMs are ATen's, so each runs on the
// device's BLAS (MKL/OpenBLAS, cuBLAS on the current stream).
#include "layer_driver.h"

#include <ATen/DeviceGuard.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

#include "kernel_dtypes.h"

namespace rnnkern {

using at::Tensor;

void ForwardCall::project(int64_t first_row, int64_t rows) const {
  project_into(first_row, rows, out.narrow(0, first_row, rows));
}

void ForwardCall::project_into(int64_t first_row, int64_t rows, Tensor dest) const {
  project_columns(first_row, rows, 0, w_ih_t.size(1), dest);
}

void ForwardCall::project_direction_into(int64_t d, Tensor dest) const {
  project_columns(0, shape.layout.total_rows, d * shape.hidden, shape.hidden, dest);
}

void ForwardCall::project_columns(int64_t first_row, int64_t rows, int64_t first_column,
                                  int64_t columns, Tensor& dest) const {
  const Tensor xr = x.narrow(0, first_row, rows);
  const Tensor w = w_ih_t.narrow(1, first_column, columns);
  if (bias)
    at::addmm_out(dest, bias->narrow(0, first_column, columns), xr, w);
  else
    at::mm_out(dest, xr, w);
}

std::tuple<Tensor, Tensor> run_forward(const char* op, c10::DeviceType device, const Tensor& input,
                                       const Tensor& hx, at::TensorList weights,
                                       const std::optional<Tensor>& batch_sizes, bool relu,
                                       const ForwardLoop& loop,
                                       bool (*reads_weights_as_stored)(const LayerShape&)) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;  // inner ATen calls are not recorded
  ForwardCall c;
  c.shape = check_layer_args(op, input, hx, weights, batch_sizes);
  check_kernel_device(op, input, device);
  const at::OptionalDeviceGuard device_guard(at::device_of(input));
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  const int64_t DH = s.directions * s.hidden;

  c.relu = relu;
  c.weights = weights;
  c.x = input.reshape({L.total_rows, s.input_size});
  if (!reads_weights_as_stored || !reads_weights_as_stored(s)) {
    c.w_ih_t = stack_directions(s, weights, weight_ih).t();
    if (s.has_bias)
      c.bias = stack_directions(s, weights, bias_ih) + stack_directions(s, weights, bias_hh);
  }
  c.out = at::empty({L.total_rows, DH}, input.options());
  c.h0 = hx.contiguous();
  c.h_n = c.h0.clone();
  loop(c);
  if (!s.packed) c.out = c.out.view({L.steps, L.batch, DH});
  return {c.out, c.h_n};
}

BackwardCall::BlockOperands BackwardCall::block_operands(int64_t d, int64_t t_begin, int64_t t_end,
                                                         Tensor& scratch,
                                                         const GatherPrevious& gather) const {
  const auto [first, rows] = shape.layout.rows_of_steps(t_begin, t_end);
  const int64_t H = shape.hidden;
  BlockOperands b{dz.narrow(0, first, rows).narrow(1, d * H, H).t(), x.narrow(0, first, rows), {}};
  if (need_weights) {
    b.prev = scratch.narrow(0, 0, rows);
    gather(*this, d, t_begin, t_end, b.prev);
  }
  return b;
}

void BackwardCall::add_weight_gradients(int64_t d, int64_t t_begin, int64_t t_end, Tensor& scratch,
                                        const GatherPrevious& gather) const {
  if (t_begin >= t_end) return;
  const BlockOperands b = block_operands(d, t_begin, t_end, scratch, gather);
  if (need_weights) {
    grad_w_ih.select(0, d).addmm_(b.dz_t, b.x);
    grad_w_hh.select(0, d).addmm_(b.dz_t, b.prev);
  }
  if (need_bias) grad_bias.select(0, d).add_(b.dz_t.sum(1));
}

void BackwardCall::block_weight_gradients(int64_t d, int64_t t_begin, int64_t t_end,
                                          Tensor& scratch, const GatherPrevious& gather,
                                          Tensor w_ih, Tensor w_hh, Tensor bias) const {
  if (t_begin >= t_end) return;
  const BlockOperands b = block_operands(d, t_begin, t_end, scratch, gather);
  if (need_weights) {
    at::mm_out(w_ih, b.dz_t, b.x);
    at::mm_out(w_hh, b.dz_t, b.prev);
  }
  if (need_bias) at::sum_out(bias, b.dz_t, 1);
}

void BackwardCall::input_gradient() {
  if (!need_input || grad_input.defined()) return;
  grad_input = at::empty({shape.layout.total_rows, shape.input_size}, x.options());
  input_gradient_into(0, shape.layout.total_rows, grad_input);
}

void BackwardCall::input_gradient_into(int64_t first_row, int64_t rows, Tensor dest) const {
  const int64_t DH = shape.directions * shape.hidden;
  at::mm_out(dest, dz.narrow(0, first_row, rows), weight_ih.reshape({DH, shape.input_size}));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> run_backward(
    const char* op, c10::DeviceType device, const Tensor& grad_output, const Tensor& grad_h_n,
    const Tensor& input, const Tensor& hx, const Tensor& weight_ih, const Tensor& weight_hh,
    const Tensor& output, const std::optional<Tensor>& batch_sizes, bool relu,
    std::array<bool, 4> output_mask, const BackwardLoop& loop,
    const BackwardCall::GatherPrevious& gather) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  BackwardCall c;
  c.shape = check_backward_args(op, grad_output, grad_h_n, input, hx, weight_ih, weight_hh, output,
                                batch_sizes);
  check_kernel_device(op, input, device);
  const at::OptionalDeviceGuard device_guard(at::device_of(input));
  const LayerShape& s = c.shape;
  const int64_t H = s.hidden, D = s.directions, N = s.layout.total_rows;
  c.need_input = output_mask[0];
  c.need_hx = output_mask[1];
  c.need_weights = output_mask[2];
  c.need_bias = output_mask[3];

  c.relu = relu;
  c.weight_ih = weight_ih;
  c.weight_hh = weight_hh;
  c.x = input.reshape({N, s.input_size});
  c.y = output.reshape({N, D * H}).contiguous();
  c.dy = grad_output.reshape({N, D * H}).contiguous();
  c.h0 = hx.contiguous();
  c.grad_h_n = grad_h_n.contiguous();
  c.dz = at::empty({N, D * H}, input.options());
  c.grad_h0 = c.grad_h_n.clone();
  // What autograd did not ask for comes back empty (a new tensor each: outputs must not alias).
  auto none = [&] { return at::empty({0}, input.options()); };
  c.grad_w_ih = c.need_weights ? at::zeros({D, H, s.input_size}, input.options()) : none();
  c.grad_w_hh = c.need_weights ? at::zeros({D, H, H}, input.options()) : none();
  c.grad_bias = c.need_bias ? at::zeros({D, H}, input.options()) : none();

  loop(c);
  if (!c.weight_gradients_added && (c.need_weights || c.need_bias)) {
    Tensor scratch = c.need_weights ? at::empty({N, H}, input.options()) : Tensor();
    for (int64_t d = 0; d < D; ++d) c.add_weight_gradients(d, 0, s.layout.steps, scratch, gather);
  }
  c.input_gradient();
  const Tensor grad_input = c.need_input ? c.grad_input.view(input.sizes()) : none();
  return {grad_input, c.need_hx ? c.grad_h0 : none(), c.grad_w_ih, c.grad_w_hh, c.grad_bias};
}

}  // namespace rnnkern
