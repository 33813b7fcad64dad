// The sequential part of one direction of one layer, forward and backward, on the CPU.
//
// Everything outside the time loop (the input projection, the weight gradients, dX) is a few large
// GEMMs in the layer driver (csrc/layer/layer_driver.h). What is here must go step by step: per
// step, one (rows

// x H) @ (H x H) product and an elementwise activation or its derivative, fused into one pass where
// the kernels allow it. Two ways to do the product:
//   - registers: the row-blocked kernel of kernels_impl.h, W_hh kept hot in L1/L2, no per-step
//     dispatch at all. Small batches (the latency-bound case nn.RNN is worst at).
//   - BLAS: at::addmm_/at::mm_out per step, which wins once each step is a real matrix product: on
//     MKL's threads when the caller gave torch more than two, else in blocks of columns that the
//     caller and the helper thread share (split_rows.h: split_columns), so that no step ever waits
//     for a thread that is not scheduled.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../layer/elman_math.h"
#include "../layer/layer_args.h"
#include "kernels.h"
#include "split_rows.h"

namespace rnnkern::cpu {

// The largest batch for which the register-blocked kernel runs the recurrence; beyond it, BLAS per
// step. Measured (PERFORMANCE.md, version 5): the kernel wins or ties up to batch 32 at hidden 64
// to 512, and the two are mixed at 64.
constexpr int64_t kMaxRegisterBatch = 32;

inline bool use_register_kernel(int64_t batch) { return batch <= kMaxRegisterBatch; }
inline bool use_register_kernel(const SequenceLayout& layout) {
  return use_register_kernel(layout.batch);
}

// From this hidden size a step at batch 1 runs as dot products of W_hh's rows as stored (dot_step)
// rather than on the row-blocked kernel over a transposed copy of W_hh: each row of W_hh is then
// one sequential stream, where a row-blocked pass reads a few cache lines of every row of a tile
// per block of columns. Measured (PERFORMANCE.md, version 27), batch 1, 256 steps, forward, the two
// alternated in one process, row-blocked time over dot time, one thread and two: hidden 64
// 0.85x and 0.83x, 96 1.03x and 0.87x, 128 0.99x and 1.03x, 256 1.03x and 1.18x, 384 to 640 1.26x
// to 1.45x. (Below, the row-blocked kernel's W_hh^T fits in L1 or L2 and needs no horizontal sums.)
constexpr int64_t kMinDotHidden = 256;

inline bool dot_form(const SequenceLayout& layout, int64_t hidden) {
  return layout.batch == 1 && hidden >= kMinDotHidden;
}

// Units [0, n) of one step at batch 1: y (n) holds their projection on entry and
// act(y + w_rows @ h) on exit, where w_rows (n, H) are their rows of W_hh as stored and h (H) is
// the previous state: the cell kernel, with the projection as its bias (read before each unit is
// written).
template <typename T>
void dot_step(const Kernels<T>& k, Activation act, const T* h, int64_t H, const T* w_rows,
              int64_t n, T* y) {
  // (One row: the row strides are never read.)
  k.cell_forward(act, 1, h, H, H, w_rows, nullptr, 0, 0, nullptr, y, nullptr, n, y,
                 /*out_stride=*/0);
}

// Where one direction's columns sit in a 2-D (N, D*H) buffer.
template <typename T>
struct Columns {
  T* data;     // first element of this direction's first row
  int64_t ld;  // row stride (D*H)
  T* row(int64_t r) const { return data + r * ld; }
};

// A row-major matrix padded to a multiple of `width` columns, as rows_times_matrix reads it:
// src (rows x cols), or with `transpose`, src (cols x rows) transposed. The transpose goes in
// square tiles, so that the reads of one tile's columns share cache lines and pages: element by
// element, its reads were a stride of a whole row apart, and at hidden 1024 the copy of W_hh
// took a third of a forward call of 64 steps at batch 1 (PERFORMANCE.md, version 21).
template <typename T>
std::vector<T> padded_matrix(const T* src, int64_t rows, int64_t cols, int64_t width,
                             bool transpose) {
  const int64_t padded_cols = (cols + width - 1) / width * width;
  std::vector<T> m(static_cast<size_t>(rows * padded_cols), T(0));
  if (!transpose) {
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(m.data() + i * padded_cols, src + i * cols, cols * sizeof(T));
    return m;
  }
  constexpr int64_t kTile = 32;  // a tile: 32 runs of 32 elements read, 32 written
  for (int64_t i0 = 0; i0 < rows; i0 += kTile)
    for (int64_t j0 = 0; j0 < cols; j0 += kTile)
      for (int64_t j = j0; j < std::min(cols, j0 + kTile); ++j)
        for (int64_t i = i0; i < std::min(rows, i0 + kTile); ++i)
          m[i * padded_cols + j] = src[j * rows + i];
  return m;
}

inline int64_t padded(int64_t n, int64_t width) { return (n + width - 1) / width * width; }

// How a step's product is computed at BLAS batch: one GEMM (on MKL's threads, unless a
// SingleThreaded guard is alive), or blocks of columns shared with the helper thread.
enum class StepSplit { kWhole, kColumns };

// One direction of one layer's time loop: what forward_direction and backward_direction read.
template <typename T>
struct DirectionLoop {
  const Kernels<T>& kernels;
  const SequenceLayout& layout;
  bool reverse;  // visits the steps T-1..0 going forward (the second direction)
  Activation act;
  at::Tensor w_hh;  // (H, H)
  int64_t column;   // this direction's first column in the (N, D*H) tensors: d * H
  StepSplit split;  // at BLAS batch

  int64_t hidden() const { return w_hh.size(0); }
  // This direction's columns of a contiguous (N, D*H) tensor.
  template <typename U>
  Columns<U> columns(const at::Tensor& rows_2d) const {
    return {const_cast<U*>(rows_2d.data_ptr<T>()) + column, rows_2d.size(1)};
  }
};

// The forward steps of one direction at register batch, one at a time, in any order the caller
// keeps (visited_step's): W_hh as stored for the batch-1 dot form, else its transposed, padded copy
// for the row-blocked kernel, made once. Only reads itself, so that two threads may run steps of
// two sequences with one (stacked_forward_cpu.cpp), or two parts of one step (shared_steps.h).
template <typename T>
struct RegisterSteps {
  explicit RegisterSteps(const DirectionLoop<T>& p)
      : k(p.kernels),
        act(p.act),
        hidden(p.hidden()),
        w(p.w_hh.contiguous()),
        dot(dot_form(p.layout, hidden)),
        wt(dot ? std::vector<T>()
               : padded_matrix(w.template data_ptr<T>(), hidden, hidden, k.width,
                               /*transpose=*/true)),
        wt_stride(padded(hidden, k.width)) {}

  // Step t: y_t = act(y_t + h_{t-1} @ W_hh^T) in y_cols' rows of step t, which hold the
  // projection on entry; `state` (B, H) holds h_{t-1} on entry and h_t (for step t's rows) on exit.
  void step(const SequenceLayout& L, int64_t t, const Columns<T>& y_cols, T* state) const {
    T* y = y_cols.row(L.offset[t]);
    units(L.rows[t], state, 0, hidden, y, y_cols.ld);
    for (int64_t r = 0; r < L.rows[t]; ++r)
      std::memcpy(state + r * hidden, y + r * y_cols.ld, hidden * sizeof(T));
  }

  // Units [first, first + n) of one step of `rows` rows from h (rows, H), the previous state: dest
  // (rows of dest_stride) holds their projection on entry and act(dest + h @ W_hh^T) on exit.
  void units(int64_t rows, const T* h, int64_t first, int64_t n, T* dest,
             int64_t dest_stride) const {
    if (dot) {  // one row
      dot_step(k, act, h, hidden, w.template data_ptr<T>() + first * hidden, n, dest);
      return;
    }
    k.rows_times_matrix(Epilogue::kAddActivate, act, rows, h, hidden, hidden, wt.data() + first,
                        wt_stride, n, dest, dest_stride);
  }

 private:
  const Kernels<T>& k;
  const Activation act;
  const int64_t hidden;
  const at::Tensor w;  // (H, H) contiguous
  const bool dot;      // batch 1: no transposed copy
  const std::vector<T> wt;
  const int64_t wt_stride;
};

// Forward recurrence. `out` (N, D*H) holds the input projection (with both biases) on entry and h_t
// on exit; `state` (B, H, contiguous) holds h0 on entry and h_n on exit (a finished sequence keeps
// its last state, which is nn.RNN's h_n for packed input). before_step(t) runs before step t reads
// `out` (the projection pipeline waits there for step t's projection).
template <typename T, typename BeforeStep = void (*)(int64_t)>
void forward_direction(
    const DirectionLoop<T>& p, const at::Tensor& out, at::Tensor& state,
    const BeforeStep& before_step = [](int64_t) {}) {
  const Kernels<T>& k = p.kernels;
  const SequenceLayout& L = p.layout;
  const int64_t H = p.hidden();
  const Columns<T> y_cols = p.template columns<T>(out);
  T* S = state.data_ptr<T>();
  if (use_register_kernel(L)) {
    const RegisterSteps<T> steps(p);
    for (int64_t i = 0; i < L.steps; ++i) {
      const int64_t t = visited_step(L.steps, p.reverse, i, /*backward=*/false);
      before_step(t);
      steps.step(L, t, y_cols, S);
    }
    return;
  }
  const at::Tensor wt = p.w_hh.t();
  for (int64_t i = 0; i < L.steps; ++i) {
    const int64_t t = visited_step(L.steps, p.reverse, i, /*backward=*/false);
    const int64_t n = L.rows[t];
    before_step(t);
    const at::Tensor y = out.narrow(0, L.offset[t], n).narrow(1, p.column, H);
    const at::Tensor h = state.narrow(0, 0, n);
    T* yp = y_cols.row(L.offset[t]);
    if (p.split == StepSplit::kWhole) {
      y.addmm_(h, wt);
      k.activate_rows(p.act, n, H, yp, y_cols.ld);
    } else {
      // A block of columns: its projection, plus h @ W_hh^T's columns, activated. The task holds
      // views of the call's output and state: a helper still computing a block the caller took
      // over may read them after the call has returned (they stay allocated), and its result is
      // dropped.
      auto block = [kernels = &k, act = p.act, y, h, wt](int64_t first, int64_t columns,
                                                         std::vector<at::Tensor>& dest) {
        T* b = dest[0].data_ptr<T>();
        const T* projection = y.data_ptr<T>() + first;
        for (int64_t r = 0; r < h.size(0); ++r)
          std::memcpy(b + r * columns, projection + r * y.stride(0), columns * sizeof(T));
        dest[0].addmm_(h, wt.narrow(1, first, columns));
        kernels->activate_rows(act, h.size(0), columns, b, columns);
      };
      split_columns({y}, n * H, block);
    }
    for (int64_t r = 0; r < n; ++r) std::memcpy(S + r * H, yp + r * y_cols.ld, H * sizeof(T));
  }
}

// Backward recurrence (BPTT), visiting the steps in the reverse of processing order:
//   dz_t = (dh + dy_t) * act'(h_t),   dh <- dz_t @ W_hh
// dy, y and dz are contiguous (N, D*H). `dstate` (B, H) holds dL/dh_n on entry and dL/dh0 on exit;
// rows of sequences that are not running at a step keep their gradient untouched, exactly as their
// state was kept untouched going forward. after_step(t) runs once dz_t is written (the
// weight-gradient pipeline hands blocks on).
template <typename T, typename AfterStep = void (*)(int64_t)>
void backward_direction(
    const DirectionLoop<T>& p, const at::Tensor& dy, const at::Tensor& y, const at::Tensor& dz,
    at::Tensor& dstate, const AfterStep& after_step = [](int64_t) {}) {
  const Kernels<T>& k = p.kernels;
  const SequenceLayout& L = p.layout;
  const int64_t H = p.hidden();
  const Columns<const T> dy_cols = p.template columns<const T>(dy);
  const Columns<const T> y_cols = p.template columns<const T>(y);
  const Columns<T> dz_cols = p.template columns<T>(dz);
  T* dS = dstate.data_ptr<T>();
  const bool registers = use_register_kernel(L);
  const std::vector<T> w = registers ? padded_matrix(p.w_hh.contiguous().template data_ptr<T>(), H,
                                                     H, k.width, /*transpose=*/false)
                                     : std::vector<T>();
  const int64_t w_stride = padded(H, k.width);
  // W_hh's columns as contiguous rows, for the blocks of columns: MKL multiplied by a block of them
  // 1.15x faster than by the same block read in place with a row stride of H (64 x 1024 by
  // 1024 x 256, one thread: PERFORMANCE.md, version 19).
  const at::Tensor w_t =
      !registers && p.split == StepSplit::kColumns ? p.w_hh.t().contiguous() : at::Tensor();
  for (int64_t i = 0; i < L.steps; ++i) {
    const int64_t t = visited_step(L.steps, p.reverse, i, /*backward=*/true);
    const int64_t n = L.rows[t];
    const int64_t first = L.offset[t];
    k.activation_backward_rows(p.act, n, H, dS, H, dy_cols.row(first), dy_cols.ld,
                               y_cols.row(first), y_cols.ld, dz_cols.row(first), dz_cols.ld);
    after_step(t);
    if (registers) {
      k.rows_times_matrix(Epilogue::kStore, p.act, n, dz_cols.row(first), dz_cols.ld, H, w.data(),
                          w_stride, H, dS, H);
    } else if (p.split == StepSplit::kWhole) {
      at::Tensor dstate_rows = dstate.narrow(0, 0, n);
      at::mm_out(dstate_rows, dz.narrow(0, first, n).narrow(1, p.column, H), p.w_hh);
    } else {
      auto block = [dz_rows = dz.narrow(0, first, n).narrow(1, p.column, H), w_t](
                       int64_t first_column, int64_t columns, std::vector<at::Tensor>& dest) {
        at::mm_out(dest[0], dz_rows, w_t.narrow(0, first_column, columns).t());
      };
      split_columns({dstate.narrow(0, 0, n)}, n * H, block);
    }
  }
}

// The state each step t in [t_begin, t_end) of one direction started from (h0, or the previous
// step's output), as rows aligned with the rows of dZ (prev points at step t_begin's first row), so
// that dW_hh is a GEMM: dZ^T @ H_prev.
template <typename T>
void gather_previous_states(const SequenceLayout& L, bool reverse, Columns<const T> out,
                            const T* h0, int64_t H, int64_t t_begin, int64_t t_end, T* prev) {
  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t n = L.rows[t];
    const auto [before, carried] = previous_step(L, reverse, t);
    T* dst = prev + (L.offset[t] - L.offset[t_begin]) * H;
    for (int64_t r = 0; r < carried; ++r)
      std::memcpy(dst + r * H, out.row(L.offset[before] + r), H * sizeof(T));
    if (n > carried)
      std::memcpy(dst + carried * H, h0 + carried * H, (n - carried) * H * sizeof(T));
  }
}

}  // namespace rnnkern::cpu
