// Autograd for rnnkern::elman_layer, registered in C++ for every device (the Autograd key).
//
// The formula is the fused BPTT operator rnnkern::elman_layer_backward. Doing this in C++ rather
// than with torch.library.register_autograd keeps Python out of every call: at small shapes that
// Python layer cost as much as the kernels (see PERFORMANCE.md). torch.compile traces through it:
// AOTAutograd runs this kernel on fake tensors and records elman_layer_backward (which has a fake
// implementation in rnnkern/_ops.py) for the backward graph.
//
// Double backward (create_graph=True) goes through torch's own RNN instead of the fused operator:
// see differentiable_gradients.
#include <ATen/core/Tensor.h>
#include <ATen/ops/rnn_relu.h>
#include <ATen/ops/rnn_tanh.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "cpu/elman_cpu.h"
#include "cpu/helper_thread.h"
#include "op_calls.h"
#include "records_autograd.h"

namespace rnnkern {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The weights of one role (0: weight_ih, 1: weight_hh) of every direction, stacked (D, H, .): the
// backward operator's form of them (see ops.cpp). One direction is a view; two are a copy, unless
// the backward reads only their shape (weight_ih without an input gradient, as for a first layer):
// then the first direction's matrix, repeated as a view, saves the copy.
Tensor stack_role(const std::vector<Tensor>& weights, int64_t directions, int64_t role,
                  bool values_read) {
  const int64_t per_direction = static_cast<int64_t>(weights.size()) / directions;
  const Tensor& first = weights[role];
  if (directions == 1) return first.unsqueeze(0);
  if (!values_read) return first.unsqueeze(0).expand({directions, first.size(0), first.size(1)});
  // On the CPU single-threaded: a copy of more than 32k elements is otherwise an OpenMP team, whose
  // closing barrier waits for a thread a busy machine may not schedule for milliseconds (the
  // bidirectional training step at batch 16, hidden 256 then took 1.3x-1.6x its one-thread time
  // under outside load: PERFORMANCE.md, version 18).
  std::optional<cpu::SingleThreaded> single_threaded;
  if (first.is_cpu()) single_threaded.emplace();
  return at::stack({first, weights[per_direction + role]});
}

// The gradient of an output autograd left undefined (the output or h_n unused): zeros shaped like
// `like`. Made here rather than by autograd (ElmanLayer does not materialize them) so that on the
// CPU they are made the way the call runs (cpu::single_threaded_call): zeroing more than 32k
// elements is otherwise an OpenMP team, whose closing barrier a busy machine makes wait, and whose
// second thread then spins on the core the helper thread would use (a training step at batch 64,
// hidden 1024 whose h_n is unused: PERFORMANCE.md, version 19).
// Symbolic sizes (torch.compile with dynamic shapes traces this on fake tensors) are kept as they
// are, and then decide nothing.
Tensor zeros_if_undefined(const Tensor& grad, const Tensor& like, const Tensor& hx) {
  if (grad.defined()) return grad;
  std::optional<cpu::SingleThreaded> single_threaded;
  if (like.is_cpu() && !hx.unsafeGetTensorImpl()->has_symbolic_sizes_strides() &&
      cpu::single_threaded_call(hx))
    single_threaded.emplace();
  return at::zeros_symint(like.sym_sizes(), like.options());
}

// With create_graph=True the gradient must itself be differentiable, and elman_layer_backward has
// no derivative of its own. This recomputes the layer with torch's own RNN (the one nn.RNN runs)
// from the saved inputs and lets autograd differentiate that instead: the gradients, and every
// derivative of them, are then nn.RNN's (on a device where torch's RNN has double backward). The
// fused kernels keep the first-order path, which is all training needs.
variable_list differentiable_gradients(AutogradContext* ctx, const variable_list& grads,
                                       const variable_list& saved,
                                       const std::optional<Tensor>& batch_sizes, bool relu) {
  const Tensor& input = saved[0];
  const Tensor& hx = saved[1];
  const std::vector<Tensor> weights(saved.begin() + 3, saved.end());
  const int64_t D = hx.size(0);
  const bool has_bias = static_cast<int64_t>(weights.size()) == 4 * D;
  const bool bidirectional = D == 2;
  // train=true: cuDNN refuses to differentiate an RNN run in inference mode (dropout is 0 here).
  const auto [output, h_n] = batch_sizes
                                 ? (relu ? at::rnn_relu(input, *batch_sizes, hx, weights, has_bias,
                                                        1, 0.0, /*train=*/true, bidirectional)
                                         : at::rnn_tanh(input, *batch_sizes, hx, weights, has_bias,
                                                        1, 0.0, /*train=*/true, bidirectional))
                                 : (relu ? at::rnn_relu(input, hx, weights, has_bias, 1, 0.0,
                                                        /*train=*/true, bidirectional, false)
                                         : at::rnn_tanh(input, hx, weights, has_bias, 1, 0.0,
                                                        /*train=*/true, bidirectional, false));
  // The forward arguments with an edge: input, hx, then each weight.
  variable_list arguments{input, hx};
  arguments.insert(arguments.end(), weights.begin(), weights.end());
  variable_list wanted;
  std::vector<size_t> position;
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (!ctx->needs_input_grad(i)) continue;
    wanted.push_back(arguments[i]);
    position.push_back(i);
  }
  variable_list result(arguments.size() + 2);  // + batch_sizes, relu: no gradient
  if (wanted.empty()) return result;
  const variable_list g =
      torch::autograd::grad({output, h_n}, wanted, {grads[0], grads[1]}, /*retain_graph=*/true,
                            /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t k = 0; k < g.size(); ++k) result[position[k]] = g[k];
  return result;
}

class ElmanLayer : public torch::autograd::Function<ElmanLayer> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                               at::TensorList weights, const std::optional<Tensor>& batch_sizes,
                               bool relu) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, h_n] = call_elman_layer(input, hx, weights, batch_sizes, relu);
    std::vector<Tensor> saved{input, hx, output};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["batch_sizes"] = batch_sizes;
    ctx->set_materialize_grads(false);  // backward makes the zeros itself: zeros_if_undefined
    return {output, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const std::optional<Tensor> batch_sizes = ctx->saved_data["batch_sizes"].toOptional<Tensor>();
    const bool relu = ctx->saved_data["relu"].toBool();
    grads[0] = zeros_if_undefined(grads[0], saved[2], saved[1]);  // like the output
    grads[1] = zeros_if_undefined(grads[1], saved[1], saved[1]);  // like h_n: hx's shape
    if (at::GradMode::is_enabled())  // create_graph=True: gradients of gradients to come
      return differentiable_gradients(ctx, grads, saved, batch_sizes, relu);

    const Tensor& input = saved[0];
    const Tensor& hx = saved[1];
    const Tensor& output = saved[2];
    const std::vector<Tensor> weights(saved.begin() + 3, saved.end());
    const int64_t D = hx.size(0);
    const int64_t per_direction = static_cast<int64_t>(weights.size()) / D;  // 2, or 4 with bias
    // Edges: input, hx, then each weight (batch_sizes and relu come last). Roles per direction:
    // 0 weight_ih, 1 weight_hh, 2 bias_ih, 3 bias_hh.
    auto needs_weight = [&](size_t i) { return ctx->needs_input_grad(2 + i); };
    bool need_matrices = false, need_bias = false;
    for (size_t i = 0; i < weights.size(); ++i) {
      if (!needs_weight(i)) continue;
      (static_cast<int64_t>(i) % per_direction < 2 ? need_matrices : need_bias) = true;
    }
    const auto [grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias] = call_elman_layer_backward(
        grads[0], grads[1], input, hx, stack_role(weights, D, 0, ctx->needs_input_grad(0)),
        stack_role(weights, D, 1, true), output, batch_sizes, relu,
        {ctx->needs_input_grad(0), ctx->needs_input_grad(1), need_matrices, need_bias});

    variable_list result{ctx->needs_input_grad(0) ? grad_input : Tensor(),
                         ctx->needs_input_grad(1) ? grad_hx : Tensor()};
    for (size_t i = 0; i < weights.size(); ++i) {
      const int64_t d = static_cast<int64_t>(i) / per_direction;
      const int64_t role = static_cast<int64_t>(i) % per_direction;
      if (!needs_weight(i)) {
        result.emplace_back();
      } else if (role < 2) {
        result.push_back((role == 0 ? grad_w_ih : grad_w_hh).select(0, d));
      } else {
        // bias_ih and bias_hh have the same gradient; each gets its own tensor, since autograd may
        // keep the one it is given as the parameter's .grad and add into it later.
        const Tensor db = grad_bias.select(0, d);
        result.push_back(role == 2 ? db : db.clone());
      }
    }
    result.emplace_back();  // batch_sizes
    result.emplace_back();  // relu
    return result;
  }
};

std::tuple<Tensor, Tensor> elman_layer_autograd(const Tensor& input, const Tensor& hx,
                                                at::TensorList weights,
                                                const std::optional<Tensor>& batch_sizes,
                                                bool relu) {
  bool record = records_autograd(input) || records_autograd(hx);
  for (const Tensor& w : weights) record = record || records_autograd(w);
  if (!record) {
    // Inference (no_grad, or nothing requires grad): no graph node to build.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_elman_layer(input, hx, weights, batch_sizes, relu);
  }
  const variable_list out = ElmanLayer::apply(input, hx, weights, batch_sizes, relu);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkern, Autograd, m) { m.impl("elman_layer", &elman_layer_autograd); }

}  // namespace rnnkern
