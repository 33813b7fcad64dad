"""The one-step cell operator rnnkern::elman_cell and its backward, on their own.

Everything is compared with torch.nn.RNNCell holding the same weights (or with gradcheck), through
both ways in: torch.ops.rnnkern.elman_cell and the eager entry rnnkern._C.elman_cell. The CPU
implementation has two paths (csrc/cpu/elman_cell_cpu.cpp): vector kernels when batch <= 8 or
batch * hidden <= 4096, ATen's BLAS otherwise; the shapes below fall on both sides, and
test_shapes_take_the_path_they_are_listed_for checks that they do.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn

import rnnkern
from rnnkern import _C
from tests.conftest import GRAD_TOL, ROOT, TOL, assert_close

elman_cell = torch.ops.rnnkern.elman_cell.default
elman_cell_backward = torch.ops.rnnkern.elman_cell_backward.default

ENTRIES = {"torch.ops": torch.ops.rnnkern.elman_cell, "_C": _C.elman_cell}


def uses_blas(batch: int, hidden: int) -> bool:
    """elman_cell_cpu.cpp's choice: vector kernels at batch <= 8 or batch * hidden <= 4096."""
    return not (batch <= 8 or batch * hidden <= 4096)


# (batch, input_size, hidden): every batch 1, 3, 8, 9, 40, input 1, 5, 16 and hidden 1, 7, 64,
# 130, and the threshold on both sides (32 * 128 = 4096 vector, 32 * 129 BLAS; 9 * 455 vector,
# 9 * 456 BLAS).
SHAPES = [
    (1, 1, 1),
    (1, 5, 7),
    (1, 16, 130),
    (3, 5, 7),
    (3, 1, 64),
    (3, 16, 130),
    (8, 5, 1),
    (8, 16, 130),
    (9, 5, 7),
    (9, 1, 130),
    (9, 3, 455),
    (9, 3, 456),
    (32, 5, 128),
    (32, 5, 129),
    (40, 5, 7),
    (40, 16, 64),
    (40, 1, 130),
    (40, 16, 130),
]
assert {s[0] for s in SHAPES} >= {1, 3, 8, 9, 40}
assert {s[1] for s in SHAPES} >= {1, 5, 16} and {s[2] for s in SHAPES} >= {1, 7, 64, 130}
assert sum(uses_blas(b, h) for b, _, h in SHAPES) >= 4
assert sum(not uses_blas(b, h) for b, _, h in SHAPES) >= 4

VECTOR_SHAPE, BLAS_SHAPE = (3, 5, 7), (40, 6, 130)


def shape_id(shape) -> str:
    b, i, h = shape
    return f"B{b}-I{i}-H{h}-{'blas' if uses_blas(b, h) else 'vector'}"


def cell_and_args(B, I, H, bias=True, relu=False, dtype=torch.float32, seed=0):
    """An nn.RNNCell and the op's arguments: random input and state, and a copy of its weights
    (all requiring grad), so that the op and the cell run on the same numbers."""
    torch.manual_seed(seed)
    cell = nn.RNNCell(I, H, bias=bias, nonlinearity="relu" if relu else "tanh", dtype=dtype)
    with torch.no_grad():  # nn's init is uniform in +-1/sqrt(H): make every weight matter
        for p in cell.parameters():
            p.uniform_(-1.0, 1.0).div_(max(I, H) ** 0.5)
    x = torch.randn(B, I, dtype=dtype, requires_grad=True)
    h = torch.randn(B, H, dtype=dtype, requires_grad=True)
    weights = [p.detach().clone().requires_grad_() for p in cell.parameters()]
    if not bias:
        weights += [None, None]
    return cell, [x, h, *weights, relu]


def tensors_of(args) -> list[torch.Tensor]:
    return [a for a in args[:6] if a is not None]


def detached(args) -> list:
    return [a.detach() if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_and_gradients_match_nn_rnn_cell(shape, bias, relu, dtype):
    B, I, H = shape
    cell, args = cell_and_args(B, I, H, bias, relu, dtype)
    x, h = args[0], args[1]
    expected = cell(x, h)
    grad_out = torch.randn(B, H, dtype=dtype)
    expected_grads = torch.autograd.grad(expected, [x, h, *cell.parameters()], grad_out)
    for name, op in ENTRIES.items():
        out = op(*args)
        assert out.shape == (B, H) and out.dtype == dtype
        assert_close(out, expected, TOL[dtype], f"{name} output")
        ours = torch.autograd.grad(out, tensors_of(args), grad_out)
        assert len(ours) == len(expected_grads)
        names = ["input", "hx", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        for what, a, b in zip(names, ours, expected_grads):
            assert_close(a, b, GRAD_TOL[dtype], f"{name} grad of {what}")


@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_shapes_take_the_path_they_are_listed_for(shape):
    # The BLAS path runs ATen's mm/addmm (the profiler sees them), the vector path none: so the
    # grid above really tests both paths, forward and backward.
    B, I, H = shape
    _, args = cell_and_args(B, I, H)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = _C.elman_cell(*args)
        torch.autograd.grad(out, tensors_of(args), torch.randn(B, H))
    names = {e.name for e in prof.events()}
    assert "rnnkern::elman_cell" in names and "rnnkern::elman_cell_backward" in names
    blas = {"aten::mm", "aten::addmm", "aten::addmm_"} & names
    assert bool(blas) == uses_blas(B, H), sorted(blas)


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [VECTOR_SHAPE, (1, 4, 9), (10, 3, 500)], ids=shape_id)
def test_gradcheck(shape, bias, relu):
    _, args = cell_and_args(*shape, bias=bias, relu=relu, dtype=torch.float64)
    fast = uses_blas(shape[0], shape[2])  # thousands of inputs: the fast (random-projection) mode
    assert torch.autograd.gradcheck(elman_cell, args, check_batched_grad=True, fast_mode=fast)
    assert torch.autograd.gradcheck(_C.elman_cell, args, fast_mode=fast)


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradgradcheck(bias, relu):
    _, args = cell_and_args(3, 4, 5, bias=bias, relu=relu, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(elman_cell, args)
    assert torch.autograd.gradgradcheck(_C.elman_cell, args)


def test_double_backward_matches_nn_rnn_cell():
    cell, args = cell_and_args(4, 3, 6, dtype=torch.float64)
    x, h = args[0], args[1]

    def second_order(out, inputs):
        # d/d(inputs) of <d out/d inputs . v, u> for fixed random v and u
        gen = torch.Generator().manual_seed(7)
        v = torch.randn(out.shape, dtype=out.dtype, generator=gen)
        first = torch.autograd.grad(out, inputs, v, create_graph=True)
        total = sum((g * torch.randn(g.shape, dtype=g.dtype, generator=gen)).sum() for g in first)
        return torch.autograd.grad(total, inputs)

    expected = second_order(cell(x, h), [x, h, *cell.parameters()])
    ours = second_order(elman_cell(*args), tensors_of(args))
    for a, b in zip(ours, expected, strict=True):
        assert_close(a, b, GRAD_TOL[torch.float64], "second-order gradient")


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_opcheck_forward(bias, relu):
    _, args = cell_and_args(3, 5, 7, bias=bias, relu=relu)
    torch.library.opcheck(elman_cell, args)
    torch.library.opcheck(elman_cell, detached(args))


def backward_args(B, I, H, relu, mask, dtype=torch.float32):
    _, args = cell_and_args(B, I, H, relu=relu, dtype=dtype)
    x, h, w_ih, w_hh = (a.detach() for a in args[:4])
    with torch.no_grad():
        out = elman_cell(*detached(args))
    return [torch.randn_like(out), x, h, w_ih, w_hh, out, relu, mask], args


MASKS = [
    [True, True, True, True],
    [True, False, False, False],
    [False, True, False, False],
    [False, False, True, False],
    [False, False, False, True],
    [False, False, False, False],
]


@pytest.mark.parametrize("shape", [VECTOR_SHAPE, BLAS_SHAPE], ids=shape_id)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if b else "0" for b in m))
def test_opcheck_backward(shape, mask):
    args, _ = backward_args(*shape, relu=False, mask=mask)
    torch.library.opcheck(elman_cell_backward, args)


@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
@pytest.mark.parametrize("shape", [VECTOR_SHAPE, (1, 5, 7), BLAS_SHAPE], ids=shape_id)
def test_output_mask_gives_what_it_asks_for(shape, relu):
    B, I, H = shape
    args, fwd_args = backward_args(B, I, H, relu, [True] * 4, dtype=torch.float64)
    full = elman_cell_backward(*args)
    expected_shapes = [(B, I), (B, H), (H, I), (H, H), (H,)]
    assert [tuple(g.shape) for g in full] == expected_shapes
    # The full computation is autograd's through nn.RNNCell: grad_bias is that of both biases.
    x, h = fwd_args[0], fwd_args[1]
    cell = nn.RNNCell(I, H, nonlinearity="relu" if relu else "tanh", dtype=torch.float64)
    with torch.no_grad():
        for p, w in zip(cell.parameters(), fwd_args[2:6]):
            p.copy_(w)
    reference = torch.autograd.grad(cell(x, h), [x, h, *cell.parameters()], args[0])
    tol = GRAD_TOL[torch.float64]
    for a, b in zip(full, reference[:4]):
        assert_close(a, b, tol, "full backward")
    assert_close(full[4], reference[4], tol, "grad_bias vs bias_ih")
    assert_close(full[4], reference[5], tol, "grad_bias vs bias_hh")

    # Each mask field alone: (input, hx, both weights, bias)
    asked = {0: [0], 1: [1], 2: [2, 3], 3: [4]}
    for field, outputs in asked.items():
        mask = [False] * 4
        mask[field] = True
        got = elman_cell_backward(*args[:-1], mask)
        for k in range(5):
            if k in outputs:
                assert_close(got[k], full[k], {"atol": 0, "rtol": 0}, f"mask {mask} output {k}")
            else:
                assert got[k].shape == (0,), f"mask {mask} output {k}: {tuple(got[k].shape)}"
                assert got[k].dtype == torch.float64
    nothing = elman_cell_backward(*args[:-1], [False] * 4)
    assert all(g.shape == (0,) for g in nothing)


# --- argument errors ---------------------------------------------------------------------------

B_, I_, H_ = 3, 5, 7
F32, F64 = torch.float32, torch.float64


def good_args(dtype=F32):
    torch.manual_seed(3)
    return [
        torch.randn(B_, I_, dtype=dtype),
        torch.randn(B_, H_, dtype=dtype),
        torch.randn(H_, I_, dtype=dtype),
        torch.randn(H_, H_, dtype=dtype),
        torch.randn(H_, dtype=dtype),
        torch.randn(H_, dtype=dtype),
        False,
    ]


def replaced(position, value):
    def mutate(args):
        args[position] = value.clone() if isinstance(value, torch.Tensor) else value

    return mutate


def shape_msg(name, expected, got):
    return re.escape(f"rnnkern::elman_cell: {name} must have shape {expected}, got {got}")


def dtype_msg(name, expected, got, op="elman_cell"):
    return re.escape(f"rnnkern::{op}: {name} must have the dtype of input ({expected}), got {got}")


FORWARD_ERRORS = [
    # input: its own checks, and those of the tensors compared with it
    ("input wrong batch", replaced(0, torch.randn(4, I_)), shape_msg("hx", "[4, 7]", "[3, 7]")),
    (
        "input wrong size",
        replaced(0, torch.randn(B_, 6)),
        shape_msg("weight_ih", "[7, 6]", "[7, 5]"),
    ),
    (
        "input wrong dtype",
        replaced(0, torch.randn(B_, I_, dtype=F64)),
        dtype_msg("hx", "Double", "Float"),
    ),
    (
        "input integer",
        replaced(0, torch.randint(0, 3, (B_, I_))),
        re.escape("rnnkern::elman_cell: input must be a floating-point tensor, got Long"),
    ),
    (
        "input 3-D",
        replaced(0, torch.randn(1, B_, I_)),
        re.escape(
            "rnnkern::elman_cell: input must be 2-D (batch, input_size), got shape [1, 3, 5]"
        ),
    ),
    (
        "input 1-D",
        replaced(0, torch.randn(I_)),
        re.escape("rnnkern::elman_cell: input must be 2-D (batch, input_size), got shape [5]"),
    ),
    ("hx wrong batch", replaced(1, torch.randn(2, H_)), shape_msg("hx", "[3, 7]", "[2, 7]")),
    (
        "hx wrong hidden",
        replaced(1, torch.randn(B_, 6)),
        shape_msg("weight_ih", "[6, 5]", "[7, 5]"),
    ),
    (
        "hx wrong dtype",
        replaced(1, torch.randn(B_, H_, dtype=F64)),
        dtype_msg("hx", "Float", "Double"),
    ),
    (
        "hx 3-D",
        replaced(1, torch.randn(1, B_, H_)),
        re.escape("rnnkern::elman_cell: hx must be 2-D (batch, hidden_size), got shape [1, 3, 7]"),
    ),
    (
        "hx 1-D",
        replaced(1, torch.randn(H_)),
        re.escape("rnnkern::elman_cell: hx must be 2-D (batch, hidden_size), got shape [7]"),
    ),
    (
        "weight_ih shape",
        replaced(2, torch.randn(H_, I_ + 1)),
        shape_msg("weight_ih", "[7, 5]", "[7, 6]"),
    ),
    (
        "weight_ih transposed",
        replaced(2, torch.randn(I_, H_)),
        shape_msg("weight_ih", "[7, 5]", "[5, 7]"),
    ),
    (
        "weight_ih dtype",
        replaced(2, torch.randn(H_, I_, dtype=F64)),
        dtype_msg("weight_ih", "Float", "Double"),
    ),
    (
        "weight_hh shape",
        replaced(3, torch.randn(H_, H_ + 1)),
        shape_msg("weight_hh", "[7, 7]", "[7, 8]"),
    ),
    (
        "weight_hh dtype",
        replaced(3, torch.randn(H_, H_, dtype=F64)),
        dtype_msg("weight_hh", "Float", "Double"),
    ),
    ("bias_ih shape", replaced(4, torch.randn(H_ + 1)), shape_msg("bias_ih", "[7]", "[8]")),
    ("bias_ih 2-D", replaced(4, torch.randn(1, H_)), shape_msg("bias_ih", "[7]", "[1, 7]")),
    (
        "bias_ih dtype",
        replaced(4, torch.randn(H_, dtype=F64)),
        dtype_msg("bias_ih", "Float", "Double"),
    ),
    ("bias_hh shape", replaced(5, torch.randn(H_ - 1)), shape_msg("bias_hh", "[7]", "[6]")),
    (
        "bias_hh dtype",
        replaced(5, torch.randn(H_, dtype=F64)),
        dtype_msg("bias_hh", "Float", "Double"),
    ),
    (
        "bias_ih only",
        replaced(5, None),
        re.escape(
            "rnnkern::elman_cell: bias_ih and bias_hh must be given both or neither, "
            "got bias_ih only"
        ),
    ),
    (
        "bias_hh only",
        replaced(4, None),
        re.escape(
            "rnnkern::elman_cell: bias_ih and bias_hh must be given both or neither, "
            "got bias_hh only"
        ),
    ),
]


def all_converted(dtype):
    def mutate(args):
        for k in range(6):
            args[k] = args[k].to(dtype)

    return mutate


FORWARD_ERRORS += [
    (
        f"all {name}",
        all_converted(dtype),
        re.escape(f"rnnkern::elman_cell: the CPU kernels support float32, float64; got {name}"),
    )
    for name, dtype in [("float16", torch.float16), ("bfloat16", torch.bfloat16)]
]


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize(
    "mutate, message", [e[1:] for e in FORWARD_ERRORS], ids=[e[0] for e in FORWARD_ERRORS]
)
@pytest.mark.parametrize("requires_grad", [False, True], ids=["nograd", "grad"])
def test_forward_rejects_bad_arguments(entry, mutate, message, requires_grad):
    args = good_args()
    mutate(args)
    if requires_grad:  # through the autograd function too, not only the inference path
        for a in args[:6]:
            if a is not None and a.is_floating_point():
                a.requires_grad_()
    with pytest.raises(RuntimeError, match=message):
        ENTRIES[entry](*args)
    # The op still works (and right) after the error.
    good = good_args()
    expected = torch.rnn_tanh_cell(*good[:6])
    assert_close(ENTRIES[entry](*good), expected, TOL[F32], "after the error")


def good_backward_args(dtype=F32):
    """elman_cell_backward's arguments for a call with biases, and the biases."""
    x, h, w_ih, w_hh, b_ih, b_hh, relu = good_args(dtype)
    out = elman_cell(x, h, w_ih, w_hh, b_ih, b_hh, relu)
    return [torch.randn_like(out), x, h, w_ih, w_hh, out, relu, [True] * 4], (b_ih, b_hh)


BACKWARD_ERRORS = [
    (
        "grad shape",
        replaced(0, torch.randn(B_, H_ + 1)),
        shape_msg("grad", "[3, 7]", "[3, 8]").replace("elman_cell", "elman_cell_backward"),
    ),
    (
        "grad batch",
        replaced(0, torch.randn(B_ + 1, H_)),
        shape_msg("grad", "[3, 7]", "[4, 7]").replace("elman_cell", "elman_cell_backward"),
    ),
    (
        "grad dtype",
        replaced(0, torch.randn(B_, H_, dtype=F64)),
        dtype_msg("grad", "Float", "Double", "elman_cell_backward"),
    ),
    (
        "output shape",
        replaced(5, torch.randn(B_, H_ - 1)),
        shape_msg("output", "[3, 7]", "[3, 6]").replace("elman_cell", "elman_cell_backward"),
    ),
    (
        "output dtype",
        replaced(5, torch.randn(B_, H_, dtype=F64)),
        dtype_msg("output", "Float", "Double", "elman_cell_backward"),
    ),
    (
        "input wrong size",
        replaced(1, torch.randn(B_, I_ + 1)),
        shape_msg("weight_ih", "[7, 6]", "[7, 5]").replace("elman_cell", "elman_cell_backward"),
    ),
    (
        "input integer",
        replaced(1, torch.randint(0, 3, (B_, I_))),
        re.escape("rnnkern::elman_cell_backward: input must be a floating-point tensor, got Long"),
    ),
    (
        "input 3-D",
        replaced(1, torch.randn(1, B_, I_)),
        re.escape("rnnkern::elman_cell_backward: input must be 2-D (batch, input_size), got shape"),
    ),
    (
        "hx 1-D",
        replaced(2, torch.randn(H_)),
        re.escape(
            "rnnkern::elman_cell_backward: hx must be 2-D (batch, hidden_size), got shape [7]"
        ),
    ),
    (
        "hx dtype",
        replaced(2, torch.randn(B_, H_, dtype=F64)),
        dtype_msg("hx", "Float", "Double", "elman_cell_backward"),
    ),
    (
        "weight_ih shape",
        replaced(3, torch.randn(H_, I_ - 1)),
        shape_msg("weight_ih", "[7, 5]", "[7, 4]").replace("elman_cell", "elman_cell_backward"),
    ),
    (
        "weight_hh dtype",
        replaced(4, torch.randn(H_, H_, dtype=F64)),
        dtype_msg("weight_hh", "Float", "Double", "elman_cell_backward"),
    ),
    (
        "weight_hh shape",
        replaced(4, torch.randn(H_ + 1, H_)),
        shape_msg("weight_hh", "[7, 7]", "[8, 7]").replace("elman_cell", "elman_cell_backward"),
    ),
]


def backward_all_converted(dtype):
    def mutate(args):
        for k in range(6):
            args[k] = args[k].to(dtype)

    return mutate


BACKWARD_ERRORS += [
    (
        "all float16",
        backward_all_converted(torch.float16),
        re.escape(
            "rnnkern::elman_cell_backward: the CPU kernels support float32, float64; got float16"
        ),
    )
]


@pytest.mark.parametrize(
    "mutate, message", [e[1:] for e in BACKWARD_ERRORS], ids=[e[0] for e in BACKWARD_ERRORS]
)
def test_backward_rejects_bad_arguments(mutate, message):
    args, _ = good_backward_args()
    mutate(args)
    with pytest.raises(RuntimeError, match=message):
        elman_cell_backward(*args)
    good, biases = good_backward_args()
    leaves = [t.clone().requires_grad_() for t in (*good[1:5], *biases)]
    expected = torch.autograd.grad(torch.rnn_tanh_cell(*leaves), leaves, good[0])
    got = elman_cell_backward(*good)
    for a, b in zip(got, expected[:5]):
        assert_close(a, b, GRAD_TOL[F32], "after the error")
    assert_close(got[4], expected[5], GRAD_TOL[F32], "after the error: bias_hh")


def test_arguments_on_another_device_are_refused():
    # A meta argument sends the call to the fake implementation, which must refuse the mix as the
    # kernels would, not return an uninitialised tensor.
    args = good_args()
    args[3] = args[3].to("meta")
    with pytest.raises(RuntimeError, match=r"all tensors must be on the device of input \(cpu\)"):
        elman_cell(*args)
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in good_args()]
    out = elman_cell(*meta)
    assert out.device.type == "meta" and out.shape == (B_, H_)


# --- layouts -------------------------------------------------------------------------------------


def strided_like(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as t, not contiguous: a transposed copy's view, or every other element."""
    if how == "transposed" and t.dim() == 2:
        return t.t().contiguous().t()
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


@pytest.mark.parametrize("how", ["transposed", "strided"])
@pytest.mark.parametrize("shape", [VECTOR_SHAPE, (1, 5, 7), BLAS_SHAPE], ids=shape_id)
def test_non_contiguous_arguments(shape, how):
    B, I, H = shape
    _, args = cell_and_args(B, I, H, dtype=torch.float64)
    plain = detached(args)
    views = [strided_like(t, how) for t in plain[:6]] + [plain[6]]
    assert not any(v.is_contiguous() for v in views[2:6])  # weights and biases
    assert B == 1 or not any(v.is_contiguous() for v in views[:2])
    for name, op in ENTRIES.items():
        assert_close(op(*views), op(*plain), {"atol": 0, "rtol": 0}, f"{name} output")
        leaves = [strided_like(t, how).requires_grad_() for t in plain[:6]]
        leaves_c = [t.clone().requires_grad_() for t in plain[:6]]
        grad_out = torch.randn(B, H, dtype=torch.float64)
        grads = torch.autograd.grad(op(*leaves, plain[6]), leaves, strided_like(grad_out, how))
        expected = torch.autograd.grad(op(*leaves_c, plain[6]), leaves_c, grad_out)
        for a, b in zip(grads, expected, strict=True):
            assert_close(a, b, GRAD_TOL[torch.float64], f"{name} gradient")
    # The backward op with non-contiguous grad and output.
    out = elman_cell(*plain)
    g = torch.randn(B, H, dtype=torch.float64)
    cont = elman_cell_backward(g, *plain[:4], out, False, [True] * 4)
    strided = [strided_like(t, how) for t in (g, *plain[:4], out)]
    non = elman_cell_backward(*strided, False, [True] * 4)
    for a, b in zip(non, cont):
        assert_close(a, b, GRAD_TOL[torch.float64], "backward op")


@pytest.mark.parametrize("shape", [VECTOR_SHAPE, BLAS_SHAPE], ids=shape_id)
def test_broadcast_state_and_input(shape):
    # Stride-0 (expanded) arguments, as a zero or shared initial state often is.
    B, I, H = shape
    cell, args = cell_and_args(B, I, H, dtype=torch.float64)
    h_row = torch.randn(1, H, dtype=torch.float64)
    x_row = torch.randn(1, I, dtype=torch.float64)
    x, h = x_row.expand(B, I), h_row.expand(B, H)
    weights = detached(args)[2:]
    with torch.no_grad():
        expected = cell(x.contiguous(), h.contiguous())
        for name, op in ENTRIES.items():
            assert_close(op(x, h, *weights), expected, TOL[torch.float64], name)


# --- autograd graph ------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_no_graph_node_without_grad(entry):
    op = ENTRIES[entry]
    _, args = cell_and_args(3, 5, 7)
    out = op(*detached(args))
    assert out.grad_fn is None and not out.requires_grad
    with torch.no_grad():
        out = op(*args)
    assert out.grad_fn is None and not out.requires_grad
    with torch.inference_mode():
        out = op(*args)
    assert out.grad_fn is None


ARGUMENT_NAMES = ["input", "hx", "w_ih", "w_hh", "b_ih", "b_hh"]


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize(
    "bias, which",
    [(True, k) for k in range(6)] + [(False, k) for k in range(4)],
    ids=[f"bias-{n}" for n in ARGUMENT_NAMES] + [f"nobias-{n}" for n in ARGUMENT_NAMES[:4]],
)
def test_one_argument_requiring_grad_gets_its_gradient(entry, bias, which):
    # One graph node as soon as one argument requires grad, and that argument's gradient is
    # nn.RNNCell's (the edges of the C++ function line up with the arguments, with or without
    # the optional biases).
    cell, args = cell_and_args(4, 5, 6, bias=bias, relu=True, dtype=torch.float64)
    plain = detached(args)
    plain[which] = plain[which].clone().requires_grad_()
    out = ENTRIES[entry](*plain)
    assert out.grad_fn is not None and out.requires_grad
    grad_out = torch.randn(4, 6, dtype=torch.float64)
    (ours,) = torch.autograd.grad(out, [plain[which]], grad_out)
    x, h = args[0], args[1]
    reference = torch.autograd.grad(cell(x, h), [x, h, *cell.parameters()], grad_out)
    assert_close(ours, reference[which], GRAD_TOL[torch.float64], f"gradient {which}")
    # .backward() into .grad, as a training step does
    out = ENTRIES[entry](*plain)
    out.backward(grad_out)
    assert_close(plain[which].grad, reference[which], GRAD_TOL[torch.float64], ".grad")


def test_bias_gradients_are_separate_tensors():
    # bias_ih and bias_hh share one gradient: accumulating into one .grad must not change the other.
    _, args = cell_and_args(3, 5, 7)
    for _ in range(2):
        elman_cell(*args).sum().backward()
    b_ih, b_hh = args[4], args[5]
    assert b_ih.grad.data_ptr() != b_hh.grad.data_ptr()
    assert_close(b_ih.grad, b_hh.grad, {"atol": 0, "rtol": 0}, "equal gradients")
    b_ih.grad.add_(1)
    assert not torch.equal(b_ih.grad, b_hh.grad)


# --- forward-mode AD -----------------------------------------------------------------------------


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("which", [0, 1, 3, 5], ids=["input", "hx", "w_hh", "b_hh"])
@pytest.mark.parametrize("grad_mode", [True, False], ids=["grad", "no_grad"])
def test_dual_tensor_is_refused_not_dropped(entry, which, grad_mode):
    # The op has no forward-mode formula: a tangent on any argument raises (the modules route
    # forward AD to torch's own cell instead), rather than coming back as a primal without it.
    _, args = cell_and_args(3, 5, 7, dtype=torch.float64)
    plain = detached(args)
    with fwAD.dual_level(), torch.set_grad_enabled(grad_mode):
        plain[which] = fwAD.make_dual(plain[which], torch.randn_like(plain[which]))
        with pytest.raises(RuntimeError, match="jvp is not implemented"):
            ENTRIES[entry](*plain)


@pytest.mark.parametrize("batched", [True, False])
def test_modules_give_nn_jvp_for_dual_tensors(batched):
    # Where forward AD is used, rnnkern.RNNCell and a one-step rnnkern.RNN call give nn's tangents.
    torch.manual_seed(0)
    theirs_cell = nn.RNNCell(5, 7, dtype=torch.float64)
    ours_cell = rnnkern.RNNCell(5, 7, dtype=torch.float64)
    ours_cell.load_state_dict(theirs_cell.state_dict())
    theirs_rnn = nn.RNN(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours_rnn = rnnkern.RNN(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64)
    ours_rnn.load_state_dict(theirs_rnn.state_dict())
    lead = (3,) if batched else ()
    x, tx = torch.randn(*lead, 5, dtype=F64), torch.randn(*lead, 5, dtype=F64)
    h, th = torch.randn(*lead, 7, dtype=F64), torch.randn(*lead, 7, dtype=F64)
    seq = x.unsqueeze(0)
    with fwAD.dual_level():
        outs = []
        for cell in (theirs_cell, ours_cell):
            out = cell(fwAD.make_dual(x, tx), fwAD.make_dual(h, th))
            outs.append(fwAD.unpack_dual(out))
        for rnn in (theirs_rnn, ours_rnn):
            out, h_n = rnn(fwAD.make_dual(seq, tx.unsqueeze(0)))
            outs.append(fwAD.unpack_dual(out))
            outs.append(fwAD.unpack_dual(h_n))
    tol = TOL[F64]
    assert outs[0].tangent is not None and outs[1].tangent is not None
    assert_close(outs[1].primal, outs[0].primal, tol, "cell primal")
    assert_close(outs[1].tangent, outs[0].tangent, tol, "cell tangent")
    for k in (0, 1):
        theirs, ours = outs[2 + k], outs[4 + k]
        assert ours.tangent is not None
        assert_close(ours.primal, theirs.primal, tol, "rnn primal")
        assert_close(ours.tangent, theirs.tangent, tol, "rnn tangent")


# --- batch 0 -------------------------------------------------------------------------------------

EMPTY_BATCH_SCRIPT = textwrap.dedent(
    """
    import torch, rnnkern
    from torch import nn
    torch.manual_seed(0)
    # The backward op alone: the bias gradient of an empty batch is zeros.
    x, h, out = torch.randn(0, 5), torch.randn(0, 7), torch.randn(0, 7)
    w_ih, w_hh = torch.randn(7, 5), torch.randn(7, 7)
    grads = torch.ops.rnnkern.elman_cell_backward(
        torch.randn(0, 7), x, h, w_ih, w_hh, out, False, [True] * 4
    )
    torch.testing.assert_close(grads[4], torch.zeros(7))
    torch.testing.assert_close(grads[2], torch.zeros(7, 5))
    # rnnkern.RNNCell and a one-step rnnkern.RNN call, against nn.
    theirs = nn.RNNCell(5, 7)
    ours = rnnkern.RNNCell(5, 7)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(0, 5, requires_grad=True)
    h = torch.randn(0, 7, requires_grad=True)
    expected = torch.autograd.grad(theirs(x, h).sum(), [x, h, *theirs.parameters()])
    got = torch.autograd.grad(ours(x, h).sum(), [x, h, *ours.parameters()])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    theirs = nn.RNN(5, 7, num_layers=2)
    ours = rnnkern.RNN(5, 7, num_layers=2)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(1, 0, 5, requires_grad=True)
    total = lambda r: r[0].sum() + r[1].sum()
    expected = torch.autograd.grad(total(theirs(x)), [x, *theirs.parameters()])
    got = torch.autograd.grad(total(ours(x)), [x, *ours.parameters()])
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    print("empty batch ok")
    """
)


def test_empty_batch_gradients_match_nn_rnn_cell():
    # In a process of its own: the failure would be a crash (grad_bias once read row 0 of an empty
    # dz).

    result = subprocess.run(
        [sys.executable, "-c", EMPTY_BATCH_SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"exit code {result.returncode}: {result.stderr[-2000:]}"
    assert "empty batch ok" in result.stdout
