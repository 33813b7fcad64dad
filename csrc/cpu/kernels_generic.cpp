// The portable instantiation of the per-step kernels: any CPU, compiled for the baseline
// instruction set.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels.h"

namespace rnnkern::cpu {
namespace {
#include "kernels_impl.h"
#include "vec_generic.h"
}  // namespace

const Kernels<float>& generic_kernels_f32() {
  static const Kernels<float> table = make_kernels<VecGeneric<float>>("generic");
  return table;
}

const Kernels<double>& generic_kernels_f64() {
  static const Kernels<double> table = make_kernels<VecGeneric<double>>("generic");
  return table;
}

}  // namespace rnnkern::cpu
