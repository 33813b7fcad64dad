// The rnnkern operators: declared once here, implemented per device as a time loop handed to the
// layer driver (layer/layer_driver.h; cpu/register_cpu.cpp, cuda/elman_cuda.cu), with autograd in
// autograd_layer.cpp and autograd_cell.cpp and fake tensors in rnnkern/_ops.py. Also the Python
// module rnnkern._C. The cell operator has a CPU implementation only (cpu/elman_cell_cpu.cpp).
//
// Schemas use nn.RNN's conventions: weights is one layer's slice of nn.RNN's _flat_weights, hx is
// (num_directions, batch, hidden_size), batch_sizes is a PackedSequence's. See layer/layer_args.h.

//
// The backward takes each weight role stacked over the directions (weight_ih (D, H, I), weight_hh
// (D, H, H); it needs no bias) and returns fixed tensors, no Tensor[]: an operator without tensor
// lists is one that vmap's generic fallback can batch, which is what batched gradients
// (gradcheck's check_batched_grad, autograd.grad's is_grads_batched) run the backward under.
// grad_bias (D, H) is the gradient of bias_ih and of bias_hh alike. output_mask says which of
// (grad_input, grad_hx, the weight gradients, grad_bias) to compute; the others come back empty.
//
// elman_cell is one step of nn.RNNCell with its arguments (input (B, I), hx (B, H), the weights
// in its layout, biases both or neither): the module's fast path for calls one step at a time,
// where a layer call's generality would cost more than the step. Its backward follows
// elman_layer_backward's conventions without the direction dimension.

#include <pybind11/pybind11.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cpu/elman_cpu.h"
#include "cpu/helper_thread.h"
#include "cpu/kernels.h"
#include "cpu/openmp_teammate.h"
#include "cpu/shared_steps.h"
#include "eager_rnn.h"
#include "layer/kernel_dtypes.h"
#include "layer/layer_args.h"
#include "op_calls.h"
#if defined(RNNKERN_WITH_CUDA)
#include "cuda/persistent_launch.h"
#endif

TORCH_LIBRARY(rnnkern, m) {
  m.def(
      "elman_layer(Tensor input, Tensor hx, Tensor[] weights, Tensor? batch_sizes, bool relu)"
      " -> (Tensor output, Tensor h_n)");
  m.def(
      "elman_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor hx,"
      " Tensor weight_ih, Tensor weight_hh, Tensor output, Tensor? batch_sizes, bool relu,"
      " bool[4] output_mask) -> (Tensor grad_input, Tensor grad_hx, Tensor grad_weight_ih,"
      " Tensor grad_weight_hh, Tensor grad_bias)");
  m.def(
      "elman_cell(Tensor input, Tensor hx, Tensor weight_ih, Tensor weight_hh, Tensor? bias_ih,"
      " Tensor? bias_hh, bool relu) -> Tensor");
  m.def(
      "elman_cell_backward(Tensor grad, Tensor input, Tensor hx, Tensor weight_ih,"
      " Tensor weight_hh, Tensor output, bool relu, bool[4] output_mask) -> (Tensor grad_input,"
      " Tensor grad_hx, Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias)");
}

namespace {

// "float32" -> at::kFloat, among the dtypes any kernel supports.
[[maybe_unused]] at::ScalarType dtype_named(const std::string& name) {
  for (at::ScalarType t : rnnkern::kFloatingDtypes)
    if (name == c10::getDtypeNames(t).first) return t;
  throw std::invalid_argument("not a floating-point dtype name: " + name);
}

// rnnkern._C.elman_layer: pybind converts a list to a std::vector, not to a TensorList.
std::tuple<at::Tensor, at::Tensor> elman_layer(const at::Tensor& input, const at::Tensor& hx,
                                               const std::vector<at::Tensor>& weights,
                                               const std::optional<at::Tensor>& batch_sizes,
                                               bool relu) {
  return rnnkern::call_elman_layer(input, hx, weights, batch_sizes, relu);
}

// rnnkern._C.eager_rnn: see eager_rnn.h. Its arguments are rnnkern.RNN's attributes.
std::optional<std::tuple<at::Tensor, at::Tensor>> eager_rnn(const at::Tensor& input,
                                                            const std::optional<at::Tensor>& hx,
                                                            const std::vector<at::Tensor>& weights,
                                                            int64_t input_size, int64_t hidden_size,
                                                            int64_t num_layers, bool bidirectional,
                                                            bool relu, bool batch_first,
                                                            double dropout, bool training) {
  return rnnkern::eager_rnn(
      input, hx, weights,
      {input_size, hidden_size, num_layers, bidirectional, relu, batch_first, dropout, training});
}

}  // namespace

// The Python module only has to exist (importing it runs the registrations above); it also tells
// which CPU kernels this process uses.
PYBIND11_MODULE(_C, module) {
  module.doc() = "rnnkern's compiled operators (registered under torch.ops.rnnkern)";
  module.def(
      "cpu_isa", [] { return std::string(rnnkern::cpu::kernels<float>().isa); },
      "The instruction set of the CPU kernels in use: 'avx512', 'avx2' or 'generic'.");
  module.def(
      "has_cuda_kernels",
      [] {
#if defined(RNNKERN_WITH_CUDA)
        return true;
#else
        return false;
#endif
      },
      "Whether this build compiled rnnkern's CUDA kernels (csrc/cuda/).");
  module.def(
      "helper_offers", &rnnkern::cpu::helper_offers,
      "How many tasks the CPU kernels have offered a second thread (the helper thread, or torch's "
      "OpenMP worker as a team) in this process.");
  module.def("team_calls", &rnnkern::cpu::team_calls,
             "How many CPU calls in this process ran their second thread's part on torch's OpenMP "
             "worker (a team of two) rather than on the helper thread.");
  module.def(
      "set_teammate_mode",
      [](const std::string& mode) {
        using rnnkern::cpu::TeammateMode;
        const TeammateMode m = mode == "team"     ? TeammateMode::kOpenMPTeam
                               : mode == "thread" ? TeammateMode::kHelperThread
                               : mode == "auto"   ? TeammateMode::kAuto
                                                  : throw std::invalid_argument(
                                                        "set_teammate_mode: mode must be 'auto', "
                                                        "'team' or 'thread', got '" +
                                                        mode + "'");
        const TeammateMode previous = rnnkern::cpu::set_teammate_mode(m);
        return std::string(previous == TeammateMode::kOpenMPTeam     ? "team"
                           : previous == TeammateMode::kHelperThread ? "thread"
                                                                     : "auto");
      },
      "For the tests: which second thread the CPU pipelines use, 'auto' (torch's OpenMP worker "
      "unless another program was seen on the cores lately, else the helper thread), 'team' or "
      "'thread' always; returns the previous mode.");
  module.def(
      "cpu_cell_kernel_bound",
      [] {
        return std::make_pair(rnnkern::cpu::kMaxCellKernelRows, rnnkern::cpu::kMaxCellKernelBatch);
      },
      "(rows, batch): the largest layer call, in rows in all (steps x batch) and rows a step, that "
      "the CPU runs step by step on the cell kernel rather than on the long-sequence paths (at "
      "batch 1 its forward only while (input + hidden) x hidden <= 3 x 2^17).");
  module.def(
      "helper_parts_taken_back", [] { return rnnkern::cpu::parts_taken_back.load(); },
      "How many steps' helper parts of a shared recurrence callers took back in this process.");
  module.def(
      "set_stacked_pairs",
      [](bool enabled, bool never_wait) {
        auto& pairs = rnnkern::cpu::stacked_pairs;
        pairs.never_wait.store(never_wait);
        return pairs.enabled.exchange(enabled);
      },
      py::arg("enabled"), py::arg("never_wait") = false,
      "For the tests and the benchmarks: whether a module call on the CPU may run two stacked "
      "layers at once as a wavefront on two cores (else one layer operator call per layer), and "
      "whether its caller then takes over the upper layer's first block the helper has not "
      "finished without waiting for it (to test the take-over); returns the previous `enabled`.");
  module.def(
      "stacked_pair_counts",
      [] {
        const auto& pairs = rnnkern::cpu::stacked_pairs;
        return std::make_tuple(pairs.calls.load(), pairs.blocks_by_caller.load(),
                               pairs.outputs_replaced.load());
      },
      "(calls, blocks, replaced): how many pairs of stacked layers ran as a wavefront in this "
      "process, how many of their upper layers' blocks the caller computed rather than the "
      "helper, and how many calls took over a block the helper had started (returning a fresh "
      "output).");
  module.def("helper_float_control", &rnnkern::cpu::helper_float_control,
             "The floating-point control (x86 MXCSR) the helper thread ran its latest task under.");
  module.def(
      "check_layer_args",
      [](const at::Tensor& input, const at::Tensor& hx, const std::vector<at::Tensor>& weights,
         const std::optional<at::Tensor>& batch_sizes) {
        try {
          rnnkern::check_layer_args("rnnkern.elman_layer", input, hx, weights, batch_sizes);
        } catch (const c10::Error& e) {
          throw std::runtime_error(e.what_without_backtrace());
        }
      },
      "elman_layer's argument checks alone, for the path that does not reach the operator "
      "(rnnkern/composite.py); raises RuntimeError as the operator does.");
  module.def("elman_cell", torch::wrap_pybind_function_no_gil(rnnkern::call_elman_cell),
             "torch.ops.rnnkern.elman_cell's eager fast path (same arguments, same errors).");
  module.def("elman_layer", torch::wrap_pybind_function_no_gil(elman_layer),
             "torch.ops.rnnkern.elman_layer's eager fast path (tensors only; the same checks).");
  module.def("eager_rnn", torch::wrap_pybind_function_no_gil(eager_rnn),
             "rnnkern.RNN's plain eager call on dense CPU input in one call (eager_rnn.h), or None "
             "where the module's Python path must run.");
  module.def(
      "kernel_dtypes",

      [](const std::string& device) {
        std::vector<std::string> names;
        for (at::ScalarType t : rnnkern::kernel_dtypes(c10::Device(device).type()))
          names.emplace_back(c10::getDtypeNames(t).first);
        return names;
      },
      "The dtypes the kernels of a device type ('cpu', 'cuda') are compiled for, as torch names "
      "them ('float32').");
#if defined(RNNKERN_WITH_CUDA)
  module.def(
      "cuda_launch_plan",
      [](int64_t hidden, int64_t batch, int64_t directions, const std::string& dtype,
         const std::string& algorithm) {
        const char* why_not = "";
        const auto plan = rnnkern::cuda::plan_on_current_device(
            hidden, batch, directions, dtype_named(dtype), algorithm, &why_not);
        pybind11::dict d;
        d["algorithm"] = rnnkern::persistent::algorithm_name(plan.algorithm);
        d["why_not"] = plan.algorithm == rnnkern::persistent::Algorithm::kPerStep ? why_not : "";
        for (const auto& [name, value] : rnnkern::persistent::plan_sizes(plan))
          d[pybind11::str(name)] = value;
        return d;
      },
      "The plan the CUDA kernels choose for one layer on the current GPU (choose_plan).");
#endif
}
