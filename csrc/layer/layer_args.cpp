#include "layer_args.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace rnnkern {
namespace {

std::string shape_str(c10::IntArrayRef sizes) {
  std::ostringstream s;
  s << sizes;
  return s.str();
}

void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& input,
                c10::IntArrayRef expected) {
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), op, ": ", name,
              " must have the dtype of input (", input.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == input.device(), op, ": ", name, " must be on the device of input (",
              input.device(), "), got ", t.device());
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " must have shape ", shape_str(expected),
              ", got ", shape_str(t.sizes()));
}

}  // namespace

SequenceLayout packed_layout(const char* op, const at::Tensor& batch_sizes, int64_t total_rows) {
  TORCH_CHECK(batch_sizes.dim() == 1, op, ": batch_sizes must be 1-D, got ", batch_sizes.dim(),
              "-D");
  TORCH_CHECK(batch_sizes.scalar_type() == at::kLong, op, ": batch_sizes must be int64, got ",
              batch_sizes.scalar_type());
  TORCH_CHECK(batch_sizes.device().is_cpu(), op, ": batch_sizes must be on the CPU (as in a ",
              "PackedSequence), got ", batch_sizes.device());
  const at::Tensor bs = batch_sizes.contiguous();
  const int64_t* b = bs.data_ptr<int64_t>();
  SequenceLayout layout;
  layout.steps = bs.numel();
  layout.batch = layout.steps > 0 ? b[0] : 0;
  layout.rows.resize(layout.steps);
  layout.offset.resize(layout.steps);
  int64_t offset = 0;
  for (int64_t t = 0; t < layout.steps; ++t) {
    TORCH_CHECK(b[t] >= 1, op, ": batch_sizes must be positive, got ", b[t], " at step ", t);
    TORCH_CHECK(t == 0 || b[t] <= b[t - 1], op, ": batch_sizes must be non-increasing (sequences ",
                "sorted by decreasing length, as pack_padded_sequence makes them), got ", b[t - 1],
                " then ", b[t], " at step ", t);
    TORCH_CHECK(b[t] <= total_rows - offset, op, ": batch_sizes sum to more than the ", total_rows,
                " rows of the packed input");
    layout.rows[t] = b[t];
    layout.offset[t] = offset;
    offset += b[t];
  }
  TORCH_CHECK(offset == total_rows, op, ": batch_sizes sum to ", offset,
              " but the packed input has ", total_rows, " rows");
  layout.total_rows = total_rows;
  return layout;
}

SequenceLayout dense_layout(int64_t steps, int64_t batch) {
  SequenceLayout layout;
  layout.steps = steps;
  layout.batch = batch;
  layout.total_rows = steps * batch;
  layout.rows.assign(steps, batch);
  layout.offset.resize(steps);
  for (int64_t t = 0; t < steps; ++t) layout.offset[t] = t * batch;
  return layout;
}

LayerShape check_layer_args(const char* op, const at::Tensor& input, const at::Tensor& hx,
                            at::TensorList weights, const std::optional<at::Tensor>& batch_sizes) {
  TORCH_CHECK(input.is_floating_point(), op, ": input must be a floating-point tensor, got ",
              input.scalar_type());
  LayerShape s;
  s.packed = batch_sizes.has_value();
  TORCH_CHECK(
      input.dim() == (s.packed ? 2 : 3), op, ": input must be ",
      s.packed ? "2-D (rows, input_size) with batch_sizes" : "3-D (seq_len, batch, input_size)",
      ", got shape ", shape_str(input.sizes()));
  TORCH_CHECK(hx.dim() == 3, op,
              ": hx must be 3-D (num_directions, batch, hidden_size), got shape ",
              shape_str(hx.sizes()));
  s.directions = hx.size(0);
  TORCH_CHECK(s.directions == 1 || s.directions == 2, op,
              ": hx.size(0) is the number of directions and must be 1 or 2, got ", s.directions);
  s.hidden = hx.size(2);
  s.input_size = input.size(-1);

  const int64_t n = static_cast<int64_t>(weights.size());
  TORCH_CHECK(n == 2 * s.directions || n == 4 * s.directions, op, ": expected ", 2 * s.directions,
              " weights (weight_ih, weight_hh per direction) or ", 4 * s.directions,
              " (with bias_ih, bias_hh), got ", n);
  s.has_bias = n == 4 * s.directions;

  s.layout = s.packed ? packed_layout(op, *batch_sizes, input.size(0))
                      : dense_layout(input.size(0), input.size(1));
  TORCH_CHECK(s.layout.steps > 0, op,
              ": Expected sequence length to be larger than 0 in RNN (the sequence length must be "
              "at least 1, as in torch.nn.RNN), got input of shape ",
              shape_str(input.sizes()), s.packed ? " with empty batch_sizes" : "");
  check_like(op, "hx", hx, input, {s.directions, s.layout.batch, s.hidden});
  for (int64_t d = 0; d < s.directions; ++d) {
    check_like(op, "weight_ih", weight_ih(weights, s, d), input, {s.hidden, s.input_size});
    check_like(op, "weight_hh", weight_hh(weights, s, d), input, {s.hidden, s.hidden});
    if (s.has_bias) {
      check_like(op, "bias_ih", bias_ih(weights, s, d), input, {s.hidden});
      check_like(op, "bias_hh", bias_hh(weights, s, d), input, {s.hidden});
    }
  }
  return s;
}

CellShape check_cell_args(const char* op, const at::Tensor& input, const at::Tensor& hx,
                          const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                          const std::optional<at::Tensor>& bias_ih,
                          const std::optional<at::Tensor>& bias_hh) {
  TORCH_CHECK(input.is_floating_point(), op, ": input must be a floating-point tensor, got ",
              input.scalar_type());
  TORCH_CHECK(input.dim() == 2, op, ": input must be 2-D (batch, input_size), got shape ",
              shape_str(input.sizes()));
  TORCH_CHECK(hx.dim() == 2, op, ": hx must be 2-D (batch, hidden_size), got shape ",
              shape_str(hx.sizes()));
  TORCH_CHECK(bias_ih.has_value() == bias_hh.has_value(), op,
              ": bias_ih and bias_hh must be given both or neither, got ",
              bias_ih ? "bias_ih only" : "bias_hh only");
  CellShape s{input.size(0), input.size(1), hx.size(1), bias_ih.has_value()};
  check_like(op, "hx", hx, input, {s.batch, s.hidden});
  check_like(op, "weight_ih", weight_ih, input, {s.hidden, s.input_size});
  check_like(op, "weight_hh", weight_hh, input, {s.hidden, s.hidden});
  if (s.has_bias) {
    check_like(op, "bias_ih", *bias_ih, input, {s.hidden});
    check_like(op, "bias_hh", *bias_hh, input, {s.hidden});
  }
  return s;
}

CellShape check_cell_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                   const at::Tensor& hx, const at::Tensor& weight_ih,
                                   const at::Tensor& weight_hh, const at::Tensor& output) {
  const CellShape s =
      check_cell_args(op, input, hx, weight_ih, weight_hh, std::nullopt, std::nullopt);
  check_like(op, "output", output, input, {s.batch, s.hidden});
  check_like(op, "grad", grad, input, {s.batch, s.hidden});
  return s;
}

at::Tensor stack_directions(const LayerShape& s, at::TensorList w,
                            const at::Tensor& (*role)(at::TensorList, const LayerShape&, int64_t)) {
  if (s.directions == 1) return role(w, s, 0);
  return at::cat({role(w, s, 0), role(w, s, 1)});
}

LayerShape check_backward_args(const char* op, const at::Tensor& grad_output,
                               const at::Tensor& grad_h_n, const at::Tensor& input,
                               const at::Tensor& hx, const at::Tensor& weight_ih,
                               const at::Tensor& weight_hh, const at::Tensor& output,
                               const std::optional<at::Tensor>& batch_sizes) {
  const int64_t D = hx.dim() == 3 ? hx.size(0) : -1;
  TORCH_CHECK(weight_ih.dim() == 3 && weight_hh.dim() == 3 && weight_ih.size(0) == D &&
                  weight_hh.size(0) == D,
              op,
              ": weight_ih and weight_hh must be 3-D, one matrix per direction of hx stacked "
              "(num_directions, hidden_size, input_size or hidden_size), got shapes ",
              shape_str(weight_ih.sizes()), " and ", shape_str(weight_hh.sizes()),
              " with hx of shape ", shape_str(hx.sizes()));
  // Checked as elman_layer's weights list: [weight_ih[0], weight_hh[0], ...].
  std::vector<at::Tensor> weights;
  for (int64_t d = 0; d < D; ++d) {
    weights.push_back(weight_ih.select(0, d));
    weights.push_back(weight_hh.select(0, d));
  }
  const LayerShape s = check_layer_args(op, input, hx, weights, batch_sizes);
  const SequenceLayout& L = s.layout;
  const int64_t DH = s.directions * s.hidden;
  const std::vector<int64_t> out_shape = s.packed ? std::vector<int64_t>{L.total_rows, DH}
                                                  : std::vector<int64_t>{L.steps, L.batch, DH};
  check_like(op, "output", output, input, out_shape);
  check_like(op, "grad_output", grad_output, input, out_shape);
  check_like(op, "grad_h_n", grad_h_n, input, {s.directions, L.batch, s.hidden});
  return s;
}

}  // namespace rnnkern
