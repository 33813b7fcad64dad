// rnnkern.RNN's plain eager call on dense CPU input, in C++: see eager_rnn.h. Each step below names
// the Python it stands for (rnnkern/modules.py, rnnkern/functional.py); keep the two in step.
#include "eager_rnn.h"

#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/dropout.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <algorithm>

#include "cpu/elman_cpu.h"
#include "layer/kernel_dtypes.h"
#include "op_calls.h"

namespace rnnkern {
namespace {

using at::Tensor;

bool on_cpu_as(const Tensor& t, at::ScalarType dtype) {
  return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided && !t.is_nested() &&
         t.scalar_type() == dtype;
}

// RNN._check_dims, _forward_args_are_fine and _eager_layers' dtype tests all pass, autocast casts
// nothing, and the CPU has a kernel for the dtype: the Python path would run the fused operators,
// exactly as below.
bool python_path_runs_kernels(const Tensor& input, const std::optional<Tensor>& hx,
                              const std::vector<Tensor>& weights, const StackConfig& c) {
  static const std::vector<at::ScalarType> cpu_dtypes = kernel_dtypes(c10::DeviceType::CPU);
  const at::ScalarType dtype = input.scalar_type();
  if (std::find(cpu_dtypes.begin(), cpu_dtypes.end(), dtype) == cpu_dtypes.end()) return false;
  if (!on_cpu_as(input, dtype) || (input.dim() != 2 && input.dim() != 3)) return false;
  if (input.size(-1) != c.input_size) return false;
  if (hx && (!on_cpu_as(*hx, dtype) || hx->dim() != input.dim())) return false;
  const int64_t units = c.num_layers * (c.bidirectional ? 2 : 1);  // layers x directions
  const auto n = static_cast<int64_t>(weights.size());
  if (units <= 0 || (n != 2 * units && n != 4 * units)) return false;
  for (const Tensor& w : weights)
    if (!on_cpu_as(w, dtype)) return false;
  // F.dropout raises outside [0, 1]; the Python path says so.
  if (!(c.dropout >= 0 && c.dropout <= 1)) return false;
  // Under autocast the Python path casts to autocast's dtype, unless every tensor is float64.
  return dtype == at::kDouble || !at::autocast::is_autocast_enabled(at::kCPU);
}

// F.dropout(output, p, training=True) between layers, where nn.RNN applies it.
Tensor between_layers(Tensor output, int64_t layer, const StackConfig& c) {
  if (c.dropout > 0 && c.training && layer < c.num_layers - 1)
    return at::dropout(output, c.dropout, /*train=*/true);
  return output;
}

// Streaming (a model called once per step, its state carried from call to call), where a call's
// fixed costs are all there is: one cell operator call per layer and direction (a few
// microseconds) instead of the layer operator (tens at one step: PERFORMANCE.md, version 9), with
// nn.RNN's dropout between layers. step (N, H_in), h (num_layers * D, N, H). The output and h_n
// are tensors of their own, as the layer path's are.
std::tuple<Tensor, Tensor> one_step(const Tensor& step, const Tensor& h,
                                    const std::vector<Tensor>& weights, const StackConfig& c) {
  const int64_t directions = c.bidirectional ? 2 : 1;
  const auto per_direction = static_cast<int64_t>(weights.size()) / (c.num_layers * directions);
  const std::vector<Tensor> states = h.unbind(0);
  std::vector<Tensor> finals;
  Tensor layer_input = step;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    std::vector<Tensor> outputs;
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t k = layer * directions + d;
      const Tensor* w = weights.data() + k * per_direction;
      std::optional<Tensor> b_ih, b_hh;
      if (per_direction == 4) b_ih = w[2], b_hh = w[3];
      outputs.push_back(call_elman_cell(layer_input, states[k], w[0], w[1], b_ih, b_hh, c.relu));
    }
    finals.insert(finals.end(), outputs.begin(), outputs.end());
    layer_input = between_layers(directions == 1 ? outputs[0] : at::cat(outputs, 1), layer, c);
  }
  return {layer_input, at::stack(finals)};
}

// Whether a tensor dispatches as a plain CPU tensor does: its dispatch keys are those of a dense
// CPU tensor, or fewer (an inference tensor has no autograd keys). Not a Python subclass (the
// Python key), a functional or lazily negated or conjugated view, or a zero tensor, which the
// dispatcher hands to their own handlers first. (The keys are spelled out rather than read off a
// tensor made here: one made while a thread-local mode such as functionalization is on has that
// mode's key too.)
bool plain_tensor(const Tensor& t) {
  static const c10::DispatchKeySet plain{c10::DispatchKey::CPU, c10::DispatchKey::ADInplaceOrView,
                                         c10::DispatchKey::AutogradCPU,
                                         c10::DispatchKey::AutocastCPU};
  return plain.has_all(t.key_set());
}

// Whether stacked layers may run two at a time as a wavefront on two cores
// (cpu::elman_layer_pair_cpu), which reads the tensors' data without the dispatcher: one
// direction, no autograd graph wanted, no dropout between layers, no Python dispatch mode (a mode
// sees every operator the Python path calls: the layer operator per layer), plain tensors only.
bool pairs_allowed(const Tensor& x, const Tensor& h, const std::vector<Tensor>& weights,
                   const StackConfig& c) {
  if (c.bidirectional || c.num_layers < 2 || (c.dropout > 0 && c.training) ||
      c10::impl::TorchDispatchModeTLS::stack_len() > 0)
    return false;
  const bool grad = at::GradMode::is_enabled();
  auto suits = [grad](const Tensor& t) { return plain_tensor(t) && !(grad && t.requires_grad()); };
  return suits(x) && suits(h) && std::all_of(weights.begin(), weights.end(), suits);
}

// elman_rnn: one layer operator call per layer, on sequence-first x (L, N, H_in), or two layers at
// a time where pairs_allowed and the shapes run as a wavefront (the same bits).
std::tuple<Tensor, Tensor> layers(const Tensor& x, const Tensor& h,
                                  const std::vector<Tensor>& weights, const StackConfig& c) {
  const int64_t directions = c.bidirectional ? 2 : 1;
  const auto per_layer = static_cast<int64_t>(weights.size()) / c.num_layers;
  const bool pairs = x.device().is_cpu() && pairs_allowed(x, h, weights, c);
  std::vector<Tensor> finals;
  Tensor layer_input = x;
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    const at::TensorList w(weights.data() + layer * per_layer, per_layer);
    if (pairs && layer + 1 < c.num_layers) {
      const at::TensorList upper(w.data() + per_layer, per_layer);
      auto pair = cpu::elman_layer_pair_cpu(layer_input, h.slice(0, layer, layer + 1), w,
                                            h.slice(0, layer + 1, layer + 2), upper, c.relu);
      if (pair) {
        auto& [output, h_n_lower, h_n_upper] = *pair;
        finals.push_back(h_n_lower);
        finals.push_back(h_n_upper);
        layer_input = output;
        ++layer;
        continue;
      }
    }
    const Tensor layer_h =
        c.num_layers == 1 ? h : h.slice(0, layer * directions, (layer + 1) * directions);
    auto [output, h_n] = call_elman_layer(layer_input, layer_h, w, std::nullopt, c.relu);
    finals.push_back(h_n);
    layer_input = between_layers(output, layer, c);
  }
  return {layer_input, c.num_layers == 1 ? finals[0] : at::cat(finals, 0)};
}

}  // namespace

std::optional<std::tuple<Tensor, Tensor>> eager_rnn(const Tensor& input,
                                                    const std::optional<Tensor>& hx,
                                                    const std::vector<Tensor>& weights,
                                                    const StackConfig& c) {
  if (!python_path_runs_kernels(input, hx, weights, c)) return std::nullopt;
  // _forward_tensor: an unbatched call runs as a batch of one.
  const bool batched = input.dim() == 3;
  const int64_t batch_dim = c.batch_first ? 0 : 1;
  const int64_t step_dim = 1 - batch_dim;
  const Tensor data = batched ? input : input.unsqueeze(batch_dim);
  const int64_t batch = data.size(batch_dim);
  const int64_t states = c.num_layers * (c.bidirectional ? 2 : 1);
  // _layers: hx given, of nn.RNN's shape, or one row of zeros expanded.
  Tensor h;
  if (hx) {
    h = batched ? *hx : hx->unsqueeze(1);
    if (h.size(0) != states || h.size(1) != batch || h.size(2) != c.hidden_size)
      return std::nullopt;
  } else {
    h = at::zeros({1, 1, c.hidden_size}, at::TensorOptions().dtype(data.scalar_type()))
            .expand({states, batch, c.hidden_size});
  }
  // _eager_layers: one step is streaming; otherwise _kernel_layers, sequence first.
  Tensor output, h_n;
  if (data.size(step_dim) == 1) {
    std::tie(output, h_n) = one_step(data.select(step_dim, 0), h, weights, c);
    output = output.unsqueeze(step_dim);
  } else {
    std::tie(output, h_n) = layers(c.batch_first ? data.transpose(0, 1) : data, h, weights, c);
    if (c.batch_first) output = output.transpose(0, 1);
  }
  if (!batched) {
    output = output.squeeze(batch_dim);
    h_n = h_n.squeeze(1);
  }
  return std::make_tuple(output, h_n);
}

}  // namespace rnnkern
