// rnnkern._testing: a test-only extension module (never imported by rnnkern itself) that lets the
// tests reach what the production module does not expose: the persistent CUDA kernels' launch plan
// for any device (tests/cuda/test_launch_plan.py) and their CPU emulation
// (tests/cuda/test_persistent_emulation.py).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "../cuda/persistent_plan.h"
#include "../layer/layer_args.h"
#include "emulate_persistent.h"

namespace rnnkern::persistent {
namespace {

namespace py = pybind11;
using at::Tensor;

// A device as the tests describe it: (sm_count, shared_bytes_per_block, max_threads, cooperative).
using DeviceTuple = std::tuple<int, int64_t, int, bool>;

DeviceLimits limits_of(const DeviceTuple& d) {
  return {std::get<0>(d), std::get<1>(d), std::get<2>(d), std::get<3>(d)};
}

std::pair<LaunchPlan, std::string> make_plan(const ProblemShape& shape, const DeviceTuple& device,
                                             const std::string& algorithm) {
  Algorithm forced{};
  const bool is_forced = parse_algorithm(algorithm, &forced);
  const char* why_not = "";
  LaunchPlan plan = plan_launch(shape, limits_of(device), is_forced ? &forced : nullptr, &why_not);
  return {plan, plan.algorithm == Algorithm::kPerStep ? why_not : ""};
}

py::dict plan_as_dict(int64_t hidden, int64_t batch, int64_t directions, int64_t weight_bytes,
                      int64_t state_bytes, const DeviceTuple& device,
                      const std::string& algorithm) {
  const auto [p, why_not] =
      make_plan({hidden, batch, directions, weight_bytes, state_bytes}, device, algorithm);
  py::dict d;
  d["algorithm"] = algorithm_name(p.algorithm);
  d["why_not"] = why_not;
  for (const auto& [name, value] : plan_sizes(p)) d[py::str(name)] = value;
  return d;
}

// For every (block, thread, m) of the plan, the output it owns: (direction, hidden row, batch
// entry), or (-1, -1, -1).
Tensor plan_owners(int64_t hidden, int64_t batch, int64_t directions, int64_t weight_bytes,
                   int64_t state_bytes, const DeviceTuple& device, const std::string& algorithm) {
  const LaunchPlan p =
      make_plan({hidden, batch, directions, weight_bytes, state_bytes}, device, algorithm).first;
  if (p.algorithm == Algorithm::kPerStep) return at::empty({0, 3}, at::kLong);
  Tensor owners = at::empty({p.blocks() * p.threads * kMaxOutputsPerThread, 3}, at::kLong);
  auto a = owners.accessor<int64_t, 2>();
  int64_t n = 0;
  for (int64_t b = 0; b < p.blocks(); ++b) {
    const BlockView v = block_view(p, b);
    for (int th = 0; th < p.threads; ++th) {
      for (int m = 0; m < kMaxOutputsPerThread; ++m, ++n) {
        const Owned o = owned_output(p, v, th, m);
        // Every lane of a group owns its group's outputs; count each output once, at lane 0.
        const bool counted = o.valid && th % p.split == 0;
        a[n][0] = counted ? v.direction : -1;
        a[n][1] = counted ? v.r0 + o.row : -1;
        a[n][2] = counted ? v.b0 + o.batch : -1;
      }
    }
  }
  return owners;
}

template <typename S>
RecurrenceParams<S, S> params_for(const LaunchPlan& plan, const std::vector<Tensor>& w_hh,
                                  const SequenceLayout& layout, bool packed, bool relu) {
  RecurrenceParams<S, S> p;
  p.plan = plan;
  for (size_t d = 0; d < w_hh.size(); ++d) p.w_hh[d] = w_hh[d].data_ptr<S>();
  p.ld = plan.directions * plan.hidden;
  // Dense input leaves the tables out, as the CUDA forward does: the kernels then compute them.
  p.rows = packed ? layout.rows.data() : nullptr;
  p.offset = packed ? layout.offset.data() : nullptr;
  p.steps = layout.steps;
  p.relu = relu;
  return p;
}

void check_inputs(const Tensor& rows2d, const Tensor& state, const std::vector<Tensor>& w_hh) {
  TORCH_CHECK(rows2d.dim() == 2 && state.dim() == 3, "expected (N, D*H) and (D, B, H) tensors");
  TORCH_CHECK(rows2d.scalar_type() == at::kFloat || rows2d.scalar_type() == at::kDouble,
              "emulation runs float32 and float64");
  TORCH_CHECK(int64_t(w_hh.size()) == state.size(0), "one W_hh per direction");
  TORCH_CHECK(rows2d.size(1) == state.size(0) * state.size(2), "rows must be D * H wide");
}

// What both emulated recurrences start from: the plan (which must be persistent), the step table
// and an exchange buffer poisoned with NaN, so that a read of state nobody wrote shows up.
struct Emulation {
  LaunchPlan plan;
  SequenceLayout layout;  // the layer driver's (csrc/layer/layer_args.h)
  bool packed;
  Tensor exchange;
};
Emulation prepare(const Tensor& rows2d, const Tensor& state, std::vector<Tensor>& w_hh,
                  const std::optional<Tensor>& batch_sizes, const DeviceTuple& device,
                  const std::string& algorithm) {
  check_inputs(rows2d, state, w_hh);
  const int64_t D = state.size(0), B = state.size(1), H = state.size(2);
  const int64_t elem = int64_t(rows2d.element_size());
  const auto [plan, why_not] = make_plan({H, B, D, elem, elem}, device, algorithm);
  TORCH_CHECK(plan.algorithm != Algorithm::kPerStep, "no persistent plan: ", why_not);
  for (auto& w : w_hh) w = w.contiguous();
  const int64_t N = rows2d.size(0);
  return {
      plan,
      batch_sizes ? packed_layout("emulate", *batch_sizes, N) : dense_layout(B > 0 ? N / B : 0, B),
      batch_sizes.has_value(), at::full({2 * D * B * H}, NAN, rows2d.options())};
}

// Runs the forward recurrence of a persistent kernel, emulated: y = act(projected + ...), h_n.
std::tuple<Tensor, Tensor, std::string> emulate_forward_call(
    const Tensor& projected, const Tensor& hx, std::vector<Tensor> w_hh,
    const std::optional<Tensor>& batch_sizes, bool relu, const DeviceTuple& device,
    const std::string& algorithm) {
  const Emulation e = prepare(projected, hx, w_hh, batch_sizes, device, algorithm);
  // h_n poisoned, so an element the kernel forgets to write shows up.
  Tensor y = projected.contiguous().clone(), h0 = hx.contiguous(), h_n = at::full_like(h0, NAN);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "emulate_forward", [&] {
    auto p = params_for<scalar_t>(e.plan, w_hh, e.layout, e.packed, relu);
    p.y = y.data_ptr<scalar_t>();
    p.state_in = h0.data_ptr<scalar_t>();
    p.state_out = h_n.data_ptr<scalar_t>();
    p.exchange = e.exchange.data_ptr<scalar_t>();
    emulate_forward(p);
  });
  return {y, h_n, algorithm_name(e.plan.algorithm)};
}

// Runs the backward recurrence, emulated: dL/dz for every row, and the gradient of h0.
std::tuple<Tensor, Tensor, std::string> emulate_backward_call(
    const Tensor& y, const Tensor& dy, const Tensor& grad_h_n, std::vector<Tensor> w_hh,
    const std::optional<Tensor>& batch_sizes, bool relu, const DeviceTuple& device,
    const std::string& algorithm) {
  const Emulation e = prepare(y, grad_h_n, w_hh, batch_sizes, device, algorithm);
  const Tensor yc = y.contiguous(), dyc = dy.contiguous(), g = grad_h_n.contiguous();
  // Poisoned, so a row the kernel forgets to write shows up.
  Tensor dz = at::full_like(yc, NAN), dhx = at::full_like(g, NAN);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "emulate_backward", [&] {
    auto p = params_for<scalar_t>(e.plan, w_hh, e.layout, e.packed, relu);
    p.y = const_cast<scalar_t*>(yc.data_ptr<scalar_t>());
    p.dy = dyc.data_ptr<scalar_t>();
    p.dz = dz.data_ptr<scalar_t>();
    p.state_in = g.data_ptr<scalar_t>();
    p.state_out = dhx.data_ptr<scalar_t>();
    p.exchange = e.exchange.data_ptr<scalar_t>();
    emulate_backward(p);
  });
  return {dz, dhx, algorithm_name(e.plan.algorithm)};
}

}  // namespace
}  // namespace rnnkern::persistent

PYBIND11_MODULE(_testing, module) {
  using namespace rnnkern::persistent;
  module.doc() = "rnnkern's test hooks: the persistent kernels' plan and CPU emulation";
  module.attr("max_outputs_per_thread") = kMaxOutputsPerThread;
  module.attr("max_threads") = kMaxThreads;
  module.def(
      "plan_launch", &plan_as_dict,
      "The persistent kernels' launch plan for (hidden, batch, directions, weight_bytes, "
      "state_bytes) on device (sm_count, shared_bytes_per_block, max_threads, cooperative).");
  module.def("plan_owners", &plan_owners,
             "The (direction, row, batch) each (block, thread, m) of a plan owns, -1 for none.");
  module.def("emulate_forward", &emulate_forward_call,
             "The persistent forward recurrence run on the CPU: (y, h_n, algorithm).");
  module.def("emulate_backward", &emulate_backward_call,
             "The persistent backward recurrence run on the CPU: (dz, grad_hx, algorithm).");
}
