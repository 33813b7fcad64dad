// The AVX-512 instantiation (float32; float64 uses the AVX2 table) of the per-step kernels.
//
// Only the functions defined between the target pragmas are compiled for AVX-512; the rest of the
// extension is built for the baseline instruction set, and kernels_dispatch.cpp calls into this
// table only after checking that the CPU has AVX-512 F, DQ, BW and VL. Everything here has internal
// linkage, so no AVX2 copy of an inline function can be picked by the linker for code that runs on
// an older CPU.
#include "kernels.h"

#if defined(RNNKERN_HAVE_X86_KERNELS)

// GCC 12's own avx512fintrin.h trips -W(maybe-)uninitialized (its _mm512_undefined_* idiom) once
// inlined into our code; the warning is about the compiler's header, not this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#if defined(__clang__)
#pragma clang attribute push( \
    __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#endif

namespace rnnkern::cpu {
namespace {
#include "kernels_impl.h"
#include "vec_avx512.h"
}  // namespace

const Kernels<float>& avx512_kernels_f32() {
  static const Kernels<float> table = make_kernels<VecAvx512<float>>("avx512");
  return table;
}

}  // namespace rnnkern::cpu

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#endif  // RNNKERN_HAVE_X86_KERNELS
