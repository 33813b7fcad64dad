// A whole rnnkern.RNN call on dense CPU input in plain eager mode, in one call from Python
// (rnnkern._C.eager_rnn, called by RNN.forward in rnnkern/modules.py).
//
// The module's Python path (argument checks, the zero state, the routing, a layer call per layer)
// was 79k of the 179k instructions of a call at batch 1, hidden 64, 4 steps (PERFORMANCE.md,
// version 25). This does the same work in C++, with the same operators in the same order, so the
// results, the gradients and the random numbers dropout draws are those of the Python path.
//
// It is only a shortcut: where the Python path would do anything else (raise with nn.RNN's words,
// warn, fall back to torch's RNN, cast under autocast, transpose packed input), it returns nullopt
// having done nothing, and the caller takes the Python path. The caller has already checked what
// only Python knows (not tracing, not compiling, no __torch_function__, no torch.func transform and
// no forward AD: rnnkern/_routing.py, plain_eager_kernel_call).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace rnnkern {

// rnnkern.RNN's configuration, as its attributes hold it when called.
struct StackConfig {
  int64_t input_size;
  int64_t hidden_size;
  int64_t num_layers;
  bool bidirectional;
  bool relu;
  bool batch_first;
  double dropout;
  bool training;
};

// input: (L, H_in) unbatched, (L, N, H_in), or (N, L, H_in) with batch_first.
// hx: (num_layers * D, H_out) unbatched or (num_layers * D, N, H_out); zeros when absent.
// weights: the module's _flat_weights (per layer and direction: weight_ih, weight_hh[, biases]).
// Returns (output, h_n) as rnnkern.RNN's forward does, or nullopt for the Python path.
std::optional<std::tuple<at::Tensor, at::Tensor>> eager_rnn(const at::Tensor& input,
                                                            const std::optional<at::Tensor>& hx,
                                                            const std::vector<at::Tensor>& weights,
                                                            const StackConfig& config);

}  // namespace rnnkern
