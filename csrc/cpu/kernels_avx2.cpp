// The AVX2+FMA instantiation of the per-step kernels.
//
// Only the functions defined between the target pragmas are compiled for AVX2; the rest of the
// extension is built for the baseline instruction set, and kernels_dispatch.cpp calls into this
// table only after checking that the CPU has AVX2 and FMA. Everything here has internal linkage, so
// no AVX2 copy of an inline function can be picked by the linker for code that runs on an older
// CPU.
#include "kernels.h"

#if defined(RNNKERN_HAVE_X86_KERNELS)

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace rnnkern::cpu {
namespace {
#include "kernels_impl.h"
#include "vec_avx2.h"
}  // namespace

const Kernels<float>& avx2_kernels_f32() {
  static const Kernels<float> table = make_kernels<VecAvx2<float>>("avx2");
  return table;
}

const Kernels<double>& avx2_kernels_f64() {
  static const Kernels<double> table = make_kernels<VecAvx2<double>>("avx2");
  return table;
}

}  // namespace rnnkern::cpu

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // RNNKERN_HAVE_X86_KERNELS
