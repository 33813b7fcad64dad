// openmp_teammate.h: a call's second thread, torch's OpenMP worker or the helper thread.
#include "openmp_teammate.h"

#include <omp.h>
#include <pthread.h>
#include <time.h>

#include <atomic>
#include <exception>
#include <utility>

#include "helper_thread.h"
#include "step_blocks.h"  // on_a_team

namespace rnnkern::cpu {
namespace {

// After a team call that showed another program on the cores, how long calls use the helper
// thread instead. Under one busy core a team call (the probe) took 7-20 ms at 1,64,512 and
// 1,256,256 against 0.4-2 ms, and its worker then spins on for its spin count (PERFORMANCE.md,
// version 23): once a half second, a few percent of the time.
constexpr int64_t kBackOffNs = 500'000'000;

// A team call's wait at its closing barrier beyond which the worker counts as preempted if it ran
// for less than half of the wait (a worker running through a long block is waited for, whatever
// the block's length): longer than a running teammate takes to see the hand-off closed (it never
// sleeps while on a team), far shorter than a scheduler time slice (milliseconds).
constexpr int64_t kLongWaitNs = 50'000;

// The least CPU time a team call's caller must have gone without (besides a tenth of the call) to
// count as preempted: another program given the caller's core takes a scheduler time slice, a
// millisecond or more, while a virtual machine's host takes tens of microseconds now and then, no
// sign of another program on the cores. On the 2-vCPU VM here a caller that lost 31 us of a 265 us
// call sent the next half second's calls (about 2,000 at 224 us a call) to the helper thread
// (PERFORMANCE.md, version 29).
constexpr int64_t kMinLostNs = 500'000;

std::atomic<int> mode{static_cast<int>(TeammateMode::kAuto)};
std::atomic<int64_t> teams_allowed_from_ns{0};  // steady clock: the end of the latest back-off
std::atomic<int64_t> teams{0};

int64_t own_cpu_ns() { return thread_cpu_ns(this_thread_cpu_clock()); }

// torch's OpenMP worker of this thread's pool (the second thread of its teams), by its CPU-time
// clock as the latest team of this thread's saw it (-1 before any): for telling, when the caller
// waits for it at the end of a team, whether it is running.
thread_local int64_t worker_clock_seen = -1;

// Set in the child of a fork(): GNU OpenMP cannot start a team there once the parent had one (the
// parent's pool threads are gone, and the team waits for them forever; torch's own parallel
// operations hang there too), so a child's calls use the helper thread, which it starts afresh.
// Registered as the library loads, so that it covers every fork() after.
std::atomic<bool> forked_child{false};
[[maybe_unused]] const bool fork_handler_registered =
    pthread_atfork(nullptr, nullptr, [] { forked_child.store(true); }) == 0;

bool use_team() {
  if (forked_child.load(std::memory_order_relaxed)) return false;
  const auto m = static_cast<TeammateMode>(mode.load(std::memory_order_relaxed));
  if (m != TeammateMode::kAuto) return m == TeammateMode::kOpenMPTeam;
  // torch's team is larger than two (a team of two would end the pool's other threads, which
  // torch's next operation starts again), or this call already runs in someone's parallel region.
  if (caller_threads() != 2 || omp_in_parallel()) return false;
  return steady_now_ns() >= teams_allowed_from_ns.load(std::memory_order_relaxed);
}

void run_team(const std::function<void()>& helper_part,
              const std::function<void(bool)>& caller_part) {
  const unsigned control = float_control();
  std::exception_ptr error;
  int64_t caller_done = 0, worker_cpu_at_done = -1, clock_at_done = -1;
  const int64_t start = steady_now_ns();
  const int64_t cpu_start = own_cpu_ns();
  // The worker's clock as the worker itself tells it (inside the team, worker_clock_seen is each
  // thread's own).
  std::atomic<int64_t> worker_clock{worker_clock_seen};
#pragma omp parallel num_threads(2)
  {
    // A team of one (OpenMP's thread limit reached) leaves all of the work to the caller.
    if (omp_get_thread_num() == 0) {
      try {
        caller_part(omp_get_num_threads() == 2);
      } catch (...) {
        error = std::current_exception();
      }
      caller_done = steady_now_ns();
      clock_at_done = worker_clock.load(std::memory_order_acquire);
      worker_cpu_at_done = thread_cpu_ns(clock_at_done);
    } else {
      worker_clock.store(this_thread_cpu_clock(), std::memory_order_release);
      on_a_team = true;
      run_as_helper(helper_part, control);
      on_a_team = false;
    }
  }
  const int64_t end = steady_now_ns();
  const int64_t wall = end - start;
  // A long wait for a worker that did not run for most of it (or had not started, or was not the
  // thread the caller read the clock of): preempted.
  worker_clock_seen = worker_clock.load(std::memory_order_acquire);
  const int64_t wait = end - caller_done;
  const bool waited_long =
      wait > kLongWaitNs && (worker_cpu_at_done < 0 || clock_at_done != worker_clock_seen ||
                             thread_cpu_ns(worker_clock_seen) - worker_cpu_at_done < wait / 2);
  const int64_t lost = wall - (own_cpu_ns() - cpu_start);
  const bool caller_preempted = lost > wall / 10 && lost >= kMinLostNs;
  if (waited_long || caller_preempted)
    teams_allowed_from_ns.store(end + kBackOffNs, std::memory_order_relaxed);
  if (error) std::rethrow_exception(error);
}

}  // namespace

void beside_helper(std::function<void()> helper_part,
                   const std::function<void(bool)>& caller_part) {
  if (!helper_available()) {
    caller_part(false);
    return;
  }
  if (use_team()) {
    count_offer();
    teams.fetch_add(1, std::memory_order_relaxed);
    run_team(helper_part, caller_part);
    return;
  }
  caller_part(offer_to_helper(std::move(helper_part)));
}

bool helper_part_on_a_team() { return helper_available() && use_team(); }

TeammateMode set_teammate_mode(TeammateMode m) {
  return static_cast<TeammateMode>(mode.exchange(static_cast<int>(m)));
}

int64_t team_calls() { return teams.load(std::memory_order_relaxed); }

}  // namespace rnnkern::cpu
