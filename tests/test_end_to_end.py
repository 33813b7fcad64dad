"""The sine-to-cosine task (examples/sine_to_cosine.py) trained with rnnkern.RNN and with nn.RNN from the same weights."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn

import rnnkern

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from sine_to_cosine import SineToCosine, train  # noqa: E402


def test_loss_curves_agree_with_nn_rnn():
    torch.manual_seed(0)
    theirs = SineToCosine(nn.RNN)
    ours = copy.deepcopy(theirs)
    rnnkern.replace_rnns(ours)
    assert type(ours.rnn) is rnnkern.RNN
    steps = 400
    loss_t = torch.tensor(train(theirs, steps))
    loss_o = torch.tensor(train(ours, steps))
    # The same training run, step for step, up to float32 rounding.
    torch.testing.assert_close(loss_o, loss_t, rtol=2e-3, atol=1e-6)
    assert loss_o[:10].mean() > 0.1 and loss_o[-50:].mean() < 0.01  # and it did learn
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
