// Autograd for rnnkern::elman_cell, registered in C++ for every device (the Autograd key), as
// autograd_layer.cpp does for the layer: a cell is called once per step from Python, so what a
// Python autograd function would add per call is more than the step itself costs.
//
// The formula is the fused operator rnnkern::elman_cell_backward. Double backward
// (create_graph=True) recomputes the step with torch's own cell (what nn.RNNCell runs) and
// differentiates that, so that gradients of gradients are nn.RNNCell's.
#include <ATen/core/Tensor.h>
#include <ATen/ops/rnn_relu_cell.h>
#include <ATen/ops/rnn_tanh_cell.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "op_calls.h"
#include "records_autograd.h"

namespace rnnkern {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The forward's arguments that can have a gradient, in order (relu comes last). Without bias, the
// last two are not tensors and have no edge.
enum Edge : size_t { kInput, kHx, kWeightIh, kWeightHh, kBiasIh, kBiasHh, kEdges };

// Whether autograd wants the gradient of argument e (ctx->needs_input_grad counts edges only).
bool needs_grad(AutogradContext* ctx, Edge e, bool has_bias) {
  return (e < kBiasIh || has_bias) && ctx->needs_input_grad(e);
}

class ElmanCell : public torch::autograd::Function<ElmanCell> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                        const Tensor& weight_ih, const Tensor& weight_hh,
                        const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh,
                        bool relu) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    Tensor output = call_elman_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, relu);
    // The biases are saved only for double backward's recomputation (undefined when absent).
    ctx->save_for_backward({input, hx, weight_ih, weight_hh, output, bias_ih.value_or(Tensor()),
                            bias_hh.value_or(Tensor())});
    ctx->saved_data["relu"] = relu;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const bool relu = ctx->saved_data["relu"].toBool();
    const Tensor &input = saved[0], &hx = saved[1], &weight_ih = saved[2], &weight_hh = saved[3];
    const bool has_bias = saved[5].defined();
    if (at::GradMode::is_enabled()) return differentiable_gradients(ctx, grads[0], saved, relu);

    auto needs = [&](Edge e) { return needs_grad(ctx, e, has_bias); };
    const auto [grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias] =
        call_elman_cell_backward(grads[0], input, hx, weight_ih, weight_hh, saved[4], relu,
                                 {needs(kInput), needs(kHx), needs(kWeightIh) || needs(kWeightHh),
                                  needs(kBiasIh) || needs(kBiasHh)});
    variable_list result(kEdges + 1);  // + relu
    auto give = [&](Edge e, const Tensor& g) {
      if (needs(e)) result[e] = g;
    };
    give(kInput, grad_input);
    give(kHx, grad_hx);
    give(kWeightIh, grad_w_ih);
    give(kWeightHh, grad_w_hh);
    // bias_ih and bias_hh have the same gradient; each gets its own tensor, since autograd may keep
    // the one it is given as the parameter's .grad and add into it later.
    give(kBiasIh, grad_bias);
    if (needs(kBiasHh)) result[kBiasHh] = needs(kBiasIh) ? grad_bias.clone() : grad_bias;
    return result;
  }

 private:
  // create_graph=True: the gradients, and every derivative of them, are torch's own cell's.
  static variable_list differentiable_gradients(AutogradContext* ctx, const Tensor& grad,
                                                const variable_list& saved, bool relu) {
    const Tensor &input = saved[0], &hx = saved[1], &weight_ih = saved[2], &weight_hh = saved[3];
    const std::optional<Tensor> bias_ih =
        saved[5].defined() ? std::optional<Tensor>(saved[5]) : std::nullopt;
    const std::optional<Tensor> bias_hh =
        saved[6].defined() ? std::optional<Tensor>(saved[6]) : std::nullopt;
    const Tensor output =
        relu ? at::rnn_relu_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh)
             : at::rnn_tanh_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh);
    const std::array<Tensor, kEdges> arguments{input, hx, weight_ih, weight_hh, saved[5], saved[6]};
    variable_list wanted;
    std::vector<size_t> position;
    for (size_t i = 0; i < kEdges; ++i) {
      if (!needs_grad(ctx, static_cast<Edge>(i), bias_ih.has_value())) continue;

      wanted.push_back(arguments[i]);
      position.push_back(i);
    }
    variable_list result(kEdges + 1);
    if (wanted.empty()) return result;
    const variable_list g = torch::autograd::grad({output}, wanted, {grad}, /*retain_graph=*/true,
                                                  /*create_graph=*/true, /*allow_unused=*/true);
    for (size_t k = 0; k < g.size(); ++k) result[position[k]] = g[k];
    return result;
  }
};

bool any_records_autograd(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors)
    if (records_autograd(*t)) return true;
  return false;
}

Tensor elman_cell_autograd(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                           const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                           const std::optional<Tensor>& bias_hh, bool relu) {
  const Tensor none;
  if (!any_records_autograd({&input, &hx, &weight_ih, &weight_hh, bias_ih ? &*bias_ih : &none,
                             bias_hh ? &*bias_hh : &none})) {
    // Inference (no_grad, or nothing requires grad): no graph node to build, which is most of what
    // ElmanCell::apply costs at one step.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_elman_cell(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, relu);
  }
  return ElmanCell::apply(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, relu);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkern, Autograd, m) { m.impl("elman_cell", &elman_cell_autograd); }

}  // namespace rnnkern
