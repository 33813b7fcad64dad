// Picks, once per process, the kernel table the running CPU supports.
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace rnnkern::cpu {
namespace {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set this CPU has, among those this build has kernels for.
Isa cpu_isa() {
#if defined(RNNKERN_HAVE_X86_KERNELS) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return Isa::kGeneric;
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    return Isa::kAvx512;
  return Isa::kAvx2;
#else
  return Isa::kGeneric;
#endif
}

// RNNKERN_CPU_ISA caps the choice: "generic" or "avx2" (anything else: no cap).
Isa requested_cap() {
  const char* isa = std::getenv("RNNKERN_CPU_ISA");
  if (isa != nullptr && std::strcmp(isa, "generic") == 0) return Isa::kGeneric;
  if (isa != nullptr && std::strcmp(isa, "avx2") == 0) return Isa::kAvx2;
  return Isa::kAvx512;
}

Isa chosen_isa() {
  static const Isa isa =
      static_cast<Isa>(std::min(static_cast<int>(cpu_isa()), static_cast<int>(requested_cap())));
  return isa;
}

}  // namespace

template <>
const Kernels<float>& kernels<float>() {
#if defined(RNNKERN_HAVE_X86_KERNELS)
  if (chosen_isa() == Isa::kAvx512) return avx512_kernels_f32();
  if (chosen_isa() == Isa::kAvx2) return avx2_kernels_f32();
#endif
  return generic_kernels_f32();
}

template <>
const Kernels<double>& kernels<double>() {
  // float64 serves accuracy (gradcheck, references), not speed: AVX2 is as far as it goes.
#if defined(RNNKERN_HAVE_X86_KERNELS)
  if (chosen_isa() != Isa::kGeneric) return avx2_kernels_f64();
#endif
  return generic_kernels_f64();
}

}  // namespace rnnkern::cpu
