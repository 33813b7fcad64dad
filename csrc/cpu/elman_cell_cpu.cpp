// CPU implementation of rnnkern::elman_cell and its backward: one step of nn.RNNCell,
//   h' = act(x @ W_ih^T + b_ih + h @ W_hh^T + b_hh)
// for the user who calls a cell in a Python loop (a tutorial's training loop, streaming inference),
// where what a call costs is everything around the arithmetic. So each call allocates only its
// outputs (and, backward, one (B, H) scratch), reads the weights where they are, in nn.RNNCell's
// layout (no transposed or padded copy), and at small batch does all of its work in the vector
// kernels of kernels.h, no ATen operator in between. At larger batch the products are real GEMMs
// and go to ATen's BLAS.
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>

#include "../layer/kernel_dtypes.h"
#include "../layer/layer_args.h"
#include "elman_cpu.h"
#include "split_rows.h"

namespace rnnkern::cpu {
namespace {

using at::Tensor;

// Whether the vector kernels compute a step's products, or BLAS does. Measured against ATen's
// addmm (PERFORMANCE.md, "The cell operator"): the vector kernels win 2-5x at batch 1-4, by
// 1.3-1.4x at batch 8 up to hidden 512 and 2x at batch 32, hidden 64; BLAS wins from batch 16 at
// hidden 256 and up, where a call's fixed cost no longer shows.
inline bool use_vector_kernels(const CellShape& s) {
  return s.batch <= 8 || s.batch * s.hidden <= 4096;
}

template <typename T>
const T* data_or_null(const std::optional<Tensor>& t) {
  return t ? t->data_ptr<T>() : nullptr;
}

}  // namespace

Tensor elman_cell_cpu(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                      const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                      const std::optional<Tensor>& bias_hh, bool relu) {
  constexpr const char* op = "rnnkern::elman_cell";
  const CellShape s = check_cell_args(op, input, hx, weight_ih, weight_hh, bias_ih, bias_hh);
  check_kernel_device(op, input, c10::DeviceType::CPU);
  const Tensor x = input.contiguous(), h = hx.contiguous();
  const Tensor w_ih = weight_ih.contiguous(), w_hh = weight_hh.contiguous();
  const std::optional<Tensor> b_ih = s.has_bias ? std::optional(bias_ih->contiguous()) : bias_ih;
  const std::optional<Tensor> b_hh = s.has_bias ? std::optional(bias_hh->contiguous()) : bias_hh;
  Tensor out;
  RNNKERN_DISPATCH_CPU_DTYPES(x.scalar_type(), "elman_cell_cpu", [&] {
    const Kernels<scalar_t>& k = kernels<scalar_t>();
    if (use_vector_kernels(s)) {
      out = at::empty({s.batch, s.hidden}, x.options());
      k.cell_forward(activation(relu), s.batch, x.data_ptr<scalar_t>(), s.input_size, s.input_size,
                     w_ih.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), s.hidden, s.hidden,
                     w_hh.data_ptr<scalar_t>(), data_or_null<scalar_t>(b_ih),
                     data_or_null<scalar_t>(b_hh), s.hidden, out.data_ptr<scalar_t>(), s.hidden);
      return;
    }
    out = s.has_bias ? at::addmm(*b_ih, x, w_ih.t()) : at::mm(x, w_ih.t());
    out.addmm_(h, w_hh.t());
    if (s.has_bias) out.add_(*b_hh);
    k.activate_rows(activation(relu), s.batch, s.hidden, out.data_ptr<scalar_t>(), s.hidden);
  });
  return out;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> elman_cell_backward_cpu(
    const Tensor& grad, const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
    const Tensor& weight_hh, const Tensor& output, bool relu, std::array<bool, 4> output_mask) {
  constexpr const char* op = "rnnkern::elman_cell_backward";
  const CellShape s = check_cell_backward_args(op, grad, input, hx, weight_ih, weight_hh, output);
  check_kernel_device(op, input, c10::DeviceType::CPU);
  const auto [need_input, need_hx, need_weights, need_bias] = output_mask;
  const Tensor x = input.contiguous(), h = hx.contiguous(), y = output.contiguous();
  const Tensor w_ih = weight_ih.contiguous(), w_hh = weight_hh.contiguous();
  const Tensor dh = grad.contiguous();
  const int64_t B = s.batch, I = s.input_size, H = s.hidden;
  // What autograd did not ask for comes back empty (a new tensor each: outputs must not alias).
  auto empty = [&](bool needed, c10::IntArrayRef shape) {
    return at::empty(needed ? shape : c10::IntArrayRef{0}, x.options());
  };
  Tensor grad_input = empty(need_input, {B, I}), grad_hx = empty(need_hx, {B, H});
  Tensor grad_w_ih = empty(need_weights, {H, I}), grad_w_hh = empty(need_weights, {H, H});
  Tensor grad_bias = empty(need_bias, {H});
  RNNKERN_DISPATCH_CPU_DTYPES(x.scalar_type(), "elman_cell_backward_cpu", [&] {
    using T = scalar_t;
    const Kernels<T>& k = kernels<T>();
    // dz = dh' * act'(h'), the gradient at the pre-activation: every other gradient is a product
    // of it.
    Tensor dz = at::empty({B, H}, x.options());
    T* z = dz.data_ptr<T>();
    k.activation_backward_rows(activation(relu), B, H, dh.data_ptr<T>(), H, nullptr, 0,
                               y.data_ptr<T>(), H, z, H);
    if (need_bias) {  // zeros at batch 0
      T* db = grad_bias.data_ptr<T>();
      std::fill(db, db + H, T(0));
      for (int64_t r = 0; r < B; ++r)
        for (int64_t j = 0; j < H; ++j) db[j] += z[r * H + j];
    }

    if (!use_vector_kernels(s)) {
      if (need_input) at::mm_out(grad_input, dz, w_ih);
      if (need_hx) at::mm_out(grad_hx, dz, w_hh);
      if (need_weights) {
        // A sum over the batch: blocks of units that round the same on one thread or two.
        const Tensor dz_t = dz.t();
        split_rows({grad_w_ih, grad_w_hh}, B * (I + H),
                   [dz_t, x, h](int64_t first, int64_t units, std::vector<Tensor>& dest) {
                     at::mm_out(dest[0], dz_t.narrow(0, first, units), x);
                     at::mm_out(dest[1], dz_t.narrow(0, first, units), h);
                   });
      }
      return;
    }
    // dx = dz @ W_ih and dh = dz @ W_hh: rows of dz against the weights as they are stored.
    if (need_input)
      k.rows_times_matrix(Epilogue::kStore, Activation::kTanh, B, z, H, H, w_ih.data_ptr<T>(), I, I,
                          grad_input.data_ptr<T>(), I);
    if (need_hx)
      k.rows_times_matrix(Epilogue::kStore, Activation::kTanh, B, z, H, H, w_hh.data_ptr<T>(), H, H,
                          grad_hx.data_ptr<T>(), H);
    if (need_weights) {
      // dW_ih = dz^T @ x and dW_hh = dz^T @ h: the rows of dz^T (one per hidden unit) against x
      // and h. dz^T is dz itself at batch 1.
      Tensor dz_t = B == 1 ? dz : dz.t().contiguous();
      const T* zt = dz_t.data_ptr<T>();
      k.rows_times_matrix(Epilogue::kStore, Activation::kTanh, H, zt, B, B, x.data_ptr<T>(), I, I,
                          grad_w_ih.data_ptr<T>(), I);
      k.rows_times_matrix(Epilogue::kStore, Activation::kTanh, H, zt, B, B, h.data_ptr<T>(), H, H,
                          grad_w_hh.data_ptr<T>(), H);
    }
  });
  return {grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias};
}

}  // namespace rnnkern::cpu
