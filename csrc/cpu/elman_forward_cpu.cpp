// CPU forward of rnnkern::elman_layer: the time loop the layer driver (csrc/layer/layer_driver.h)
// runs between its input projection and the output, per direction, step by step:
//   h_t = act(Y_t + h_{t-1} @ W_hh^T), written over Y_t         (recurrence_cpu.h)
//
// The two directions of a bidirectional layer run on two threads. A single direction at small batch
// instead hands the projection to the helper thread, block by block ahead of the recurrence
// (step_blocks.h), never waiting for it; at large hidden size it shares each step's units with the
// helper instead (shared_steps.h); a short one, or one at large batch, shares its projection with
// the helper in blocks of rows (split_rows.h), and at large batch each step's GEMM in blocks of
// columns. A layer of only a few rows at small batch skips all of that: it runs step by step on
// the cell kernel (forward_on_cell_kernel).
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "../layer/kernel_dtypes.h"
#include "../layer/layer_driver.h"
#include "elman_cpu.h"
#include "helper_thread.h"
#include "openmp_teammate.h"
#include "row_projection.h"
#include "shared_steps.h"
#include "split_rows.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

// The input projection in blocks of steps_per_block() steps, which the helper computes ahead
// of the recurrence into its slots and the recurrence fetches (or computes itself) at the start of
// each block. Shared with the helper's task, which may outlive the call: it holds its own handles
// to the tensors it reads, and none of the call's outputs.
template <typename T>
struct ProjectionAhead {
  static constexpr int64_t kSlots = 4;  // blocks the helper may run ahead

  explicit ProjectionAhead(const ForwardCall& c)
      : layout(c.shape.layout),
        steps_per_block(cpu::steps_per_block(c.shape)),
        projection(c),
        blocks(block_count(layout.steps, steps_per_block), kSlots),
        slots(at::empty({kSlots * steps_per_block * layout.batch * c.shape.hidden},
                        c.out.options())) {
    blocks.ready(blocks.count());
  }

  // Helper: computes blocks into its slots until there are none left.
  void help() {
    for (int64_t j = blocks.claim(); j >= 0; j = blocks.claim()) {
      const auto [first, rows] = block_rows(layout, steps_per_block, j);
      projection.into(first, rows, slot(j));
      blocks.finish(j);
    }
  }

  // Caller: block j's projection into out (N, H), from the helper's slot or computed here.
  void fill(int64_t j, T* out) {
    const auto [first, rows] = block_rows(layout, steps_per_block, j);
    T* dest = out + first * projection.hidden();
    if (blocks.take(j))
      std::memcpy(dest, slot(j), rows * projection.hidden() * sizeof(T));
    else
      projection.into(first, rows, dest);
    blocks.consumed(j);
  }

  const SequenceLayout layout;
  const int64_t steps_per_block;
  const RowProjection<T> projection;
  SharedBlocks blocks;

 private:
  T* slot(int64_t j) {
    return slots.data_ptr<T>() +
           blocks.slot(j) * steps_per_block * layout.batch * projection.hidden();
  }
  const at::Tensor slots;  // kSlots blocks of rows
};

// The reverse direction of a bidirectional layer, for both_directions. It is computed in buffers
// of its own, from a copy of its initial state taken before the caller starts, by the helper or,
// if the helper has not finished, by the caller: the same operands in the same layout on either
// thread (BLAS need not round the same for an output of another row stride or alignment), so the
// same bits on one thread or two; then copied into the output. At register batch each direction
// projects its own columns on the thread that runs it: one projection GEMM shared the way
// split_rows shares it costs a copy of the helper's rows (1 MB at batch 16, hidden 256, 64 steps)
// and came to 1.14x the two-thread time of MKL's GEMM there (PERFORMANCE.md, version 18). At BLAS
// batch one projection serves both directions (`projected`: row blocks shared with the helper on
// two threads, MKL's whole team on more, which keeps a larger machine's cores busy), and this
// direction starts from a copy of its columns.
template <typename T>
struct ReverseForward {
  ReverseForward(ForwardCall& c, bool projected)
      : call(c),
        projected(projected),
        relu(c.relu),
        shape(c.shape),
        w_hh(weight_hh(c.weights, c.shape, 1).alias()),  // not the parameter itself: see below
        projection(projection_inputs(c)),
        out(fresh_columns()),
        state(c.h_n.select(0, 1).clone()) {}

  void help() {
    if (blocks.claim() != 0) return;
    compute(out, state);
    blocks.finish(0);
  }
  void first() {
    const int64_t H = shape.hidden;
    if (!projected) call.project_direction_into(0, call.out.narrow(1, 0, H));
    at::Tensor h = call.h_n.select(0, 0);
    forward_direction<T>(
        direction_loop<T>(shape, 0, relu, weight_hh(call.weights, shape, 0), StepSplit::kWhole),
        call.out, h);
  }
  void second(bool buffers_free) {
    if (buffers_free) {
      compute(out, state);
      put(out, state);
      return;
    }
    const at::Tensor own_out = fresh_columns();  // the helper may still be writing `out`
    at::Tensor own_state = call.h_n.select(0, 1).clone();
    compute(own_out, own_state);
    put(own_out, own_state);
  }
  void take_result() { put(out, state); }

  SharedBlocks blocks{1, 1};
  std::atomic<int64_t> steps_done{0};

 private:
  // This direction's columns (N, H) to compute in: a copy of its projection when the driver made
  // it, else uninitialized. Reads the call's output: on the caller only.
  at::Tensor fresh_columns() const {
    const int64_t H = call.shape.hidden;
    return projected ? call.out.narrow(1, H, H).clone(at::MemoryFormat::Contiguous)
                     : at::empty({call.shape.layout.total_rows, H}, call.out.options());
  }
  // The direction into dest (N, H) and dest_state, on whichever thread.
  void compute(const at::Tensor& dest, at::Tensor& dest_state) {
    if (!projected) projection.project_direction_into(1, dest);
    forward_direction<T>(direction_loop<T>(shape, 1, relu, w_hh, StepSplit::kWhole, /*column=*/0),
                         dest, dest_state,
                         [this](int64_t) { steps_done.fetch_add(1, std::memory_order_release); });
  }
  void put(const at::Tensor& columns, const at::Tensor& last_state) {
    call.out.narrow(1, shape.hidden, shape.hidden).copy_(columns);
    call.h_n.select(0, 1).copy_(last_state);
  }

  ForwardCall& call;  // the caller's: read on the caller only (first, second, take_result)
  const bool projected;
  const bool relu;
  const LayerShape shape;  // the helper's own copies, from here on

  // w_hh is an alias, never the caller's parameter tensor itself: a finished task lives until the
  // next offer, and a second handle to a parameter stops torch's swap_tensors (module.to()).
  const at::Tensor w_hh;
  const ForwardCall projection;  // what the projection reads, without the call's outputs
  const at::Tensor out;
  at::Tensor state;
};

// The input projection of a layer that is not pipelined, all rows at once: in blocks of rows
// shared with the helper thread (split_rows.h), which never wait for each other, when the call runs
// on the caller and the helper (on_caller_and_helper), else one GEMM on MKL's threads.
void project(ForwardCall& c) {
  const LayerShape& s = c.shape;
  if (!on_caller_and_helper(s.layout.batch)) {
    c.project(0, s.layout.total_rows);
    return;
  }
  split_rows(
      {c.out}, s.input_size * s.directions * s.hidden,
      [call = projection_inputs(c)](int64_t first, int64_t rows, std::vector<at::Tensor>& dest) {
        call.project_into(first, rows, dest[0]);
      });
}

// A short sequence at small batch, step by step on the cell kernel (kernels.h, cell_forward), as
// the cell operator runs one step: every step reads W_ih and W_hh where they are, in nn.RNN's
// layout. The other paths first make a transposed, padded copy of W_hh (and, pipelined, of W_ih)
// and project the whole input in one GEMM, costs of a call rather than of a step that a sequence of
// a few steps never earns back (nor does the driver's stacked W_ih^T and bias sum, which it skips
// for these shapes: run_forward's reads_weights_as_stored). The same single thread whatever torch's
// thread count: the same bits on one thread or two. Each direction's state stays in h_n, which
// holds h0 on entry.
template <typename T>
void forward_on_cell_kernel(ForwardCall& c) {
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  const Kernels<T>& k = kernels<T>();
  const int64_t I = s.input_size, H = s.hidden, DH = s.directions * H;
  const at::Tensor x_rows = c.x.contiguous();
  const T* x = x_rows.template data_ptr<T>();
  T* out = c.out.template data_ptr<T>();
  for (int64_t d = 0; d < s.directions; ++d) {
    const at::Tensor w_ih = weight_ih(c.weights, s, d).contiguous();
    const at::Tensor w_hh = weight_hh(c.weights, s, d).contiguous();
    // The cell kernel adds b_ih + b_hh itself: the same float as the driver's bias sum.
    const at::Tensor b_ih = s.has_bias ? bias_ih(c.weights, s, d).contiguous() : at::Tensor();
    const at::Tensor b_hh = s.has_bias ? bias_hh(c.weights, s, d).contiguous() : at::Tensor();
    T* state = c.h_n.select(0, d).template data_ptr<T>();
    for (int64_t i = 0; i < L.steps; ++i) {
      const int64_t t = visited_step(L.steps, /*reverse=*/d == 1, i, /*backward=*/false);
      const int64_t rows = L.rows[t];
      T* y = out + L.offset[t] * DH + d * H;
      k.cell_forward(activation(c.relu), rows, x + L.offset[t] * I, I, I,
                     w_ih.template data_ptr<T>(), state, H, H, w_hh.template data_ptr<T>(),
                     s.has_bias ? b_ih.template data_ptr<T>() : nullptr,
                     s.has_bias ? b_hh.template data_ptr<T>() : nullptr, H, y, DH);
      for (int64_t r = 0; r < rows; ++r) std::memcpy(state + r * H, y + r * DH, H * sizeof(T));
    }
  }
}

void forward_loop(ForwardCall& c) {
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  RNNKERN_DISPATCH_CPU_DTYPES(c.x.scalar_type(), "elman_layer_cpu", [&] {
    if (short_forward_on_cell_kernel(s)) {
      forward_on_cell_kernel<scalar_t>(c);
      return;
    }
    auto loop = [&](int64_t d) {
      return direction_loop<scalar_t>(s, d, c.relu, weight_hh(c.weights, s, d), step_split());
    };
    auto run = [&](int64_t d, const auto& before_step) {
      at::Tensor state = c.h_n.select(0, d);
      forward_direction<scalar_t>(loop(d), c.out, state, before_step);
    };
    if (s.directions == 2) {
      const bool projected = !use_register_kernel(L);  // one projection for both directions
      if (projected) project(c);
      both_directions(std::make_shared<ReverseForward<scalar_t>>(c, projected), L.steps);
      return;
    }
    if (shares_steps(s)) {
      project(c);
      at::Tensor state = c.h_n.select(0, 0);
      forward_shared<scalar_t>(loop(0), c.out, state);
      return;
    }
    if (!pipelined(s)) {
      project(c);
      run(0, [](int64_t) {});
      return;
    }

    // One direction, visited t = 0 .. T-1: block j is steps [S j, S (j + 1)), S steps per block.
    const SingleThreaded single_threaded;  // the blocks this thread computes: as the helper does
    auto ahead = std::make_shared<ProjectionAhead<scalar_t>>(c);
    beside_helper([ahead] { ahead->help(); },
                  [&](bool) {
                    const CloseOnExit close(ahead->blocks);
                    scalar_t* out = c.out.data_ptr<scalar_t>();
                    const int64_t S = ahead->steps_per_block;
                    run(0, [&](int64_t t) {
                      if (t % S == 0) ahead->fill(t / S, out);
                    });
                  });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> elman_layer_cpu(const at::Tensor& input, const at::Tensor& hx,
                                                   at::TensorList weights,
                                                   const std::optional<at::Tensor>& batch_sizes,
                                                   bool relu) {
  std::optional<SingleThreaded> single_threaded;
  if (single_threaded_call(hx)) single_threaded.emplace();
  return run_forward("rnnkern::elman_layer", c10::DeviceType::CPU, input, hx, weights, batch_sizes,
                     relu, forward_loop, short_forward_on_cell_kernel);
}

}  // namespace rnnkern::cpu
