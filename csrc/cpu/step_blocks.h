// Hands out blocks of time steps to two threads: a helper computes the input projection of blocks
// ahead of the recurrence while the recurrence thread consumes them in order.
//
// Why: at small batch the recurrence is a chain of mat-vecs that keeps one core busy, while the
// input projection (one GEMM over all steps) would otherwise run before it and take a third of the
// forward. Overlapping the two uses the otherwise idle second core.
//
// Deadlock-free whatever the thread pool does: the consumer never waits for a block nobody has
// claimed. If the block it needs is unclaimed it claims and computes it itself, so with a single
// thread (or a helper that starts late) it simply does all the work in order. It only spins on a
// block that the helper has claimed and is computing. A helper that fails marks the failure, and
// the consumer then stops waiting and raises.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace rnnkern::cpu {

class StepBlocks {
 public:
  StepBlocks(int64_t steps, int64_t steps_per_block)
      : steps_per_block_(steps_per_block),
        count_((steps + steps_per_block - 1) / steps_per_block),
        done_(new std::atomic<bool>[static_cast<size_t>(count_)]) {
    for (int64_t i = 0; i < count_; ++i) done_[i].store(false, std::memory_order_relaxed);
  }

  int64_t steps_per_block() const { return steps_per_block_; }
  int64_t count() const { return count_; }

  // The helper: computes blocks in order until none is left. compute(block) must not throw past
  // here without the consumer learning of it, hence the catch.
  template <typename Compute>
  void help(const Compute& compute) {
    try {
      for (int64_t j = claim_any(); j < count_; j = claim_any()) finish(j, compute);
    } catch (...) {
      failed_.store(true, std::memory_order_release);
      throw;
    }
  }

  // The consumer: returns once block j is computed, computing unclaimed blocks itself.
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
      pause(++spins);
    }
  }

 private:
  int64_t claim_any() { return next_.fetch_add(1, std::memory_order_acq_rel); }

  template <typename Compute>
  void finish(int64_t j, const Compute& compute) {
    compute(j);
    done_[j].store(true, std::memory_order_release);
  }

  static void pause(int64_t spins) {
    if (spins % 1024 == 0) {
      std::this_thread::yield();  // an oversubscribed machine: let the helper run
    } else {
#if defined(__x86_64__) || defined(_M_X64)
      _mm_pause();
#endif
    }
  }

  const int64_t steps_per_block_;
  const int64_t count_;
  std::unique_ptr<std::atomic<bool>[]> done_;
  std::atomic<int64_t> next_{0};
  std::atomic<bool> failed_{false};
};

}  // namespace rnnkern::cpu
