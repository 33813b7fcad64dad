// The launch plan of the persistent CUDA kernels: which algorithm a shape gets, and which block and
// thread own which outputs. Plain C++ (no CUDA), so it is built and unit-tested on machines without
// a GPU; the kernels (csrc/cuda/persistent_kernels.cuh) and the CPU emulation of them
// (csrc/testing/emulate_persistent.cpp) both take their indexing from here.
//
// Each output's dot product over k is split between `split` adjacent lanes of a warp (each sums
// every split-th k, then a butterfly of warp shuffles adds the parts), so that a step's latency is
// H / split multiply-adds rather than H.
//
// One persistent launch runs the whole recurrence of one layer, both directions:
//   forward   h_t[b, i]  = act(Y_t[b, i] + sum_k W_hh[i, k] h_{t-1}[b, k])
//   backward  dh[b, k]   = sum_j W_hh[j, k] dZ_t[b, j]
// Both are "out[b, r] = sum_k M[r, k] v[b, k]" with M = W_hh or W_hh^T, which each block keeps in
// shared memory for all steps. The blocks form groups; a group owns one direction and one slice of
// the batch, and each block of it owns a slice of M's rows:
//   kBlock  a group is one block holding all of M (H x H fits in one block's shared memory); the
//           state is exchanged through shared memory with one __syncthreads per step.
//   kGrid   a group is G blocks of a cooperative grid, each holding H / G rows of M; the state is
//           exchanged through global memory (L2) with one grid-wide barrier per step.
//   kPerStep  what fits neither: one GEMM and one elementwise kernel per step (csrc/cuda/).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../layer/elman_math.h"  // RNNKERN_HD

namespace rnnkern::persistent {

enum class Algorithm : int { kPerStep = 0, kBlock = 1, kGrid = 2 };

// The most outputs one thread owns (its carried states live in registers, so this is a
// compile-time bound) and the most threads of a block (the kernels' __launch_bounds__).
constexpr int kMaxOutputsPerThread = 8;
constexpr int kMaxThreads = 512;

// What the plan needs to know of the device (cudaDeviceProp).
struct DeviceLimits {
  int sm_count = 0;                    // multiProcessorCount
  int64_t shared_bytes_per_block = 0;  // sharedMemPerBlockOptin
  int max_threads_per_block = 0;       // maxThreadsPerBlock
  bool cooperative_launch = false;     // cooperativeLaunch
};

struct ProblemShape {
  int64_t hidden = 0;
  int64_t batch = 0;
  int64_t directions = 1;
  int64_t weight_bytes = 4;  // an element of M on chip: the compute dtype
  int64_t state_bytes = 4;   // an element of the carried state: float, or double for float64
};

struct LaunchPlan {
  Algorithm algorithm = Algorithm::kPerStep;
  int64_t hidden = 0, batch = 0, directions = 1;
  int64_t blocks_per_group = 1;  // G
  int64_t rows_per_block = 0;    // R: rows of M per block (the last block of a group may own fewer)
  int64_t batch_per_group = 0;   // Bs: batch entries per group (the last group may own fewer)
  int64_t groups_per_direction = 0;  // ceil(B / Bs)
  int threads = 0;                   // per block
  int split = 1;                     // lanes per output: a power of two, at most 32
  int outputs_per_thread = 0;        // per group of `split` lanes; <= kMaxOutputsPerThread
  int64_t m_stride = 0;              // elements between rows of M in shared memory (>= H, padded)
  int64_t state_buffers = 0;         // copies of the group's state in shared memory (2, or 1)
  int64_t shared_bytes = 0;          // dynamic shared memory per block
  bool forced = false;               // asked for (RNNKERN_CUDA_ALGORITHM), not chosen

  RNNKERN_HD int64_t blocks() const { return directions * groups_per_direction * blocks_per_group; }
};

// Where block `block` sits: its direction, batch range [b0, b0 + batch_count) and M-row range
// [r0, r0 + row_count).
struct BlockView {
  int64_t direction, b0, batch_count, r0, row_count;
};

RNNKERN_HD inline BlockView block_view(const LaunchPlan& p, int64_t block) {
  const int64_t per_direction = p.groups_per_direction * p.blocks_per_group;
  const int64_t d = block / per_direction, in_direction = block % per_direction;
  const int64_t slice = in_direction / p.blocks_per_group, g = in_direction % p.blocks_per_group;
  const int64_t b0 = slice * p.batch_per_group, r0 = g * p.rows_per_block;
  const int64_t b1 = b0 + p.batch_per_group < p.batch ? b0 + p.batch_per_group : p.batch;
  const int64_t r1 = r0 + p.rows_per_block < p.hidden ? r0 + p.rows_per_block : p.hidden;
  return {d, b0, b1 - b0, r0, r1 - r0};
}

// The m-th output owned by thread `thread` of a block (and by the other lanes of its group): local
// row r (of M's slice) and local batch entry b, or valid == false. Adjacent groups own adjacent
// rows: their reads of M (stored [r][k], rows m_stride apart) fall in different banks, and their
// reads of the state (the same k) broadcast.
struct Owned {
  bool valid;
  int64_t row, batch;  // local to the block
};
RNNKERN_HD inline Owned owned_output(const LaunchPlan& p, const BlockView& v, int thread, int m) {
  const int64_t o = thread / p.split + int64_t(p.threads / p.split) * m;
  if (o >= v.row_count * v.batch_count) return {false, 0, 0};
  return {true, o % v.row_count, o / v.row_count};
}

// The plan for a shape on a device. `requested` forces an algorithm (for experiments and tests;
// kPerStep always fits); if it does not fit, the result is kPerStep and `why_not` (when given) says
// why. Chosen by: kBlock if M fits one block, else kGrid if a cooperative grid can hold it with
// the whole batch's state, else kPerStep.
LaunchPlan plan_launch(const ProblemShape& shape, const DeviceLimits& device,
                       const Algorithm* requested = nullptr, const char** why_not = nullptr);

const char* algorithm_name(Algorithm a);

// The plan's sizes by name ("blocks", "threads", "split", ...), as Python reads a plan
// (rnnkern._C.cuda_launch_plan, and rnnkern._testing.plan_launch for any device).
std::vector<std::pair<std::string, int64_t>> plan_sizes(const LaunchPlan& p);

// "block", "grid" or "per_step"; "auto" or "" gives false (no algorithm forced). Anything else
// throws std::invalid_argument naming the choices.
bool parse_algorithm(const std::string& name, Algorithm* forced);

}  // namespace rnnkern::persistent
