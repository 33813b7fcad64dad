// A large GEMM-like computation split into blocks of output rows (or, for one step of a recurrence
// at large batch, of columns) that the caller and the helper thread (helper_thread.h) share, so
// that the layer's GEMMs use both cores without ever waiting for the second one, and round the
// same on one thread or two.
//
// Why not BLAS's own threads: a BLAS call on two threads ends in a barrier, so on a machine busy
// with other programs the caller waits a scheduler time slice for a thread that is not running
// (PERFORMANCE.md, "Outside load"); and MKL splits a GEMM with a long inner dimension (the weight
// gradients' sum over every step and row) differently on one thread and on two, so the gradients'
// last bits depended on the thread count. Here the blocks depend on the shape alone and each is one
// single-threaded GEMM: the caller computes them from the first up into the outputs, the helper
// from the last down into buffers of its own; where the two meet, the caller takes what the helper
// has finished and computes itself what it has not (step_blocks.h, claim_free/claim_from_back),
// after waiting for the block the helper is on only while the helper is running and would finish
// it within half a block (split_rows.cpp, wait_a_block).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace rnnkern::cpu {

// Writes rows [first, first + rows) of every output into `dest`, one tensor per output holding
// just those rows. Runs on the caller's thread with views of the outputs, or on the helper's with
// buffers of its own, possibly after the call has returned: it must own (share) every tensor
// it reads, and write nothing but `dest`.
using RowBlockFn = std::function<void(int64_t first, int64_t rows, std::vector<at::Tensor>& dest)>;

// Fills rows [0, M) of every tensor of `outs` (all M rows long) with fn, in blocks of rows whose
// size depends on M and work_per_row (the multiply-adds of a row) alone: one block when the whole
// is small (the helper would not wake in time to help), else at most four (split_rows.cpp); each
// block single-threaded, with the helper thread's help when torch has two threads or more.
void split_rows(const std::vector<at::Tensor>& outs, int64_t work_per_row, const RowBlockFn& fn);

// Sums over `rows` rows of input, in blocks of rows as above: fn(first, rows, dest) writes the sums
// over one block into `dest` (tensors shaped like `sums`), and the blocks' sums are added into
// `sums` in block order. For a product whose inner dimension is long (the weight gradients, summed
// over every step and row): each block packs only its own rows of both operands.
void split_sum(const std::vector<at::Tensor>& sums, int64_t rows, int64_t work_per_row,
               const RowBlockFn& fn);

// One step of a recurrence at BLAS batch (recurrence_cpu.h), in blocks of columns shared with the
// helper thread: fills columns [0, C) of every tensor of `outs` (row-major views with unit column
// stride, all C columns wide) with fn(first, columns, dest), which writes a block's columns of
// every output into `dest`, fresh contiguous buffers (rows, columns) on either thread (not views of
// the outputs, as in split_rows): every block is computed in buffers alike, so BLAS rounds it the
// same whichever thread computes it. The blocks depend on C and work_per_column alone (one when
// the step is small).
void split_columns(const std::vector<at::Tensor>& outs, int64_t work_per_column,
                   const RowBlockFn& fn);

}  // namespace rnnkern::cpu
