// split_rows.h: the blocks and their hand-off between the caller and the helper thread.
#include "split_rows.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <memory>
#include <utility>

#include "helper_thread.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

// Blocks are few and large: each is one BLAS call, which packs the whole of its shared operand
// (X or H_prev for the weight gradients, 8 MB at 2048 rows x 1024) before it starts; with 16 blocks
// of 64 units the weight gradients were 30% slower on one thread than one GEMM (PERFORMANCE.md,
// version 11). Four blocks bound what the caller recomputes when the helper is preempted in the
// middle of one to a quarter of the work. kBlockWork multiply-adds (about 50 us of one core) is the
// least worth a block of its own.
constexpr int64_t kBlockWork = int64_t{1} << 22;
constexpr int64_t kMaxBlocks = 4;

// Rows per block, from the number of rows and the multiply-adds each costs: one block when the
// whole is small, else blocks of at least kBlockWork multiply-adds, at most kMaxBlocks of them.
int64_t rows_per_block(int64_t rows, int64_t work_per_row) {
  const int64_t work = rows * work_per_row;
  if (rows <= 1 || work < 2 * kBlockWork) return std::max<int64_t>(rows, 1);
  const int64_t count = std::min(kMaxBlocks, work / kBlockWork);
  return (rows + count - 1) / count;
}

// Block j (rows [j * block_rows, ...)) of `into`, by fn.
void compute_block(const RowBlockFn& fn, int64_t block_rows, int64_t j,
                   const std::vector<at::Tensor>& into) {
  const int64_t first = j * block_rows;
  const int64_t n = std::min(block_rows, into.front().size(0) - first);
  std::vector<at::Tensor> dest;
  dest.reserve(into.size());
  for (const at::Tensor& t : into) dest.push_back(t.narrow(0, first, n));
  fn(first, n, dest);
}

// One split, shared with the helper's task (which may outlive the call).
struct Split {
  Split(const std::vector<at::Tensor>& outs, int64_t block_rows, RowBlockFn fn)
      : fn(std::move(fn)),
        block_rows(block_rows),
        blocks(block_count(outs.front().size(0), block_rows),
               block_count(outs.front().size(0), block_rows)) {
    for (const at::Tensor& out : outs) helper_copies.push_back(at::empty_like(out));
  }

  // Helper: blocks from the last down, into its copies, until it meets the caller.
  void help() {
    for (int64_t j = blocks.claim_from_back(); j >= 0; j = blocks.claim_from_back()) {
      compute_block(fn, block_rows, j, helper_copies);
      blocks.finish(j);
    }
  }

  // Caller: block j from the helper's copies into the outputs.
  void copy_out(int64_t j, const std::vector<at::Tensor>& outs) const {
    const int64_t first = j * block_rows, n = std::min(block_rows, outs.front().size(0) - first);
    for (size_t k = 0; k < outs.size(); ++k)
      outs[k].narrow(0, first, n).copy_(helper_copies[k].narrow(0, first, n));
  }

  const RowBlockFn fn;
  const int64_t block_rows;
  SharedBlocks blocks;
  std::vector<at::Tensor> helper_copies;
};

// split_rows with the blocks given.
void split_blocks(const std::vector<at::Tensor>& outs, int64_t block_rows, const RowBlockFn& fn) {
  const int64_t count = block_count(outs.front().size(0), block_rows);
  const SingleThreaded single_threaded;  // each block: as on the helper
  if (count <= 1 || !helper_available()) {
    for (int64_t j = 0; j < count; ++j) compute_block(fn, block_rows, j, outs);
    return;
  }
  auto split = std::make_shared<Split>(outs, block_rows, fn);
  const CloseOnExit close(split->blocks);
  offer_to_helper([split] { split->help(); });
  int64_t j = 0;
  for (; j < count && split->blocks.claim_free(j); ++j) compute_block(fn, block_rows, j, outs);
  // Blocks [j, count) are the helper's, finished except perhaps block j, which it started last:
  // copy the finished ones first, giving it the most time.
  for (int64_t i = count - 1; i >= j; --i) {
    if (split->blocks.take(i))
      split->copy_out(i, outs);
    else
      compute_block(fn, block_rows, i, outs);
  }
}

}  // namespace

void split_rows(const std::vector<at::Tensor>& outs, int64_t work_per_row, const RowBlockFn& fn) {
  split_blocks(outs, rows_per_block(outs.front().size(0), work_per_row), fn);
}

void split_sum(const std::vector<at::Tensor>& sums, int64_t rows, int64_t work_per_row,
               const RowBlockFn& fn) {
  const int64_t block_rows = rows_per_block(rows, work_per_row);
  const int64_t count = block_count(rows, block_rows);
  const SingleThreaded single_threaded;  // the sums, and each block, as on the helper
  if (count <= 1) {
    std::vector<at::Tensor> dest = sums;
    fn(0, rows, dest);
    return;
  }
  // Block j's sums at [j] of each partial: a "row" of the split below is a whole block of rows.
  std::vector<at::Tensor> partials;
  for (const at::Tensor& sum : sums) {
    std::vector<int64_t> shape{count};
    shape.insert(shape.end(), sum.sizes().begin(), sum.sizes().end());
    partials.push_back(at::empty(shape, sum.options()));
  }
  split_blocks(partials, 1,
               [fn, rows, block_rows](int64_t j, int64_t, std::vector<at::Tensor>& dest) {
                 std::vector<at::Tensor> block;
                 for (const at::Tensor& d : dest) block.push_back(d.select(0, 0));
                 const int64_t first = j * block_rows;
                 fn(first, std::min(block_rows, rows - first), block);
               });
  for (size_t k = 0; k < sums.size(); ++k) {
    sums[k].copy_(partials[k].select(0, 0));
    for (int64_t j = 1; j < count; ++j) sums[k].add_(partials[k].select(0, j));
  }
}

}  // namespace rnnkern::cpu
