"""PackedSequence input: variable lengths, sorted or not, equal to nn.RNN's output and h_n."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence, pad_packed_sequence

from tests.conftest import GRAD_TOL, TOL, assert_close, grads, rnn_pair


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("enforce_sorted", [True, False])
@pytest.mark.parametrize("batch", [1, 6, 24])
def test_packed_matches_nn_rnn(bidirectional, num_layers, enforce_sorted, batch):
    theirs, ours = rnn_pair(
        input_size=3, hidden_size=10, num_layers=num_layers, bidirectional=bidirectional
    )
    gen = torch.Generator().manual_seed(batch)
    lengths = torch.randint(1, 9, (batch,), generator=gen)
    if enforce_sorted:
        lengths = lengths.sort(descending=True).values
    seqs = [torch.randn(int(n), 3, requires_grad=True) for n in lengths]
    directions = 2 if bidirectional else 1
    h0 = torch.randn(num_layers * directions, batch, 10, requires_grad=True)

    results = []
    for module in (theirs, ours):
        packed = pack_sequence(seqs, enforce_sorted=enforce_sorted)
        out, h_n = module(packed, h0)
        assert isinstance(out, type(packed))
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        padded, out_lengths = pad_packed_sequence(out)
        assert torch.equal(out_lengths, lengths)
        results.append((out, padded, h_n))
    (out_t, pad_t, hn_t), (out_o, pad_o, hn_o) = results
    assert_close(pad_o, pad_t, TOL[torch.float32], "padded output")
    assert_close(hn_o, hn_t, TOL[torch.float32], "h_n")
    if not enforce_sorted:
        assert torch.equal(out_o.sorted_indices, out_t.sorted_indices)
        assert torch.equal(out_o.unsorted_indices, out_t.unsorted_indices)
    inputs = [*seqs, h0]
    for g_o, g_t in zip(
        grads((out_o.data, hn_o), inputs + list(ours.parameters())),
        grads((out_t.data, hn_t), inputs + list(theirs.parameters())),
    ):
        assert_close(g_o, g_t, GRAD_TOL[torch.float32], "grad")


def test_packed_without_h0_and_batch_first_padding():
    theirs, ours = rnn_pair(input_size=2, hidden_size=5, batch_first=True, nonlinearity="relu")
    x = torch.randn(4, 6, 2)
    lengths = torch.tensor([6, 2, 5, 1])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out_t, hn_t = theirs(packed)
    out_o, hn_o = ours(packed)
    assert_close(out_o.data, out_t.data, TOL[torch.float32], "packed data")
    assert_close(hn_o, hn_t, TOL[torch.float32], "h_n")


def test_packed_equals_padded_runs_of_each_sequence():
    """Each sequence of a packed batch gives what it gives alone: no leakage across lengths."""
    _, ours = rnn_pair(input_size=3, hidden_size=7, bidirectional=True)
    seqs = [torch.randn(n, 3) for n in (5, 3, 1)]
    out, h_n = ours(pack_sequence(seqs))
    padded, _ = pad_packed_sequence(out)
    for b, seq in enumerate(seqs):
        alone, alone_hn = ours(seq[:, None, :])
        assert_close(padded[: len(seq), b], alone[:, 0], TOL[torch.float32], f"sequence {b}")
        assert_close(h_n[:, b], alone_hn[:, 0], TOL[torch.float32], f"h_n {b}")
        assert torch.all(padded[len(seq) :, b] == 0)
