// CPU backward of rnnkern::elman_layer (fused BPTT): rnnkern::elman_layer_backward.
//
//   per direction, step by step:   dZ_t = (dh + dY_t) * act'(h_t),   dh <- dZ_t @ W_hh
//   then over all steps at once:   dW_ih = dZ^T X,  dW_hh = dZ^T H_prev,  db = sum dZ,  dX = dZ
//   W_ih
//
// Only what autograd asks for (output_mask) is computed; the weight gradients come back stacked
// over the directions, as the weights came (see ops.cpp). A single direction at small batch hands
// the weight gradients to the second thread block by block as the recurrence finishes them, and
// computes dX itself once its loop is done, while the helper finishes.
#include "elman_cpu.h"
#include "step_blocks.h"

namespace rnnkern::cpu {
namespace {

using at::Tensor;

// The weight gradients of one direction, accumulated block of steps by block of steps, always in
// the same order: dW_ih += dZ^T X, dW_hh += dZ^T H_prev, db += sum dZ over the block's rows. The
// matrices, or the bias, are left undefined when autograd does not ask for them.
template <typename T>
struct WeightGrads {
  const SequenceLayout& L;
  bool reverse;
  const Tensor& x;
  Tensor dz;  // this direction's (N x H) columns of dZ
  Tensor y;   // this direction's (N x H) columns of the output
  const T* h0;
  Tensor w_ih, w_hh, bias;  // the sums (views of the stacked results), zero to begin with
  Tensor prev;              // scratch: the previous states of one block's rows

  void add_steps(int64_t t_begin, int64_t t_end) {
    if (t_begin >= t_end) return;
    const auto [first, rows] = block_rows(L, t_begin, t_end);
    const int64_t H = dz.size(1);
    const Tensor dz_t = dz.narrow(0, first, rows).t();
    if (w_ih.defined()) {
      Tensor prev_rows = prev.narrow(0, 0, rows);
      gather_previous_states<T>(L, reverse, Columns<const T>{y.data_ptr<T>(), y.stride(0)}, h0, H,
                                t_begin, t_end, prev_rows.data_ptr<T>());
      w_ih.addmm_(dz_t, x.narrow(0, first, rows));
      w_hh.addmm_(dz_t, prev_rows);
    }
    if (bias.defined()) bias.add_(dz_t.sum(1));
  }
};

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> elman_layer_backward_cpu(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& output,
    const std::optional<Tensor>& batch_sizes, bool relu, std::array<bool, 4> output_mask) {
  constexpr const char* op = "rnnkern::elman_layer_backward";
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LayerShape s = check_backward_args(op, grad_output, grad_h_n, input, hx, weight_ih,
                                           weight_hh, output, batch_sizes)
                           .shape;
  check_cpu(op, input);
  const SequenceLayout& L = s.layout;
  const int64_t H = s.hidden, D = s.directions, N = L.total_rows;
  const auto [need_input, need_hx, need_weights, need_bias] = output_mask;
  const bool need_sums = need_weights || need_bias;

  const Tensor x = input.reshape({N, s.input_size});
  const Tensor y = output.reshape({N, D * H}).contiguous();
  const Tensor dy = grad_output.reshape({N, D * H}).contiguous();
  const Tensor h0 = hx.contiguous();
  Tensor dz = at::empty({N, D * H}, input.options());
  Tensor dhx = grad_h_n.contiguous().clone();
  // What autograd did not ask for comes back empty (a new tensor each: outputs must not alias).
  auto none = [&] { return at::empty({0}, input.options()); };
  const Tensor grad_w_ih = need_weights ? at::zeros({D, H, s.input_size}, input.options()) : none();
  const Tensor grad_w_hh = need_weights ? at::zeros({D, H, H}, input.options()) : none();
  const Tensor grad_bias = need_bias ? at::zeros({D, H}, input.options()) : none();

  Tensor grad_input;
  auto input_gradient = [&] {
    if (need_input)
      grad_input = at::mm(dz, weight_ih.reshape({D * H, s.input_size})).view(input.sizes());
  };
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "elman_layer_backward_cpu", [&] {
    const Kernels<scalar_t>& k = kernels<scalar_t>();
    auto recur = [&](int64_t d, const auto& after_step) {
      Tensor dstate = dhx.select(0, d);
      backward_direction<scalar_t>(
          k, L, /*reverse=*/d == 1, activation(relu), weight_hh.select(0, d),
          Columns<const scalar_t>{dy.data_ptr<scalar_t>() + d * H, D * H},
          Columns<const scalar_t>{y.data_ptr<scalar_t>() + d * H, D * H},
          Columns<scalar_t>{dz.data_ptr<scalar_t>() + d * H, D * H}, dz, d * H, dstate, after_step);
    };
    std::vector<WeightGrads<scalar_t>> sums;
    if (need_sums) {
      const int64_t block_rows_max = pipelined(s) ? kPipelineStepsPerBlock * L.batch : N;
      for (int64_t d = 0; d < D; ++d)
        sums.push_back(WeightGrads<scalar_t>{
            L, d == 1, x, dz.narrow(1, d * H, H), y.narrow(1, d * H, H),
            h0.select(0, d).data_ptr<scalar_t>(), need_weights ? grad_w_ih.select(0, d) : Tensor(),
            need_weights ? grad_w_hh.select(0, d) : Tensor(),
            need_bias ? grad_bias.select(0, d) : Tensor(),
            need_weights ? at::empty({std::max<int64_t>(block_rows_max, 1), H}, input.options())
                         : Tensor()});
    }

    if (!pipelined(s) || !need_sums) {
      for_each_direction(D, [&](int64_t d) { recur(d, [](int64_t) {}); });
      for (auto& g : sums) g.add_steps(0, L.steps);
      input_gradient();
    } else {
      // One direction, visited t = T-1 .. 0: block j is steps [T - 32 (j + 1), T - 32 j).
      constexpr int64_t S = kPipelineStepsPerBlock;
      FinishedBlocks blocks(block_count(L.steps, S));
      auto add_block = [&](int64_t j) {
        sums[0].add_steps(std::max<int64_t>(0, L.steps - (j + 1) * S), L.steps - j * S);
      };
      with_helper_thread(
          [&] {
            blocks.start();
            try {
              recur(0, [&](int64_t t) {
                if ((L.steps - t) % S == 0 || t == 0) blocks.finished((L.steps - 1 - t) / S);
              });
            } catch (...) {
              blocks.fail();
              throw;
            }
            input_gradient();  // while the helper is still on the weight gradients
            blocks.finish(add_block);
          },
          [&] { blocks.help(add_block); });
    }
  });

  if (!need_input) grad_input = none();
  if (!need_hx) dhx = none();
  return {grad_input, dhx, grad_w_ih, grad_w_hh, grad_bias};
}

}  // namespace rnnkern::cpu
