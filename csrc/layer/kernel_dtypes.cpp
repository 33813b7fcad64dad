// kernel_dtypes.h: the dtype lists are read off the dispatch macros themselves, so that they can
// never disagree with what the kernels were compiled for.
#include "kernel_dtypes.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace rnnkern {
namespace {

bool dispatches(c10::DeviceType device, at::ScalarType dtype) {
  try {
    if (device == c10::DeviceType::CPU)
      RNNKERN_DISPATCH_CPU_DTYPES(dtype, "kernel_dtypes", [] {});
    else if (device == c10::DeviceType::CUDA)
      RNNKERN_DISPATCH_CUDA_DTYPES(dtype, "kernel_dtypes", [] {});
    else
      return false;
  } catch (const c10::Error&) {
    return false;  // the macro's "not implemented for" error: not in the list
  }
  return true;
}

}  // namespace

std::vector<at::ScalarType> kernel_dtypes(c10::DeviceType device) {
  std::vector<at::ScalarType> dtypes;
  for (at::ScalarType t : kFloatingDtypes)
    if (dispatches(device, t)) dtypes.push_back(t);
  return dtypes;
}

std::string kernel_dtype_names(c10::DeviceType device) {
  std::string names;
  for (at::ScalarType t : kernel_dtypes(device))
    names += (names.empty() ? "" : ", ") + std::string(c10::getDtypeNames(t).first);
  return names;
}

void check_kernel_device(const char* op, const at::Tensor& input, c10::DeviceType device) {
  const char* name = device == c10::DeviceType::CPU ? "CPU" : "CUDA";
  TORCH_CHECK(input.device().type() == device, op, ": expected ", name, " tensors, got ",
              input.device());
  TORCH_CHECK(dispatches(device, input.scalar_type()), op, ": the ", name, " kernels support ",
              kernel_dtype_names(device), "; got ", c10::getDtypeNames(input.scalar_type()).first);
}

}  // namespace rnnkern
