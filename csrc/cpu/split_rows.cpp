// split_rows.h: the blocks and their hand-off between the caller and the helper thread.
#include "split_rows.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "helper_thread.h"
#include "openmp_teammate.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

using Tensors = std::vector<at::Tensor>;

// Blocks are few and large: each is one BLAS call, which packs the whole of its shared operand
// (X or H_prev for the weight gradients, 8 MB at 2048 rows x 1024) before it starts; with 16 blocks
// of 64 units the weight gradients were 30% slower on one thread than one GEMM (PERFORMANCE.md,
// version 11). Four blocks bound what the caller recomputes when the helper is preempted in the
// middle of one to a quarter of the work. kBlockWork multiply-adds (about 50 us of one core) is the
// least worth a block of its own.
constexpr int64_t kBlockWork = int64_t{1} << 22;
constexpr int64_t kMaxBlocks = 4;

// The blocks of `total` rows (or columns): one when the whole is small, else blocks of at least
// `least` multiply-adds, at most kMaxBlocks of them, each a multiple of `multiple` rows when there
// are that many. Depends on the shape alone.
struct RowBlocks {
  RowBlocks(int64_t total, int64_t work_per_row, int64_t least = kBlockWork, int64_t multiple = 1)
      : total(total) {
    const int64_t work = total * work_per_row;
    const int64_t blocks = total <= 1 || work < 2 * least ? 1 : std::min(kMaxBlocks, work / least);
    rows = std::max<int64_t>((total + blocks - 1) / blocks, 1);
    if (rows > multiple) rows = (rows + multiple - 1) / multiple * multiple;
    count = block_count(total, rows);
  }
  int64_t first(int64_t j) const { return j * rows; }
  int64_t rows_of(int64_t j) const { return std::min(rows, total - first(j)); }

  int64_t total, rows, count;
};

// A step's blocks of columns: one GEMM of (rows x H) by (H x columns) each. Blocks of at least
// kStepBlockWork multiply-adds (about 20 us of one core) keep a block's fixed costs (an ATen GEMM
// call, the hand-off) to a few percent of it; columns in multiples of 16, 64 bytes of float.
// Measured: PERFORMANCE.md, version 19.
constexpr int64_t kStepBlockWork = int64_t{1} << 21;
constexpr int64_t kColumnMultiple = 16;

using Clock = std::chrono::steady_clock;

// Fresh buffers for one block's results, given its length along the split (rows, or columns).
// Holds shapes only, never a tensor of the call's: the helper calls it, possibly after the call has
// returned.
using MakeBuffers = std::function<Tensors(int64_t length)>;

// One split, shared with the helper's task (which may outlive the call).
struct Split {
  Split(RowBlockFn fn, const RowBlocks& b, MakeBuffers make)
      : fn(std::move(fn)),
        b(b),
        make(std::move(make)),
        blocks(b.count, b.count),
        results(b.count) {}

  // Helper: blocks from the last down, into buffers of its own, until it meets the caller.
  void help() {
    helper_clock.publish();
    for (;;) {
      // Stored before the claim, so that the caller never reads an earlier block's time.
      last_claim.store(Clock::now().time_since_epoch().count(), std::memory_order_release);
      const int64_t j = blocks.claim_from_back();
      if (j < 0) break;
      const auto start = Clock::now();
      Tensors dest = make(b.rows_of(j));
      fn(b.first(j), b.rows_of(j), dest);
      results[j] = std::move(dest);  // the caller reads it only after finish()
      ticks_per_row.store((Clock::now() - start).count() / b.rows_of(j), std::memory_order_release);
      blocks.finish(j);
    }
  }

  const RowBlockFn fn;
  const RowBlocks b;
  const MakeBuffers make;
  SharedBlocks blocks;
  std::vector<Tensors> results;           // [j]: block j's, when the helper computed it
  std::atomic<int64_t> last_claim{0};     // when the helper claimed its latest block (Clock ticks)
  std::atomic<int64_t> ticks_per_row{0};  // the helper's pace over its latest finished block
  HelperClock helper_clock;               // of the thread running help()
};
static_assert(std::is_same_v<Clock::rep, int64_t>, "Split::last_claim holds Clock ticks");

// Where a block's result is: in the caller's destination for it, or in the helper's buffers.
struct BlockResult {
  Tensors tensors;
  bool by_helper = false;
};

// Waits while the helper is computing block j, its latest, and would finish it well before the
// caller could compute it again:
//   - not at all when, at the helper's own pace (over the block it finished last in this split,
//     else at the caller's fastest block), and a quarter more, it would finish later than half of
//     one of the caller's blocks from now;
//   - else while the helper is running (RunningWatch: its CPU time advances by at least half the
//     time that passes), for at most half of one of the caller's blocks.
// A preempted helper (a busy machine) is so given up on within one check, while a running one
// that is a little slower than its pace is waited for: computing its block again wastes its share
// (with a fixed deadline at the caller's pace, the caller recomputed a block in a fifth of the
// steps at batch 64, hidden 1024, whose helper blocks ran 5% to 15% slower than the caller's
// fastest: PERFORMANCE.md, version 19). A helper that runs but slowly (a core shared with another
// thread) costs the caller at most half a block per split. Without the helper's CPU clock, the
// wait ends at the helper's due time.
void wait_a_block(const Split& split, int64_t j, Clock::duration block_time) {
  const auto claimed = Clock::time_point(Clock::duration(split.last_claim.load()));
  const int64_t per_row = split.ticks_per_row.load(std::memory_order_acquire);
  const auto pace = per_row > 0 ? Clock::duration(per_row * split.b.rows_of(j)) : block_time;
  const auto due = claimed + pace + pace / 4;
  const auto start = Clock::now();
  if (due - start > block_time / 2) return;  // not worth waiting for
  RunningWatch helper(split.helper_clock);
  for (int64_t spins = 1; split.blocks.in_progress(j); ++spins) {
    cpu_pause();
    if (spins % 64 != 0) continue;
    const auto now = Clock::now();
    if (now - start > block_time / 2 || (!helper.known() && now > due)) return;
    if (!helper.running(now)) return;  // preempted
  }
}

// Every block of b computed once, the caller's into caller_dest(j), the helper's (taking blocks
// from the last down) into buffers of make's. The helper never waits; the caller waits for the
// helper's last block only while the helper is running and about to finish it (wait_a_block).
template <class CallerDest>
std::vector<BlockResult> run_blocks(const RowBlocks& b, const RowBlockFn& fn,
                                    const MakeBuffers& make, const CallerDest& caller_dest) {
  std::vector<BlockResult> results(b.count);
  auto compute = [&](int64_t j) {
    results[j].tensors = caller_dest(j);
    fn(b.first(j), b.rows_of(j), results[j].tensors);
  };
  if (b.count <= 1 || !helper_available()) {
    for (int64_t j = 0; j < b.count; ++j) compute(j);
    return results;
  }
  auto split = std::make_shared<Split>(fn, b, make);
  beside_helper([split] { split->help(); },
                [&](bool) {
                  const CloseOnExit close(split->blocks);
                  int64_t j = 0;
                  // The caller's fastest block: a block during which the caller itself was
                  // preempted must not make it wait longer for the helper.
                  auto block_time = Clock::duration::max();
                  for (; j < b.count && split->blocks.claim_free(j); ++j) {
                    const auto start = Clock::now();
                    compute(j);
                    block_time = std::min(block_time, Clock::now() - start);
                  }
                  // Blocks [j, count) are the helper's, finished except perhaps block j, which it
                  // started last: take the finished ones first, giving it the most time.
                  for (int64_t i = b.count - 1; i >= j; --i) {
                    if (i == j && block_time != Clock::duration::max())
                      wait_a_block(*split, i, block_time);
                    if (split->blocks.take(i))
                      results[i] = {std::move(split->results[i]), true};  // no longer the helper's
                    else
                      compute(i);
                  }
                });
  return results;
}

// What MakeBuffers needs of each tensor: its sizes and options.
using Shapes = std::vector<std::pair<std::vector<int64_t>, at::TensorOptions>>;
Shapes shapes_of(const Tensors& ts) {
  Shapes shapes;
  for (const at::Tensor& t : ts) shapes.emplace_back(t.sizes().vec(), t.options());
  return shapes;
}

// Fresh buffers shaped like each of `outs` but n long in dimension `dim`: a block's.
MakeBuffers buffers_like(const Tensors& outs, size_t dim) {
  return [shapes = shapes_of(outs), dim](int64_t n) {
    Tensors buffers;
    for (auto [sizes, options] : shapes) {
      sizes[dim] = n;
      buffers.push_back(at::empty(sizes, options));
    }
    return buffers;
  };
}

}  // namespace

void split_rows(const Tensors& outs, int64_t work_per_row, const RowBlockFn& fn) {
  const SingleThreaded single_threaded;  // each block: as on the helper
  const RowBlocks b(outs.front().size(0), work_per_row);
  const MakeBuffers make = buffers_like(outs, /*dim=*/0);
  auto rows_of_outs = [&](int64_t j) {
    Tensors views;
    for (const at::Tensor& out : outs) views.push_back(out.narrow(0, b.first(j), b.rows_of(j)));
    return views;
  };
  const std::vector<BlockResult> results = run_blocks(b, fn, make, rows_of_outs);
  for (int64_t j = 0; j < b.count; ++j) {
    if (!results[j].by_helper) continue;
    const Tensors dest = rows_of_outs(j);
    for (size_t k = 0; k < outs.size(); ++k) dest[k].copy_(results[j].tensors[k]);
  }
}

void split_sum(const Tensors& sums, int64_t rows, int64_t work_per_row, const RowBlockFn& fn) {
  const SingleThreaded single_threaded;  // the sums, and each block, as on the helper
  const RowBlocks b(rows, work_per_row);
  const MakeBuffers make = [shapes = shapes_of(sums)](int64_t) {
    Tensors buffers;
    for (const auto& [sizes, options] : shapes) buffers.push_back(at::empty(sizes, options));
    return buffers;
  };
  // Block 0, the caller's first, straight into the sums.
  const std::vector<BlockResult> results =
      run_blocks(b, fn, make, [&](int64_t j) { return j == 0 ? sums : make(0); });
  for (size_t k = 0; k < sums.size(); ++k) {
    if (results[0].by_helper) sums[k].copy_(results[0].tensors[k]);
    for (int64_t j = 1; j < b.count; ++j) sums[k].add_(results[j].tensors[k]);
  }
}

void split_columns(const Tensors& outs, int64_t work_per_column, const RowBlockFn& fn) {
  const SingleThreaded single_threaded;  // each block: as on the helper
  const int64_t rows = outs.front().size(0);
  const RowBlocks b(outs.front().size(1), work_per_column, kStepBlockWork, kColumnMultiple);
  const MakeBuffers make = buffers_like(outs, /*dim=*/1);
  const std::vector<BlockResult> results =
      run_blocks(b, fn, make, [&](int64_t j) { return make(b.rows_of(j)); });
  // Back into the outputs row by row (an ATen copy per block would cost more than the copying).
  for (size_t k = 0; k < outs.size(); ++k) {
    const at::Tensor& out = outs[k];
    TORCH_INTERNAL_ASSERT(out.dim() == 2 && out.stride(1) == 1);
    const int64_t size = out.element_size();
    char* base = static_cast<char*>(out.data_ptr());
    for (int64_t j = 0; j < b.count; ++j) {
      const int64_t columns = b.rows_of(j);
      const char* from = static_cast<const char*>(results[j].tensors[k].data_ptr());
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(base + (r * out.stride(0) + b.first(j)) * size, from + r * columns * size,
                    columns * size);
    }
  }
}

}  // namespace rnnkern::cpu
