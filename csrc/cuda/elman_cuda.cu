// CUDA implementations of rnnkern::elman_layer and rnnkern::elman_layer_backward: the time loops
// the layer driver (csrc/layer/layer_driver.h) runs between its GEMMs, which are the CPU path's.
// The recurrence runs one of three ways, as choose_plan (persistent_launch.h) decides from the
// shape and the device:
//   persistent (kBlock / kGrid): one launch for all steps and both directions, W_hh on chip
//       (persistent_kernels.cuh);
//   per-step: one cuBLAS GEMM (at::addmm_ / at::mm_out on the current stream) and one fused
//       elementwise kernel per step, for hidden sizes whose W_hh does not fit on chip.
//
// NOT YET RUN ON A GPU. It is compiled in CI. rnnkern/_ops.py uses it only when
// RNNKERN_CUDA_KERNELS=1; otherwise CUDA tensors run torch's own RNN (cuDNN) as before.
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "../layer/elman_math.h"
#include "../layer/kernel_dtypes.h"
#include "../layer/layer_driver.h"
#include "persistent_launch.h"

namespace rnnkern::cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

// Grid size for a grid-stride loop over `elements`; at least one block, since a launch with an
// empty grid is an error and empty batches are valid input.
int blocks_for(int64_t elements) {
  return static_cast<int>(std::clamp<int64_t>((elements + kThreads - 1) / kThreads, 1, 65535));
}

// y[r, j] = act(y[r, j]) and state[r, j] = that, for r < rows, j < hidden (y rows at stride ld).
template <typename T>
__global__ void activate_rows_kernel(T* y, int64_t ld, T* state, int64_t rows, int64_t hidden,
                                     bool relu) {
  const int64_t total = rows * hidden;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t r = i / hidden, j = i % hidden;
    const T h = static_cast<T>(activate(static_cast<at::opmath_type<T>>(y[r * ld + j]), relu));
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
    dz[r * ld + j] = static_cast<T>(activation_backward(g, static_cast<O>(y[r * ld + j]), relu));
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

// For every row of steps [t_begin, t_end) of one direction, where its previous state lives: a row
// of the output (>= 0), or row b of h0 (encoded -b - 1). Built on the host from the layout, then
// copied to the device.
Tensor previous_state_sources(const SequenceLayout& L, bool reverse, int64_t t_begin, int64_t t_end,
                              const at::Device& device) {
  std::vector<int64_t> source;
  for (int64_t t = t_begin; t < t_end; ++t) {
    const auto [before, carried] = previous_step(L, reverse, t);
    for (int64_t r = 0; r < L.rows[t]; ++r)
      source.push_back(r < carried ? L.offset[before] + r : -r - 1);
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

// The parts of a persistent launch's parameters that forward and backward share: w_hh holds each
// direction's W_hh (H, H). `keep` holds the tensors the parameters point into until the launch has
// been queued.
template <typename T>
persistent::RecurrenceParams<T, at::opmath_type<T>> recurrence_params(
    const persistent::LaunchPlan& plan, const LayerShape& s, const std::vector<Tensor>& w_hh,
    bool relu, const at::TensorOptions& options, std::vector<Tensor>& keep) {
  using S = at::opmath_type<T>;
  const SequenceLayout& L = s.layout;
  persistent::RecurrenceParams<T, S> p;
  p.plan = plan;
  for (int64_t d = 0; d < s.directions; ++d) {
    keep.push_back(w_hh[d].contiguous());
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

// The forward loop; with barriers_only, the persistent kernel without its mat-vec (a wrong answer,
// timed as the floor a persistent kernel can reach: see _elman_layer_barriers_only below).
void forward_loop(ForwardCall& c, bool barriers_only) {
  const char* op = barriers_only ? "rnnkern::_elman_layer_barriers_only" : "rnnkern::elman_layer";
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  const int64_t H = s.hidden, ld = s.directions * H;
  c.project(0, L.total_rows);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const persistent::LaunchPlan plan = choose_plan(H, L.batch, s.directions, c.x.scalar_type());

  RNNKERN_DISPATCH_CUDA_DTYPES(c.x.scalar_type(), "elman_layer_cuda", [&] {
    if (plan.algorithm != persistent::Algorithm::kPerStep) {
      std::vector<Tensor> keep, w_hh;
      for (int64_t d = 0; d < s.directions; ++d) w_hh.push_back(weight_hh(c.weights, s, d));
      auto p = recurrence_params<scalar_t>(plan, s, w_hh, c.relu, c.x.options(), keep);
      p.y = c.out.data_ptr<scalar_t>();
      p.state_in = c.h0.data_ptr<scalar_t>();
      p.state_out = c.h_n.data_ptr<scalar_t>();
      p.barriers_only = barriers_only;
      if (launch_forward_persistent<scalar_t>(p, stream)) return;
      TORCH_CHECK(!plan.forced, op,
                  ": RNNKERN_CUDA_ALGORITHM=grid, but the cooperative grid would not be resident "
                  "on this GPU");
    }
    TORCH_CHECK(!barriers_only, op, ": the barriers-only floor needs a persistent plan");
    for (int64_t d = 0; d < s.directions; ++d) {
      Tensor state = c.h_n.select(0, d);
      const Tensor w_hh_t = weight_hh(c.weights, s, d).t();
      for (int64_t i = 0; i < L.steps; ++i) {
        const int64_t t = visited_step(L.steps, /*reverse=*/d == 1, i, /*backward=*/false);
        const int64_t n = L.rows[t];
        Tensor y = c.out.narrow(0, L.offset[t], n).narrow(1, d * H, H);
        y.addmm_(state.narrow(0, 0, n), w_hh_t);
        activate_rows_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream>>>(
            y.data_ptr<scalar_t>(), ld, state.data_ptr<scalar_t>(), n, H, c.relu);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
  });
}

// The backward loop: dZ for every row, and the gradient of h0.
void backward_loop(BackwardCall& c) {
  constexpr const char* op = "rnnkern::elman_layer_backward";
  const LayerShape& s = c.shape;
  const SequenceLayout& L = s.layout;
  const int64_t H = s.hidden, ld = s.directions * H;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const persistent::LaunchPlan plan = choose_plan(H, L.batch, s.directions, c.x.scalar_type());

  RNNKERN_DISPATCH_CUDA_DTYPES(c.x.scalar_type(), "elman_layer_backward_cuda", [&] {
    if (plan.algorithm != persistent::Algorithm::kPerStep) {
      std::vector<Tensor> keep, w_hh;
      for (int64_t d = 0; d < s.directions; ++d) w_hh.push_back(c.weight_hh.select(0, d));
      auto p = recurrence_params<scalar_t>(plan, s, w_hh, c.relu, c.x.options(), keep);
      p.y = c.y.data_ptr<scalar_t>();
      p.dy = c.dy.data_ptr<scalar_t>();
      p.dz = c.dz.data_ptr<scalar_t>();
      p.state_in = c.grad_h_n.data_ptr<scalar_t>();  // never grad_h0, which the kernel writes
      p.state_out = c.grad_h0.data_ptr<scalar_t>();
      if (launch_backward_persistent<scalar_t>(p, stream)) return;
      TORCH_CHECK(!plan.forced, op,
                  ": RNNKERN_CUDA_ALGORITHM=grid, but the cooperative grid would not be resident "
                  "on this GPU");
    }
    for (int64_t d = 0; d < s.directions; ++d) {
      Tensor dstate = c.grad_h0.select(0, d);
      const Tensor w_hh = c.weight_hh.select(0, d);
      for (int64_t i = 0; i < L.steps; ++i) {
        const int64_t t = visited_step(L.steps, /*reverse=*/d == 1, i, /*backward=*/true);
        const int64_t n = L.rows[t], at_row = L.offset[t] * ld + d * H;
        activation_backward_kernel<scalar_t><<<blocks_for(n * H), kThreads, 0, stream>>>(
            dstate.data_ptr<scalar_t>(), c.dy.data_ptr<scalar_t>() + at_row,
            c.y.data_ptr<scalar_t>() + at_row, ld, c.dz.data_ptr<scalar_t>() + at_row, n, H,
            c.relu);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        Tensor dstate_rows = dstate.narrow(0, 0, n);
        at::mm_out(dstate_rows, c.dz.narrow(0, L.offset[t], n).narrow(1, d * H, H), w_hh);
      }
    }
  });
}

// The driver's GatherPrevious on the GPU: one gather kernel over a table of source rows.
void gather_previous(const BackwardCall& c, int64_t d, int64_t t_begin, int64_t t_end,
                     Tensor& prev) {
  const int64_t H = c.shape.hidden, ld = c.y.size(1), rows = prev.size(0);
  const Tensor sources =
      previous_state_sources(c.shape.layout, d == 1, t_begin, t_end, c.x.device());
  const auto stream = at::cuda::getCurrentCUDAStream();
  RNNKERN_DISPATCH_CUDA_DTYPES(c.y.scalar_type(), "gather_previous_cuda", [&] {
    gather_previous_kernel<scalar_t><<<blocks_for(rows * H), kThreads, 0, stream>>>(
        sources.data_ptr<int64_t>(), c.y.data_ptr<scalar_t>() + d * H, ld,
        c.h0.select(0, d).data_ptr<scalar_t>(), prev.data_ptr<scalar_t>(), rows, H);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::tuple<Tensor, Tensor> elman_layer_cuda(const Tensor& input, const Tensor& hx,
                                            at::TensorList weights,
                                            const std::optional<Tensor>& batch_sizes, bool relu) {
  return run_forward("rnnkern::elman_layer", c10::DeviceType::CUDA, input, hx, weights, batch_sizes,
                     relu, [](ForwardCall& c) { forward_loop(c, false); });
}

std::tuple<Tensor, Tensor> elman_layer_barriers_only_cuda(const Tensor& input, const Tensor& hx,
                                                          at::TensorList weights,
                                                          const std::optional<Tensor>& batch_sizes,
                                                          bool relu) {
  return run_forward("rnnkern::_elman_layer_barriers_only", c10::DeviceType::CUDA, input, hx,
                     weights, batch_sizes, relu, [](ForwardCall& c) { forward_loop(c, true); });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> elman_layer_backward_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& weight_ih, const Tensor& weight_hh, const Tensor& output,
    const std::optional<Tensor>& batch_sizes, bool relu, std::array<bool, 4> output_mask) {
  return run_backward("rnnkern::elman_layer_backward", c10::DeviceType::CUDA, grad_output, grad_h_n,
                      input, hx, weight_ih, weight_hh, output, batch_sizes, relu, output_mask,
                      backward_loop, gather_previous);
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
