"""Every argument check of the raw operators, one argument broken at a time.

rnnkern::elman_layer and rnnkern::elman_layer_backward (and, for the device checks the cell tests
cannot reach, rnnkern::elman_cell and its backward) are called as torch.ops exposes them: from a
valid call, one argument at a time gets a wrong shape (each dimension), rank, dtype or device, and
the call must raise RuntimeError with the message of its check (csrc/layer/layer_args.cpp,
csrc/layer/kernel_dtypes.cpp; the fake implementations in rnnkern/_ops.py for a meta argument),
then the operator must still compute a valid call right. Valid calls are checked against torch's
own RNN, short (on the cell kernel) and long (on the long-sequence paths).

A check that is missing or too weak does not raise: the kernel then reads the tensor by the shape
it expected, out of bounds, and may kill the process (a grad_h_n of the wrong batch did, with
SIGSEGV, SIGBUS or SIGABRT). So the bad calls run in a child process, which reports each call's outcome; a
child that dies is restarted after the call that killed it, and that call's test fails naming the
signal, while the other tests still report.

A wrong device: one meta argument sends the call to the fake implementation (the dispatcher picks
the meta kernel when any argument is on meta), whose own device check is tested that way; the C++
checks are reached by calling the CPU implementation itself (OpOverload.redispatch with the CPU
dispatch key), as a call with a CUDA argument among CPU ones would on a GPU machine. Strides: the
operators accept any layout (they make what they read contiguous), so every argument is also given
non-contiguous, transposed and broadcast (stride 0), and must give the result of its contiguous
copy.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

import rnnkern  # noqa: F401  (registers the operators)
from tests.conftest import GRAD_TOL, ROOT, TOL

OPS = {
    "elman_layer": torch.ops.rnnkern.elman_layer.default,
    "elman_layer_backward": torch.ops.rnnkern.elman_layer_backward.default,
    "elman_cell": torch.ops.rnnkern.elman_cell.default,
    "elman_cell_backward": torch.ops.rnnkern.elman_cell_backward.default,
}
CPU_KERNEL = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)

# Every size distinct, so that a message names which one is wrong. Two directions: a check that
# looked at the first direction only would miss the second's weights.
T, B, I, H, D = 4, 3, 5, 6, 2
BATCH_SIZES = [3, 3, 2, 1]  # packed: N = 9 rows, batch 3
N = sum(BATCH_SIZES)
# Valid calls also come long: T * B rows run step by step on the cell kernel, LONG_T * B on the
# long-sequence paths (csrc/cpu/elman_cpu.h, short_on_cell_kernel). The checks come before either,
# but each reads its arguments its own way.
LONG_T, LONG_BATCH_SIZES = 12, [3] * 11 + [2, 1]
MAX_ROWS, MAX_BATCH = rnnkern._C.cpu_cell_kernel_bound()
assert max(T * B, N) <= MAX_ROWS < min(LONG_T * B, sum(LONG_BATCH_SIZES)) and B <= MAX_BATCH
F64, F32 = torch.float64, torch.float32


def rand(*shape, dtype=F64):
    return torch.randn(shape, dtype=dtype)  # a tuple: () is a 0-D tensor


# --- valid calls and what they must give ------------------------------------------------------


def good_args(op: str, packed: bool = False, long: bool = False) -> list:
    """A valid call of `op` in float64 (the same numbers every time), as a list of its arguments;
    tanh, every output asked for; `long`: LONG_T steps rather than T."""
    torch.manual_seed(0)
    if op == "elman_layer":
        weights = []
        for _ in range(D):
            weights += [rand(H, I), rand(H, H), rand(H), rand(H)]
        sizes = LONG_BATCH_SIZES if long else BATCH_SIZES
        x = rand(sum(sizes), I) if packed else rand(LONG_T if long else T, B, I)
        batch_sizes = torch.tensor(sizes) if packed else None
        return [x, rand(D, B, H), weights, batch_sizes, False]
    if op == "elman_layer_backward":
        x, hx, weights, batch_sizes, relu = good_args("elman_layer", packed, long)
        out, _ = torch_layer(x, hx, weights, batch_sizes)
        torch.manual_seed(1)
        w_ih, w_hh = torch.stack(weights[0::4]), torch.stack(weights[1::4])
        return [
            rand(*out.shape),
            rand(D, B, H),
            x,
            hx,
            w_ih,
            w_hh,
            out,
            batch_sizes,
            relu,
            [True] * 4,
        ]
    if op == "elman_cell":
        return [rand(B, I), rand(B, H), rand(H, I), rand(H, H), rand(H), rand(H), False]
    if op == "elman_cell_backward":
        x, h, w_ih, w_hh, b_ih, b_hh, relu = good_args("elman_cell")
        out = torch.rnn_tanh_cell(x, h, w_ih, w_hh, b_ih, b_hh)
        torch.manual_seed(1)
        return [rand(B, H), x, h, w_ih, w_hh, out, relu, [True] * 4]
    raise ValueError(op)


def torch_layer(x, hx, weights, batch_sizes):
    """torch's own RNN (the one nn.RNN runs), one bidirectional tanh layer with biases."""
    if batch_sizes is None:
        return torch.rnn_tanh(x, hx, weights, True, 1, 0.0, False, True, False)
    return torch.rnn_tanh(x, batch_sizes, hx, weights, True, 1, 0.0, False, True)


def expected_result(op: str, packed: bool = False, long: bool = False) -> tuple:
    """What a valid call of `op` must return, from torch's own RNN and its autograd."""
    if op == "elman_layer":
        x, hx, weights, batch_sizes, _ = good_args(op, packed, long)
        return tuple(torch_layer(x, hx, weights, batch_sizes))
    if op == "elman_layer_backward":
        g_out, g_hn = good_args(op, packed, long)[:2]
        x, hx, weights, batch_sizes, _ = good_args("elman_layer", packed, long)
        leaves = [t.clone().requires_grad_() for t in (x, hx, *weights)]
        out, h_n = torch_layer(leaves[0], leaves[1], leaves[2:], batch_sizes)
        g = torch.autograd.grad((out * g_out).sum() + (h_n * g_hn).sum(), leaves)
        per_direction = [g[2 + 4 * d : 6 + 4 * d] for d in range(D)]
        w_ih, w_hh, b_ih = (torch.stack([p[k] for p in per_direction]) for k in range(3))
        return g[0], g[1], w_ih, w_hh, b_ih
    if op == "elman_cell":
        return (torch.rnn_tanh_cell(*good_args(op)[:6]),)
    if op == "elman_cell_backward":
        grad = good_args(op)[0]
        leaves = [t.clone().requires_grad_() for t in good_args("elman_cell")[:6]]
        g = torch.autograd.grad(torch.rnn_tanh_cell(*leaves), leaves, grad)
        return g[:5]  # the bias gradient is bias_ih's and bias_hh's alike
    raise ValueError(op)


def call(op: str, via: str, args: list):
    """`op` as torch.ops exposes it ("op"), or its CPU implementation itself ("cpu kernel")."""
    if via == "op":
        return OPS[op](*args)
    return OPS[op].redispatch(CPU_KERNEL, *args)


def as_tuple(result) -> tuple:
    return tuple(result) if isinstance(result, tuple | list) else (result,)


def mismatch(got, op: str, packed: bool, long: bool = False) -> str | None:
    """None when `got` is what a valid call of `op` must give, else what differs."""
    tol = TOL[F64] if op in ("elman_layer", "elman_cell") else GRAD_TOL[F64]
    for k, (a, b) in enumerate(zip(as_tuple(got), expected_result(op, packed, long), strict=True)):
        # allclose first: assert_close's report costs milliseconds, wanted only on a mismatch
        if a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, **tol):
            continue
        try:
            torch.testing.assert_close(a, b, **tol)
        except AssertionError as e:
            return f"output {k} of {op}: {e}"
    return None


# --- the bad calls ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    op: str  # a key of OPS
    argument: str  # the argument broken ("all": every tensor argument)
    kind: str  # what is wrong with it: shape, rank, dtype, device, value (batch_sizes' contents)
    what: str  # how, in words (the test id)
    mutate: Callable[[list], None]  # breaks it in a list of valid arguments
    message: str  # the error's text, a regular expression
    packed: bool = False  # starting from a packed (PackedSequence) call
    via: str = "op"  # "op", or "cpu kernel": the CPU implementation itself (its C++ checks)
    grad: bool = False  # the floating-point arguments require grad (the autograd kernel first)

    @property
    def name(self) -> str:
        packed = "packed-" if self.packed else ""
        via = "-cpu_kernel" if self.via == "cpu kernel" else ""
        grad = "-grad" if self.grad else ""
        return f"{self.op}-{packed}{self.argument}-{self.what}{via}{grad}".replace(" ", "_")


def put(position: int, make: Callable[[list], object], weight: int | None = None):
    """A mutation: argument `position` (with `weight`: that tensor of the weights list there)
    replaced by make(valid arguments)."""

    def mutate(args):
        value = make(args)
        if weight is None:
            args[position] = value
        else:
            args[position][weight] = value

    return mutate


def new(position: int, *shape, weight: int | None = None):
    """A mutation: that argument replaced by a random float64 tensor of `shape`."""
    return put(position, lambda a: rand(*shape), weight)


def conv(position: int, convert: Callable, weight: int | None = None):
    """A mutation: that argument replaced by convert(its valid value)."""
    if weight is None:
        return put(position, lambda a: convert(a[position]))
    return put(position, lambda a: convert(a[position][weight]), weight)


def every_tensor(convert: Callable):
    """A mutation: convert() applied to every floating-point tensor argument, weights included."""

    def mutate(args):
        for k, a in enumerate(args):
            if isinstance(a, torch.Tensor) and a.is_floating_point():
                args[k] = convert(a)
            elif isinstance(a, list) and a and isinstance(a[0], torch.Tensor):
                args[k] = [convert(w) for w in a]

    return mutate


def shape_str(shape) -> str:
    """A shape as the checks print it: [2, 3, 6]."""
    return "[" + ", ".join(str(s) for s in shape) + "]"


def dims(shape) -> str:
    """A shape as a test id: 2x3x6."""
    return "x".join(str(s) for s in shape) or "0-D"


def on_meta(t: torch.Tensor) -> torch.Tensor:
    return t.to("meta")


class Cases:
    """The cases of one operator, written one a line: add("argument kind what", mutation, the
    message after the operator's name) and helpers for the messages the checks share."""

    def __init__(self, op: str, packed: bool = False):
        self.op, self.prefix, self.packed = op, f"rnnkern::{op}", packed
        self.cases: list[Case] = []

    def add(self, spec: str, mutate, message: str, via: str = "op") -> None:
        argument, kind, what = spec.split(" ", 2)
        escaped = re.escape(f"{self.prefix}: {message}")
        self.cases.append(Case(self.op, argument, kind, what, mutate, escaped, self.packed, via))

    @staticmethod
    def shape(name: str, expected, got) -> str:
        return f"{name} must have shape {shape_str(expected)}, got {shape_str(got)}"

    @staticmethod
    def dtype(name: str, expected: str = "Double", got: str = "Float") -> str:
        return f"{name} must have the dtype of input ({expected}), got {got}"

    def shapes(self, name: str, position: int, shape, wrongs, weight=None, label="") -> None:
        """Each shape of `wrongs` in place of `name` (expected `shape`): refused by its check."""
        for wrong in wrongs:
            kind = "shape" if len(wrong) == len(shape) else "rank"
            mutate = new(position, *wrong, weight=weight)
            self.add(f"{name} {kind} {label}{dims(wrong)}", mutate, self.shape(name, shape, wrong))

    def dtype_and_device(self, name: str, position: int, weight=None, label="") -> None:
        """`name` in float32 and on the meta device. On meta through torch.ops, the fake
        implementation refuses the mix of devices; through the CPU implementation, its C++ check."""
        self.add(
            f"{name} dtype {label}float32",
            conv(position, torch.Tensor.float, weight),
            self.dtype(name),
        )
        meta = conv(position, on_meta, weight)
        fake = "all tensors must be on the device of input (cpu), got one on meta"
        self.add(f"{name} device {label}on meta", meta, fake)
        kernel = f"{name} must be on the device of input (cpu), got meta"
        self.add(f"{name} device {label}on meta", meta, kernel, via="cpu kernel")


INPUT_3D = "input must be 3-D (seq_len, batch, input_size), got shape "
INPUT_2D = "input must be 2-D (rows, input_size) with batch_sizes, got shape "
NO_STEPS = (
    "Expected sequence length to be larger than 0 in RNN (the sequence length must be at least 1, "
    "as in torch.nn.RNN), got input of shape "
)
HX_3D = "hx must be 3-D (num_directions, batch, hidden_size), got shape "
NOT_ON_CPU = "expected CPU tensors, got meta"
CPU_DTYPES = "the CPU kernels support float32, float64; got "
BATCH_SIZES_CPU = "batch_sizes must be on the CPU (as in a PackedSequence), got meta"
NON_INCREASING = (
    "batch_sizes must be non-increasing (sequences sorted by decreasing length, as "
    "pack_padded_sequence makes them), got "
)


def weight_count(count: int, directions: int = D) -> str:
    return (
        f"expected {2 * directions} weights (weight_ih, weight_hh per direction) or "
        f"{4 * directions} (with bias_ih, bias_hh), got {count}"
    )


def dense_input_cases(c: Cases, at: int) -> None:
    """The checks of a dense input (T, B, I), argument `at` of c's operator: both operators make
    them (the backward before its own checks of the output shape the input implies)."""
    c.add(
        "input dtype integer",
        put(at, lambda a: torch.randint(0, 3, (T, B, I))),
        "input must be a floating-point tensor, got Long",
    )
    c.add("input rank 2-D", new(at, T * B, I), INPUT_3D + shape_str((T * B, I)))
    c.add("input shape no steps", new(at, 0, B, I), NO_STEPS + shape_str((0, B, I)))
    c.add("input shape batch", new(at, T, B + 1, I), c.shape("hx", (D, B + 1, H), (D, B, H)))
    c.add("input shape input_size", new(at, T, B, I + 1), c.shape("weight_ih", (H, I + 1), (H, I)))
    c.add("input dtype float32", conv(at, torch.Tensor.float), c.dtype("hx", "Float", "Double"))
    c.add(
        "input device on meta",
        conv(at, on_meta),
        "all tensors must be on the device of input (meta), got one on cpu",
    )
    c.add(
        "input device on meta",
        conv(at, on_meta),
        "hx must be on the device of input (meta), got cpu",
        via="cpu kernel",
    )


def layer_forward_cases() -> list[Case]:
    c = Cases("elman_layer")  # arguments: input, hx, weights, batch_sizes, relu
    dense_input_cases(c, 0)
    c.add("input rank 4-D", new(0, 1, T, B, I), INPUT_3D + shape_str((1, T, B, I)))
    c.add("hx rank 2-D", new(1, B, H), HX_3D + shape_str((B, H)))
    c.add("hx rank 4-D", new(1, 1, D, B, H), HX_3D + shape_str((1, D, B, H)))
    c.add(
        "hx shape three directions",
        new(1, 3, B, H),
        "hx.size(0) is the number of directions and must be 1 or 2, got 3",
    )
    c.add("hx shape one direction", new(1, 1, B, H), weight_count(4 * D, directions=1))
    c.add("hx shape batch", new(1, D, B + 1, H), c.shape("hx", (D, B, H), (D, B + 1, H)))
    c.add("hx shape hidden", new(1, D, B, H + 1), c.shape("weight_ih", (H + 1, I), (H, I)))
    c.dtype_and_device("hx", 1)
    for count in (0, 3, 2 * D + 1, 4 * D - 1, 4 * D + 1):
        c.add(
            f"weights shape {count} tensors",
            put(2, lambda a, n=count: (a[2] * 2)[:n]),
            weight_count(count),
        )
    # Each weight of each direction: each dimension, its rank, its dtype and device.
    roles = {
        "weight_ih": ((H, I), [(H + 1, I), (H - 1, I), (H, I + 1), (I, H), (H * I,), (1, H, I)]),
        "weight_hh": ((H, H), [(H + 1, H), (H, H - 1), (H * H,), (1, H, H)]),
        "bias_ih": ((H,), [(H + 1,), (H - 1,), (1, H), ()]),
        "bias_hh": ((H,), [(H + 1,), (1, H), ()]),
    }
    for d in range(D):
        for k, (role, (shape, wrongs)) in enumerate(roles.items()):
            label = f"direction {d} "
            c.shapes(role, 2, shape, wrongs, weight=4 * d + k, label=label)
            c.dtype_and_device(role, 2, weight=4 * d + k, label=label)
    c.add("all dtype float16", every_tensor(torch.Tensor.half), CPU_DTYPES + "float16")
    c.add("all dtype bfloat16", every_tensor(torch.Tensor.bfloat16), CPU_DTYPES + "bfloat16")
    c.add("all device on meta", every_tensor(on_meta), NOT_ON_CPU, via="cpu kernel")

    # Packed input: its rank, batch_sizes (rank, dtype, device, contents) and the batch it gives.
    p = Cases("elman_layer", packed=True)
    p.add("input rank 3-D", new(0, T, B, I), INPUT_2D + shape_str((T, B, I)))
    p.add(
        "input shape no rows",
        new(0, 0, I),
        "batch_sizes sum to more than the 0 rows of the packed input",
    )
    p.add("input shape input_size", new(0, N, I - 1), c.shape("weight_ih", (H, I - 1), (H, I)))
    p.add("batch_sizes rank 2-D", conv(3, lambda t: t[None]), "batch_sizes must be 1-D, got 2-D")
    p.add(
        "batch_sizes dtype int32", conv(3, torch.Tensor.int), "batch_sizes must be int64, got Int"
    )
    p.add(
        "batch_sizes dtype float64",
        conv(3, torch.Tensor.double),
        "batch_sizes must be int64, got Double",
    )
    p.add("batch_sizes device on meta", conv(3, on_meta), BATCH_SIZES_CPU, via="cpu kernel")
    p.add(
        "batch_sizes value a zero",
        put(3, lambda a: torch.tensor([3, 3, 3, 0])),
        "batch_sizes must be positive, got 0 at step 3",
    )
    p.add(
        "batch_sizes value increasing",
        put(3, lambda a: torch.tensor([2, 3, 3, 1])),
        NON_INCREASING + "2 then 3 at step 1",
    )
    p.add(
        "batch_sizes value sum too large",
        put(3, lambda a: torch.tensor([3, 3, 3, 3])),
        f"batch_sizes sum to more than the {N} rows of the packed input",
    )
    p.add(
        "batch_sizes value sum too small",
        put(3, lambda a: torch.tensor([3, 3, 2])),
        f"batch_sizes sum to 8 but the packed input has {N} rows",
    )
    p.add(
        "batch_sizes shape empty",
        put(3, lambda a: torch.tensor([], dtype=torch.long)),
        f"batch_sizes sum to 0 but the packed input has {N} rows",
    )
    p.add(
        "batch_sizes value batch 2",
        put(3, lambda a: torch.tensor([2, 2, 2, 2, 1])),
        c.shape("hx", (D, 2, H), (D, B, H)),
    )
    p.add("hx shape batch", new(1, D, B + 1, H), c.shape("hx", (D, B, H), (D, B + 1, H)))

    cases = c.cases + p.cases
    # The same calls through the autograd kernel (inputs requiring grad), which must refuse them too.
    return cases + [dataclasses.replace(case, grad=True) for case in cases if case.via == "op"]


def layer_backward_cases() -> list[Case]:
    # arguments: grad_output, grad_h_n, input, hx, weight_ih, weight_hh, output, batch_sizes, relu,
    # output_mask
    c = Cases("elman_layer_backward")
    DH = D * H

    def stacked(w_ih, w_hh, hx=(D, B, H)) -> str:
        return (
            "weight_ih and weight_hh must be 3-D, one matrix per direction of hx stacked "
            "(num_directions, hidden_size, input_size or hidden_size), got shapes "
            f"{shape_str(w_ih)} and {shape_str(w_hh)} with hx of shape {shape_str(hx)}"
        )

    # What the backward reads by the forward's shapes: each dimension wrong, the rank, the dtype,
    # the device. grad_h_n of a smaller batch, unchecked, is read out of bounds.
    c.shapes("grad_output", 0, (T, B, DH), [(T - 1, B, DH), (T + 1, B, DH), (T, B - 1, DH)])
    c.shapes("grad_output", 0, (T, B, DH), [(T, B + 1, DH), (T, B, H), (T, B, DH + 1)])
    c.shapes("grad_output", 0, (T, B, DH), [(T * B, DH), (T, B, D, H), (DH, B, T)])
    c.dtype_and_device("grad_output", 0)
    c.shapes("grad_h_n", 1, (D, B, H), [(D, B - 1, H), (D, B + 1, H), (D, 1, H), (D, 0, H)])
    c.shapes("grad_h_n", 1, (D, B, H), [(D, B, H - 1), (D, B, H + 1), (1, B, H), (3, B, H)])
    c.shapes("grad_h_n", 1, (D, B, H), [(D, H, B), (B, H), (D * B * H,), (1, D, B, H)])
    c.dtype_and_device("grad_h_n", 1)
    c.shapes("output", 6, (T, B, DH), [(T - 1, B, DH), (T, B + 1, DH), (T, B, H)])
    c.shapes("output", 6, (T, B, DH), [(T, B, DH + 1), (T * B, DH), (1, T, B, DH)])
    c.dtype_and_device("output", 6)
    # weight_ih and weight_hh, stacked per direction: (D, H, I) and (D, H, H).
    c.add("weight_ih rank 2-D", new(4, H, I), stacked((H, I), (D, H, H)))
    c.add("weight_ih rank 4-D", new(4, 1, D, H, I), stacked((1, D, H, I), (D, H, H)))
    c.add("weight_ih shape one direction", new(4, 1, H, I), stacked((1, H, I), (D, H, H)))
    c.add("weight_ih shape three directions", new(4, 3, H, I), stacked((3, H, I), (D, H, H)))
    c.add("weight_ih shape hidden", new(4, D, H + 1, I), c.shape("weight_ih", (H, I), (H + 1, I)))
    c.add(
        "weight_ih shape input_size", new(4, D, H, I - 1), c.shape("weight_ih", (H, I), (H, I - 1))
    )
    c.dtype_and_device("weight_ih", 4)
    c.add("weight_hh rank 2-D", new(5, H, H), stacked((D, H, I), (H, H)))
    c.add("weight_hh shape one direction", new(5, 1, H, H), stacked((D, H, I), (1, H, H)))
    c.add("weight_hh shape rows", new(5, D, H + 1, H), c.shape("weight_hh", (H, H), (H + 1, H)))
    c.add("weight_hh shape columns", new(5, D, H, H - 1), c.shape("weight_hh", (H, H), (H, H - 1)))
    c.dtype_and_device("weight_hh", 5)
    # input and hx: the forward's checks, and the output shape they imply.
    dense_input_cases(c, 2)
    c.add("input shape steps", new(2, T + 1, B, I), c.shape("output", (T + 1, B, DH), (T, B, DH)))
    c.add("hx rank 2-D", new(3, B, H), stacked((D, H, I), (D, H, H), (B, H)))
    c.add("hx shape one direction", new(3, 1, B, H), stacked((D, H, I), (D, H, H), (1, B, H)))
    c.add("hx shape batch", new(3, D, B + 1, H), c.shape("hx", (D, B, H), (D, B + 1, H)))
    c.add("hx shape hidden", new(3, D, B, H + 1), c.shape("weight_ih", (H + 1, I), (H, I)))
    c.dtype_and_device("hx", 3)
    c.cases.append(
        Case(
            "elman_layer_backward",
            "output_mask",
            "shape",
            "3 entries",
            put(9, lambda a: [True] * 3),
            re.escape("Tried to convert a List with 3 elements to a fixed-size array of size 4"),
        )
    )
    c.add("all dtype float16", every_tensor(torch.Tensor.half), CPU_DTYPES + "float16")
    c.add("all device on meta", every_tensor(on_meta), NOT_ON_CPU, via="cpu kernel")

    p = Cases("elman_layer_backward", packed=True)
    p.add("output rank dense", new(6, T, B, DH), c.shape("output", (N, DH), (T, B, DH)))
    p.add("output shape rows", new(6, N + 1, DH), c.shape("output", (N, DH), (N + 1, DH)))
    p.add("grad_output shape rows", new(0, N - 1, DH), c.shape("grad_output", (N, DH), (N - 1, DH)))
    p.add("grad_output shape features", new(0, N, H), c.shape("grad_output", (N, DH), (N, H)))
    p.add(
        "grad_h_n shape batch", new(1, D, B - 1, H), c.shape("grad_h_n", (D, B, H), (D, B - 1, H))
    )
    p.add(
        "grad_h_n shape rows as batch", new(1, D, N, H), c.shape("grad_h_n", (D, B, H), (D, N, H))
    )
    p.add("input rank 3-D", new(2, T, B, I), INPUT_2D + shape_str((T, B, I)))
    p.add("batch_sizes rank 2-D", conv(7, lambda t: t[None]), "batch_sizes must be 1-D, got 2-D")
    p.add(
        "batch_sizes dtype int32", conv(7, torch.Tensor.int), "batch_sizes must be int64, got Int"
    )
    p.add("batch_sizes device on meta", conv(7, on_meta), BATCH_SIZES_CPU, via="cpu kernel")
    p.add(
        "batch_sizes value increasing",
        put(7, lambda a: torch.tensor([2, 3, 3, 1])),
        NON_INCREASING + "2 then 3 at step 1",
    )
    p.add(
        "batch_sizes value batch 2",
        put(7, lambda a: torch.tensor([2, 2, 2, 2, 1])),
        c.shape("hx", (D, 2, H), (D, B, H)),
    )
    return c.cases + p.cases


def cell_device_cases() -> list[Case]:
    # tests/ops/test_cell_op.py breaks the cell operators' shapes, dtypes and layouts, and puts an
    # argument on meta through torch.ops; here the C++ device checks behind those.
    forward, backward = Cases("elman_cell"), Cases("elman_cell_backward")
    for k, name in enumerate(["hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"], start=1):
        forward.dtype_and_device(name, k)
    for k, name in [(0, "grad"), (2, "hx"), (3, "weight_ih"), (4, "weight_hh"), (5, "output")]:
        backward.dtype_and_device(name, k)
    for c in (forward, backward):
        c.add("all device on meta", every_tensor(on_meta), NOT_ON_CPU, via="cpu kernel")
    return forward.cases + backward.cases


CASES = layer_forward_cases() + layer_backward_cases() + cell_device_cases()
CASES_BY_NAME = {c.name: c for c in CASES}
assert len(CASES_BY_NAME) == len(CASES), "two cases share a name"


def requiring_grad(args: list) -> list:
    def leaf(t):
        return (
            t.detach().requires_grad_()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
            else t
        )

    return [[leaf(w) for w in a] if isinstance(a, list) else leaf(a) for a in args]


def run_case(name: str) -> dict:
    """Makes the bad call of case `name`, then a valid one; what each did. Runs in the child."""
    case = CASES_BY_NAME[name]
    args = good_args(case.op, case.packed)
    torch.manual_seed(2)
    case.mutate(args)
    if case.grad:
        args = requiring_grad(args)
    try:
        call(case.op, case.via, args)
        raised, message = None, "returned without an error"
    except Exception as e:  # what it raised is the result
        raised, message = type(e).__name__, str(e)
    try:
        after = mismatch(call(case.op, "op", good_args(case.op, case.packed)), case.op, case.packed)
    except Exception as e:
        after = f"{type(e).__name__}: {e}"
    return {"raised": raised, "message": message, "valid_call_after": after}


CHILD = """
import json, sys
from tests.ops.test_op_argument_checks import run_case
for name in sys.argv[1:]:
    print(json.dumps({"start": name}), flush=True)
    print(json.dumps({"done": name, **run_case(name)}), flush=True)
"""


def run_cases_in_child(names: list[str]) -> dict[str, dict]:
    """run_case for each name, in child processes: a child that dies is restarted after the case
    that killed it, which is reported as {"died": signal or exit status, "stderr": its end}."""
    outcomes: dict[str, dict] = {}
    remaining = list(names)
    while remaining:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, *remaining],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        started = None
        for line in child.stdout.splitlines():
            event = json.loads(line)
            if "start" in event:
                started = event["start"]
            else:
                outcomes[event.pop("done")] = event
                started = None
        if child.returncode == 0:
            break
        rc = child.returncode
        died = signal.Signals(-rc).name if rc < 0 else f"exit status {rc}"
        if started is None:  # died outside any case (at import): nothing ran
            for n in remaining:
                outcomes.setdefault(n, {"died": died, "stderr": child.stderr[-3000:]})
            break
        outcomes[started] = {"died": died, "stderr": child.stderr[-3000:]}
        remaining = remaining[remaining.index(started) + 1 :]
    return outcomes


@pytest.fixture(scope="module")
def outcomes() -> dict[str, dict]:
    return run_cases_in_child([c.name for c in CASES])


# --- the tests ------------------------------------------------------------------------------------


LAYER_CALLS = [
    pytest.param(
        op, packed, long, id=f"{op}-{'packed' if packed else 'dense'}-{'long' if long else 'short'}"
    )
    for op in ("elman_layer", "elman_layer_backward")
    for packed in (False, True)
    for long in (False, True)
]


@pytest.mark.parametrize("via", ["op", "cpu kernel"])
@pytest.mark.parametrize(
    "op, packed, long",
    LAYER_CALLS + [("elman_cell", False, False), ("elman_cell_backward", False, False)],
)
def test_valid_call_matches_torch(op, packed, long, via):
    # The starting point of every case below (short), and what the child checks after each bad call.
    assert mismatch(call(op, via, good_args(op, packed, long)), op, packed, long) is None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_argument_is_refused_by_name(case, outcomes):
    got = outcomes[case.name]
    assert "died" not in got, (
        f"the process died ({got['died']}) in {case.op} given {case.argument} {case.what}: "
        f"an argument read without being checked?\n{got['stderr']}"
    )
    assert got["raised"] == "RuntimeError" and re.search(case.message, got["message"]), (
        f"{case.op} given {case.argument} {case.what}: expected RuntimeError matching "
        f"{case.message!r}, got {got['raised']}: {got['message']}"
    )
    assert got["valid_call_after"] is None, got["valid_call_after"]


# The tensor arguments of each operator, by position (the weights list: every tensor in it).
TENSOR_ARGUMENTS = {
    "elman_layer": {"input": 0, "hx": 1, "weights": 2, "batch_sizes": 3},
    "elman_layer_backward": {
        "grad_output": 0,
        "grad_h_n": 1,
        "input": 2,
        "hx": 3,
        "weight_ih": 4,
        "weight_hh": 5,
        "output": 6,
        "batch_sizes": 7,
    },
}


def test_every_tensor_argument_is_broken_every_way():
    # A new argument must come with cases: each tensor of each layer operator's schema gets a
    # wrong shape or rank, a wrong dtype and a wrong device (seen by the C++ checks).
    for op, arguments in TENSOR_ARGUMENTS.items():
        schema = OPS[op]._schema.arguments
        in_schema = {a.name: k for k, a in enumerate(schema) if "Tensor" in str(a.type)}
        assert in_schema == arguments, f"{op}'s tensor arguments are now {in_schema}"
        for argument in arguments:
            names = (
                {argument}
                if argument != "weights"
                else {"weight_ih", "weight_hh", "bias_ih", "bias_hh"}
            )
            for name in names:
                mine = [c for c in CASES if c.op == op and c.argument == name]
                kinds = {c.kind for c in mine}
                assert kinds & {"shape", "rank"}, f"{op}: no wrong shape for {name}"
                assert "dtype" in kinds, f"{op}: no wrong dtype for {name}"
                assert any(c.kind == "device" and c.via == "cpu kernel" for c in mine), (
                    f"{op}: no wrong device for {name}"
                )
    for name in ("grad_h_n", "grad_output", "output"):
        # every dimension of the tensors the backward reads by the forward's shape
        wrong = [c for c in CASES if c.op == "elman_layer_backward" and c.argument == name]
        assert len({c.what for c in wrong if c.kind == "shape"}) >= 3, name


def non_contiguous(t: torch.Tensor, how: str) -> torch.Tensor:
    """A tensor of t's shape that is not contiguous: every other element of a wider one (t's
    values), the transpose of a transposed copy (t's values), or one slice broadcast (stride 0,
    the first slice's values)."""
    if how == "strided":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if how == "transposed":
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return t.narrow(0, 0, 1).expand(t.shape)


# Each tensor argument given non-contiguous, per operator and layout.
LAYOUT_ARGUMENTS = [
    ("elman_layer", False, ["input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]),
    ("elman_layer", True, ["input", "batch_sizes"]),
    ("elman_layer_backward", False, list(TENSOR_ARGUMENTS["elman_layer_backward"])[:7]),
    ("elman_layer_backward", True, ["input", "grad_output", "output", "batch_sizes"]),
]


def layout_cases():
    cases = []
    for (op, packed, arguments), long in itertools.product(LAYOUT_ARGUMENTS, (False, True)):
        for argument in arguments:
            for how in ("strided", "transposed", "broadcast"):
                if argument in ("bias_ih", "bias_hh", "batch_sizes") and how == "transposed":
                    continue  # 1-D
                if argument == "batch_sizes" and how == "broadcast":
                    continue  # not non-increasing batch sizes of this input
                layout = ("packed-" if packed else "") + ("long" if long else "short")
                cases.append(
                    pytest.param(
                        op, packed, long, argument, how, id=f"{op}-{layout}-{argument}-{how}"
                    )
                )
    return cases


@pytest.mark.parametrize("op, packed, long, argument, how", layout_cases())
def test_non_contiguous_argument_gives_the_contiguous_result(op, packed, long, argument, how):
    args = good_args(op, packed, long)
    # the weights list's tensors of one role, in every direction
    role = {"weight_ih": 0, "weight_hh": 1, "bias_ih": 2, "bias_hh": 3}
    if op == "elman_layer" and argument in role:
        targets = [(args[2], 4 * d + role[argument]) for d in range(D)]
    else:
        position = list(TENSOR_ARGUMENTS[op]).index(argument)
        targets = [(args, position)]
    for holder, k in targets:
        view = non_contiguous(holder[k], how)
        assert not view.is_contiguous()
        holder[k] = view
    # the same values, laid out contiguously
    contiguous = [
        [w.contiguous() for w in a] if k == 2 and op == "elman_layer" else a
        for k, a in enumerate(args)
    ]
    contiguous = [a.contiguous() if isinstance(a, torch.Tensor) else a for a in contiguous]
    got, expected = as_tuple(OPS[op](*args)), as_tuple(OPS[op](*contiguous))
    tol = TOL[F64] if op == "elman_layer" else GRAD_TOL[F64]
    for k, (a, b) in enumerate(zip(got, expected, strict=True)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"output {k}: {m}")
