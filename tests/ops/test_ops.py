"""The operators themselves: torch.library.opcheck, and what they check on their own."""

from __future__ import annotations

import pytest
import torch

import rnnkern  # noqa: F401
from rnnkern import _C

elman_layer = torch.ops.rnnkern.elman_layer.default
elman_layer_backward = torch.ops.rnnkern.elman_layer_backward.default


def layer_args(D=1, T=4, B=3, I=5, H=6, bias=True, packed=False, dtype=torch.float32):
    weights = []
    for _ in range(D):
        weights += [
            torch.randn(H, I, dtype=dtype, requires_grad=True),
            torch.randn(H, H, dtype=dtype, requires_grad=True),
        ]
        if bias:
            weights += [
                torch.randn(H, dtype=dtype, requires_grad=True),
                torch.randn(H, dtype=dtype, requires_grad=True),
            ]
    hx = torch.randn(D, B, H, dtype=dtype, requires_grad=True)
    if packed:
        batch_sizes = torch.tensor([B] * 2 + [max(B - 1, 1)] * (T - 2))
        x = torch.randn(int(batch_sizes.sum()), I, dtype=dtype, requires_grad=True)
        return x, hx, weights, batch_sizes, False
    x = torch.randn(T, B, I, dtype=dtype, requires_grad=True)
    return x, hx, weights, None, False


@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("packed", [False, True])
def test_opcheck_forward(D, bias, packed):
    torch.library.opcheck(elman_layer, layer_args(D=D, bias=bias, packed=packed))


def backward_args(x, hx, weights, batch_sizes, relu, out, mask):
    """elman_layer_backward's arguments for a forward call: each weight role stacked over directions."""
    D = hx.shape[0]
    per_direction = len(weights) // D
    return (
        torch.randn_like(out),
        torch.randn_like(hx),
        x.detach(),
        hx.detach(),
        torch.stack([w.detach() for w in weights[0::per_direction]]),
        torch.stack([w.detach() for w in weights[1::per_direction]]),
        out.detach(),
        batch_sizes,
        relu,
        mask,
    )


@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize(
    "mask",
    [[True, True, True, True], [False, True, False, False], [True, False, True, False]]
    + [[False, False, False, True]],
)
def test_opcheck_backward(D, packed, mask):
    x, hx, weights, batch_sizes, relu = layer_args(D=D, packed=packed)
    with torch.no_grad():
        out, _ = elman_layer(x, hx, weights, batch_sizes, relu)
    args = backward_args(x, hx, weights, batch_sizes, relu, out, mask)
    torch.library.opcheck(elman_layer_backward, args)
    grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias = elman_layer_backward(*args)
    assert grad_input.numel() == (x.numel() if mask[0] else 0)
    assert grad_hx.numel() == (hx.numel() if mask[1] else 0)
    assert grad_w_ih.shape == (args[4].shape if mask[2] else (0,))
    assert grad_w_hh.shape == (args[5].shape if mask[2] else (0,))
    assert grad_bias.shape == ((D, hx.shape[2]) if mask[3] else (0,))


@pytest.mark.parametrize("packed", [False, True])
def test_backward_op_matches_autograd(packed):
    x, hx, weights, batch_sizes, _ = layer_args(D=2, packed=packed)
    out, h_n = elman_layer(x, hx, weights, batch_sizes, True)
    args = backward_args(x, hx, weights, batch_sizes, True, out, [True] * 4)
    g_out, g_hn = args[0], args[1]
    expected = torch.autograd.grad((out * g_out).sum() + (h_n * g_hn).sum(), [x, hx, *weights])
    gi, gh, gw_ih, gw_hh, gb = elman_layer_backward(*args)
    # weights are (w_ih, w_hh, b_ih, b_hh) per direction; b_ih and b_hh share one gradient
    ours = [gi, gh]
    for d in range(2):
        ours += [gw_ih[d], gw_hh[d], gb[d], gb[d]]
    for a, b in zip(ours, expected, strict=True):
        torch.testing.assert_close(a, b)


def test_backward_op_batches_under_vmap():
    # No tensor lists in its schema: vmap's generic fallback batches it, gradient by gradient.
    x, hx, weights, _, _ = layer_args(D=2)
    with torch.no_grad():
        out, _ = elman_layer(x, hx, weights, None, False)
    args = backward_args(x, hx, weights, None, False, out, [True] * 4)
    grad_outputs = torch.randn(3, *out.shape)
    batched = torch.vmap(lambda g: elman_layer_backward(g, *args[1:]))(grad_outputs)
    for v in range(3):
        one = elman_layer_backward(grad_outputs[v], *args[1:])
        for a, b in zip(batched, one):
            torch.testing.assert_close(a[v], b)


@pytest.mark.parametrize(
    "batch_sizes, message",
    [
        (torch.tensor([2, 3, 1]), "non-increasing"),
        (torch.tensor([3, 0]), "positive"),
        (torch.tensor([3, 3]), "sum to more than the 5 rows"),
        (torch.tensor([2, 2]), "sum to 4"),
        (torch.tensor([3.0, 2.0]), "int64"),
        (torch.tensor([[3, 2]]), "1-D"),
    ],
)
def test_op_rejects_bad_batch_sizes(batch_sizes, message):
    x, hx, weights, _, _ = layer_args(B=3, packed=True)
    with pytest.raises(RuntimeError, match=message):
        elman_layer(x.detach()[:5], hx.detach(), [w.detach() for w in weights], batch_sizes, False)


def test_batch_sizes_on_another_device_are_refused_by_both_ops():
    # A meta batch_sizes sends the call to the fake implementation, which must refuse it as the
    # kernels do rather than return an uninitialised CPU output.
    x, hx, weights, batch_sizes, relu = layer_args(B=3, packed=True)
    x, hx, weights = x.detach(), hx.detach(), [w.detach() for w in weights]
    out, _ = elman_layer(x, hx, weights, batch_sizes, relu)
    args = backward_args(x, hx, weights, batch_sizes, relu, out, [True] * 4)
    on_meta = batch_sizes.to("meta")
    with pytest.raises(RuntimeError, match="batch_sizes must be on the CPU .* got meta"):
        elman_layer(x, hx, weights, on_meta, relu)
    backward = list(args)
    backward[7] = (
        on_meta  # (grad_output, grad_h_n, input, hx, w_ih, w_hh, output, batch_sizes, ...)
    )
    with pytest.raises(RuntimeError, match="batch_sizes must be on the CPU .* got meta"):
        elman_layer_backward(*backward)
    # Everything on meta (shapes only) is still traced.
    meta = [t.to("meta") for t in (x, hx)]
    out_meta, _ = elman_layer(*meta, [w.to("meta") for w in weights], on_meta, relu)
    assert out_meta.shape == out.shape and out_meta.device.type == "meta"


def test_fake_tensors_refuse_batch_sizes_off_the_cpu_like_the_kernels():
    # The kernels of every device read batch_sizes on the CPU: a traced call with it on the GPU
    # must fail while tracing, as it would when run (fake CUDA tensors need no GPU).
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, hx = torch.empty(8, 3, device="cuda"), torch.empty(1, 2, 5, device="cuda")
        weights = [torch.empty(5, 3, device="cuda"), torch.empty(5, 5, device="cuda")]
        on_cpu = torch.tensor([2, 2, 2, 2])
        out, _ = elman_layer(x, hx, weights, on_cpu, False)
        assert out.shape == (8, 5) and out.device.type == "cuda"
        with pytest.raises(RuntimeError, match="batch_sizes must be on the CPU .* got cuda"):
            elman_layer(x, hx, weights, on_cpu.to("cuda"), False)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.__setitem__(1, torch.randn(3, 3, 6)), "must be 1 or 2"),
        (lambda a: a.__setitem__(1, torch.randn(1, 4, 6)), "hx must have shape"),
        (lambda a: a.__setitem__(2, a[2][:3]), "expected 2 weights"),
        (lambda a: a[2].__setitem__(1, torch.randn(6, 5)), "weight_hh must have shape"),
        (lambda a: a[2].__setitem__(0, torch.randn(6, 5, dtype=torch.float64)), "dtype of input"),
        (
            lambda a: a.__setitem__(0, torch.randn(4, 3, 5).to(torch.bfloat16)),
            "dtype of input",
        ),
        (lambda a: a.__setitem__(0, torch.randint(0, 3, (4, 3, 5))), "floating-point"),
        (lambda a: a.__setitem__(0, torch.randn(4, 3)), "3-D"),
        (
            lambda a: a.__setitem__(0, torch.randn(0, 3, 5)),
            "Expected sequence length to be larger than 0 in RNN",
        ),
    ],
)
def test_op_rejects_bad_arguments(mutate, message):
    x, hx, weights, batch_sizes, relu = layer_args()
    args = [x.detach(), hx.detach(), [w.detach() for w in weights], batch_sizes, relu]
    mutate(args)
    with pytest.raises(RuntimeError, match=message):
        elman_layer(*args)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ops_name_the_dtypes_the_cpu_kernels_support(dtype):
    # Every tensor in a dtype the CPU kernels are not compiled for: both ops say which ones they
    # support, from the list the kernels dispatch on, and keep working afterwards.
    x, hx, weights, batch_sizes, relu = layer_args()
    low = [t.detach().to(dtype) for t in (x, hx, *weights)]
    message = r"the CPU kernels support float32, float64; got (bfloat16|float16)"
    with pytest.raises(RuntimeError, match=message):
        elman_layer(low[0], low[1], low[2:], batch_sizes, relu)
    stacked = [torch.stack([w]) for w in low[2:4]]
    output = torch.randn(4, 3, 6).to(dtype)  # layer_args: T 4, B 3, H 6
    with pytest.raises(RuntimeError, match=message):
        elman_layer_backward(
            output, low[1], low[0], low[1], *stacked, output, None, False, [True] * 4
        )
    assert _C.kernel_dtypes("cpu") == ["float32", "float64"]
    out, _ = elman_layer(x.detach(), hx.detach(), [w.detach() for w in weights], None, False)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "bad, message",
    [
        ("hx", "hx must be 3-D"),
        ("weight", "Expected a value of type 'List\\[Tensor\\]' for argument 'weights'"),
        (
            "batch_sizes",
            "Expected a value of type 'Optional\\[Tensor\\]' for argument 'batch_sizes'",
        ),
    ],
)
def test_functional_layer_says_what_is_wrong_with_arguments_that_are_not_tensors(bad, message):
    # Plain eager calls take a pybind entry (rnnkern._C.elman_layer), which refuses these with a
    # bare TypeError; the call then goes through torch.ops, which names the argument.
    x, hx, weights, _, _ = layer_args(B=2, bias=False)
    x, hx, weights = x.detach(), hx.detach(), [w.detach() for w in weights]
    args = {"hx": hx, "weights": weights, "batch_sizes": None}
    if bad == "hx":
        args["hx"] = None
    elif bad == "weight":
        args["weights"] = [*weights, None]
    else:
        args["batch_sizes"] = [2, 2, 2, 2]
    with pytest.raises(RuntimeError, match=message):
        rnnkern.elman_layer(x, args["hx"], args["weights"], args["batch_sizes"])
    out, _ = rnnkern.elman_layer(x, hx, weights)  # and the layer still works
    expected, _ = elman_layer(x, hx, weights, None, False)
    torch.testing.assert_close(out, expected)
