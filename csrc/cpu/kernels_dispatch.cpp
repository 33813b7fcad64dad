// Picks, once per process, the kernel table the running CPU supports.
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace rnnkern::cpu {
namespace {

bool generic_forced() {
  const char* isa = std::getenv("RNNKERN_CPU_ISA");
  return isa != nullptr && std::strcmp(isa, "generic") == 0;
}

bool cpu_has_avx2_fma() {
#if defined(RNNKERN_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool use_avx2() {
  static const bool yes = !generic_forced() && cpu_has_avx2_fma();
  return yes;
}

}  // namespace

template <>
const Kernels<float>& kernels<float>() {
#if defined(RNNKERN_HAVE_AVX2_KERNELS)
  if (use_avx2()) return avx2_kernels_f32();
#endif
  return generic_kernels_f32();
}

template <>
const Kernels<double>& kernels<double>() {
#if defined(RNNKERN_HAVE_AVX2_KERNELS)
  if (use_avx2()) return avx2_kernels_f64();
#endif
  return generic_kernels_f64();
}

}  // namespace rnnkern::cpu
