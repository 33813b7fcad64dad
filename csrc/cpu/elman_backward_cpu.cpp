// CPU backward of rnnkern::elman_layer (fused BPTT): the time loop the layer driver
// (csrc/layer/layer_driver.h) runs before its weight and input gradients, per direction, step by
// step in the reverse of processing order:
//   dZ_t = (dh + dY_t) * act'(h_t),   dh <- dZ_t @ W_hh           (recurrence_cpu.h)
//
// A single direction at small batch hands the weight gradients to the helper thread block by block
// as the recurrence finishes them (step_blocks.h), computes dX itself once its loop is done, and
// then adds the blocks' gradients in order, computing any the helper has not finished. Other layers
// share their weight gradients and, at small batch, dX with the helper in blocks of rows
// (split_rows.h). A layer of only a few rows at small batch runs on the cell kernels, with no ATen
// GEMM (backward_on_cell_kernel).

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <vector>

#include "../layer/kernel_dtypes.h"
#include "../layer/layer_driver.h"
#include "elman_cpu.h"
#include "helper_thread.h"
#include "openmp_teammate.h"
#include "split_rows.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

using at::Tensor;

// The driver's GatherPrevious on the CPU: the rows each step of [t_begin, t_end) started from.
void gather_previous(const BackwardCall& c, int64_t d, int64_t t_begin, int64_t t_end,
                     Tensor& prev) {
  const int64_t H = c.shape.hidden;
  RNNKERN_DISPATCH_CPU_DTYPES(c.y.scalar_type(), "gather_previous_cpu", [&] {
    gather_previous_states<scalar_t>(
        c.shape.layout, /*reverse=*/d == 1,
        Columns<const scalar_t>{c.y.data_ptr<scalar_t>() + d * H, c.y.size(1)},
        c.h0.select(0, d).data_ptr<scalar_t>(), H, t_begin, t_end, prev.data_ptr<scalar_t>());
  });
}

// The call as a helper's task may keep it, after the call has returned: without the call's outputs
// (autograd hands an output gradient nobody else holds to .grad as it is, and copies one that is
// held elsewhere), and with aliases of its inputs rather than the caller's tensors: the weights
// come as views autograd made of the parameters, which keep the parameter itself alive, and a
// second handle to a parameter stops torch's swap_tensors (module.to()) until the next offer.
BackwardCall without_outputs(BackwardCall c) {
  c.grad_w_ih = c.grad_w_hh = c.grad_bias = c.grad_h0 = c.grad_input = Tensor();
  for (Tensor* t : {&c.weight_ih, &c.weight_hh, &c.x, &c.y, &c.dy, &c.h0, &c.dz})
    if (t->defined()) *t = t->alias();
  return c;
}

// The weight gradients of a block of steps of a pipelined layer (one direction):
//   dW_ih = dZ^T X,   dW_hh = dZ^T H_prev,   db = dZ^T 1   over the block's rows,
// on the register kernel with no ATen call where blocks are small (blocks_on_kernel; dZ read as it
// lies by transposed_rows_times_matrix), by ATen GEMMs otherwise. Each element is its sum over the
// block's rows in the kernel's fixed order, or single-threaded BLAS's, so the bits are the same
// whichever thread computes a block. Blocks are added to the sums in block order; on the kernel
// the caller adds a block straight to them (Epilogue::kAdd), the same bits as storing and adding.
template <typename T>
struct BlockGradients {
  explicit BlockGradients(const BackwardCall& c)
      : k(kernels<T>()),
        on_kernel(blocks_on_kernel(c.shape)),
        call(inputs_only(c)),
        ones(static_cast<size_t>(cpu::steps_per_block(c.shape) * c.shape.layout.batch), T(1)) {}

  // The flattened size of one block's gradients: dW_ih (H, I), dW_hh (H, H), db (H).
  int64_t size() const {
    const int64_t H = call.shape.hidden;
    return H * (call.shape.input_size + H + 1);
  }
  int64_t steps() const { return call.shape.layout.steps; }
  int64_t steps_per_block() const { return cpu::steps_per_block(call.shape); }

  // A buffer for one block's gradients, or for one block's rows of previous states.
  at::Tensor block_buffer() const { return at::empty({size()}, call.x.options()); }
  at::Tensor prev_buffer() const {
    const int64_t rows = steps_per_block() * call.shape.layout.batch;
    return at::empty({rows, call.shape.hidden}, call.x.options());
  }

  // Steps [t_begin, t_end)'s gradients into dest (size()); prev: a prev_buffer().
  void store(int64_t t_begin, int64_t t_end, T* dest, at::Tensor& prev) const {
    if (on_kernel)
      on_registers(t_begin, t_end, Epilogue::kStore, dest, prev.data_ptr<T>());
    else
      by_blas(t_begin, t_end, dest, prev);
  }

  // The same gradients added to sums (size()); block: a block_buffer() (for the GEMMs).
  void add(int64_t t_begin, int64_t t_end, T* sums, at::Tensor& prev, T* block) const {
    if (on_kernel) {
      on_registers(t_begin, t_end, Epilogue::kAdd, sums, prev.data_ptr<T>());
    } else {
      by_blas(t_begin, t_end, block, prev);
      add_block(sums, block);
    }
  }

  // sums += block, element by element.
  void add_block(T* sums, const T* block) const {
    for (int64_t i = 0; i < size(); ++i) sums[i] += block[i];
  }

 private:
  // What the blocks read of the call, as the helper's task (which may outlive the call) keeps it:
  // none of its outputs; x contiguous, for the kernel (y, dz and h0 are already).
  static BackwardCall inputs_only(const BackwardCall& c) {
    BackwardCall in = without_outputs(c);
    in.x = in.x.contiguous();
    return in;
  }

  void on_registers(int64_t t_begin, int64_t t_end, Epilogue epilogue, T* dest, T* prev) const {
    const auto [first, rows] = call.shape.layout.rows_of_steps(t_begin, t_end);
    const int64_t I = call.shape.input_size, H = call.shape.hidden;
    const T* dz_rows = call.dz.template data_ptr<T>() + first * H;
    T* w_ih = dest;
    T* w_hh = dest + H * I;
    T* bias = w_hh + H * H;
    if (call.need_weights) {
      gather_previous_states<T>(call.shape.layout, /*reverse=*/false,
                                Columns<const T>{call.y.template data_ptr<T>(), H},
                                call.h0.template data_ptr<T>(), H, t_begin, t_end, prev);
      k.transposed_rows_times_matrix(epilogue, Activation::kTanh, H, dz_rows, H, rows,
                                     call.x.template data_ptr<T>() + first * I, I, I, w_ih, I);
      k.transposed_rows_times_matrix(epilogue, Activation::kTanh, H, dz_rows, H, rows, prev, H, H,
                                     w_hh, H);
    }
    if (call.need_bias)
      k.rows_times_matrix(epilogue, Activation::kTanh, 1, ones.data(), 0, rows, dz_rows, H, H, bias,
                          H);
  }

  // The driver's block GEMMs, into views of dest.
  void by_blas(int64_t t_begin, int64_t t_end, T* dest, at::Tensor& prev) const {
    const int64_t I = call.shape.input_size, H = call.shape.hidden;
    const at::TensorOptions options = call.x.options();
    call.block_weight_gradients(0, t_begin, t_end, prev, gather_previous,
                                at::from_blob(dest, {H, I}, options),
                                at::from_blob(dest + H * I, {H, H}, options),
                                at::from_blob(dest + H * (I + H), {H}, options));
  }

  const Kernels<T>& k;
  const bool on_kernel;
  const BackwardCall call;
  const std::vector<T> ones;  // the bias gradient's row of ones: a block's rows at most
};

// The weight gradients in blocks of steps_per_block() steps, which the helper computes
// behind the recurrence as it finishes them (into its slots, each block's gradients afresh) and the
// caller adds to the sums in block order, during its loop where the helper is done and after it for
// the rest (taking over any block the helper has not finished). Shared with the helper's task,
// which may outlive the call: it holds its own handles to the tensors it reads, and none of the
// call's outputs.
template <typename T>
struct GradientsBehind {
  static constexpr int64_t kSlots = 4;  // finished blocks the helper may hold unread

  explicit GradientsBehind(const BackwardCall& c)
      : gradients(c),
        blocks(block_count(c.shape.layout.steps, gradients.steps_per_block()), kSlots),
        slots(at::empty({kSlots, gradients.size()}, c.x.options())),
        helper_prev(gradients.prev_buffer()),
        caller_prev(gradients.prev_buffer()),
        caller_block(gradients.block_buffer()) {}

  // Helper: computes finished blocks into its slots until there are none left.
  void help() {
    for (int64_t j = blocks.claim(); j >= 0; j = blocks.claim()) {
      const auto [t_begin, t_end] = steps_of(j);
      gradients.store(t_begin, t_end, slot(j), helper_prev);
      blocks.finish(j);
    }
  }

  // Caller: adds blocks [added, finished) that the helper has done, in order; returns how many
  // blocks have been added.
  int64_t add_finished(T* sums, int64_t added, int64_t finished) {
    for (; added < finished && blocks.done(added); ++added) add_slot(sums, added);
    return added;
  }

  // Caller: adds blocks [added, count), each from the helper's slot or computed here.
  void add_rest(T* sums, int64_t added) {
    for (int64_t j = added; j < blocks.count(); ++j) {
      if (blocks.take(j)) {
        add_slot(sums, j);
      } else {
        const auto [t_begin, t_end] = steps_of(j);
        gradients.add(t_begin, t_end, sums, caller_prev, caller_block.data_ptr<T>());
        blocks.consumed(j);
      }
    }
  }

  const BlockGradients<T> gradients;
  SharedBlocks blocks;

 private:
  std::pair<int64_t, int64_t> steps_of(int64_t j) const {
    const int64_t S = gradients.steps_per_block(), steps = gradients.steps();
    return {std::max<int64_t>(0, steps - (j + 1) * S), steps - j * S};
  }
  T* slot(int64_t j) { return slots.data_ptr<T>() + blocks.slot(j) * gradients.size(); }
  void add_slot(T* sums, int64_t j) {
    gradients.add_block(sums, slot(j));
    blocks.consumed(j);
  }
  // Buffers allocated as the caller's tensors are (aligned alike, for BLAS): kSlots blocks'
  // gradients; the states each block's rows started from, one per thread; the caller's block.
  at::Tensor slots, helper_prev, caller_prev, caller_block;
};

// The weight gradients over every step, direction by direction, as sums over blocks of steps
// shared with the helper thread (split_rows.h: split_sum), added in block order: one GEMM over all
// of a long sequence's rows would be split by a BLAS on two threads differently than on one, and
// round differently.
void split_weight_gradients(BackwardCall& c) {
  if (!(c.need_weights || c.need_bias)) return;
  const LayerShape& s = c.shape;
  const int64_t H = s.hidden, B = s.layout.batch;
  const BackwardCall call = without_outputs(c);
  for (int64_t d = 0; d < s.directions; ++d) {
    std::vector<Tensor> sums;
    if (c.need_weights) sums = {c.grad_w_ih.select(0, d), c.grad_w_hh.select(0, d)};
    if (c.need_bias) sums.push_back(c.grad_bias.select(0, d));
    split_sum(sums, s.layout.steps, B * (s.input_size + H + 1) * H,
              [call, d, H](int64_t first, int64_t steps, std::vector<Tensor>& dest) {
                size_t k = 0;
                Tensor w_ih, w_hh, bias;
                if (call.need_weights) {
                  w_ih = dest[k++];
                  w_hh = dest[k++];
                }
                if (call.need_bias) bias = dest[k];
                const int64_t rows = call.shape.layout.rows_of_steps(first, first + steps).second;
                Tensor scratch =
                    call.need_weights ? at::empty({rows, H}, call.x.options()) : Tensor();
                call.block_weight_gradients(d, first, first + steps, scratch, gather_previous, w_ih,
                                            w_hh, bias);
              });
  }
  c.weight_gradients_added = true;
}

// dX = dZ W_ih in blocks of rows shared with the helper thread (split_rows.h), which never wait for
// each other, when the call runs on the caller and the helper (on_caller_and_helper); else the
// driver's one GEMM on MKL's threads.
void split_input_gradient(BackwardCall& c) {
  const LayerShape& s = c.shape;
  if (!c.need_input || !on_caller_and_helper(s.layout.batch)) return;  // the driver computes dX
  c.grad_input = at::empty({s.layout.total_rows, s.input_size}, c.x.options());
  split_rows({c.grad_input}, s.directions * s.hidden * s.input_size,
             [call = without_outputs(c)](int64_t first, int64_t rows, std::vector<Tensor>& dest) {
               call.input_gradient_into(first, rows, dest[0]);
             });
}

// The reverse direction of a bidirectional layer, for both_directions: computed into a dZ and a
// state gradient of its own (reading dY and Y, which nobody writes), by the helper or, if the
// helper has not finished, by the caller: the same layout on either thread, so the same bits on one
// thread or two (ReverseForward says why); then copied into the call's.
template <typename T>
struct ReverseBackward {
  explicit ReverseBackward(BackwardCall& c)
      : call(c),
        shape(c.shape),
        relu(c.relu),
        w_hh(c.weight_hh.select(0, 1)),
        dy(c.dy),
        y(c.y),
        dz(at::empty_like(c.dz)),
        dstate(c.grad_h0.select(0, 1).clone()) {}

  void help() {
    if (blocks.claim() != 0) return;
    compute(dz, dstate);
    blocks.finish(0);
  }
  void first() {
    Tensor state = call.grad_h0.select(0, 0);
    backward_direction<T>(
        direction_loop<T>(shape, 0, relu, call.weight_hh.select(0, 0), StepSplit::kWhole), call.dy,
        call.y, call.dz, state);
  }
  void second(bool buffers_free) {
    if (buffers_free) {
      compute(dz, dstate);
      put(dz, dstate);
      return;
    }
    const Tensor own_dz = at::empty_like(dz);  // the helper may still be writing `dz`
    Tensor own_dstate = call.grad_h0.select(0, 1).clone();
    compute(own_dz, own_dstate);
    put(own_dz, own_dstate);
  }
  void take_result() { put(dz, dstate); }

  SharedBlocks blocks{1, 1};
  std::atomic<int64_t> steps_done{0};

 private:
  // The direction into dest_dz's columns [H, 2H) and dest_state, on whichever thread.
  void compute(const Tensor& dest_dz, Tensor& dest_state) {
    backward_direction<T>(direction_loop<T>(shape, 1, relu, w_hh, StepSplit::kWhole), dy, y,
                          dest_dz, dest_state,
                          [this](int64_t) { steps_done.fetch_add(1, std::memory_order_release); });
  }
  void put(const Tensor& from_dz, const Tensor& from_state) {
    const int64_t H = shape.hidden;
    call.dz.narrow(1, H, H).copy_(from_dz.narrow(1, H, H));
    call.grad_h0.select(0, 1).copy_(from_state);
  }

  BackwardCall& call;      // the caller's: read on the caller only (first, second, take_result)
  const LayerShape shape;  // the helper's own copies, from here on
  const bool relu;
  const Tensor w_hh, dy, y, dz;
  Tensor dstate;
};

// The backward of a short layer (short_on_cell_kernel; its forward ran on the cell kernel too,
// except at batch 1 with large weights: short_forward_on_cell_kernel), on the cell kernel:
// every product reads the weights as they are stored, with no padded copy and no ATen GEMM, as
// the cell operator's backward does. Per direction, in the reverse of processing order,
//   dz_t = (dh + dy_t) * act'(h_t),   dh <- dz_t @ W_hh,
// then over all of its rows at once dW_ih = dZ^T X, dW_hh = dZ^T H_prev and db = dZ^T 1 (each
// element's sum over the rows in order), and dX = sum over directions of dZ_d W_ih_d. One thread
// whatever torch's thread count: the same bits on one thread or two.
template <typename T>
void backward_on_cell_kernel(BackwardCall& c) {
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  const Kernels<T>& k = kernels<T>();
  const Activation act = activation(c.relu);
  const int64_t I = s.input_size, H = s.hidden, DH = s.directions * H, N = L.total_rows;
  const Tensor x = c.x.contiguous();
  const T* dy = c.dy.data_ptr<T>();
  const T* y = c.y.data_ptr<T>();
  T* dz = c.dz.data_ptr<T>();
  if (c.need_input) c.grad_input = at::empty({N, I}, x.options());
  Tensor prev = c.need_weights ? at::empty({N, H}, x.options()) : Tensor();
  for (int64_t d = 0; d < s.directions; ++d) {
    const Tensor w_hh = c.weight_hh.select(0, d).contiguous();
    T* dstate = c.grad_h0.select(0, d).data_ptr<T>();  // dL/dh_n on entry, dL/dh0 on exit
    for (int64_t i = 0; i < L.steps; ++i) {
      const int64_t t = visited_step(L.steps, /*reverse=*/d == 1, i, /*backward=*/true);
      const int64_t rows = L.rows[t], at_row = L.offset[t] * DH + d * H;
      k.activation_backward_rows(act, rows, H, dstate, H, dy + at_row, DH, y + at_row, DH,
                                 dz + at_row, DH);
      k.rows_times_matrix(Epilogue::kStore, act, rows, dz + at_row, DH, H, w_hh.data_ptr<T>(), H, H,
                          dstate, H);
    }
    const T* dz_d = dz + d * H;  // direction d's columns of dZ, (N, H) with row stride DH
    if (c.need_weights) {
      gather_previous(c, d, 0, L.steps, prev);
      k.transposed_rows_times_matrix(Epilogue::kStore, act, H, dz_d, DH, N, x.data_ptr<T>(), I, I,
                                     c.grad_w_ih.select(0, d).data_ptr<T>(), I);
      k.transposed_rows_times_matrix(Epilogue::kStore, act, H, dz_d, DH, N, prev.data_ptr<T>(), H,
                                     H, c.grad_w_hh.select(0, d).data_ptr<T>(), H);
    }
    if (c.need_bias) {
      T* db = c.grad_bias.select(0, d).data_ptr<T>();  // zeros, from the driver
      for (int64_t r = 0; r < N; ++r)
        for (int64_t j = 0; j < H; ++j) db[j] += dz_d[r * DH + j];
    }
    if (c.need_input) {
      const Tensor w_ih = c.weight_ih.select(0, d).contiguous();
      k.rows_times_matrix(d == 0 ? Epilogue::kStore : Epilogue::kAdd, act, N, dz_d, DH, H,
                          w_ih.data_ptr<T>(), I, I, c.grad_input.data_ptr<T>(), I);
    }
  }
  c.weight_gradients_added = true;
}

void backward_loop(BackwardCall& c) {
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  RNNKERN_DISPATCH_CPU_DTYPES(c.x.scalar_type(), "elman_layer_backward_cpu", [&] {
    if (short_on_cell_kernel(s)) {
      backward_on_cell_kernel<scalar_t>(c);
      return;
    }
    auto recur = [&](int64_t d, const auto& after_step) {
      const auto p = direction_loop<scalar_t>(s, d, c.relu, c.weight_hh.select(0, d), step_split());
      Tensor dstate = c.grad_h0.select(0, d);
      backward_direction<scalar_t>(p, c.dy, c.y, c.dz, dstate, after_step);
    };
    if (!pipelined(s) || !(c.need_weights || c.need_bias)) {
      if (s.directions == 1)
        recur(0, [](int64_t) {});
      else
        both_directions(std::make_shared<ReverseBackward<scalar_t>>(c), L.steps);
      split_weight_gradients(c);
      split_input_gradient(c);
      return;
    }
    // One direction, visited t = T-1 .. 0: block j is steps [T - S (j + 1), T - S j), S steps per
    // block. The gradients are summed in one buffer laid out as a block's (dW_ih, dW_hh, db),
    // copied out at the end.
    const SingleThreaded single_threaded;  // the blocks this thread computes: as the helper does
    auto behind = std::make_shared<GradientsBehind<scalar_t>>(c);
    std::vector<scalar_t> sums;
    beside_helper([behind] { behind->help(); },
                  [&](bool) {
                    const CloseOnExit close(behind->blocks);
                    sums.assign(static_cast<size_t>(behind->gradients.size()), scalar_t(0));
                    int64_t added = 0;
                    const int64_t S = behind->gradients.steps_per_block();
                    recur(0, [&](int64_t t) {
                      if ((L.steps - t) % S == 0 || t == 0) {
                        const int64_t finished = (L.steps - 1 - t) / S + 1;
                        behind->blocks.ready(finished);
                        added = behind->add_finished(sums.data(), added, finished);
                      }
                    });
                    c.input_gradient();  // while the helper is still on the weight gradients
                    behind->add_rest(sums.data(), added);
                  });
    const int64_t HI = s.hidden * s.input_size, HH = s.hidden * s.hidden;
    if (c.need_weights) {
      std::memcpy(c.grad_w_ih.data_ptr<scalar_t>(), sums.data(), HI * sizeof(scalar_t));
      std::memcpy(c.grad_w_hh.data_ptr<scalar_t>(), sums.data() + HI, HH * sizeof(scalar_t));
    }
    if (c.need_bias)
      std::memcpy(c.grad_bias.data_ptr<scalar_t>(), sums.data() + HI + HH,
                  s.hidden * sizeof(scalar_t));
    c.weight_gradients_added = true;
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> elman_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& output,
    const std::optional<Tensor>& batch_sizes, bool relu, std::array<bool, 4> output_mask) {
  std::optional<SingleThreaded> single_threaded;
  if (single_threaded_call(hx)) single_threaded.emplace();
  return run_backward("rnnkern::elman_layer_backward", c10::DeviceType::CPU, grad_output, grad_h_n,
                      input, hx, weight_ih, weight_hh, output, batch_sizes, relu, output_mask,
                      backward_loop, gather_previous);
}

}  // namespace rnnkern::cpu
