// The typed dispatcher handles behind op_calls.h, each looked up once.
#include "op_calls.h"

#include <ATen/core/dispatch/Dispatcher.h>

namespace rnnkern {

using at::Tensor;

std::tuple<Tensor, Tensor> call_elman_layer(const Tensor& input, const Tensor& hx,
                                            at::TensorList weights,
                                            const std::optional<Tensor>& batch_sizes, bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnkern::elman_layer", "")
          .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, at::TensorList,
                                            const std::optional<Tensor>&, bool)>();
  return op.call(input, hx, weights, batch_sizes, relu);
}

LayerBackwardResult call_elman_layer_backward(const Tensor& grad_output, const Tensor& grad_h_n,
                                              const Tensor& input, const Tensor& hx,
                                              const Tensor& weight_ih, const Tensor& weight_hh,
                                              const Tensor& output,
                                              const std::optional<Tensor>& batch_sizes, bool relu,
                                              std::array<bool, 4> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnkern::elman_layer_backward", "")
          .typed<LayerBackwardResult(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                     const Tensor&, const Tensor&, const Tensor&,
                                     const std::optional<Tensor>&, bool, std::array<bool, 4>)>();
  return op.call(grad_output, grad_h_n, input, hx, weight_ih, weight_hh, output, batch_sizes, relu,
                 output_mask);
}

Tensor call_elman_cell(const Tensor& input, const Tensor& hx, const Tensor& weight_ih,
                       const Tensor& weight_hh, const std::optional<Tensor>& bias_ih,
                       const std::optional<Tensor>& bias_hh, bool relu) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnkern::elman_cell", "")
          .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const std::optional<Tensor>&, const std::optional<Tensor>&, bool)>();
  return op.call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, relu);
}

CellBackwardResult call_elman_cell_backward(const Tensor& grad, const Tensor& input,
                                            const Tensor& hx, const Tensor& weight_ih,
                                            const Tensor& weight_hh, const Tensor& output,
                                            bool relu, std::array<bool, 4> output_mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("rnnkern::elman_cell_backward", "")
          .typed<CellBackwardResult(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                    const Tensor&, const Tensor&, bool, std::array<bool, 4>)>();
  return op.call(grad, input, hx, weight_ih, weight_hh, output, relu, output_mask);
}

}  // namespace rnnkern
