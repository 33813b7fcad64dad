// persistent_plan.h: the launch plan of the persistent CUDA kernels, in plain C++.
#include "persistent_plan.h"

#include <algorithm>
#include <stdexcept>

namespace rnnkern::persistent {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int max_threads(const DeviceLimits& device) {
  return static_cast<int>(std::min<int64_t>(kMaxThreads, device.max_threads_per_block));
}

// Threads for `outputs` outputs: whole warps; each output split over as many lanes as the block
// size allows (at most 32, and at least 4 k per lane), then as few outputs per lane group as
// possible. The caller has checked that outputs <= threads_limit * kMaxOutputsPerThread.
void size_block(const ProblemShape& s, LaunchPlan& p, int64_t outputs, int threads_limit) {
  int split = 1;
  while (split < 32 && outputs * split * 2 <= threads_limit && split * 2 * 4 <= s.hidden)
    split *= 2;
  p.split = split;
  p.threads =
      static_cast<int>(std::min<int64_t>(threads_limit, ceil_div(outputs * split, 32) * 32));
  p.outputs_per_thread = static_cast<int>(ceil_div(outputs, p.threads / split));
  // Rows of M start `split` elements apart modulo the 128 bytes of the 32 banks, so the lane groups
  // of a warp (each reading `split` consecutive elements of its own row) hit different banks.
  const int64_t period = std::max<int64_t>(1, 128 / s.weight_bytes);
  const int64_t shift = split % period;
  p.m_stride = s.hidden + ((shift - s.hidden % period) % period + period) % period;
}

int64_t shared_bytes(const ProblemShape& s, int64_t buffers, int64_t batch, int64_t rows,
                     int64_t m_stride) {
  return buffers * batch * s.hidden * s.state_bytes + rows * m_stride * s.weight_bytes;
}

// Sizes the block for its outputs, then its shared memory: M's rows padded against bank conflicts
// where that fits, unpadded otherwise (the callers have checked that unpadded fits).
void finish(const ProblemShape& s, const DeviceLimits& device, LaunchPlan& p, int threads_limit) {
  size_block(s, p, p.rows_per_block * p.batch_per_group, threads_limit);
  p.shared_bytes =
      shared_bytes(s, p.state_buffers, p.batch_per_group, p.rows_per_block, p.m_stride);
  if (p.shared_bytes > device.shared_bytes_per_block) {
    p.m_stride = s.hidden;
    p.shared_bytes =
        shared_bytes(s, p.state_buffers, p.batch_per_group, p.rows_per_block, s.hidden);
  }
}

// kBlock: all of M in each block; each block runs one direction for Bs batch entries.
bool plan_block(const ProblemShape& s, const DeviceLimits& device, LaunchPlan& p,
                const char** why_not) {
  const int64_t H = s.hidden, state_row = 2 * H * s.state_bytes;
  const int threads_limit = max_threads(device);
  const int64_t free_bytes = device.shared_bytes_per_block - H * H * s.weight_bytes;
  const int64_t most_batch =
      std::min<int64_t>({s.batch, free_bytes > 0 ? free_bytes / state_row : 0,
                         int64_t(threads_limit) * kMaxOutputsPerThread / H});
  if (most_batch < 1) {
    *why_not = "W_hh and one batch entry's state do not fit one block's shared memory and threads";
    return false;
  }
  // As many blocks as the device has multiprocessors, each with as little of the batch as that
  // allows: per-step latency falls with the work per block.
  const int64_t batch =
      std::clamp<int64_t>(ceil_div(s.batch * s.directions, device.sm_count), 1, most_batch);
  p.algorithm = Algorithm::kBlock;
  p.blocks_per_group = 1;
  p.rows_per_block = H;
  p.batch_per_group = batch;
  p.groups_per_direction = ceil_div(s.batch, batch);
  p.state_buffers = 2;
  finish(s, device, p, threads_limit);
  return true;
}

// kGrid: M's rows spread over one cooperative grid (one block per multiprocessor, all resident),
// each group one direction for the whole batch.
bool plan_grid(const ProblemShape& s, const DeviceLimits& device, LaunchPlan& p,
               const char** why_not) {
  if (!device.cooperative_launch) {
    *why_not = "the device does not support cooperative launches";
    return false;
  }
  const int64_t H = s.hidden, B = s.batch;
  const int threads_limit = max_threads(device);
  const int64_t most_blocks = device.sm_count / s.directions;
  if (most_blocks < 1) {
    *why_not = "fewer multiprocessors than directions";
    return false;
  }
  const int64_t rows = ceil_div(H, most_blocks);
  if (rows * B > int64_t(threads_limit) * kMaxOutputsPerThread) {
    *why_not = "the batch is too large for one grid's threads";
    return false;
  }
  if (shared_bytes(s, 1, B, rows, H) > device.shared_bytes_per_block) {
    *why_not = "a block's rows of W_hh and the batch's state do not fit its shared memory";
    return false;
  }
  p.algorithm = Algorithm::kGrid;
  p.blocks_per_group = ceil_div(H, rows);
  p.rows_per_block = rows;
  p.batch_per_group = B;
  p.groups_per_direction = 1;
  p.state_buffers = 1;
  finish(s, device, p, threads_limit);
  return true;
}

}  // namespace

std::vector<std::pair<std::string, int64_t>> plan_sizes(const LaunchPlan& p) {
  return {{"blocks", p.blocks()},
          {"blocks_per_group", p.blocks_per_group},
          {"rows_per_block", p.rows_per_block},
          {"batch_per_group", p.batch_per_group},
          {"groups_per_direction", p.groups_per_direction},
          {"threads", p.threads},
          {"outputs_per_thread", p.outputs_per_thread},
          {"split", p.split},
          {"m_stride", p.m_stride},
          {"state_buffers", p.state_buffers},
          {"shared_bytes", p.shared_bytes}};
}

const char* algorithm_name(Algorithm a) {
  switch (a) {
    case Algorithm::kBlock:
      return "block";
    case Algorithm::kGrid:
      return "grid";
    case Algorithm::kPerStep:
      return "per_step";
  }
  return "?";
}

bool parse_algorithm(const std::string& name, Algorithm* forced) {
  if (name.empty() || name == "auto") return false;
  for (Algorithm a : {Algorithm::kBlock, Algorithm::kGrid, Algorithm::kPerStep}) {
    if (name == algorithm_name(a)) {
      *forced = a;
      return true;
    }
  }
  throw std::invalid_argument("unknown persistent-kernel algorithm '" + name +
                              "': expected one of auto, block, grid, per_step");
}

LaunchPlan plan_launch(const ProblemShape& s, const DeviceLimits& device,
                       const Algorithm* requested, const char** why_not) {
  LaunchPlan p;
  p.hidden = s.hidden;
  p.batch = s.batch;
  p.directions = s.directions;
  const char* reason = "per-step requested";
  const char* block_reason = nullptr;
  const char* grid_reason = nullptr;
  const bool any = requested == nullptr;
  if (s.hidden < 1 || s.batch < 1) {
    reason = "empty batch or hidden size";
  } else if ((any || *requested == Algorithm::kBlock) && plan_block(s, device, p, &block_reason)) {
    return p;
  } else if ((any || *requested == Algorithm::kGrid) && plan_grid(s, device, p, &grid_reason)) {
    return p;
  } else if (grid_reason) {
    reason = grid_reason;
  } else if (block_reason) {
    reason = block_reason;
  }
  if (why_not) *why_not = reason;
  p.algorithm = Algorithm::kPerStep;
  return p;
}

}  // namespace rnnkern::persistent
