// persistent_launch.h: the launch plan for the current device.
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "persistent_launch.h"

namespace rnnkern::cuda {

persistent::LaunchPlan plan_on_current_device(int64_t hidden, int64_t batch, int64_t directions,
                                              c10::ScalarType dtype, const std::string& algorithm,
                                              const char** why_not) {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const persistent::DeviceLimits device{prop->multiProcessorCount,
                                        static_cast<int64_t>(prop->sharedMemPerBlockOptin),
                                        prop->maxThreadsPerBlock, prop->cooperativeLaunch != 0};
  const int64_t element = static_cast<int64_t>(c10::elementSize(dtype));
  const persistent::ProblemShape shape{hidden, batch, directions, element,
                                       dtype == c10::kDouble ? 8 : 4};
  persistent::Algorithm forced{};
  bool is_forced = false;
  try {
    is_forced = persistent::parse_algorithm(algorithm, &forced);
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, "RNNKERN_CUDA_ALGORITHM: ", e.what());
  }
  persistent::LaunchPlan plan =
      persistent::plan_launch(shape, device, is_forced ? &forced : nullptr, why_not);
  plan.forced = is_forced;
  return plan;
}

persistent::LaunchPlan choose_plan(int64_t hidden, int64_t batch, int64_t directions,
                                   c10::ScalarType dtype) {
  const char* env = std::getenv("RNNKERN_CUDA_ALGORITHM");
  const char* why_not = "";
  const persistent::LaunchPlan plan =
      plan_on_current_device(hidden, batch, directions, dtype, env ? env : "", &why_not);
  // An empty batch never launches a kernel, whatever was asked for.
  const bool empty = hidden == 0 || batch == 0;
  TORCH_CHECK(
      !plan.forced || empty || persistent::algorithm_name(plan.algorithm) == std::string(env),
      "RNNKERN_CUDA_ALGORITHM=", env, " does not fit hidden_size ", hidden, ", batch ", batch,
      " on this GPU: ", why_not);
  return plan;
}

}  // namespace rnnkern::cuda
