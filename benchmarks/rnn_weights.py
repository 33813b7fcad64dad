"""Where each layer and direction of a torch.nn.RNN keeps its weights: the parameter-name suffixes,
so that the implementations built from one reference RNN read its weights the same way."""

from __future__ import annotations

from torch import nn


def parameter_suffixes(reference: nn.RNN) -> list[list[str]]:
    """[layer][direction] = the suffix of that layer and direction's parameters ("_l0",
    "_l0_reverse", ...): ``weight_ih`` + suffix is its input weight."""
    directions = 2 if reference.bidirectional else 1
    return [
        [f"_l{layer}" + ("_reverse" if d == 1 else "") for d in range(directions)]
        for layer in range(reference.num_layers)
    ]
