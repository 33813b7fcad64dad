// The second thread of the CPU paths that use two cores: one process-wide worker that runs the
// tasks it is offered, one after another, and that no caller ever waits for.
//
// Why not an OpenMP team (at::parallel_for): a team ends in a barrier, so the caller waits for the
// second thread to be scheduled, to finish, and, worse, for any block of work it holds while it is
// preempted. On a machine with other programs running (a data loader, another library's pool, a
// second job) that wait is a scheduler time slice, milliseconds, paid again and again: two threads
// then ran many times slower than one (PERFORMANCE.md, "Outside load"). With this worker, work is
// split into blocks that either thread may compute (step_blocks.h); the caller computes any block
// the helper has not finished when it needs it, so the worst case is the one-thread time. And the
// helper runs in the idle scheduling class (SCHED_IDLE): on a machine busy with other programs it
// does not take a share of a core from its own caller either, and on an idle core it runs at full
// speed. (Where the second core is held by torch's own OpenMP worker, spinning after one of torch's
// parallel operations, the idle class gets nothing there: openmp_teammate.h then hands the same
// blocks to that worker instead.)
//
// A task runs after its caller may have returned, so it must own (share) everything it touches.
// After fork() the child process starts without the parent's worker and makes its own when offered
// work (nothing of the parent's queue is run twice).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>

namespace rnnkern::cpu {

// torch's intra-op thread count (torch.set_num_threads, OMP_NUM_THREADS) as the caller set it: a
// SingleThreaded guard on this thread does not count.
int caller_threads();

// Whether calls may hand work to the helper: torch's intra-op thread count (torch.set_num_threads,
// OMP_NUM_THREADS) is at least 2, as the caller set it (a SingleThreaded guard on this thread does
// not count). With one thread, every call does all of its work itself, in the same blocks, so
// results are the same bits either way.
bool helper_available();

// The calling thread's CPU-time clock, as a number any thread may read with thread_cpu_ns (-1
// where there is none): a caller waiting for a block the helper is computing tells from it whether
// the helper is running or preempted.
int64_t this_thread_cpu_clock();

// The CPU time (ns) a thread has run for, by its clock from this_thread_cpu_clock(); -1 for the
// clock -1 or a thread that has ended.
int64_t thread_cpu_ns(int64_t clock);

// The CPU-time clock of whichever thread runs a hand-off's helper part (the helper thread, or
// torch's OpenMP worker: openmp_teammate.h), published by that thread as the part starts: a caller
// waiting for a block tells from it whether that thread is running or preempted.
class HelperClock {
 public:
  void publish() { clock_.store(this_thread_cpu_clock(), std::memory_order_release); }
  // The clock, for thread_cpu_ns: -1 before the part has started.
  int64_t id() const { return clock_.load(std::memory_order_acquire); }

 private:
  std::atomic<int64_t> clock_{-1};
};

// A waiting caller's view of whether the thread running a hand-off's helper part is running, from
// that thread's CPU-time clock (HelperClock): a preempted helper (a machine busy with other
// programs) is noticed within one check, a few scheduler ticks' worth of nothing.
class RunningWatch {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  static constexpr auto kCheck = std::chrono::microseconds(20);

  explicit RunningWatch(const HelperClock& clock) : clock_(clock) {}

  // Whether the thread's clock has been read (it is published as the helper part starts).
  bool known() const { return cpu_since_ >= 0; }

  // False once, over a check of at least kCheck, the thread ran for less than half the time that
  // passed; true otherwise, and while its clock is not known. Called with the steady clock's now.
  bool running(TimePoint now) {
    if (!known()) {
      id_ = clock_.id();
      cpu_since_ = thread_cpu_ns(id_);
      since_ = now;
      return true;
    }
    if (now - since_ < kCheck) return true;
    const int64_t cpu = thread_cpu_ns(id_);
    const int64_t passed =
        std::chrono::duration_cast<std::chrono::nanoseconds>(now - since_).count();
    if (cpu - cpu_since_ < passed / 2) return false;
    since_ = now;
    cpu_since_ = cpu;
    return true;
  }

 private:
  const HelperClock& clock_;
  int64_t id_ = -1;
  int64_t cpu_since_ = -1;  // the thread's CPU time at since_, -1 while not known
  TimePoint since_;
};

// The steady clock's time in nanoseconds.
int64_t steady_now_ns();

// The floating-point control (x86's MXCSR; 0 elsewhere) the helper ran its latest task under: the
// control of the thread that offered it (for the tests).
unsigned helper_float_control();

// How many tasks calls have offered a second thread (the helper, or torch's OpenMP worker:
// openmp_teammate.h) since the process started, whether it took them or not (for the tests: a call
// that should use two cores offers work; whether the second thread gets to it depends on the
// machine's load).
int64_t helper_offers();
void count_offer();  // one more offer, by a call that hands its part to a team instead

// This thread's floating-point control (x86's MXCSR; 0 elsewhere).
unsigned float_control();

// Runs `task` on this thread as the helper runs its tasks: BLAS and ATen single-threaded, below
// autograd, under the floating-point control `control` of the thread that offered it (a block must
// compute the same bits on either thread, denormals included), exceptions dropped (the caller
// computes whatever a failed task left unfinished, and meets the error itself if it is not the
// helper's alone). The thread's own control is restored after.
void run_as_helper(const std::function<void()>& task, unsigned control);

// Queues `task` for the helper thread (started on first use) and returns at once: true if queued,
// false if the helper is too far behind to take it (the caller then does all of its work).
bool offer_to_helper(std::function<void()> task);

// The scope of a call that offers the helper work: while one is alive, and for a short while after
// the last ends, the helper spins for its next task instead of sleeping, so that the next call's
// offer finds it running (helper_thread.cpp: waking a sleeping thread is slow).
class CallWithHelper {
 public:
  CallWithHelper();
  ~CallWithHelper();
  CallWithHelper(const CallWithHelper&) = delete;
  CallWithHelper& operator=(const CallWithHelper&) = delete;
};

// While alive, BLAS (MKL) and ATen's intra-op parallelism run single-threaded on this thread: a
// block of work must compute the same bits whichever thread runs it, and must never itself wait for
// other threads.
class SingleThreaded {
 public:
  SingleThreaded();
  ~SingleThreaded();
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  bool outermost_;  // the first guard alive on this thread: records the caller's thread count
  int omp_threads_;
  int mkl_threads_;
};

}  // namespace rnnkern::cpu
