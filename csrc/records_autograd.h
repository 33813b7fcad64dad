// Whether autograd would record an operator call on an argument: grad mode with an argument that
// requires grad, or a forward-mode tangent on one (which the operators' autograd functions refuse,
// having no forward-mode formula; the modules route forward AD to torch's own RNN instead). When
// no argument would, the autograd kernels skip their Function::apply, whose graph node, variable
// lists and output metadata cost more than the kernels at small shapes (PERFORMANCE.md).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

namespace rnnkern {

inline bool records_autograd(const at::Tensor& t) {
  if (!t.defined()) return false;
  return (at::GradMode::is_enabled() && t.requires_grad()) || t._fw_grad(/*level=*/0).defined();
}

}  // namespace rnnkern
