// Registers the CPU implementations of the rnnkern operators (declared in csrc/ops.cpp).
#include <torch/library.h>

#include "elman_cpu.h"

namespace rnnkern::cpu {

TORCH_LIBRARY_IMPL(rnnkern, CPU, m) {
  m.impl("elman_layer", &elman_layer_cpu);
  m.impl("elman_layer_backward", &elman_layer_backward_cpu);
  m.impl("elman_cell", &elman_cell_cpu);
  m.impl("elman_cell_backward", &elman_cell_backward_cpu);
}

}  // namespace rnnkern::cpu
