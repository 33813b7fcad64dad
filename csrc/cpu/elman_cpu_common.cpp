// Helpers shared by the CPU forward and backward operators (declared in elman_cpu.h).
#include "elman_cpu.h"

namespace rnnkern::cpu {

void check_cpu(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), op, ": expected CPU tensors, got ", input.device());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64, got ", input.scalar_type());
}

at::Tensor stack_directions(const LayerShape& s, at::TensorList w,
                            const at::Tensor& (*role)(at::TensorList, const LayerShape&, int64_t)) {
  if (s.directions == 1) return role(w, s, 0);
  return at::cat({role(w, s, 0), role(w, s, 1)});
}

}  // namespace rnnkern::cpu
