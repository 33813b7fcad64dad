// The host side of the persistent CUDA kernels: the launch plan for a layer on the current device,
// and the launchers (persistent_kernels.cuh, one instantiation per dtype in persistent_<dtype>.cu).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/core/ScalarType.h>
#include <cuda_runtime_api.h>

#include <string>

#include "persistent_steps.h"

namespace rnnkern::cuda {

// The one place a launch configuration is chosen: persistent::plan_launch with the current device's
// multiprocessor count, shared memory per block (opt-in maximum), threads per block and cooperative
// launch support. RNNKERN_CUDA_ALGORITHM=block|grid|per_step forces an algorithm for experiments
// (an error if it does not fit the shape); unset or "auto" lets the plan choose.
persistent::LaunchPlan choose_plan(int64_t hidden, int64_t batch, int64_t directions,
                                   c10::ScalarType dtype);

// The plan for `algorithm` ("auto" or "" to choose, else forced as above) on the current device,
// without the error for a forced algorithm that does not fit: the result is then kPerStep and
// *why_not says why. What rnnkern._C.cuda_launch_plan returns.
persistent::LaunchPlan plan_on_current_device(int64_t hidden, int64_t batch, int64_t directions,
                                              c10::ScalarType dtype, const std::string& algorithm,
                                              const char** why_not);

// Run the whole recurrence of one layer (both directions) in one launch on `stream`. false: the
// cooperative grid would not be resident on this device (the caller falls back to per-step).
template <typename T>
bool launch_forward_persistent(const persistent::RecurrenceParams<T, at::opmath_type<T>>& p,
                               cudaStream_t stream);
template <typename T>
bool launch_backward_persistent(const persistent::RecurrenceParams<T, at::opmath_type<T>>& p,
                                cudaStream_t stream);

}  // namespace rnnkern::cuda
