// helper_thread.h: the worker, its queue, and the single-threaded guard.
#include "helper_thread.h"

#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "step_blocks.h"

// MKL's per-thread thread count (torch's x86 builds link MKL and export it), by its C name: the
// lower-case symbol is the Fortran entry, which takes a pointer. Weak, so that a torch without MKL
// still loads this library; OpenMP's per-thread setting then covers its BLAS.
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace rnnkern::cpu {
namespace {

// The floating-point control: x86's MXCSR, the rounding mode and the flush-to-zero and
// denormals-are-zero flags that torch.set_flush_denormal sets on the calling thread only.
void set_float_control(unsigned control) {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_setcsr(control);
#else
  (void)control;
#endif
}

// A task and the floating-point control of the thread that offered it.
struct Task {
  std::function<void()> run;
  unsigned float_control;
};

// The floating-point control the helper ran its latest task under (helper_float_control).
std::atomic<unsigned> latest_task_control{0};

struct Worker {
  std::mutex mutex;
  std::condition_variable wake;
  std::deque<Task> tasks;
  std::atomic<size_t> queued{0};  // tasks.size(), for the helper's spin outside the lock
  bool sleeping = false;          // the helper waits on `wake` (guarded by mutex)
  // Tasks the helper has run, left for a caller's thread to destroy (see offer_to_helper).
  std::vector<std::function<void()>> finished;
  bool started = false;
};

// Never destroyed: the detached thread may still be using it while the process exits.
std::atomic<Worker*> worker{new Worker};

// Tasks queued and not yet started beyond which calls stop offering work: a helper that far behind
// is not getting a core, and each queued task keeps its call's tensors alive.
constexpr size_t kMaxPending = 1;

// How long the helper spins for its next task, after its last task and after the end of the last
// call that offered it work, before it sleeps; and while such a call is running, it spins on. A
// sleeping thread is slow to wake: the caller pays a system call and, on a virtual machine, an
// interrupt sent to a halted virtual core (about 20 us a call here), and the helper then started
// its task 0.7-0.9 ms after the offer on average, too late to help a call of a few milliseconds
// (PERFORMANCE.md, version 16). A training or inference loop calls again within a millisecond or
// two; a spinning helper in the idle scheduling class takes no time from any other thread.
constexpr int64_t kSpinBeforeSleepNs = 2'000'000;

std::atomic<int> calls_in_flight{0};
std::atomic<int64_t> last_activity_ns{0};  // steady_clock: the last call's end or task's end

// Whether a task is queued, spinning for one while a call is in flight and kSpinBeforeSleepNs
// after.
bool spin_for_task(Worker* w) {
  for (int64_t spins = 1;; ++spins) {
    if (w->queued.load(std::memory_order_acquire) > 0) return true;
    if (spins % 64 == 0 && calls_in_flight.load(std::memory_order_acquire) == 0 &&
        steady_now_ns() > last_activity_ns.load(std::memory_order_acquire) + kSpinBeforeSleepNs)
      return false;
    cpu_pause();
  }
}

void run_tasks(Worker* w) {
#if defined(__linux__)
  // The helper runs only on a core nothing else wants (SCHED_IDLE): on a machine busy with other
  // programs it then never takes a share of a core from its caller, which does the work itself;
  // on an idle second core it runs at full speed. (It also never preempts anyone on waking.)
  const sched_param idle{};
  pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);
#endif
  for (;;) {
    Task task;
    spin_for_task(w);
    {
      std::unique_lock<std::mutex> lock(w->mutex);
      w->sleeping = true;
      w->wake.wait(lock, [&] { return !w->tasks.empty(); });
      w->sleeping = false;
      task = std::move(w->tasks.front());
      w->tasks.pop_front();
      w->queued.store(w->tasks.size(), std::memory_order_release);
    }
    run_as_helper(task.run, task.float_control);
    last_activity_ns.store(steady_now_ns(), std::memory_order_release);
    const std::lock_guard<std::mutex> lock(w->mutex);
    w->finished.push_back(std::move(task.run));
  }
}

// Offers made to the helper since the process started, accepted or not (helper_offers()).
std::atomic<int64_t> offers_made{0};

// torch's thread count as this thread's caller set it, while a SingleThreaded guard is alive on the
// thread (0 when none is): inside the guard, at::get_num_threads() answers 1.
thread_local int threads_outside_guard = 0;

// The child of a fork has no worker thread, the parent's mutex may have been held at the fork, and
// calls in flight on the parent's other threads are not the child's: start afresh (the old Worker
// is left as it is, never touched again).
void forget_worker_in_child() {
  worker.store(new Worker);
  calls_in_flight.store(0);  // the parent's other threads' calls do not run here
  last_activity_ns.store(0);
}

}  // namespace

int caller_threads() {
  return threads_outside_guard > 0 ? threads_outside_guard : at::get_num_threads();
}

bool helper_available() { return caller_threads() >= 2; }

int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t this_thread_cpu_clock() {
  clockid_t clock{};
  if (pthread_getcpuclockid(pthread_self(), &clock) != 0) return -1;
  return clock;
}

int64_t thread_cpu_ns(int64_t clock) {
  timespec t{};
  if (clock == -1 || clock_gettime(static_cast<clockid_t>(clock), &t) != 0) return -1;
  return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec;
}

unsigned helper_float_control() { return latest_task_control.load(std::memory_order_relaxed); }

int64_t helper_offers() { return offers_made.load(std::memory_order_relaxed); }

void count_offer() { offers_made.fetch_add(1, std::memory_order_relaxed); }

unsigned float_control() {
#if defined(__x86_64__) || defined(_M_X64)
  return _mm_getcsr();
#else
  return 0;
#endif
}

void run_as_helper(const std::function<void()>& task, unsigned control) {
  const unsigned own = float_control();
  try {  // nothing may escape: on a team's thread an exception would end the process
    const SingleThreaded single_threaded;
    // Like the caller's kernels, the tasks' ATen calls are below autograd.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    set_float_control(control);
    latest_task_control.store(float_control(), std::memory_order_relaxed);
    task();
  } catch (...) {
  }
  set_float_control(own);
}

bool offer_to_helper(std::function<void()> task) {
  static const bool registered = pthread_atfork(nullptr, nullptr, forget_worker_in_child) == 0;
  (void)registered;
  count_offer();
  Worker* w = worker.load();
  // The tasks the helper has finished are destroyed here, on a caller's thread, never on the
  // helper: a task may hold the last reference to a tensor Python also knows (an output returned
  // to the user, an input), and releasing that takes the GIL, which a background thread must not
  // do (at interpreter exit Python ends such a thread in the middle of a destructor, and the
  // process aborts). A finished task's tensors therefore live until the next call that offers
  // work, or to the end of the process.
  std::vector<std::function<void()>> finished;
  bool asleep = false;
  {
    // Never blocks: the helper may hold the lock while a busy machine keeps it off every core.
    std::unique_lock<std::mutex> lock(w->mutex, std::try_to_lock);
    if (!lock.owns_lock()) return false;
    finished.swap(w->finished);
    if (w->tasks.size() >= kMaxPending) return false;
    w->tasks.push_back({std::move(task), float_control()});
    w->queued.store(w->tasks.size(), std::memory_order_release);
    asleep = w->sleeping;

    if (!w->started) {
      try {
        std::thread(run_tasks, w).detach();
      } catch (const std::system_error&) {
        // No thread to be had (a process at its limit): this call does all of its work, and a
        // later offer tries again.
        w->tasks.pop_back();
        w->queued.store(w->tasks.size(), std::memory_order_release);
        return false;
      }
      w->started = true;
    }
  }
  if (asleep) w->wake.notify_one();  // a spinning helper sees `queued`
  return true;
}

CallWithHelper::CallWithHelper() { calls_in_flight.fetch_add(1, std::memory_order_acq_rel); }

CallWithHelper::~CallWithHelper() {
  last_activity_ns.store(steady_now_ns(), std::memory_order_release);
  calls_in_flight.fetch_sub(1, std::memory_order_acq_rel);
}

// at::get_num_threads() first: on a thread's first call it sets the thread's OpenMP thread count to
// torch's (it has the last word before the guard's, not after it). The inline
// at::internal::lazy_init_num_threads would not do: compiled into this library, it keeps a flag of
// its own, and torch's first parallel loop on the thread would then undo the guard (the helper ran
// every ATen operation on two OpenMP threads that way, its own second one included).
SingleThreaded::SingleThreaded()
    : outermost_(threads_outside_guard == 0),
      omp_threads_(at::get_num_threads()),
      mkl_threads_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {
  if (outermost_) threads_outside_guard = omp_threads_;
  omp_set_num_threads(1);
}

SingleThreaded::~SingleThreaded() {
  if (outermost_) threads_outside_guard = 0;
  omp_set_num_threads(omp_threads_);
  if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(mkl_threads_);
}

}  // namespace rnnkern::cpu
