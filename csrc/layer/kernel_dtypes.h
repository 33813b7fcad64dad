// The dtypes each device's kernels are compiled for: the one home of that fact. The kernels
// dispatch with these macros, the drivers' checks and error messages read kernel_dtypes(), and so
// does Python (rnnkern._C.kernel_dtypes, behind rnnkern._ops.KERNEL_DTYPES).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

// CPU: float32 and float64 (the vector kernels have no half-precision arithmetic).
#define RNNKERN_DISPATCH_CPU_DTYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES(TYPE, NAME, __VA_ARGS__)

// CUDA: float32 and float64, and float16 and bfloat16 stored with float32 state and sums.
#define RNNKERN_DISPATCH_CUDA_DTYPES(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace rnnkern {

// Every dtype some device's kernels might be compiled for: what kernel_dtypes() tries.
inline constexpr at::ScalarType kFloatingDtypes[] = {at::kFloat, at::kDouble, at::kHalf,
                                                     at::kBFloat16};

// The dtypes the macro above dispatches for `device` (CPU or CUDA), in torch's names ("float32").
std::vector<at::ScalarType> kernel_dtypes(c10::DeviceType device);
std::string kernel_dtype_names(c10::DeviceType device);  // "float32, float64"

// Raises c10::Error unless `input` is on a device of `device`'s type in one of its kernel dtypes:
// "<op>: the CPU kernels support float32, float64; got ...".
void check_kernel_device(const char* op, const at::Tensor& input, c10::DeviceType device);

}  // namespace rnnkern
