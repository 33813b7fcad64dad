// Blocks of time steps handed between the recurrence thread and a helper thread, so that the GEMM
// work around a small-batch recurrence runs on the second core while the recurrence runs on the
// first.
//
// Why: at small batch the recurrence is a chain of mat-vecs that keeps one core busy, while the
// GEMMs around it (the input projection before it, the weight gradients after it) would otherwise
// run serially with it and take about half of the time.
//
// Two directions of hand-off:
//   ProjectedBlocks  the helper computes blocks AHEAD of the recurrence (forward: input
//   projection); FinishedBlocks   the helper consumes blocks the recurrence has FINISHED (backward:
//   dW GEMMs).
// Both are deadlock-free whatever the thread pool does, including running the two "threads" one
// after the other on one thread: nobody ever waits for work that is not being done concurrently. A
// failure on one side is flagged so the other stops waiting and the exception reaches the caller.
// Blocks are always processed in the same order, whoever runs them, so results do not depend on the
// number of threads.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace rnnkern::cpu {

inline void spin_pause(int64_t spins) {
  if (spins % 1024 == 0) {
    std::this_thread::yield();  // an oversubscribed machine: let the other side run
  } else {
#if defined(__x86_64__) || defined(_M_X64)
    _mm_pause();
#endif
  }
}

inline int64_t block_count(int64_t steps, int64_t steps_per_block) {
  return (steps + steps_per_block - 1) / steps_per_block;
}

// The helper computes blocks ahead; the recurrence waits for the block it needs. The recurrence
// never waits for an unclaimed block: it claims and computes it itself (so alone it does all the
// work in order); it only spins on a block the helper has claimed and is computing.
class ProjectedBlocks {
 public:
  explicit ProjectedBlocks(int64_t count)
      : count_(count), done_(new std::atomic<bool>[static_cast<size_t>(count)]) {
    for (int64_t i = 0; i < count_; ++i) done_[i].store(false, std::memory_order_relaxed);
  }

  template <typename Compute>
  void help(const Compute& compute) {
    try {
      for (int64_t j = claim(); j < count_; j = claim()) finish(j, compute);
    } catch (...) {
      failed_.store(true, std::memory_order_release);
      throw;
    }
  }

  template <typename Compute>
  void wait_for(int64_t j, const Compute& compute) {
    int64_t spins = 0;
    while (!done_[j].load(std::memory_order_acquire)) {
      int64_t next = next_.load(std::memory_order_relaxed);
      if (next <= j) {
        if (next_.compare_exchange_weak(next, next + 1, std::memory_order_acq_rel))
          finish(next, compute);
        continue;
      }
      if (failed_.load(std::memory_order_acquire))
        throw std::runtime_error("rnnkern: the input projection failed on the helper thread");
      spin_pause(++spins);
    }
  }

 private:
  int64_t claim() { return next_.fetch_add(1, std::memory_order_acq_rel); }

  template <typename Compute>
  void finish(int64_t j, const Compute& compute) {
    compute(j);
    done_[j].store(true, std::memory_order_release);
  }

  const int64_t count_;
  std::unique_ptr<std::atomic<bool>[]> done_;
  std::atomic<int64_t> next_{0};
  std::atomic<bool> failed_{false};
};

// The recurrence finishes blocks in order; the helper consumes them in order behind it. The helper
// only commits to waiting once the recurrence has started (so it is running on another thread). It
// gives the recurrence a moment to start (the two are launched together), and if it has not, the
// helper declines and the recurrence consumes every block itself after its loop.
class FinishedBlocks {
 public:
  explicit FinishedBlocks(int64_t count) : count_(count) {}

  // Recurrence side.
  void start() { started_.store(true, std::memory_order_release); }
  void finished(int64_t j) { finished_.store(j + 1, std::memory_order_release); }
  void fail() { producer_failed_.store(true, std::memory_order_release); }

  // After the recurrence: returns once every block has been consumed, by the helper or here.
  template <typename Consume>
  void finish(const Consume& consume) {
    int state = kIdle;
    if (helper_.compare_exchange_strong(state, kRecurrenceConsumes, std::memory_order_acq_rel) ||
        state == kDeclined) {
      for (int64_t j = 0; j < count_; ++j) consume(j);
      return;
    }
    int64_t spins = 0;
    while (helper_.load(std::memory_order_acquire) != kDone) spin_pause(++spins);
    if (helper_failed_.load(std::memory_order_acquire))
      throw std::runtime_error("rnnkern: the weight gradients failed on the helper thread");
  }

  // Helper side.
  template <typename Consume>
  void help(const Consume& consume) {
    int state = kIdle;
    if (!wait_for_start()) {
      helper_.compare_exchange_strong(state, kDeclined, std::memory_order_acq_rel);
      return;
    }
    if (!helper_.compare_exchange_strong(state, kHelping, std::memory_order_acq_rel)) return;
    try {
      for (int64_t j = 0; j < count_; ++j) {
        int64_t spins = 0;
        while (finished_.load(std::memory_order_acquire) <= j) {
          if (producer_failed_.load(std::memory_order_acquire)) {
            helper_.store(kDone, std::memory_order_release);
            return;
          }
          spin_pause(++spins);
        }
        consume(j);
      }
    } catch (...) {
      helper_failed_.store(true, std::memory_order_release);
      helper_.store(kDone, std::memory_order_release);
      throw;
    }
    helper_.store(kDone, std::memory_order_release);
  }

 private:
  // Whether the recurrence has started within a few milliseconds: it is then running elsewhere.
  bool wait_for_start() const {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(5);
    int64_t spins = 0;
    while (!started_.load(std::memory_order_acquire)) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      spin_pause(++spins);
    }
    return true;
  }

  enum : int { kIdle, kHelping, kDone, kDeclined, kRecurrenceConsumes };
  const int64_t count_;
  std::atomic<bool> started_{false};
  std::atomic<int64_t> finished_{0};
  std::atomic<int> helper_{kIdle};
  std::atomic<bool> producer_failed_{false};
  std::atomic<bool> helper_failed_{false};
};

}  // namespace rnnkern::cpu
