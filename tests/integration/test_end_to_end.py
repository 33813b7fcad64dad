"""The sine-to-cosine task (examples/sine_to_cosine.py) trained with rnnkern.RNN and with nn.RNN from the same weights."""

from __future__ import annotations

import copy
import sys

import torch
from torch import nn

import rnnkern
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "examples"))
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


def test_next_number_learns_and_agrees_with_nn_rnn():
    from next_number import NextNumber, predict
    from next_number import train as train_next

    torch.manual_seed(0)
    theirs = NextNumber(nn.RNN)
    ours = copy.deepcopy(theirs)
    rnnkern.replace_rnns(ours)
    loss_t = torch.tensor(train_next(theirs, 600))
    loss_o = torch.tensor(train_next(ours, 600))
    torch.testing.assert_close(loss_o, loss_t, rtol=1e-3, atol=1e-7)
    assert loss_o[-1] < 1e-3 * loss_o[0]
    assert abs(predict(ours, [70, 80, 90]) - 100) < 10  # never trained on


def test_sine_next_value_matches_the_numpy_bptt_step_for_step():
    from sine_next_value import train_both

    ours, numpy_losses, difference, _ = train_both(60)
    torch.testing.assert_close(torch.tensor(ours), torch.tensor(numpy_losses), rtol=1e-9, atol=0)
    assert difference < 1e-10
    assert ours[-1] < 0.1 * ours[0]
