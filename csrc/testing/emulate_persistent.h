// The persistent kernels run on the CPU: every block and thread of the launch, phase by phase, with
// the barriers between phases, calling the same per-thread functions (persistent_steps.h) and the
// same plan (persistent_plan.h) as the CUDA kernels. Used by the tests (through rnnkern._C) to
// check the kernels' indexing and state carry on machines without a GPU. The phase sequence below
// each function mirrors csrc/cuda/persistent_kernels.cuh; keep the two in step.
#pragma once

#include "../cuda/persistent_steps.h"

namespace rnnkern::persistent {

// p.plan is any kBlock or kGrid plan made for (H, B, D) with weight_bytes = state_bytes =
// sizeof(S).
template <typename S>
void emulate_forward(const RecurrenceParams<S, S>& p);
template <typename S>
void emulate_backward(const RecurrenceParams<S, S>& p);

}  // namespace rnnkern::persistent
