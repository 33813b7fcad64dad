// The persistent forward and backward recurrences (see csrc/cuda/persistent_plan.h for the
// algorithms and persistent_steps.h for what each thread does per step). Included once per dtype by
// persistent_<dtype>.cu, so nvcc compiles the dtypes in parallel.
//
// NOT YET RUN ON A GPU. The phase sequence here mirrors csrc/testing/emulate_persistent.cpp, which
// runs the same per-thread functions on the CPU in the tests; keep the two in step.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "persistent_launch.h"
#include "persistent_steps.h"

namespace rnnkern::cuda {

using persistent::Algorithm;
using persistent::BlockMemory;
using persistent::BlockView;
using persistent::kMaxOutputsPerThread;
using persistent::kMaxThreads;
using persistent::RecurrenceParams;

// kGrid: one barrier across the whole (cooperative) grid, which also orders the global-memory
// exchange buffer; kBlock: a block barrier, which orders the shared-memory state.
template <bool kGrid>
__device__ __forceinline__ void step_barrier() {
  if constexpr (kGrid) {
    cooperative_groups::this_grid().sync();
  } else {
    __syncthreads();
  }
}

// The parts of each owned output's dot product, added over the `split` lanes of a group by a
// butterfly of shuffles (every lane ends with the whole sum). Every thread of the block calls it
// for the same m (outputs_per_thread is the same for all), so whole warps take part.
template <typename S>
__device__ __forceinline__ void group_sum(const persistent::LaunchPlan& plan, S* partial) {
  RNNKERN_UNROLL
  for (int m = 0; m < kMaxOutputsPerThread; ++m) {
    if (m >= plan.outputs_per_thread) break;
    for (int offset = plan.split / 2; offset > 0; offset /= 2)
      partial[m] += __shfl_xor_sync(0xffffffffu, partial[m], offset);
  }
}

// Where a step's new state goes: the group's exchange buffer `which` (kGrid), or shared buffer
// `which` (kBlock).
template <bool kGrid, typename T, typename S>
__device__ __forceinline__ S* state_out(const RecurrenceParams<T, S>& p, const BlockView& v,
                                        const BlockMemory<T, S>& mem, int which) {
  if constexpr (kGrid) {
    return persistent::exchange_slice(p, v, which);
  } else {
    return mem.buffer(which);
  }
}

template <typename T, typename S>
__device__ __forceinline__ BlockMemory<T, S> block_memory(const RecurrenceParams<T, S>& p) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  return persistent::carve_shared<T, S>(p.plan, shared_raw);
}

template <typename T, bool kGrid>
__global__ void __launch_bounds__(kMaxThreads, 1)
    elman_forward_persistent(const RecurrenceParams<T, at::opmath_type<T>> p) {
  using S = at::opmath_type<T>;
  const BlockView v = persistent::block_view(p.plan, blockIdx.x);
  const int th = static_cast<int>(threadIdx.x);
  const BlockMemory<T, S> mem = block_memory(p);
  S carry[kMaxOutputsPerThread], partial[kMaxOutputsPerThread];

  persistent::load_m_slice(p.plan, v, th, p.w_hh[v.direction], /*transpose=*/false, mem.m);
  persistent::forward_start(p, v, th, state_out<kGrid>(p, v, mem, 0), carry);
  step_barrier<kGrid>();
  if constexpr (kGrid) {
    persistent::stage_state(p.plan, v, th, persistent::exchange_slice(p, v, 0), mem.state[0]);
    __syncthreads();
  }
  for (int64_t i = 0; i < p.steps; ++i) {
    const int64_t t = visited_step(p.steps, v.direction == 1, i, /*backward=*/false);
    const int next = int((i + 1) & 1);
    S* out = state_out<kGrid>(p, v, mem, next);
    persistent::partial_products(p, v, th, persistent::step_rows(p, t), mem.m,
                                 mem.buffer(kGrid ? 0 : i), partial);
    group_sum(p.plan, partial);
    persistent::forward_apply(p, v, th, t, partial, out, carry);
    if (kGrid && i + 1 == p.steps) break;
    step_barrier<kGrid>();
    if constexpr (kGrid) {
      persistent::stage_state(p.plan, v, th, persistent::exchange_slice(p, v, next), mem.state[0]);
      __syncthreads();
    }
  }
  persistent::write_final_state(p, v, th, carry);
}

template <typename T, bool kGrid>
__global__ void __launch_bounds__(kMaxThreads, 1)
    elman_backward_persistent(const RecurrenceParams<T, at::opmath_type<T>> p) {
  using S = at::opmath_type<T>;
  const BlockView v = persistent::block_view(p.plan, blockIdx.x);
  const int th = static_cast<int>(threadIdx.x);
  const BlockMemory<T, S> mem = block_memory(p);
  S carry[kMaxOutputsPerThread], partial[kMaxOutputsPerThread];

  persistent::load_m_slice(p.plan, v, th, p.w_hh[v.direction], /*transpose=*/true, mem.m);
  persistent::load_initial_state(p, v, th, carry);
  persistent::backward_dz(p, v, th, visited_step(p.steps, v.direction == 1, 0, true),
                          state_out<kGrid>(p, v, mem, 0), carry);
  step_barrier<kGrid>();
  if constexpr (kGrid) {
    persistent::stage_state(p.plan, v, th, persistent::exchange_slice(p, v, 0), mem.state[0]);
    __syncthreads();
  }
  for (int64_t i = 0; i < p.steps; ++i) {
    const int64_t t = visited_step(p.steps, v.direction == 1, i, /*backward=*/true);
    persistent::partial_products(p, v, th, persistent::step_rows(p, t), mem.m,
                                 mem.buffer(kGrid ? 0 : i), partial);
    group_sum(p.plan, partial);
    persistent::backward_apply(p, v, th, t, partial, carry);
    if (i + 1 == p.steps) break;
    const int next = int((i + 1) & 1);
    persistent::backward_dz(p, v, th, visited_step(p.steps, v.direction == 1, i + 1, true),
                            state_out<kGrid>(p, v, mem, next), carry);
    step_barrier<kGrid>();
    if constexpr (kGrid) {
      persistent::stage_state(p.plan, v, th, persistent::exchange_slice(p, v, next), mem.state[0]);
      __syncthreads();
    }
  }
  persistent::write_final_state(p, v, th, carry);
}

// Launches `kernel` as the plan says: a cooperative launch for kGrid (all blocks resident, or
// false if they would not be), a plain one for kBlock.
template <typename T>
bool launch_persistent(const void* kernel, const RecurrenceParams<T, at::opmath_type<T>>& p,
                       cudaStream_t stream) {
  const persistent::LaunchPlan& plan = p.plan;
  int device = 0, shared_optin = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(
      cudaDeviceGetAttribute(&shared_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  // The kernel's limit is a setting of the device, not of this launch: always the device's maximum,
  // so that host threads launching other shapes at the same time never lower it under each other.
  C10_CUDA_CHECK(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_optin));
  void* args[] = {const_cast<RecurrenceParams<T, at::opmath_type<T>>*>(&p)};
  const dim3 grid(static_cast<unsigned>(plan.blocks())), block(plan.threads);
  if (plan.algorithm == Algorithm::kGrid) {
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
        &per_sm, kernel, plan.threads, static_cast<size_t>(plan.shared_bytes)));
    int sms = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    if (int64_t(per_sm) * sms < plan.blocks()) return false;
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(kernel, grid, block, args,
                                               static_cast<size_t>(plan.shared_bytes), stream));
  } else {
    C10_CUDA_CHECK(cudaLaunchKernel(kernel, grid, block, args,
                                    static_cast<size_t>(plan.shared_bytes), stream));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

template <typename T>
bool launch_forward_persistent(const RecurrenceParams<T, at::opmath_type<T>>& p,
                               cudaStream_t stream) {
  const void* kernel = p.plan.algorithm == Algorithm::kGrid
                           ? reinterpret_cast<const void*>(&elman_forward_persistent<T, true>)
                           : reinterpret_cast<const void*>(&elman_forward_persistent<T, false>);
  return launch_persistent<T>(kernel, p, stream);
}

template <typename T>
bool launch_backward_persistent(const RecurrenceParams<T, at::opmath_type<T>>& p,
                                cudaStream_t stream) {
  const void* kernel = p.plan.algorithm == Algorithm::kGrid
                           ? reinterpret_cast<const void*>(&elman_backward_persistent<T, true>)
                           : reinterpret_cast<const void*>(&elman_backward_persistent<T, false>);
  return launch_persistent<T>(kernel, p, stream);
}

}  // namespace rnnkern::cuda

// One dtype's kernels and launchers (persistent_<dtype>.cu).
#define RNNKERN_INSTANTIATE_PERSISTENT(T)                                                 \
  template bool rnnkern::cuda::launch_forward_persistent<T>(                              \
      const rnnkern::persistent::RecurrenceParams<T, at::opmath_type<T>>&, cudaStream_t); \
  template bool rnnkern::cuda::launch_backward_persistent<T>(                             \
      const rnnkern::persistent::RecurrenceParams<T, at::opmath_type<T>>&, cudaStream_t);
