"""``replace_rnns``: swap every torch.nn.RNN / torch.nn.RNNCell inside a model for rnnkern's."""

from __future__ import annotations

from torch import nn

from .modules import RNN, RNNCell


def _rnn_from(module: nn.RNN) -> RNN:
    new = RNN(
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        nonlinearity=module.nonlinearity,
        bias=module.bias,
        batch_first=module.batch_first,
        dropout=module.dropout,
        bidirectional=module.bidirectional,
        device="meta",
    )
    for name in module._flat_weights_names:
        setattr(new, name, getattr(module, name))
    return new


def _cell_from(module: nn.RNNCell) -> RNNCell:
    new = RNNCell(
        module.input_size,
        module.hidden_size,
        bias=module.bias,
        nonlinearity=module.nonlinearity,
        device="meta",
    )
    for name, param in module.named_parameters(recurse=False):
        setattr(new, name, param)
    return new


def _replacement(module: nn.Module) -> nn.Module | None:
    # Exact types only: a user's subclass of nn.RNN may override forward, and ours are already fused.
    if type(module) is nn.RNN:
        return _rnn_from(module)
    if type(module) is nn.RNNCell:
        return _cell_from(module)
    return None


def replace_rnns(model: nn.Module) -> nn.Module:
    """Replaces every ``torch.nn.RNN`` and ``torch.nn.RNNCell`` in ``model`` by rnnkern's, in place.

    The replacements take over the very same ``Parameter`` objects (so an optimizer built before the
    swap keeps training them), along with the training/eval mode. Subclasses of nn.RNN and
    nn.RNNCell are left alone, since they may override ``forward``.

    Args:
        model: any module; it may itself be an ``nn.RNN`` or ``nn.RNNCell``.

    Returns:
        The model, modified in place, or the replacement when ``model`` itself was replaced.

    Example::

        >>> model = nn.Sequential(...)        # with nn.RNN inside
        >>> model = rnnkern.replace_rnns(model)
    """
    replacement = _replacement(model)
    if replacement is not None:
        return replacement.train(model.training)
    for name, child in list(model.named_children()):
        new = _replacement(child)
        if new is not None:
            setattr(model, name, new.train(child.training))
        else:
            replace_rnns(child)
    return model
