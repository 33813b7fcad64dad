#include "emulate.h"

#include <stdexcept>
#include <vector>

namespace rnnkern::persistent {
namespace {

// The blocks of one launch, their shared memory and their threads' registers.
template <typename S>
class EmulatedLaunch {
 public:
  explicit EmulatedLaunch(const LaunchPlan& plan) : plan_(plan) {
    if (plan.algorithm == Algorithm::kPerStep) throw std::invalid_argument("not a persistent plan");
    const int64_t words = (plan.shared_bytes + int64_t(sizeof(S)) - 1) / int64_t(sizeof(S));
    for (int64_t b = 0; b < plan.blocks(); ++b) {
      views_.push_back(block_view(plan, b));
      shared_.emplace_back(words);
    }
    carry_.resize(plan.blocks() * plan.threads * kMaxOutputsPerThread);
  }

  // One phase: f(view, shared memory, thread, carry) on every thread of every block. Odd phases
  // run the threads in reverse, so a phase whose result depended on the order of its threads (a
  // missing barrier on the GPU) gives a different answer than the reference.
  template <typename F>
  void phase(F f) {
    const int64_t blocks = plan_.blocks(), threads = plan_.threads;
    const bool reverse = (phases_++ & 1) != 0;
    for (int64_t n = 0; n < blocks * threads; ++n) {
      const int64_t flat = reverse ? blocks * threads - 1 - n : n;
      const int64_t b = flat / threads;
      const int thread = static_cast<int>(flat % threads);
      f(views_[b], carve_shared<S, S>(plan_, shared_[b].data()), thread,
        &carry_[flat * kMaxOutputsPerThread]);
    }
  }

 private:
  const LaunchPlan& plan_;
  std::vector<BlockView> views_;
  std::vector<std::vector<S>> shared_;
  std::vector<S> carry_;
  int64_t phases_ = 0;
};

}  // namespace

template <typename S>
void emulate_forward(const RecurrenceParams<S, S>& p) {
  const bool grid = p.plan.algorithm == Algorithm::kGrid;
  EmulatedLaunch<S> launch(p.plan);
  using Mem = BlockMemory<S, S>;
  launch.phase([&](const BlockView& v, Mem mem, int th, S* carry) {
    load_m_slice(p.plan, v, th, p.w_hh[v.direction], /*transpose=*/false, mem.m);
    forward_start(p, v, th, grid ? exchange_slice(p, v, 0) : mem.state[0], carry);
  });
  if (grid)
    launch.phase([&](const BlockView& v, Mem mem, int th, S*) {
      stage_state(p.plan, v, th, exchange_slice(p, v, 0), mem.state[0]);
    });
  for (int64_t i = 0; i < p.steps; ++i) {
    launch.phase([&](const BlockView& v, Mem mem, int th, S* carry) {
      const int64_t t = visited_step(p.steps, v.direction, i, /*backward=*/false);
      S* out = grid ? exchange_slice(p, v, int((i + 1) & 1)) : mem.buffer(i + 1);
      forward_step(p, v, th, t, mem.m, mem.buffer(grid ? 0 : i), out, carry);
    });
    if (grid && i + 1 < p.steps)
      launch.phase([&](const BlockView& v, Mem mem, int th, S*) {
        stage_state(p.plan, v, th, exchange_slice(p, v, int((i + 1) & 1)), mem.state[0]);
      });
  }
  launch.phase(
      [&](const BlockView& v, Mem, int th, S* carry) { write_final_state(p, v, th, carry); });
}

template <typename S>
void emulate_backward(const RecurrenceParams<S, S>& p) {
  const bool grid = p.plan.algorithm == Algorithm::kGrid;
  EmulatedLaunch<S> launch(p.plan);
  using Mem = BlockMemory<S, S>;
  launch.phase([&](const BlockView& v, Mem mem, int th, S* carry) {
    load_m_slice(p.plan, v, th, p.w_hh[v.direction], /*transpose=*/true, mem.m);
    backward_start(p, v, th, carry);
    const int64_t t = visited_step(p.steps, v.direction, 0, /*backward=*/true);
    backward_dz(p, v, th, t, grid ? exchange_slice(p, v, 0) : mem.state[0], carry);
  });
  if (grid)
    launch.phase([&](const BlockView& v, Mem mem, int th, S*) {
      stage_state(p.plan, v, th, exchange_slice(p, v, 0), mem.state[0]);
    });
  for (int64_t i = 0; i < p.steps; ++i) {
    launch.phase([&](const BlockView& v, Mem mem, int th, S* carry) {
      const int64_t t = visited_step(p.steps, v.direction, i, /*backward=*/true);
      backward_matvec(p, v, th, t, mem.m, mem.buffer(grid ? 0 : i), carry);
      if (i + 1 == p.steps) return;
      const int64_t next = visited_step(p.steps, v.direction, i + 1, /*backward=*/true);
      S* out = grid ? exchange_slice(p, v, int((i + 1) & 1)) : mem.buffer(i + 1);
      backward_dz(p, v, th, next, out, carry);
    });
    if (grid && i + 1 < p.steps)
      launch.phase([&](const BlockView& v, Mem mem, int th, S*) {
        stage_state(p.plan, v, th, exchange_slice(p, v, int((i + 1) & 1)), mem.state[0]);
      });
  }
  launch.phase(
      [&](const BlockView& v, Mem, int th, S* carry) { write_final_state(p, v, th, carry); });
}

template void emulate_forward<float>(const RecurrenceParams<float, float>&);
template void emulate_forward<double>(const RecurrenceParams<double, double>&);
template void emulate_backward<float>(const RecurrenceParams<float, float>&);
template void emulate_backward<double>(const RecurrenceParams<double, double>&);

}  // namespace rnnkern::persistent
