// Helpers shared by the CPU forward and backward operators (declared in elman_cpu.h).
#include "elman_cpu.h"

namespace rnnkern::cpu {

void check_cpu(const char* op, const at::Tensor& input) {
  TORCH_CHECK(input.device().is_cpu(), op, ": expected CPU tensors, got ", input.device());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
              ": the CPU kernels support float32 and float64, got ", input.scalar_type());
}

}  // namespace rnnkern::cpu
