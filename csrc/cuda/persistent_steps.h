// What one thread of a persistent kernel does between two barriers, written once for the CUDA
// kernels (csrc/cuda/persistent_kernels.cuh) and for their CPU emulation (emulate.cpp), which runs
// these same functions block by block and thread by thread so that the indexing, the
// packed-sequence handling and the state carry are tested on machines without a GPU.
//
// Each thread owns up to kMaxOutputsPerThread outputs (persistent_plan.h: owned_output) for the
// whole sequence and carries their state in registers (`carry`, in the state type S). Per step it
// reads the group's previous state from shared memory (`in`, [local batch][H]) and writes its new
// state where the next step will read it (`out`: the other shared buffer, or the group's exchange
// buffer in global memory for kGrid). Rows past step t's batch size (packed sequences) keep their
// state.
#pragma once

#include <cmath>
#include <cstdint>

#include "../layer/elman_math.h"
#include "persistent_plan.h"

namespace rnnkern::persistent {

// Everything a persistent launch reads and writes. T is the tensor dtype, S the state and
// accumulation type (float, or double for float64).
template <typename T, typename S>
struct RecurrenceParams {
  LaunchPlan plan;
  const T* w_hh[2] = {nullptr, nullptr};  // per direction, (H, H) contiguous
  // (N, D * H), row stride ld. Forward: holds Y = X W_ih^T + b on entry and h on return.
  // Backward: read for act'(z), which is written in terms of h.
  T* y = nullptr;
  int64_t ld = 0;
  const T* dy = nullptr;            // backward: grad of y, (N, D * H)
  T* dz = nullptr;                  // backward: dL/dz, (N, D * H)
  const T* state_in = nullptr;      // (D, B, H): h0 (forward) or grad of h_n (backward)
  T* state_out = nullptr;           // (D, B, H): h_n (forward) or grad of h0 (backward)
  S* exchange = nullptr;            // kGrid: 2 x (D, B, H) in global memory
  const int64_t* rows = nullptr;    // rows[t] of a packed sequence; nullptr when dense (B each)
  const int64_t* offset = nullptr;  // offset[t]; nullptr when dense (t * B)
  int64_t steps = 0;
  bool relu = false;
  bool barriers_only = false;  // skip the mat-vec: the floor a persistent kernel can reach
};

template <typename T, typename S>
RNNKERN_HD inline int64_t step_rows(const RecurrenceParams<T, S>& p, int64_t t) {
  return p.rows ? p.rows[t] : p.plan.batch;
}
template <typename T, typename S>
RNNKERN_HD inline int64_t step_offset(const RecurrenceParams<T, S>& p, int64_t t) {
  return p.offset ? p.offset[t] : t * p.plan.batch;
}

// A load of the state another block wrote during this launch: through L2, never a stale L1 line.
template <typename S>
RNNKERN_HD inline S load_shared_state(const S* p) {
#if defined(__CUDA_ARCH__)
  return __ldcg(p);
#else
  return *p;
#endif
}

// One block's shared memory: the group's state (state_buffers copies of [Bs][H], type S), then its
// rows of M, stored [r][k] with rows m_stride elements apart.
template <typename T, typename S>
struct BlockMemory {
  S* state[2];
  T* m;
  // state[i & 1], without indexing an array by a run-time value (which would put it in local
  // memory).
  RNNKERN_HD S* buffer(int64_t i) const { return (i & 1) ? state[1] : state[0]; }
};
template <typename T, typename S>
RNNKERN_HD inline BlockMemory<T, S> carve_shared(const LaunchPlan& p, void* base) {
  S* state = static_cast<S*>(base);
  const int64_t one = p.batch_per_group * p.hidden;
  return {{state, p.state_buffers > 1 ? state + one : state},
          reinterpret_cast<T*>(state + p.state_buffers * one)};
}

// The group's slice of the exchange buffer `which` (kGrid).
template <typename T, typename S>
RNNKERN_HD inline S* exchange_slice(const RecurrenceParams<T, S>& p, const BlockView& v,
                                    int which) {
  const LaunchPlan& q = p.plan;
  return p.exchange + which * q.directions * q.batch * q.hidden +
         (v.direction * q.batch + v.b0) * q.hidden;
}

// Loads this block's rows of M: M = W_hh (forward) or W_hh^T (backward, `transpose`).
template <typename T>
RNNKERN_HD inline void load_m_slice(const LaunchPlan& p, const BlockView& v, int thread, const T* w,
                                    bool transpose, T* m) {
  const int64_t H = p.hidden;
  for (int64_t e = thread; e < H * v.row_count; e += p.threads) {
    const int64_t r = e / H, k = e % H, row = v.r0 + r;
    m[r * p.m_stride + k] = transpose ? w[k * H + row] : w[row * H + k];
  }
}

// Copies the group's state, written by all its blocks into global memory, into shared memory.
// Four loads are issued before the first store, so a thread waits for one L2 round trip per four
// elements rather than one per element.
template <typename S>
RNNKERN_HD inline void stage_state(const LaunchPlan& p, const BlockView& v, int thread,
                                   const S* group_state, S* shared_state) {
  constexpr int kInFlight = 4;
  const int64_t n = v.batch_count * p.hidden;
  for (int64_t first = thread; first < n; first += int64_t(kInFlight) * p.threads) {
    S loaded[kInFlight];
    RNNKERN_UNROLL
    for (int j = 0; j < kInFlight; ++j) {
      const int64_t e = first + int64_t(j) * p.threads;
      loaded[j] = e < n ? load_shared_state(group_state + e) : S(0);
    }
    RNNKERN_UNROLL
    for (int j = 0; j < kInFlight; ++j) {
      const int64_t e = first + int64_t(j) * p.threads;
      if (e < n) shared_state[e] = loaded[j];
    }
  }
}

// ---- the mat-vec of a step, in two halves around the sum over a lane group ----------------------

// partial[m] = sum over k = lane, lane + split, ... of M[r, k] v_b[k] for the m-th owned output
// (r, b) if its sequence runs at this step (b < rows), else 0. Every lane of a group computes its
// part of the same outputs; the parts are then added by group_sum (a butterfly of warp shuffles on
// the GPU, emulate.cpp's copy of it on the CPU), after which every lane holds the whole sum.
template <typename T, typename S>
RNNKERN_HD inline void partial_products(const RecurrenceParams<T, S>& p, const BlockView& v,
                                        int thread, int64_t rows, const T* m_slice, const S* in,
                                        S* partial) {
  const int H = int(p.plan.hidden), split = p.plan.split, lane = thread % split;
  const int stride = int(p.plan.m_stride);
  RNNKERN_UNROLL
  for (int m = 0; m < kMaxOutputsPerThread; ++m) {
    if (m >= p.plan.outputs_per_thread) break;  // the same for every thread of the block
    const Owned o = owned_output(p.plan, v, thread, m);
    S acc = S(0);
    if (o.valid && v.b0 + o.batch < rows && !p.barriers_only) {
      const T* row = m_slice + o.row * stride;
      const S* state = in + o.batch * H;
      for (int k = lane; k < H; k += split) acc += static_cast<S>(row[k]) * state[k];
    }
    partial[m] = acc;
  }
}

// Whether this thread writes the results of its group (all lanes hold the same values).
RNNKERN_HD inline bool group_leader(const LaunchPlan& p, int thread) {
  return thread % p.split == 0;
}

// Where an owned output's element is in a (D, B, H) state tensor (h0, h_n and their gradients).
RNNKERN_HD inline int64_t state_index(const LaunchPlan& p, const BlockView& v, const Owned& o) {
  return (v.direction * p.batch + v.b0 + o.batch) * p.hidden + v.r0 + o.row;
}

// Before the first step: carry = the initial state of the owned outputs (h0 forward, the gradient
// of h_n backward).
template <typename T, typename S>
RNNKERN_HD inline void load_initial_state(const RecurrenceParams<T, S>& p, const BlockView& v,
                                          int thread, S* carry) {
  RNNKERN_UNROLL
  for (int m = 0; m < kMaxOutputsPerThread; ++m) {
    const Owned o = owned_output(p.plan, v, thread, m);
    if (!o.valid) break;
    carry[m] = static_cast<S>(p.state_in[state_index(p.plan, v, o)]);
  }
}

// ---- forward ------------------------------------------------------------------------------------

// Before the first step: carry = h0, also written to `out` for the first mat-vec.
template <typename T, typename S>
RNNKERN_HD inline void forward_start(const RecurrenceParams<T, S>& p, const BlockView& v,
                                     int thread, S* out, S* carry) {
  load_initial_state(p, v, thread, carry);
  if (!group_leader(p.plan, thread)) return;
  RNNKERN_UNROLL
  for (int m = 0; m < kMaxOutputsPerThread; ++m) {
    const Owned o = owned_output(p.plan, v, thread, m);
    if (!o.valid) break;
    out[o.batch * p.plan.hidden + v.r0 + o.row] = carry[m];
  }
}

// Step t, after the mat-vec: h = act(Y_t + sum) for the owned outputs whose sequence runs at t,
// written to y and, with the others' unchanged state, to `out`.
template <typename T, typename S>
RNNKERN_HD inline void forward_apply(const RecurrenceParams<T, S>& p, const BlockView& v,
                                     int thread, int64_t t, const S* sum, S* out, S* carry) {
  const int64_t H = p.plan.hidden, rows = step_rows(p, t);
  T* y_step = p.y + step_offset(p, t) * p.ld + v.direction * H;
  const bool leader = group_leader(p.plan, thread);
  RNNKERN_UNROLL
  for (int m = 0; m < kMaxOutputsPerThread; ++m) {
    const Owned o = owned_output(p.plan, v, thread, m);
    if (!o.valid) break;
    const int64_t b = v.b0 + o.batch, i = v.r0 + o.row;
    if (b < rows) {
      T* y = y_step + b * p.ld + i;
      carry[m] = activate(static_cast<S>(*y) + sum[m], p.relu);
      if (leader) *y = static_cast<T>(carry[m]);
    }
    if (leader) out[o.batch * H + i] = carry[m];
  }
}

// ---- backward -----------------------------------------------------------------------------------
// Per step t (in backward order): dZ_t = (dh + dY_t) * act'(h_t), then dh = W_hh^T dZ_t. The group
// that owns column k of dh also owns column k of dZ, so dZ for the next step is formed right after
// the mat-vec, and one barrier per step suffices.

// dZ_t for the owned outputs, written to p.dz (for the weight gradients) and to `out` (for the
// mat-vec of step t); zero for rows that do not run at t.
template <typename T, typename S>
RNNKERN_HD inline void backward_dz(const RecurrenceParams<T, S>& p, const BlockView& v, int thread,
                                   int64_t t, S* out, const S* carry) {
  if (!group_leader(p.plan, thread)) return;
  const int64_t H = p.plan.hidden, rows = step_rows(p, t);
  const int64_t first = step_offset(p, t) * p.ld + v.direction * H;
  RNNKERN_UNROLL
  for (int m = 0; m < kMaxOutputsPerThread; ++m) {
    const Owned o = owned_output(p.plan, v, thread, m);
    if (!o.valid) break;
    const int64_t b = v.b0 + o.batch, k = v.r0 + o.row;
    S dz = S(0);
    if (b < rows) {
      const int64_t e = first + b * p.ld + k;
      dz = activation_backward(carry[m] + static_cast<S>(p.dy[e]), static_cast<S>(p.y[e]), p.relu);
      p.dz[e] = static_cast<T>(dz);
    }
    out[o.batch * H + k] = dz;
  }
}

// After the mat-vec of step t: dh = sum for the owned outputs whose sequence runs at t; the others
// keep dh.
template <typename T, typename S>
RNNKERN_HD inline void backward_apply(const RecurrenceParams<T, S>& p, const BlockView& v,
                                      int thread, int64_t t, const S* sum, S* carry) {
  const int64_t rows = step_rows(p, t);
  RNNKERN_UNROLL
  for (int m = 0; m < kMaxOutputsPerThread; ++m) {
    const Owned o = owned_output(p.plan, v, thread, m);
    if (!o.valid) break;
    if (v.b0 + o.batch < rows && !p.barriers_only) carry[m] = sum[m];
  }
}

// After the last step: the carried state is h_n (forward) or the gradient of h0 (backward).
template <typename T, typename S>
RNNKERN_HD inline void write_final_state(const RecurrenceParams<T, S>& p, const BlockView& v,
                                         int thread, const S* carry) {
  if (!group_leader(p.plan, thread)) return;
  RNNKERN_UNROLL
  for (int m = 0; m < kMaxOutputsPerThread; ++m) {
    const Owned o = owned_output(p.plan, v, thread, m);
    if (!o.valid) break;
    p.state_out[state_index(p.plan, v, o)] = static_cast<T>(carry[m]);
  }
}

}  // namespace rnnkern::persistent
