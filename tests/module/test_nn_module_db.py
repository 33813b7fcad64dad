"""nn.RNN's and nn.RNNCell's own test cases, as torch ships them, run against rnnkern's modules.

torch.testing._internal.common_modules.module_db describes each torch.nn module with a ModuleInfo:
the constructor arguments and forward inputs its tests use (with a reference function for each),
the bad inputs it must refuse (with the exception type and a regex of the message), its dtypes and
which of its modes differ. This harness runs those cases through checks of the same kinds torch's
module tests make (forward against the reference, gradcheck and gradgradcheck with batched
gradients, non-contiguous inputs, memory format, pickling, repr, dtype and device moves, factory
arguments, the meta device, error types and messages), on rnnkern.RNN and rnnkern.RNNCell and, as
the control, on torch.nn.RNN and torch.nn.RNNCell themselves: every check that passes for torch.nn
must pass for rnnkern, with nothing skipped. Where rnnkern runs, its results are also compared with
torch.nn's on the same weights.
"""

from __future__ import annotations

import copy
import io
import re

import pytest
import torch
from torch import nn
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db
from torch.testing._internal.common_utils import freeze_rng_state
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten

import rnnkern

# Importing torch's test utilities freezes torch.backends' flags for the rest of the process
# (common_utils calls torch.backends.disable_global_flags()); the other test files here set them.
torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
assert not torch.backends.flags_frozen()

OURS = {nn.RNN: rnnkern.RNN, nn.RNNCell: rnnkern.RNNCell}
INFOS = [info for info in module_db if info.module_cls in OURS]
assert len(INFOS) == 2, "module_db should describe nn.RNN and nn.RNNCell"
TOL = dict(atol=1e-5, rtol=1e-5)  # what torch's module tests allow


def implementations(info):
    return {"torch.nn": info.module_cls, "rnnkern": OURS[info.module_cls]}


def cases(dtypes=None, both_modes=True):
    """(info, implementation name, dtype, training) for every mode the ModuleInfo says to test."""
    out = []
    for info in INFOS:
        modes = (True, False) if both_modes and info.train_and_eval_differ else (True,)
        for name in ("torch.nn", "rnnkern"):
            for dtype in dtypes or info.dtypes:
                for training in modes:
                    mode = "train" if training else "eval"
                    case_id = f"{info.name}-{name}-{str(dtype)[6:]}-{mode}"
                    out.append(pytest.param(info, name, dtype, training, id=case_id))
    return out


def samples(info, dtype, training, requires_grad=False):
    return info.module_inputs_func(
        info, device="cpu", dtype=dtype, requires_grad=requires_grad, training=training
    )


def build(info, name, sample, dtype, training, factory=None):
    """The module a sample describes, from the given implementation, in dtype and mode. rnnkern's
    gets torch.nn's initial weights (it draws the same ones for the same seed; loading them makes
    the comparison independent of that)."""
    args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
    kwargs = {**kwargs, **(factory or {})}
    torch.manual_seed(0)
    module = implementations(info)[name](*args, **kwargs).to(dtype).train(training)
    if name == "rnnkern":
        torch.manual_seed(0)
        theirs = info.module_cls(*args, **kwargs).to(dtype)
        module.load_state_dict(theirs.state_dict())
    return module


def forward_args(sample):
    return sample.forward_input.args, sample.forward_input.kwargs


def cast(tree, dtype):
    return tree_map(lambda t: t.to(dtype) if isinstance(t, torch.Tensor) else t, tree)


def torch_nn_twin(info, module, training):
    """torch.nn's module with the same configuration and weights as an rnnkern module."""
    twin = copy.deepcopy(module)
    twin.__class__ = info.module_cls
    return twin.train(training)


@pytest.mark.parametrize("info, name, dtype, training", cases())
def test_forward(info, name, dtype, training):
    for sample in samples(info, dtype, training):
        module = build(info, name, sample, dtype, training)
        args, kwargs = forward_args(sample)
        with freeze_rng_state():
            output = module(*args, **kwargs)
        if sample.reference_fn is not None:
            expected = sample.reference_fn(module, *args, **kwargs)  # adds the parameters itself
            torch.testing.assert_close(output, expected, **TOL)
        if name == "rnnkern":
            with freeze_rng_state():
                theirs = torch_nn_twin(info, module, training)(*args, **kwargs)
            torch.testing.assert_close(output, theirs, **TOL)
        # Moving to the other float dtype moves every parameter, and the module still runs.
        other = torch.float64 if dtype == torch.float32 else torch.float32
        module.to(other)
        assert all(p.dtype == other for p in module.parameters())
        module(*cast(args, other))


@pytest.mark.parametrize("info, name, dtype, training", cases(both_modes=False))
def test_factory_kwargs_and_meta_device(info, name, dtype, training):
    for sample in samples(info, dtype, training):
        module = build(info, name, sample, dtype, training, dict(device="cpu", dtype=dtype))
        assert all(p.device.type == "cpu" and p.dtype == dtype for p in module.parameters())
        meta = build(info, name, sample, dtype, training, dict(device="meta"))
        assert all(p.is_meta for p in meta.parameters())
        with torch.device("meta"):
            in_context = build(info, name, sample, dtype, training)
        for a, b in zip(in_context.parameters(), module.parameters()):
            assert a.is_meta and a.shape == b.shape and a.dtype == b.dtype
        # to_empty: the meta module materialised on the CPU, then initialised, runs.
        in_context.to_empty(device="cpu")
        in_context.reset_parameters()
        args, kwargs = forward_args(sample)
        tree_leaves(in_context(*args, **kwargs))


@pytest.mark.parametrize("info, name, dtype, training", cases(both_modes=False))
def test_repr_is_torch_nns(info, name, dtype, training):
    for sample in samples(info, dtype, training):
        module = build(info, name, sample, dtype, training)
        theirs = build(info, "torch.nn", sample, dtype, training)
        assert repr(module) == repr(theirs) and str(module) == str(theirs)


@pytest.mark.parametrize("info, name, dtype, training", cases())
def test_save_load(info, name, dtype, training, tmp_path):
    for sample in samples(info, dtype, training):
        module = build(info, name, sample, dtype, training)
        state = module.state_dict()
        args, kwargs = forward_args(sample)
        with freeze_rng_state():
            output = module(*args, **kwargs)
        buffer = io.BytesIO()
        torch.save(module, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        with freeze_rng_state():
            torch.testing.assert_close(loaded(*args, **kwargs), output, atol=0, rtol=0)
        path = tmp_path / "state.pt"
        torch.save(state, path)
        for weights_only in (False, True):
            torch.testing.assert_close(torch.load(path, weights_only=weights_only), state)


def non_contiguous(t):
    """The same values in a tensor whose last dimension has stride 2 (torch's recipe)."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0:
        return t
    return torch.repeat_interleave(t, 2, dim=-1)[..., ::2].detach().requires_grad_(t.requires_grad)


def forward_backward(module, args, kwargs, grads):
    """Outputs, and the gradients of the inputs and the parameters for the given output grads."""
    inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    with freeze_rng_state():
        outputs = module(*args, **kwargs)
    wrt = [*inputs, *module.parameters()]
    grads_in = torch.autograd.grad(tree_leaves(outputs), wrt, grads)
    return outputs, grads_in[: len(inputs)], grads_in[len(inputs) :]


@pytest.mark.parametrize("info, name, dtype, training", cases())
def test_non_contiguous_tensors(info, name, dtype, training):
    for sample in samples(info, dtype, training, requires_grad=True):
        module = build(info, name, sample, dtype, training)
        args, kwargs = forward_args(sample)
        with freeze_rng_state():
            grads = [torch.randn_like(o) for o in tree_leaves(module(*args, **kwargs))]
        expected = forward_backward(module, args, kwargs, grads)
        nc_args, nc_kwargs = tree_map(non_contiguous, (args, kwargs))
        nc_grads = [non_contiguous(g) for g in grads]
        for call in [(args, kwargs, nc_grads), (nc_args, nc_kwargs, grads)] + [
            (nc_args, nc_kwargs, nc_grads)
        ]:
            outputs, input_grads, param_grads = forward_backward(module, *call)
            torch.testing.assert_close(outputs, expected[0], **TOL)
            torch.testing.assert_close(input_grads, expected[1], atol=1e-4, rtol=0)
            torch.testing.assert_close(param_grads, expected[2], **TOL)


def gradient_function(module, sample):
    """The module as a function of its tensor inputs and its parameters (the parameters are passed
    as themselves: gradcheck perturbs them in place, and the module must read them each call)."""
    args, kwargs = forward_args(sample)
    flat, spec = tree_flatten((args, kwargs))
    positions = [i for i, t in enumerate(flat) if isinstance(t, torch.Tensor)]
    params = list(module.parameters())

    def fn(*tensors):
        values = list(flat)
        for i, t in zip(positions, tensors[: len(positions)]):
            values[i] = t
        call_args, call_kwargs = tree_unflatten(values, spec)
        with freeze_rng_state():
            return tuple(tree_leaves(module(*call_args, **call_kwargs)))

    return fn, [flat[i] for i in positions] + params, params


@pytest.mark.parametrize("check", ["grad", "gradgrad"])
@pytest.mark.parametrize("info, name, dtype, training", cases(dtypes=[torch.float64]))
def test_gradients(info, name, dtype, training, check):
    gradcheck = torch.autograd.gradcheck if check == "grad" else torch.autograd.gradgradcheck
    for sample in samples(info, dtype, training, requires_grad=True):
        module = build(info, name, sample, dtype, training)
        fn, inputs, params = gradient_function(module, sample)
        options = dict(check_batched_grad=True, fast_mode=True, nondet_tol=0.0)
        assert gradcheck(fn, inputs, **options)
        # Each parameter on its own, as torch's tests do.
        for p in params:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
            assert gradcheck(fn, inputs, **options)
            p.requires_grad_(False)


@pytest.mark.parametrize("info, name, dtype, training", cases())
def test_memory_format(info, name, dtype, training):
    for sample in samples(info, dtype, training, requires_grad=True):
        module = build(info, name, sample, dtype, training)
        args, kwargs = forward_args(sample)
        with freeze_rng_state():
            expected = module(*args, **kwargs)
        for memory_format in (torch.preserve_format, torch.contiguous_format):
            module.to(memory_format=memory_format)
            with freeze_rng_state():
                outputs = module(*args, **kwargs)
            torch.testing.assert_close(outputs, expected, **TOL)
            assert all(o.is_contiguous() for o in tree_leaves(outputs))
            if training:
                leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
                wrt = [t for t in [*leaves, *module.parameters()] if t.requires_grad]
                outs = tree_leaves(outputs)
                grads = torch.autograd.grad(outs, wrt, [torch.rand_like(o) for o in outs])
                assert all(g.is_contiguous() for g in grads)


@pytest.mark.parametrize("info, name, dtype, training", cases(both_modes=False))
def test_if_train_and_eval_modes_differ(info, name, dtype, training):
    # A module whose ModuleInfo says train and eval do not differ must not read .training.
    for sample in samples(info, dtype, training):
        module = build(info, name, sample, dtype, training)
        delattr(module, "training")
        args, kwargs = forward_args(sample)
        try:
            module(*args, **kwargs)
        except AttributeError as e:
            assert "training" in str(e) and info.train_and_eval_differ, e


@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("info, name, dtype, training", cases(dtypes=[torch.float32]))
def test_to(info, name, dtype, training, swap):
    for sample in samples(info, dtype, training):
        module = build(info, name, sample, dtype, training)
        args, kwargs = forward_args(sample)
        ids = [id(p) for p in module.parameters()]
        for target in (torch.float64, torch.float32):
            previous = torch.__future__.get_swap_module_params_on_conversion()
            torch.__future__.set_swap_module_params_on_conversion(swap)
            try:
                module.to(device="cpu", dtype=target)
            finally:
                torch.__future__.set_swap_module_params_on_conversion(previous)
            assert all(isinstance(p, nn.Parameter) for p in module.parameters())
            assert all(p.dtype == target for p in module.parameters())
            assert [id(p) for p in module.parameters()] == ids
            out = tree_leaves(module(*cast(args, target), **kwargs))
            assert out[0].dtype == target
            out[0].sum().backward()  # frees the graph, which holds the parameters
            del out


@pytest.mark.parametrize("info, name, dtype, training", cases(both_modes=False))
def test_errors(info, name, dtype, training):
    if info.module_error_inputs_func is None:
        pytest.fail(f"{info.name} has no error inputs in this torch")
    errors = info.module_error_inputs_func(
        info, device="cpu", dtype=dtype, requires_grad=False, training=training
    )
    assert errors, info.name
    cls = implementations(info)[name]
    for error in errors:
        sample = error.module_error_input
        args, kwargs = sample.constructor_input.args, sample.constructor_input.kwargs
        if error.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(error.error_type) as raised:
                cls(*args, **kwargs)
        else:
            module = cls(*args, **kwargs)
            f_args, f_kwargs = forward_args(sample)
            with pytest.raises(error.error_type) as raised:
                module(*f_args, **f_kwargs)
        assert re.search(error.error_regex, str(raised.value)), (error.error_regex, raised.value)
