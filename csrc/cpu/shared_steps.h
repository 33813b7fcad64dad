// The forward recurrence of one direction at small batch and large hidden size with W_hh's columns
// split between the caller and the helper thread (helper_thread.h), step by step.
//
// Why: at batch 1 a step is a mat-vec that reads all of W_hh (4 MB at hidden 1024). Once W_hh no
// longer fits in one core's L2, one core's bandwidth to L3 bounds the step; nn.RNN's sgemv streams
// W_hh on both cores and was 2.7x faster on two threads at hidden 1024 (PERFORMANCE.md, version
// 21). Here each step's units are two parts, columns [0, split) and [split, H) of h_t: the caller
// computes the first, the helper the second, and each needs the whole of h_{t-1}, so they meet
// once a step.
//
// The caller never waits long for the helper. The helper computes its part of step t into a buffer
// of its own and publishes it; the caller, once its own part is done, copies the helper's, or
// takes that step's part back and computes it itself: at once when the helper is not computing
// step t (not yet awake, or behind), else when the helper has not published it within twice the
// caller's fastest part, or stops running meanwhile (preempted on a busy machine). The helper then
// skips to the next step. After kMaxTakeBacks steps taken back from a helper computing them the
// caller stops waiting for it in this call. So a late or preempted helper costs at most a few
// parts of a call. Either thread computes a part with the same kernel call on the same operands,
// and one thread computes both parts in the same two calls, so the bits are the same on one
// thread or two.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "../layer/layer_args.h"
#include "helper_thread.h"
#include "openmp_teammate.h"
#include "recurrence_cpu.h"
#include "step_blocks.h"

namespace rnnkern::cpu {

// Steps whose helper part a caller took back, since the process started (for the tests).
inline std::atomic<int64_t> parts_taken_back{0};

// The least hidden size whose steps are split: where W_hh^T (2.25 MB of float at 768) no longer
// fits in a 2 MB L2. Measured (PERFORMANCE.md, version 22), batch 1, forward, recurrence alone: at
// 512 a half step took 9 us against 12 for the whole (no gain), at 768 the call went from 57-61 to
// 21 us a step.
constexpr int64_t kMinSharedHidden = 768;

// Whether a layer's forward recurrence shares its steps' columns with the helper: one direction at
// register batch, every sequence running every step (not packed sequences of different lengths),
// and a hidden size whose steps take long enough that meeting once a step costs little. Depends on
// the shape alone, never on the thread count: the bits are the same on one thread or two.
inline bool shares_steps(const LayerShape& s) {
  const SequenceLayout& L = s.layout;
  return s.directions == 1 && use_register_kernel(L) && s.hidden >= kMinSharedHidden &&
         L.steps > 0 && L.batch > 0 && L.rows.back() == L.batch;
}

// One call's shared recurrence, shared with the helper's task (which may outlive the call): it
// owns everything the helper reads or writes except the call's output, of which it holds a handle.
template <typename T>
struct SharedSteps {
  // The helper's part starts at `split`, a multiple of 16 units (64 bytes of float) near H / 2.
  SharedSteps(const DirectionLoop<T>& p, const at::Tensor& out_, const at::Tensor& h0)
      : steps(p.layout.steps),
        rows(p.layout.batch),
        H(p.hidden()),
        split(std::min(H - 1, (H / 2 + 15) / 16 * 16)),
        register_steps(p),
        out(out_),
        y(p.template columns<T>(out_)),
        offset(p.layout.offset) {
    for (auto& s : state) s.resize(static_cast<size_t>(rows * H));
    for (auto& b : part) b.resize(static_cast<size_t>(rows * (H - split)));
    // h_{-1} = h0, in the buffer step 0 reads.
    std::memcpy(state[1].data(), h0.contiguous().template data_ptr<T>(), rows * H * sizeof(T));
  }

  // Helper: its part of every step, until the call ends or the caller stops waiting for it. A step
  // whose part the caller took back is skipped.
  void help() {
    helper_clock.publish();
    const int64_t n = H - split;
    for (int64_t t = 0; t < steps; ++t) {
      for (int64_t spins = 1; caller_done.load(std::memory_order_acquire) < t - 1; ++spins) {
        if (closed.load(std::memory_order_acquire)) return;
        spin_pause(spins);
      }
      if (stopped.load(std::memory_order_acquire)) return;
      helper_on.store(t, std::memory_order_release);
      // Step t - 1 is resolved (either way); step t too if the caller took it back already.
      int64_t seen = resolved.load(std::memory_order_acquire);
      if (seen >= 2 * t) continue;
      T* dest = part[t % 2].data();
      for (int64_t r = 0; r < rows; ++r)  // the projection of its units
        std::memcpy(dest + r * n, y.row(offset[t] + r) + split, n * sizeof(T));
      helper_part(t, dest, n);
      // Fails when the caller took step t back meanwhile (the buffer is then never read). A step
      // taken back may still be computed here from the caller's buffers of later steps (state,
      // the output's row): its result is dropped.
      resolved.compare_exchange_strong(seen, 2 * t, std::memory_order_acq_rel);
    }
  }

  // Caller: every step, with the helper's parts where it publishes them in time (helper_offered:
  // a second thread may run help()), then h_n into `h_n` (B, H). After kMaxTakeBacks steps taken
  // back from a helper that was computing them, it stops waiting for the helper for the rest of the
  // call.
  void run(bool helper_offered, at::Tensor& h_n) {
    using Clock = std::chrono::steady_clock;
    bool helper = helper_offered;
    int64_t taken_back = 0;
    auto fastest = Clock::duration::max();  // the caller's fastest part in this call
    const int64_t n = H - split;
    for (int64_t t = 0; t < steps; ++t) {
      T* yt = y.row(offset[t]);
      const auto start = Clock::now();
      units(t, 0, split, yt, y.ld);
      fastest = std::min<Clock::duration>(fastest, Clock::now() - start);
      const Outcome outcome =
          helper ? helper_part_of(t, 2 * fastest + kSlack) : Outcome::kNotStarted;
      if (outcome == Outcome::kPublished) {
        const T* src = part[t % 2].data();
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(yt + r * y.ld + split, src + r * n, n * sizeof(T));
      } else {
        helper_part(t, yt + split, y.ld);
        if (outcome == Outcome::kLate && ++taken_back == kMaxTakeBacks) {
          helper = false;
          stopped.store(true, std::memory_order_release);
        }
      }
      T* next = state[t % 2].data();
      for (int64_t r = 0; r < rows; ++r) std::memcpy(next + r * H, yt + r * y.ld, H * sizeof(T));
      caller_done.store(t, std::memory_order_release);
    }
    h_n.copy_(at::from_blob(state[(steps - 1) % 2].data(), {rows, H}, h_n.options()));
  }

  // Caller: the call is over; a helper still waiting for a step stops.
  void close() { closed.store(true, std::memory_order_release); }

 private:
  // The state step t starts from: h0 for step 0, else h_{t-1}.
  const T* previous(int64_t t) const { return state[(t + 1) % 2].data(); }

  // The helper's part of step t into dest (rows of dest_stride), which holds its projection: by
  // the helper into its own buffer, or by the caller into the output, with the same kernel call.
  void helper_part(int64_t t, T* dest, int64_t dest_stride) const {
    units(t, split, H - split, dest, dest_stride);
  }

  // Units [first, first + n) of step t: dest (rows of dest_stride) holds their projection on
  // entry and h_t on exit. At batch 1 as dot products of W_hh's rows (recurrence_cpu.h, dot_form).
  void units(int64_t t, int64_t first, int64_t n, T* dest, int64_t dest_stride) const {
    register_steps.units(rows, previous(t), first, n, dest, dest_stride);
  }

  // What became of the helper's part of a step.
  enum class Outcome {
    kPublished,   // in part[t % 2]
    kNotStarted,  // taken back at once: the helper was not computing it (asleep, or behind)
    kLate,        // taken back from a helper computing it, after the wait
  };

  // Caller: the helper's part of step t, waited for while the helper computes it, for at most
  // `budget` (twice the caller's fastest part, and kSlack), while it runs (RunningWatch: a
  // preempted helper is given up on within one check). A helper that was not on step t
  // is not waited for at all: it may be asleep (0.7-0.9 ms to wake: helper_thread.cpp), and it
  // joins at a later step.
  Outcome helper_part_of(int64_t t, std::chrono::nanoseconds budget) {
    using Clock = std::chrono::steady_clock;
    const auto start = Clock::now();
    RunningWatch helper(helper_clock);
    bool give_up = helper_on.load(std::memory_order_acquire) != t;
    for (int64_t spins = 1;; ++spins) {
      int64_t seen = resolved.load(std::memory_order_acquire);
      if (seen == 2 * t) return Outcome::kPublished;
      if (give_up) {
        if (!resolved.compare_exchange_strong(seen, 2 * t + 1, std::memory_order_acq_rel))
          return Outcome::kPublished;  // published meanwhile: seen == 2 t
        parts_taken_back.fetch_add(1, std::memory_order_relaxed);
        return spins == 1 ? Outcome::kNotStarted : Outcome::kLate;
      }
      cpu_pause();
      if (spins % 16 != 0) continue;
      const auto now = Clock::now();
      give_up = now - start > budget || !helper.running(now);
    }
  }

  // What a step's wait allows beyond twice the caller's own part: the helper's reaction to the
  // previous step and its copy of the projection, which the caller does not have.
  static constexpr std::chrono::nanoseconds kSlack = std::chrono::microseconds(5);
  // Steps taken back after which the caller stops waiting for the helper in a call.
  static constexpr int64_t kMaxTakeBacks = 3;

  const int64_t steps, rows, H, split;
  const RegisterSteps<T> register_steps;  // W_hh in the kernel's form, and its kernel
  const at::Tensor out;  // the call's output: its handle keeps y's memory alive for the helper
  const Columns<T> y;    // the output's rows: the projection on entry, h_t on exit
  const std::vector<int64_t> offset;
  std::vector<T> state[2];  // h_t for even and odd t (B, H); state[1] holds h0 first
  std::vector<T> part[2];   // the helper's part of even and odd steps (B, H - split)

  std::atomic<int64_t> caller_done{-1};  // the latest step whose state is complete
  // The latest step t whose helper part is settled: 2 t when it is in part[t % 2], 2 t + 1 when the
  // caller took it back (so -1 before the first step).
  std::atomic<int64_t> resolved{-1};
  std::atomic<int64_t> helper_on{-1};  // the step the helper is computing (or skipping)
  HelperClock helper_clock;            // of the thread running help()
  std::atomic<bool> stopped{false};    // the caller no longer waits for the helper in this call
  std::atomic<bool> closed{false};
};

// The forward recurrence of a layer that shares_steps(): `out` (N, H) holds the projection on entry
// and h_t on exit, `state` (B, H) h0 on entry and h_n on exit (as forward_direction).
template <typename T>
void forward_shared(const DirectionLoop<T>& p, const at::Tensor& out, at::Tensor& state) {
  const CallWithHelper call;  // first: the helper spins, not sleeps, while W_hh is transposed
  auto shared = std::make_shared<SharedSteps<T>>(p, out, state);
  beside_helper([shared] { shared->help(); },
                [&](bool second_thread) {
                  const CloseOnExit close(*shared);
                  shared->run(second_thread, state);
                });
}

}  // namespace rnnkern::cpu
