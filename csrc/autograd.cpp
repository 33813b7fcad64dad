// Autograd for rnnkern::elman_layer, registered in C++ for every device (the Autograd key).
//
// The formula is the fused BPTT operator rnnkern::elman_layer_backward. Doing this in C++ rather
// than with torch.library.register_autograd keeps Python out of every call: at small shapes that
// Python layer cost as much as the kernels (see PERFORMANCE.md). torch.compile traces through it:
// AOTAutograd runs this kernel on fake tensors and records elman_layer_backward (which has a fake
// implementation in rnnkern/_ops.py) for the backward graph.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

namespace rnnkern {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::tuple<Tensor, Tensor> call_forward(const Tensor& input, const Tensor& hx,
                                        at::TensorList weights,
                                        const std::optional<Tensor>& batch_sizes, bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnkern::elman_layer", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, at::TensorList,
                                            const std::optional<Tensor>&, bool)>();
  return op.call(input, hx, weights, batch_sizes, relu);
}

std::tuple<Tensor, Tensor, std::vector<Tensor>> call_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    at::TensorList weights, const Tensor& output, const std::optional<Tensor>& batch_sizes,
    bool relu, std::array<bool, 3> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnkern::elman_layer_backward", "")
          .typed<std::tuple<Tensor, Tensor, std::vector<Tensor>>(
              const Tensor&, const Tensor&, const Tensor&, const Tensor&, at::TensorList,
              const Tensor&, const std::optional<Tensor>&, bool, std::array<bool, 3>)>();
  return op.call(grad_output, grad_h_n, input, hx, weights, output, batch_sizes, relu, output_mask);
}

class ElmanLayer : public torch::autograd::Function<ElmanLayer> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& hx,
                               at::TensorList weights, const std::optional<Tensor>& batch_sizes,
                               bool relu) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [output, h_n] = call_forward(input, hx, weights, batch_sizes, relu);
    std::vector<Tensor> saved{input, hx, output};
    saved.insert(saved.end(), weights.begin(), weights.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["batch_sizes"] = batch_sizes;
    return {output, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // elman_layer_backward has no derivative of its own: with create_graph=True torch would
    // silently treat it as constant and return zero second derivatives. Refuse instead.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "rnnkern.RNN does not support double backward (create_graph=True: gradients of "
                "its gradients); torch.nn.RNN on the CPU does, if you need second derivatives");
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& input = saved[0];
    const Tensor& hx = saved[1];
    const Tensor& output = saved[2];
    const std::vector<Tensor> weights(saved.begin() + 3, saved.end());
    const auto n = static_cast<size_t>(weights.size());
    // Edges: input, hx, then each weight (batch_sizes, if any, comes last).
    const bool need_input = ctx->needs_input_grad(0);
    const bool need_hx = ctx->needs_input_grad(1);
    bool need_weights = false;
    for (size_t i = 0; i < n; ++i) need_weights = need_weights || ctx->needs_input_grad(2 + i);

    const std::optional<Tensor> batch_sizes = ctx->saved_data["batch_sizes"].toOptional<Tensor>();
    auto [grad_input, grad_hx, grad_weights] =
        call_backward(grads[0], grads[1], input, hx, weights, output, batch_sizes,
                      ctx->saved_data["relu"].toBool(), {need_input, need_hx, need_weights});

    // One gradient per forward argument, the list expanded: input, hx, weights..., batch_sizes,
    // relu.
    variable_list result{need_input ? grad_input : Tensor(), need_hx ? grad_hx : Tensor()};
    for (size_t i = 0; i < n; ++i)
      result.push_back(need_weights && ctx->needs_input_grad(2 + i) ? grad_weights[i] : Tensor());
    result.emplace_back();  // batch_sizes
    result.emplace_back();  // relu
    return result;
  }
};

std::tuple<Tensor, Tensor> elman_layer_autograd(const Tensor& input, const Tensor& hx,
                                                at::TensorList weights,
                                                const std::optional<Tensor>& batch_sizes,
                                                bool relu) {
  const variable_list out = ElmanLayer::apply(input, hx, weights, batch_sizes, relu);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnnkern, Autograd, m) { m.impl("elman_layer", &elman_layer_autograd); }

}  // namespace rnnkern
