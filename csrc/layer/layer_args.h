// Argument checking and the sequence layout shared by every implementation of the rnnkern
// operators.
//
// One layer of an Elman RNN, both directions when bidirectional, is one call:
//   input       (T, B, I) dense, or (N, I) packed with batch_sizes (T,) as in a PackedSequence
//   hx          (D, B, H)               D = 1, or 2 when bidirectional
//   weights     per direction d: weight_ih (H, I), weight_hh (H, H)[, bias_ih (H), bias_hh (H)],
//               in nn.RNN's _flat_weights order
//   batch_sizes int64 on the CPU, non-increasing, batch_sizes[0] == B, summing to N
//
// The dense layout is the packed one with every step holding all B rows, so the kernels handle one
// layout: step t owns rows [offset[t], offset[t] + rows[t]) of the 2-D (N, .) view, and those rows
// are the first rows[t] sequences of the batch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace rnnkern {

struct SequenceLayout {
  int64_t steps = 0;            // T
  int64_t batch = 0;            // B
  int64_t total_rows = 0;       // N = sum of rows
  std::vector<int64_t> rows;    // rows[t]: sequences still running at step t (non-increasing)
  std::vector<int64_t> offset;  // offset[t]: the first row of step t

  // The rows of the steps [t_begin, t_end): (first row, count).
  std::pair<int64_t, int64_t> rows_of_steps(int64_t t_begin, int64_t t_end) const {
    const int64_t end_row = t_end < steps ? offset[t_end] : total_rows;
    return {offset[t_begin], end_row - offset[t_begin]};
  }
};

struct LayerShape {
  int64_t directions = 1;  // D
  int64_t hidden = 0;      // H
  int64_t input_size = 0;  // I
  bool has_bias = false;
  bool packed = false;
  SequenceLayout layout;

  int64_t weights_per_direction() const { return has_bias ? 4 : 2; }
};

// The step before step t in one direction's processing order (forward: t - 1, reverse: t + 1;
// -1 or T when there is none), and how many of step t's rows carry their state over from it: the
// first `carried` rows of t continue rows of `step`, the others start from h0.
struct PreviousStep {
  int64_t step;
  int64_t carried;
};
inline PreviousStep previous_step(const SequenceLayout& L, bool reverse, int64_t t) {
  const int64_t before = reverse ? t + 1 : t - 1;
  const bool exists = before >= 0 && before < L.steps;
  return {before, exists ? std::min(L.rows[t], L.rows[before]) : 0};
}

// The layout of a packed sequence from its batch_sizes (checked: 1-D int64 on the CPU, positive,
// non-increasing, summing to total_rows), and of a dense (T, B) one.
SequenceLayout packed_layout(const char* op, const at::Tensor& batch_sizes, int64_t total_rows);
SequenceLayout dense_layout(int64_t steps, int64_t batch);

// Checks every argument of elman_layer (shapes, dtypes, devices, batch_sizes) and raises a
// c10::Error that names the argument, what was expected and what came. `op` prefixes the message.
LayerShape check_layer_args(const char* op, const at::Tensor& input, const at::Tensor& hx,
                            at::TensorList weights, const std::optional<at::Tensor>& batch_sizes);

// The arguments of elman_layer_backward, checked as elman_layer's are (naming the argument, what
// was expected and what came): weight_ih (D, H, I) and weight_hh (D, H, H) stacked over the
// directions, output and grad_output of the forward's output shape, grad_h_n of hx's, all of
// input's dtype and device. Returns the layer's shape (has_bias is false: the backward needs no
// bias).
LayerShape check_backward_args(const char* op, const at::Tensor& grad_output,
                               const at::Tensor& grad_h_n, const at::Tensor& input,
                               const at::Tensor& hx, const at::Tensor& weight_ih,
                               const at::Tensor& weight_hh, const at::Tensor& output,
                               const std::optional<at::Tensor>& batch_sizes);

// The weights of direction d, by role.
inline const at::Tensor& weight_ih(at::TensorList w, const LayerShape& s, int64_t d) {
  return w[d * s.weights_per_direction()];
}
inline const at::Tensor& weight_hh(at::TensorList w, const LayerShape& s, int64_t d) {
  return w[d * s.weights_per_direction() + 1];
}
inline const at::Tensor& bias_ih(at::TensorList w, const LayerShape& s, int64_t d) {
  return w[d * s.weights_per_direction() + 2];
}
inline const at::Tensor& bias_hh(at::TensorList w, const LayerShape& s, int64_t d) {
  return w[d * s.weights_per_direction() + 3];
}

// One step of a cell (elman_cell), in nn.RNNCell's shapes:
//   input (B, I), hx (B, H), weight_ih (H, I), weight_hh (H, H), bias_ih and bias_hh (H) or neither
struct CellShape {
  int64_t batch = 0;       // B
  int64_t input_size = 0;  // I
  int64_t hidden = 0;      // H
  bool has_bias = false;
};

// Checks every argument of elman_cell as check_layer_args does elman_layer's.
CellShape check_cell_args(const char* op, const at::Tensor& input, const at::Tensor& hx,
                          const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                          const std::optional<at::Tensor>& bias_ih,
                          const std::optional<at::Tensor>& bias_hh);

// And elman_cell_backward's: grad and output of hx's shape, the rest as elman_cell's (no bias).
CellShape check_cell_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& input,
                                   const at::Tensor& hx, const at::Tensor& weight_ih,
                                   const at::Tensor& weight_hh, const at::Tensor& output);

// Both directions' weights of one role, stacked along the output dimension (one GEMM serves both).

at::Tensor stack_directions(const LayerShape& s, at::TensorList w,
                            const at::Tensor& (*role)(at::TensorList, const LayerShape&, int64_t));

}  // namespace rnnkern
