// The device-independent half of both operators: everything of one layer call except the time loop.
// A device implements rnnkern::elman_layer and its backward by handing its time loop to run_forward
// and run_backward (csrc/cpu/elman_*_cpu.cpp, csrc/cuda/elman_cuda.cu):
//
//   run_forward    checks the arguments (layer_args.h) and the device and dtype (kernel_dtypes.h);
//                  the device's loop calls project() for the input projection
//                      Y = X W_ih^T + (b_ih + b_hh)          one GEMM, all steps, both directions
//                  (all at once or block by block ahead of itself; the CPU's bidirectional layers
//                  project each direction's columns on the thread that runs it) and then, per
//                  direction, step by step in visited_step's order (elman_math.h),
//                      h_t = act(Y_t + h_{t-1} W_hh^T)       written over Y_t;
//                  the output comes back in the input's layout.
//   run_backward   checks as above; the device's loop, in the reverse order,
//                      dZ_t = (dh + dY_t) * act'(h_t),   dh <- dZ_t W_hh
//                  then the GEMMs over all steps (unless the loop already added them block by
//                  block)
//                      dW_ih = dZ^T X,  dW_hh = dZ^T H_prev,  db = sum dZ,  dX = dZ W_ih
//                  computing only what autograd asked for (output_mask).
//
// Every tensor below is 2-D over the sequence's rows: N = total rows (T * B dense, or a
// PackedSequence's), D directions, H hidden, I input; a direction's columns of a (N, D*H) tensor
// are [d*H, (d+1)*H). See layer_args.h for the layout of the rows.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <array>
#include <functional>
#include <optional>
#include <tuple>
#include <vector>

#include "layer_args.h"

namespace rnnkern {

// One forward call, as the device's loop sees it.
struct ForwardCall {
  LayerShape shape;
  bool relu = false;
  at::TensorList weights;  // nn.RNN's order: per direction weight_ih, weight_hh[, bias_ih, bias_hh]
  at::Tensor x;            // (N, I)
  at::Tensor out;          // (N, D*H): written by project(), then overwritten with h_t by the loop
  at::Tensor h0;           // (D, B, H) contiguous
  at::Tensor h_n;  // (D, B, H) contiguous, a copy of h0: the loop leaves the last states here

  // out[first_row, first_row + rows) = x[those rows] W_ih^T + (b_ih + b_hh), every direction.
  void project(int64_t first_row, int64_t rows) const;
  // The same rows' projection written to `dest` (rows, D*H) instead.
  void project_into(int64_t first_row, int64_t rows, at::Tensor dest) const;
  // Direction d's columns of every row's projection, written to `dest` (N, H).
  void project_direction_into(int64_t d, at::Tensor dest) const;

  // The projection's operands, built by the driver unless the loop reads the weights as stored
  // (run_forward's reads_weights_as_stored): then undefined and nullopt.
  at::Tensor w_ih_t;               // (I, D*H): both directions' W_ih, transposed
  std::optional<at::Tensor> bias;  // (D*H): b_ih + b_hh, when the layer has biases

 private:
  void project_columns(int64_t first_row, int64_t rows, int64_t first_column, int64_t columns,
                       at::Tensor& dest) const;
};

// One backward call, as the device's loop sees it.
struct BackwardCall {
  LayerShape shape;
  bool relu = false;
  bool need_input = false, need_hx = false, need_weights = false, need_bias = false;
  at::Tensor weight_ih;   // (D, H, I)
  at::Tensor weight_hh;   // (D, H, H)
  at::Tensor x;           // (N, I)
  at::Tensor y;           // (N, D*H) contiguous: the forward's output h_t
  at::Tensor dy;          // (N, D*H) contiguous: grad of the output
  at::Tensor h0;          // (D, B, H) contiguous
  at::Tensor grad_h_n;    // (D, B, H) contiguous
  at::Tensor dz;          // (N, D*H): written by the loop
  at::Tensor grad_h0;     // (D, B, H) contiguous, a copy of grad_h_n: the loop leaves grad h0 here
  at::Tensor grad_w_ih;   // (D, H, I) zeros, or empty when not asked for
  at::Tensor grad_w_hh;   // (D, H, H) zeros, or empty
  at::Tensor grad_bias;   // (D, H) zeros, or empty
  at::Tensor grad_input;  // the input's shape; undefined until input_gradient()
  bool weight_gradients_added = false;  // the loop has added every step's weight gradients

  // Writes into prev (rows x H, one row per row of dZ of steps [t_begin, t_end) of direction d)
  // the state each of those rows started from: a row of y, or of h0 (layer_args.h: previous_step).
  using GatherPrevious = std::function<void(const BackwardCall&, int64_t d, int64_t t_begin,
                                            int64_t t_end, at::Tensor& prev)>;

  // Adds the weight gradients of direction d's steps [t_begin, t_end), a block of consecutive rows
  // of dZ, to the sums: dW_ih += dZ^T X, dW_hh += dZ^T H_prev, db += sum dZ. `scratch` has at
  // least the block's rows x H elements; blocks are always added in the same order for a shape,
  // so the sums round the same from run to run.
  void add_weight_gradients(int64_t d, int64_t t_begin, int64_t t_end, at::Tensor& scratch,
                            const GatherPrevious& gather) const;
  // The same block's gradients computed afresh into w_ih (H, I) = dZ^T X, w_hh (H, H) =
  // dZ^T H_prev and bias (H) = sum dZ (each only when asked for), so that another thread can
  // compute them while the caller adds the sums in block order.
  void block_weight_gradients(int64_t d, int64_t t_begin, int64_t t_end, at::Tensor& scratch,
                              const GatherPrevious& gather, at::Tensor w_ih, at::Tensor w_hh,
                              at::Tensor bias) const;

  // grad_input = dZ W_ih, when asked for (once dZ is complete).
  void input_gradient();
  // Rows [first_row, first_row + rows) of dZ W_ih, written to `dest` (rows, I).
  void input_gradient_into(int64_t first_row, int64_t rows, at::Tensor dest) const;

 private:
  // The operands of one block's weight gradients: dZ^T (H, rows), X (rows, I) and, when the
  // weights' gradients are asked for, H_prev (rows, H), gathered into `scratch`.
  struct BlockOperands {
    at::Tensor dz_t, x, prev;
  };
  BlockOperands block_operands(int64_t d, int64_t t_begin, int64_t t_end, at::Tensor& scratch,
                               const GatherPrevious& gather) const;
};

using ForwardLoop = std::function<void(ForwardCall&)>;
using BackwardLoop = std::function<void(BackwardCall&)>;

// One layer's forward: the checks, the outputs, the projection's operands, then `loop`. A loop that
// for some shapes reads the weights as they are (the CPU's short layers) says which with
// reads_weights_as_stored, and the driver then skips the copies it would make for the projection.
std::tuple<at::Tensor, at::Tensor> run_forward(
    const char* op, c10::DeviceType device, const at::Tensor& input, const at::Tensor& hx,
    at::TensorList weights, const std::optional<at::Tensor>& batch_sizes, bool relu,
    const ForwardLoop& loop, bool (*reads_weights_as_stored)(const LayerShape&) = nullptr);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> run_backward(
    const char* op, c10::DeviceType device, const at::Tensor& grad_output,
    const at::Tensor& grad_h_n, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& output,
    const std::optional<at::Tensor>& batch_sizes, bool relu, std::array<bool, 4> output_mask,
    const BackwardLoop& loop, const BackwardCall::GatherPrevious& gather);

}  // namespace rnnkern
