"""Malformed calls, thrown at random at rnnkern.RNN and at the raw operators.

Every module call must either return what nn.RNN returns for the same call or raise a Python
exception with a message; it must never crash, hang, or return something where nn.RNN refuses.
Every raw-operator call must return well-shaped tensors or raise. After all of it the module still
computes nn.RNN's results. Where a GPU is visible the module calls run on it too (its CUDA kernels
against cuDNN). A crash here takes pytest down with it, which fails CI; `make asan`
runs this file under AddressSanitizer, which also catches out-of-bounds accesses that do not crash.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import rnnkern

DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.bool, torch.complex64]
CALLS = 400


def random_tensor(rng, shape, dtype=torch.float32):
    t = torch.from_numpy(rng.standard_normal(shape)).to(torch.float64)
    if dtype.is_complex:
        return t.to(dtype)
    if dtype == torch.bool:
        return t > 0
    return (t * 3).to(dtype)


def mutate(rng, x: torch.Tensor) -> torch.Tensor:
    """A valid-looking tensor turned strange: non-contiguous, expanded, NaN/inf, or grad-requiring."""
    kind = rng.integers(6)
    if kind == 0 and x.dim() >= 2:
        return x.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    if kind == 1 and x.dim() >= 1 and x.shape[0] > 0:
        return x[:1].expand(x.shape)  # stride 0
    if kind == 2 and x.numel() and x.is_floating_point():
        x = x.clone()
        x.view(-1)[rng.integers(x.numel())] = [np.nan, np.inf, -np.inf][rng.integers(3)]
        return x
    if kind == 3 and x.is_floating_point():
        return x.clone().requires_grad_()
    if kind == 4 and x.dim() >= 1:
        return torch.cat([x, x], dim=-1)[..., ::2]  # a strided view with the same values
    return x


def random_call(rng, layers: int, directions: int, hidden: int, input_size: int):
    """(description, input, hx) for one call: mostly malformed, sometimes valid."""
    T, B = int(rng.integers(0, 4)), int(rng.integers(0, 4))
    dtype = DTYPES[rng.integers(len(DTYPES))] if rng.random() < 0.2 else torch.float32
    rank = int(rng.choice([3, 3, 3, 2, 1, 4, 0]))
    feat = input_size if rng.random() < 0.7 else int(rng.integers(0, 7))
    shape = {0: (), 1: (feat,), 2: (T, feat), 3: (T, B, feat), 4: (T, B, 1, feat)}[rank]
    x = mutate(rng, random_tensor(rng, shape, dtype))
    what = f"input {tuple(shape)} {dtype}"
    if rng.random() < 0.15 and rank == 2:  # a PackedSequence, often with bad batch_sizes
        sizes = rng.integers(-1, 4, size=int(rng.integers(0, 4)))
        x = PackedSequence(
            x, torch.tensor(sizes, dtype=torch.int64 if rng.random() < 0.8 else torch.float32)
        )
        what = f"packed data {tuple(shape)} batch_sizes {sizes.tolist()}"
    hx = None
    if rng.random() < 0.6:
        h_shape = [layers * directions, B, hidden]
        if rng.random() < 0.5:
            h_shape[rng.integers(3)] += int(rng.choice([-1, 1]))
            h_shape = [max(0, s) for s in h_shape]
        if rank == 2 and rng.random() < 0.5:
            h_shape = [layers * directions, hidden]
        h_dtype = dtype if rng.random() < 0.8 else DTYPES[rng.integers(len(DTYPES))]
        hx = mutate(rng, random_tensor(rng, h_shape, h_dtype))
        what += f", hx {tuple(h_shape)} {h_dtype}"
    return what, x, hx


def on(device, x):
    """x on the device (a PackedSequence's batch_sizes stay on the CPU, as torch keeps them)."""
    if x is None:
        return None
    if isinstance(x, PackedSequence):
        return PackedSequence(x.data.to(device), x.batch_sizes)
    return x.to(device)


def outcome(module, x, hx):
    try:
        with torch.no_grad():
            return "ok", module(x, hx)
    except Exception as e:  # noqa: BLE001 - the exception is the result under test
        return "raised", e


def as_tensors(result):
    out, h_n = result
    return [out.data if isinstance(out, PackedSequence) else out, h_n]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_module_either_matches_nn_rnn_or_raises_clearly(device, bidirectional):
    rng = np.random.default_rng(2026 + bidirectional)
    torch.manual_seed(0)
    theirs = nn.RNN(4, 6, 2, bidirectional=bidirectional, device=device)
    ours = rnnkern.RNN(4, 6, 2, bidirectional=bidirectional, device=device)
    ours.load_state_dict(theirs.state_dict())
    directions = 2 if bidirectional else 1
    kinds = {"both ok": 0, "both raised": 0, "we raised": 0}
    for _ in range(CALLS):
        what, x, hx = random_call(rng, 2, directions, 6, 4)
        x, hx = on(device, x), on(device, hx)
        mine, ours_result = outcome(ours, x, hx)
        their, their_result = outcome(theirs, x, hx)
        if mine == "raised":
            assert str(ours_result).strip(), f"{what}: {type(ours_result).__name__} with no message"
            kinds["both raised" if their == "raised" else "we raised"] += 1
            continue
        assert their == "ok", f"{what}: nn.RNN raised ({their_result!r}) but rnnkern returned"
        for a, b in zip(as_tensors(ours_result), as_tensors(their_result)):
            assert a.dtype == b.dtype and a.shape == b.shape, what
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, equal_nan=True, msg=what)
        kinds["both ok"] += 1
    # The fuzzing reached both sides: valid calls compared, malformed ones refused.
    assert kinds["both ok"] > 20 and kinds["both raised"] > 100, kinds

    x = torch.randn(5, 3, 4, device=device)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0], atol=1e-4, rtol=1e-4)


def random_weights(rng, directions, hidden, input_size):
    weights = []
    for _ in range(directions):
        shapes = [(hidden, input_size), (hidden, hidden)]
        if rng.random() < 0.7:
            shapes += [(hidden,), (hidden,)]
        for s in shapes:
            if rng.random() < 0.1:
                s = tuple(max(0, d + int(rng.choice([-1, 1]))) for d in s) or (1,)
            dtype = torch.float32 if rng.random() < 0.95 else DTYPES[rng.integers(len(DTYPES))]
            weights.append(random_tensor(rng, s, dtype))
    if rng.random() < 0.1 and weights:
        weights.pop(int(rng.integers(len(weights))))
    return weights


def test_raw_operators_return_or_raise():
    rng = np.random.default_rng(7)
    forward = torch.ops.rnnkern.elman_layer
    backward = torch.ops.rnnkern.elman_layer_backward
    returned = raised = 0
    for _ in range(CALLS):
        directions, hidden, input_size = int(rng.integers(1, 3)), int(rng.integers(0, 5)), 3
        T, B = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        x = random_tensor(rng, (T, B, input_size if rng.random() < 0.8 else 2))
        hx = random_tensor(rng, (directions, B if rng.random() < 0.8 else B + 1, hidden))
        weights = random_weights(rng, directions, hidden, input_size)
        batch_sizes = None
        if rng.random() < 0.3:
            batch_sizes = torch.tensor(rng.integers(-1, 4, size=int(rng.integers(0, 4))))
            x = random_tensor(rng, (int(rng.integers(0, 8)), input_size))
        relu = bool(rng.random() < 0.5)
        try:
            out, h_n = forward(x, hx, weights, batch_sizes, relu)
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            assert str(e).strip()
            raised += 1
            continue
        returned += 1
        assert out.shape == (*x.shape[:-1], directions * hidden) and h_n.shape == hx.shape
        mask = [bool(v) for v in rng.integers(0, 2, size=4)]
        grad_out = random_tensor(rng, tuple(out.shape)) if rng.random() < 0.9 else out[..., :0]
        per_direction = len(weights) // directions
        w_ih = torch.stack(weights[0::per_direction])  # the backward takes each role stacked
        w_hh = torch.stack(weights[1::per_direction])
        if rng.random() < 0.1:
            w_hh = w_hh[0]  # one matrix, not stacked
        try:
            gx, ghx, gw_ih, gw_hh, gb = backward(
                grad_out, torch.randn_like(h_n), x, hx, w_ih, w_hh, out, batch_sizes, relu, mask
            )
        except (RuntimeError, ValueError, TypeError, IndexError) as e:
            assert str(e).strip()
            continue
        if mask[0]:
            assert gx.shape == x.shape
        if mask[2]:
            assert gw_ih.shape == w_ih.shape and gw_hh.shape == w_hh.shape
        if mask[3]:
            assert gb.shape == (directions, hidden)
    assert returned > 20 and raised > 100, (returned, raised)
