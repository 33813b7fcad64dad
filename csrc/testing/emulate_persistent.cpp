#include "emulate_persistent.h"

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
    partial_.resize(carry_.size());
  }

  // One phase: f(view, shared memory, thread, carry, partial) on every thread of every block. Odd
  // phases run the threads in reverse, so a phase whose result depended on the order of its
  // threads (a missing barrier on the GPU) gives a different answer than the reference.
  template <typename F>
  void phase(F f) {
    const int64_t blocks = plan_.blocks(), threads = plan_.threads;
    const bool reverse = (phases_++ & 1) != 0;
    for (int64_t n = 0; n < blocks * threads; ++n) {
      const int64_t flat = reverse ? blocks * threads - 1 - n : n;
      const int64_t b = flat / threads;
      const int thread = static_cast<int>(flat % threads);
      f(views_[b], carve_shared<S, S>(plan_, shared_[b].data()), thread,
        &carry_[flat * kMaxOutputsPerThread], &partial_[flat * kMaxOutputsPerThread]);
    }
  }

  // The kernels' group_sum: in each group of `split` lanes, the butterfly of warp shuffles
  // (x[l] += x[l ^ offset] for offset = split / 2, ..., 1), in the same order of additions.
  void sum_groups() {
    const int split = plan_.split;
    std::vector<S> now(split), next(split);
    for (int64_t first = 0; first < plan_.blocks() * plan_.threads; first += split) {
      for (int m = 0; m < plan_.outputs_per_thread; ++m) {
        for (int l = 0; l < split; ++l) now[l] = partial_[(first + l) * kMaxOutputsPerThread + m];
        for (int offset = split / 2; offset > 0; offset /= 2) {
          for (int l = 0; l < split; ++l) next[l] = now[l] + now[l ^ offset];
          now.swap(next);
        }
        for (int l = 0; l < split; ++l) partial_[(first + l) * kMaxOutputsPerThread + m] = now[l];
      }
    }
  }

 private:
  const LaunchPlan& plan_;
  std::vector<BlockView> views_;
  std::vector<std::vector<S>> shared_;
  std::vector<S> carry_, partial_;
  int64_t phases_ = 0;
};

}  // namespace

template <typename S>
void emulate_forward(const RecurrenceParams<S, S>& p) {
  const bool grid = p.plan.algorithm == Algorithm::kGrid;
  EmulatedLaunch<S> launch(p.plan);
  using Mem = BlockMemory<S, S>;
  launch.phase([&](const BlockView& v, Mem mem, int th, S* carry, S*) {
    load_m_slice(p.plan, v, th, p.w_hh[v.direction], /*transpose=*/false, mem.m);
    forward_start(p, v, th, grid ? exchange_slice(p, v, 0) : mem.state[0], carry);
  });
  if (grid)
    launch.phase([&](const BlockView& v, Mem mem, int th, S*, S*) {
      stage_state(p.plan, v, th, exchange_slice(p, v, 0), mem.state[0]);
    });
  for (int64_t i = 0; i < p.steps; ++i) {
    const auto t_of = [&](const BlockView& v) {
      return visited_step(p.steps, v.direction == 1, i, /*backward=*/false);
    };
    launch.phase([&](const BlockView& v, Mem mem, int th, S*, S* partial) {
      partial_products(p, v, th, step_rows(p, t_of(v)), mem.m, mem.buffer(grid ? 0 : i), partial);
    });
    launch.sum_groups();
    launch.phase([&](const BlockView& v, Mem mem, int th, S* carry, S* partial) {
      S* out = grid ? exchange_slice(p, v, int((i + 1) & 1)) : mem.buffer(i + 1);
      forward_apply(p, v, th, t_of(v), partial, out, carry);
    });
    if (grid && i + 1 < p.steps)
      launch.phase([&](const BlockView& v, Mem mem, int th, S*, S*) {
        stage_state(p.plan, v, th, exchange_slice(p, v, int((i + 1) & 1)), mem.state[0]);
      });
  }
  launch.phase(
      [&](const BlockView& v, Mem, int th, S* carry, S*) { write_final_state(p, v, th, carry); });
}

template <typename S>
void emulate_backward(const RecurrenceParams<S, S>& p) {
  const bool grid = p.plan.algorithm == Algorithm::kGrid;
  EmulatedLaunch<S> launch(p.plan);
  using Mem = BlockMemory<S, S>;
  launch.phase([&](const BlockView& v, Mem mem, int th, S* carry, S*) {
    load_m_slice(p.plan, v, th, p.w_hh[v.direction], /*transpose=*/true, mem.m);
    load_initial_state(p, v, th, carry);
    const int64_t t = visited_step(p.steps, v.direction == 1, 0, /*backward=*/true);
    backward_dz(p, v, th, t, grid ? exchange_slice(p, v, 0) : mem.state[0], carry);
  });
  if (grid)
    launch.phase([&](const BlockView& v, Mem mem, int th, S*, S*) {
      stage_state(p.plan, v, th, exchange_slice(p, v, 0), mem.state[0]);
    });
  for (int64_t i = 0; i < p.steps; ++i) {
    const auto t_of = [&](const BlockView& v) {
      return visited_step(p.steps, v.direction == 1, i, /*backward=*/true);
    };
    launch.phase([&](const BlockView& v, Mem mem, int th, S*, S* partial) {
      partial_products(p, v, th, step_rows(p, t_of(v)), mem.m, mem.buffer(grid ? 0 : i), partial);
    });
    launch.sum_groups();
    launch.phase([&](const BlockView& v, Mem mem, int th, S* carry, S* partial) {
      backward_apply(p, v, th, t_of(v), partial, carry);
      if (i + 1 == p.steps) return;
      const int64_t next = visited_step(p.steps, v.direction == 1, i + 1, /*backward=*/true);
      S* out = grid ? exchange_slice(p, v, int((i + 1) & 1)) : mem.buffer(i + 1);
      backward_dz(p, v, th, next, out, carry);
    });
    if (grid && i + 1 < p.steps)
      launch.phase([&](const BlockView& v, Mem mem, int th, S*, S*) {
        stage_state(p.plan, v, th, exchange_slice(p, v, int((i + 1) & 1)), mem.state[0]);
      });
  }
  launch.phase(
      [&](const BlockView& v, Mem, int th, S* carry, S*) { write_final_state(p, v, th, carry); });
}

template void emulate_forward<float>(const RecurrenceParams<float, float>&);
template void emulate_forward<double>(const RecurrenceParams<double, double>&);
template void emulate_backward<float>(const RecurrenceParams<float, float>&);
template void emulate_backward<double>(const RecurrenceParams<double, double>&);

}  // namespace rnnkern::persistent
