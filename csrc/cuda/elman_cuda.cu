// CUDA implementations of rnnkern::elman_layer and rnnkern::elman_layer_backward.
//
// Around the recurrence, the GEMMs over all steps are the CPU path's (see csrc/cpu/): the input
// projection with both biases folded in before it, the weight and input gradients after it. The
// recurrence itself runs one of three ways, as choose_plan (persistent.h) decides from the shape
// and the device:
//   persistent (kBlock / kGrid): one launch for all steps and both directions, W_hh on chip
//       (persistent_kernels.cuh);
//   per-step: one cuBLAS GEMM (at::addmm_ / at::mm_out on the current stream) and one fused
//       elementwise kernel per step, for hidden sizes whose W_hh does not fit on chip.
//
// NOT YET RUN ON A GPU. It is compiled in CI. rnnkern/_ops.py uses it only when
// RNNKERN_CUDA_KERNELS=1; otherwise CUDA tensors run torch's own RNN (cuDNN) as before.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "../elman_layer_args.h"
#include "persistent.h"

namespace rnnkern::cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

// Grid size for a grid-stride loop over `elements`; at least one block, since a launch with an
// empty grid is an error and empty batches are valid input.
int blocks_for(int64_t elements) {
  return static_cast<int>(std::clamp<int64_t>((elements + kThreads - 1) / kThreads, 1, 65535));
}

template <typename T>
__device__ __forceinline__ at::opmath_type<T> activate(at::opmath_type<T> z, bool relu) {
  // relu keeps NaN (z <= 0 is false for NaN), as torch.relu does.
  return relu ? (z <= 0 ? at::opmath_type<T>(0) : z) : ::tanh(z);
}

// y[r, j] = act(y[r, j]) and state[r, j] = that, for r < rows, j < hidden (y rows at stride ld).
template <typename T>
__global__ void activate_rows_kernel(T* y, int64_t ld, T* state, int64_t rows, int64_t hidden,
                                     bool relu) {
  const int64_t total = rows * hidden;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t r = i / hidden, j = i % hidden;
    const T h = static_cast<T>(activate<T>(static_cast<at::opmath_type<T>>(y[r * ld + j]), relu));
    y[r * ld + j] = h;
    state[i] = h;
  }
}

// dz[r, j] = (dstate[r, j] + dy[r, j]) * act'(y[r, j]), act' written in terms of the output y.
template <typename T>
__global__ void activation_backward_kernel(const T* dstate, const T* dy, const T* y, int64_t ld,
                                           T* dz, int64_t rows, int64_t hidden, bool relu) {
  using O = at::opmath_type<T>;
  const int64_t total = rows * hidden;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t r = i / hidden, j = i % hidden;
    const O g = static_cast<O>(dstate[i]) + static_cast<O>(dy[r * ld + j]);
    const O h = static_cast<O>(y[r * ld + j]);
    dz[r * ld + j] = static_cast<T>(relu ? (h <= 0 ? O(0) : g) : g * (O(1) - h * h));
  }
}

// prev[i, :] = source[i] >= 0 ? y[source[i], :] : h0[-source[i] - 1, :] (y rows at stride ld).
template <typename T>
__global__ void gather_previous_kernel(const int64_t* source, const T* y, int64_t ld, const T* h0,
                                       T* prev, int64_t rows, int64_t hidden) {
  const int64_t total = rows * hidden;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t r = i / hidden, j = i % hidden;
    const int64_t s = source[r];
    prev[i] = s >= 0 ? y[s * ld + j] : h0[(-s - 1) * hidden + j];
  }
}

// A host vector on the device, copied from pinned memory without waiting for the stream (a
// pageable copy would synchronise it, and could not be captured in a CUDA graph).
Tensor to_device(const std::vector<int64_t>& values, const at::Device& device) {
  return at::tensor(values, at::TensorOptions().dtype(at::kLong))
      .pin_memory()
      .to(device, /*non_blocking=*/true);
}

// For every row of one direction, where its previous state lives: a row of the output (>= 0), or
// row b of h0 (encoded -b - 1). Built on the host from the layout, then copied to the device.
Tensor previous_state_sources(const SequenceLayout& L, bool reverse, const at::Device& device) {
  std::vector<int64_t> source(L.total_rows);
  for (int64_t t = 0; t < L.steps; ++t) {
    const auto [before, carried] = previous_step(L, reverse, t);
    for (int64_t r = 0; r < L.rows[t]; ++r)
      source[L.offset[t] + r] = r < carried ? L.offset[before] + r : -r - 1;
  }
  return to_device(source, device);
}

// rows[t] and offset[t] of a packed layout on the device, for the persistent kernels (which compute
// them for dense input).
Tensor device_steps(const SequenceLayout& L, const at::Device& device) {
  std::vector<int64_t> steps(L.rows);
  steps.insert(steps.end(), L.offset.begin(), L.offset.end());
  return to_device(steps, device);
}

// The parts of a persistent launch's parameters that forward and backward share. `keep` holds the
// tensors the parameters point into until the launch has been queued.
template <typename T>
persistent::RecurrenceParams<T, at::opmath_type<T>> recurrence_params(
    const persistent::LaunchPlan& plan, const LayerShape& s, at::TensorList weights, bool relu,
    const at::TensorOptions& options, std::vector<Tensor>& keep) {
  using S = at::opmath_type<T>;
  const SequenceLayout& L = s.layout;
  persistent::RecurrenceParams<T, S> p;
  p.plan = plan;
  for (int64_t d = 0; d < s.directions; ++d) {
    keep.push_back(weight_hh(weights, s, d).contiguous());
    p.w_hh[d] = keep.back().data_ptr<T>();
  }
  p.ld = s.directions * s.hidden;
  if (s.packed) {
    keep.push_back(device_steps(L, options.device()));
    p.rows = keep.back().data_ptr<int64_t>();
    p.offset = p.rows + L.steps;
  }
  if (plan.algorithm == persistent::Algorithm::kGrid) {
    keep.push_back(at::empty({2 * s.directions * L.batch * s.hidden},
                             options.dtype(c10::CppTypeToScalarType<S>::value)));
    p.exchange = keep.back().data_ptr<S>();
  }
  p.steps = L.steps;
  p.relu = relu;
  return p;
}

void check_cuda(const char* op, const Tensor& input) {
  TORCH_CHECK(input.is_cuda(), op, ": expected CUDA tensors, got ", input.device());
}

// The forward; with barriers_only, the persistent kernel without its mat-vec (a wrong answer, timed
// as the floor a persistent kernel can reach: see _elman_layer_barriers_only below).
std::tuple<Tensor, Tensor> elman_forward(const char* op, const Tensor& input, const Tensor& hx,
                                         at::TensorList weights,
                                         const std::optional<Tensor>& batch_sizes, bool relu,
                                         bool barriers_only) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const LayerShape s = check_layer_args(op, input, hx, weights, batch_sizes);
  check_cuda(op, input);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const SequenceLayout& L = s.layout;
  const int64_t H = s.hidden, D = s.directions, ld = D * H;

  const Tensor x = input.reshape({L.total_rows, s.input_size});
  const Tensor w_ih_t = stack_directions(s, weights, weight_ih).t();
  Tensor out =
      s.has_bias
          ? at::addmm(stack_directions(s, weights, bias_ih) + stack_directions(s, weights, bias_hh),
                      x, w_ih_t)
          : at::mm(x, w_ih_t);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const persistent::LaunchPlan plan = choose_plan(H, L.batch, D, input.scalar_type());
  Tensor h_n;

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "elman_layer_cuda", [&] {
        if (plan.algorithm != persistent::Algorithm::kPerStep) {
          std::vector<Tensor> keep;
          auto p = recurrence_params<scalar_t>(plan, s, weights, relu, input.options(), keep);
          keep.push_back(hx.contiguous());
          h_n = at::empty_like(keep.back());
          p.y = out.data_ptr<scalar_t>();
          p.state_in = keep.back().data_ptr<scalar_t>();
          p.state_out = h_n.data_ptr<scalar_t>();
          p.barriers_only = barriers_only;
          if (launch_forward_persistent<scalar_t>(p, stream)) return;
          TORCH_CHECK(!plan.forced, op,
                      ": RNNKERN_CUDA_ALGORITHM=grid, but the cooperative grid "
                      "would not be resident on this GPU");
        }
        TORCH_CHECK(!barriers_only, op, ": the barriers-only floor needs a persistent plan");
        h_n = hx.contiguous().clone();
        for (int64_t d = 0; d < D; ++d) {
          Tensor state = h_n.select(0, d);
          const Tensor w_hh_t = weight_hh(weights, s, d).t();
          for (int64_t i = 0; i < L.steps; ++i) {
            const int64_t t = d == 1 ? L.steps - 1 - i : i;
            const int64_t n = L.rows[t];
            Tensor y = out.narrow(0, L.offset[t], n).narrow(1, d * H, H);
            y.addmm_(state.narrow(0, 0, n), w_hh_t);
            activate_rows_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream>>>(
                y.data_ptr<scalar_t>(), ld, state.data_ptr<scalar_t>(), n, H, relu);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          }
        }
      });
  if (!s.packed) out = out.view({L.steps, L.batch, ld});
  return {out, h_n};
}

std::tuple<Tensor, Tensor> elman_layer_cuda(const Tensor& input, const Tensor& hx,
                                            at::TensorList weights,
                                            const std::optional<Tensor>& batch_sizes, bool relu) {
  return elman_forward("rnnkern::elman_layer", input, hx, weights, batch_sizes, relu, false);
}

std::tuple<Tensor, Tensor> elman_layer_barriers_only_cuda(const Tensor& input, const Tensor& hx,
                                                          at::TensorList weights,
                                                          const std::optional<Tensor>& batch_sizes,
                                                          bool relu) {
  return elman_forward("rnnkern::_elman_layer_barriers_only", input, hx, weights, batch_sizes, relu,
                       true);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> elman_layer_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& output,
    const std::optional<Tensor>& batch_sizes, bool relu, std::array<bool, 4> output_mask) {
  constexpr const char* op = "rnnkern::elman_layer_backward";
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const BackwardLayer args = check_backward_args(op, grad_output, grad_h_n, input, hx, weight_ih,
                                                 weight_hh, output, batch_sizes);
  const LayerShape& s = args.shape;
  const std::vector<Tensor>& weights = args.weights;
  check_cuda(op, input);
  const c10::cuda::CUDAGuard device_guard(input.device());
  const SequenceLayout& L = s.layout;
  const int64_t H = s.hidden, D = s.directions, N = L.total_rows, ld = D * H;
  const auto [need_input, need_hx, need_weights, need_bias] = output_mask;

  const Tensor x = input.reshape({N, s.input_size});
  const Tensor y = output.reshape({N, ld}).contiguous();
  const Tensor dy = grad_output.reshape({N, ld}).contiguous();
  const Tensor h0 = hx.contiguous();
  Tensor dz = at::empty({N, ld}, input.options());
  Tensor dhx = grad_h_n.contiguous().clone();
  // What autograd did not ask for comes back empty (a new tensor each: outputs must not alias).
  auto none = [&] { return at::empty({0}, input.options()); };
  Tensor grad_w_ih = need_weights ? at::empty({D, H, s.input_size}, input.options()) : none();
  Tensor grad_w_hh = need_weights ? at::empty({D, H, H}, input.options()) : none();
  Tensor grad_bias = need_bias ? at::empty({D, H}, input.options()) : none();
  const auto stream = at::cuda::getCurrentCUDAStream();

  const persistent::LaunchPlan plan = choose_plan(H, L.batch, D, input.scalar_type());

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "elman_layer_backward_cuda", [&] {
        // The recurrence: dZ for every row, and the gradient of h0.
        bool done = false;
        if (plan.algorithm != persistent::Algorithm::kPerStep) {
          std::vector<Tensor> keep;
          auto p = recurrence_params<scalar_t>(plan, s, weights, relu, input.options(), keep);
          keep.push_back(grad_h_n.contiguous());  // never dhx, which is a copy
          p.y = const_cast<scalar_t*>(y.data_ptr<scalar_t>());
          p.dy = dy.data_ptr<scalar_t>();
          p.dz = dz.data_ptr<scalar_t>();
          p.state_in = keep.back().data_ptr<scalar_t>();
          p.state_out = dhx.data_ptr<scalar_t>();
          done = launch_backward_persistent<scalar_t>(p, stream);
          TORCH_CHECK(done || !plan.forced, op,
                      ": RNNKERN_CUDA_ALGORITHM=grid, but the "
                      "cooperative grid would not be resident on this GPU");
        }
        for (int64_t d = 0; d < D && !done; ++d) {
          Tensor dstate = dhx.select(0, d);
          const Tensor w_hh = weight_hh.select(0, d);
          // The reverse of processing order: forward visits T-1..0, reverse 0..T-1.
          for (int64_t i = 0; i < L.steps; ++i) {
            const int64_t t = d == 1 ? i : L.steps - 1 - i;
            const int64_t n = L.rows[t], first = L.offset[t];
            activation_backward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream>>>(
                dstate.data_ptr<scalar_t>(), dy.data_ptr<scalar_t>() + first * ld + d * H,
                y.data_ptr<scalar_t>() + first * ld + d * H, ld,
                dz.data_ptr<scalar_t>() + first * ld + d * H, n, H, relu);
            C10_CUDA_KERNEL_LAUNCH_CHECK();
            Tensor dstate_rows = dstate.narrow(0, 0, n);
            at::mm_out(dstate_rows, dz.narrow(0, first, n).narrow(1, d * H, H), w_hh);
          }
        }
        // The weight gradients, as a few GEMMs over all steps: no atomics, so they are the same
        // from run to run.
        for (int64_t d = 0; d < D; ++d) {
          const Tensor dz_d = dz.narrow(1, d * H, H);
          if (need_bias) {
            Tensor grad_bias_d = grad_bias.select(0, d);
            at::sum_out(grad_bias_d, dz_d, 0);
          }
          if (!need_weights) continue;
          const Tensor sources = previous_state_sources(L, d == 1, input.device());
          Tensor prev = at::empty({N, H}, input.options());
          gather_previous_kernel<scalar_t><<<blocks_for(N * H), kThreads, 0, stream>>>(
              sources.data_ptr<int64_t>(), y.data_ptr<scalar_t>() + d * H, ld,
              h0.select(0, d).data_ptr<scalar_t>(), prev.data_ptr<scalar_t>(), N, H);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          Tensor grad_w_ih_d = grad_w_ih.select(0, d);
          Tensor grad_w_hh_d = grad_w_hh.select(0, d);
          at::mm_out(grad_w_ih_d, dz_d.t(), x);
          at::mm_out(grad_w_hh_d, dz_d.t(), prev);
        }
      });

  const Tensor grad_input =
      need_input ? at::mm(dz, weight_ih.reshape({ld, s.input_size})).view(input.sizes()) : none();
  if (!need_hx) dhx = none();
  return {grad_input, dhx, grad_w_ih, grad_w_hh, grad_bias};
}

}  // namespace

// Not part of the API: the persistent forward without its mat-vec, which the GPU benchmark times
// as the floor (the same barriers and loads) for the per-step time at batch 1.
TORCH_LIBRARY_FRAGMENT(rnnkern, m) {
  m.def(
      "_elman_layer_barriers_only(Tensor input, Tensor hx, Tensor[] weights, Tensor? batch_sizes,"
      " bool relu) -> (Tensor output, Tensor h_n)");
}

TORCH_LIBRARY_IMPL(rnnkern, CUDA, m) {
  m.impl("elman_layer", &elman_layer_cuda);
  m.impl("_elman_layer_barriers_only", &elman_layer_barriers_only_cuda);
  m.impl("elman_layer_backward", &elman_layer_backward_cuda);
}

}  // namespace rnnkern::cuda
