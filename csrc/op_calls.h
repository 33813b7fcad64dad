// The rnnkern operators called from C++ through the dispatcher, as torch.ops calls them (every
// dispatch key: autograd, fake tensors, the device's kernel) but without torch.ops' Python half,
// which parses the arguments against the schema and at a few steps costs as much as the work
// (PERFORMANCE.md, versions 9 and 24b). The one home of each schema's C++ signature: the schemas
// themselves are in ops.cpp, their arguments documented there.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <tuple>

namespace rnnkern {

using LayerBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using CellBackwardResult = LayerBackwardResult;

std::tuple<at::Tensor, at::Tensor> call_elman_layer(const at::Tensor& input, const at::Tensor& hx,
                                                    at::TensorList weights,
                                                    const std::optional<at::Tensor>& batch_sizes,
                                                    bool relu);

LayerBackwardResult call_elman_layer_backward(const at::Tensor& grad_output,
                                              const at::Tensor& grad_h_n, const at::Tensor& input,
                                              const at::Tensor& hx, const at::Tensor& weight_ih,
                                              const at::Tensor& weight_hh, const at::Tensor& output,
                                              const std::optional<at::Tensor>& batch_sizes,
                                              bool relu, std::array<bool, 4> output_mask);

at::Tensor call_elman_cell(const at::Tensor& input, const at::Tensor& hx,
                           const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                           const std::optional<at::Tensor>& bias_ih,
                           const std::optional<at::Tensor>& bias_hh, bool relu);

CellBackwardResult call_elman_cell_backward(const at::Tensor& grad, const at::Tensor& input,
                                            const at::Tensor& hx, const at::Tensor& weight_ih,
                                            const at::Tensor& weight_hh, const at::Tensor& output,
                                            bool relu, std::array<bool, 4> output_mask);

}  // namespace rnnkern
