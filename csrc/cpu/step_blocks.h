// Blocks of time steps shared between a layer call and the helper thread (helper_thread.h), so that
// the GEMM work around a small-batch recurrence runs on the second core while the recurrence runs
// on the first.
//
// Why: at small batch the recurrence is a chain of mat-vecs that keeps one core busy, while the
// GEMMs around it (the input projection before it, the weight gradients after it) would otherwise
// run serially with it and take about half of the time.
//
// The caller never waits for the helper. Each block is computed by whichever thread gets it first:
// the helper computes into a slot of its own (slots are reused once the caller has consumed their
// block), the caller into its own buffers. When the caller needs block j:
//   done by the helper                 it takes the result from the helper's slot;
//   not started, or still in progress  it takes the block over and computes it itself; the helper,
//                                      if it ever finishes its copy, finds the block taken and
//                                      drops it (it wrote only to its own slot).
// So with the helper preempted, slow to start or never started, the call costs what it costs on one
// thread; a block is always computed by the same code on the same rows, so the result is the same
// bits whichever thread computed it (both single-threaded: helper_thread.h, SingleThreaded).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "helper_thread.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace rnnkern::cpu {

// One turn of a short busy wait: a hint to the core that this thread is spinning.
inline void cpu_pause() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#endif
}

// One turn of a longer wait, yielding the core now and then.
inline void spin_pause(int64_t spins) {
  if (spins % 64 == 0)
    std::this_thread::yield();  // an oversubscribed machine: let the others run
  else
    cpu_pause();
}

// Whether this thread runs a helper part as the second thread of an OpenMP team
// (openmp_teammate.h): its waits then never sleep, so that the caller's closing barrier never
// waits for its wake-up (a few tens of microseconds on a virtual machine, which would read as a
// preempted worker). It holds the core anyway: torch's OpenMP worker spins when it has no work.
inline thread_local bool on_a_team = false;

inline int64_t block_count(int64_t steps, int64_t steps_per_block) {
  return (steps + steps_per_block - 1) / steps_per_block;
}

// The hand-off of `count` blocks through `slots` helper slots (block j uses slot j % slots). Shared
// by the caller and the helper's task through a shared_ptr: the task may outlive the call.
class SharedBlocks {
 public:
  SharedBlocks(int64_t count, int64_t slots)
      : count_(count),
        slots_(slots),
        state_(new std::atomic<int>[static_cast<size_t>(count)]),
        back_(count) {
    for (int64_t j = 0; j < count; ++j) state_[j].store(kFree, std::memory_order_relaxed);
  }

  int64_t count() const { return count_; }
  int64_t slot(int64_t j) const { return j % slots_; }

  // Caller: blocks [0, n) have their inputs ready, and the helper may start them.
  void ready(int64_t n) {
    ready_.store(n, std::memory_order_release);
    progressed();
  }

  // Caller: whether block j's result is in the helper's slot (true), or block j is now the
  // caller's to compute (false). Never waits.
  // `started`, when given, tells whether the helper had started a block taken over (and may still
  // be writing its copy).
  bool take(int64_t j, bool* started = nullptr) {
    int s = state_[j].load(std::memory_order_acquire);
    while (s != kDone)
      if (state_[j].compare_exchange_weak(s, kTaken, std::memory_order_acq_rel)) {
        if (started) *started = s == kClaimed;
        return false;
      }
    return true;
  }

  // Caller: whether the helper has finished block j (its result is in the slot); leaves the block
  // to the helper otherwise. Never waits.
  bool done(int64_t j) const { return state_[j].load(std::memory_order_acquire) == kDone; }

  // Caller: whether the helper is computing block j now.
  bool in_progress(int64_t j) const {
    return state_[j].load(std::memory_order_acquire) == kClaimed;
  }

  // Caller: block j's slot has been read; the helper may reuse it.
  void consumed(int64_t j) {
    consumed_.store(j + 1, std::memory_order_release);
    progressed();
  }

  // Caller: the call is over; the helper starts nothing more.
  void close() {
    closed_.store(true, std::memory_order_release);
    progressed();
  }

  // Helper: the next block to compute into its slot, or -1 when there is none left. Waits while
  // the block's inputs are not ready or its slot still holds a result the caller has not read:
  // spinning a little, then asleep until the caller moves on. A helper spinning for long would
  // take its share of a core busy with other programs from the caller, which on such a machine
  // shares two cores with it and them (PERFORMANCE.md, "Outside load").
  int64_t claim() {
    for (int64_t j = next_; j < count_; ++j) {  // past the blocks taken by the caller
      if (!wait_until_ready(j)) return -1;
      int s = kFree;
      if (state_[j].compare_exchange_strong(s, kClaimed, std::memory_order_acq_rel)) {
        next_ = j + 1;
        return j;
      }
    }
    return -1;
  }

  // Helper: as claim(), for a chain of blocks each of which starts from the one before (a
  // recurrence): the next block in order, or -1 once the caller has taken one over (the helper,
  // without that block's result, cannot go on) or the call is over.
  int64_t claim_in_order() {
    const int64_t j = next_;
    if (j >= count_ || !wait_until_ready(j)) return -1;
    int s = kFree;
    next_ = count_;  // unless the claim below succeeds: nothing after a block taken over
    if (!state_[j].compare_exchange_strong(s, kClaimed, std::memory_order_acq_rel)) return -1;
    next_ = j + 1;
    return j;
  }

  // The two-ended form, for work whose blocks are all ready at once, each with a slot of its own
  // (split_rows.h): the caller takes blocks from the first up, the helper from the last down.
  //
  // Caller: block j is now the caller's if nobody had started it (true). Never waits.
  bool claim_free(int64_t j) {
    int s = kFree;
    return state_[j].compare_exchange_strong(s, kTaken, std::memory_order_acq_rel);
  }
  // Helper: the last block nobody has started, or -1 once the two ends have met (or the call is
  // over). Never waits.
  int64_t claim_from_back() {
    const int64_t j = back_ - 1;
    if (j < 0 || closed_.load(std::memory_order_acquire)) return -1;
    int s = kFree;
    if (!state_[j].compare_exchange_strong(s, kClaimed, std::memory_order_acq_rel)) return -1;
    back_ = j;
    return j;
  }

  // Helper: block j's result is in its slot (true), unless the caller took the block over
  // meanwhile (false).
  bool finish(int64_t j) {
    int s = kClaimed;
    return state_[j].compare_exchange_strong(s, kDone, std::memory_order_acq_rel);
  }

 private:
  // Helper: waits until block j's inputs are ready and its slot free (true), or the call is over
  // (false).
  bool wait_until_ready(int64_t j) {
    for (int64_t spins = 0;;) {
      const int seen = progress_.load(std::memory_order_acquire);
      if (closed_.load(std::memory_order_acquire)) return false;
      if (j < ready_.load(std::memory_order_acquire) &&
          j < consumed_.load(std::memory_order_acquire) + slots_)
        return true;
      if (++spins < kSpinsBeforeSleep || on_a_team)
        spin_pause(spins);
      else
        progress_.wait(seen, std::memory_order_acquire);  // until progressed() changes it
    }
  }

  // Tells a sleeping helper that ready_, consumed_ or closed_ changed (no system call when no
  // thread sleeps on it).
  void progressed() {
    progress_.fetch_add(1, std::memory_order_release);
    progress_.notify_one();
  }

  // About 10-30 us of pause instructions: a short wait costs no wake-up, a long one no core.
  static constexpr int64_t kSpinsBeforeSleep = 2000;
  enum : int { kFree, kClaimed, kDone, kTaken };
  const int64_t count_, slots_;
  std::unique_ptr<std::atomic<int>[]> state_;
  std::atomic<int64_t> ready_{0};
  std::atomic<int64_t> consumed_{0};
  std::atomic<bool> closed_{false};
  std::atomic<int> progress_{0};

  int64_t next_ = 0;  // the helper's own
  int64_t back_;      // the helper's own: its last block from the back, count_ before the first
};

// Closes a hand-off shared with the helper (a SharedBlocks, or anything with close()) when the
// caller's scope ends, however it ends (an exception included), so that the helper never waits for
// a call that is over. The scope is a call that offers the helper work (CallWithHelper).
template <class Shared>
class CloseOnExit {
 public:
  explicit CloseOnExit(Shared& blocks) : blocks_(blocks) {}
  ~CloseOnExit() { blocks_.close(); }
  CloseOnExit(const CloseOnExit&) = delete;
  CloseOnExit& operator=(const CloseOnExit&) = delete;

 private:
  const CallWithHelper call_;
  Shared& blocks_;
};

}  // namespace rnnkern::cpu
