"""rnnkern.RNN trained under DistributedDataParallel (gloo, two processes on localhost).

DDP is how such a module is most often trained on several CPUs: it broadcasts the parameters at
construction, hooks every parameter's gradient accumulator and all-reduces (averages) the gradients
over the ranks. Each rank here trains rnnkern.RNN plus an nn.Linear head on its half of the batch
for a few SGD steps; the final parameters must equal those of one process training the same model,
from the same initial weights, on the whole batch with the loss normalised by the whole batch (so
its gradient is the ranks' average). The single-process reference is run twice, with rnnkern.RNN
and with torch.nn.RNN, so that a wrong gradient from the kernels cannot hide in both sides.

Scenarios: a two-layer single-direction RNN long enough for the pipelined (helper-thread) kernels,
a bidirectional batch_first ReLU RNN, and one rank fed a PackedSequence of variable lengths while
the other gets a dense batch (the reference packs all sequences into one PackedSequence).

The workers are spawned once for the module; a hang (e.g. a collective that never completes) fails
the tests after a timeout instead of blocking the run.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import rnnkern
from tests.conftest import TOL

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed or its gloo backend is not available in this torch build",
)

WORLD = 2
STEPS = 3
INPUT, OUTPUT = 5, 3
TIMEOUT_S = 120.0

# name -> (RNN arguments, sequence length, whole-batch size, rank 0 gets a PackedSequence)
SCENARIOS: dict[str, tuple[dict, int, int, bool]] = {
    "pipelined": (dict(hidden_size=16, num_layers=2), 130, 8, False),
    "bidirectional": (
        dict(hidden_size=12, bidirectional=True, batch_first=True, nonlinearity="relu"),
        9,
        6,
        False,
    ),
    "packed_on_rank0": (dict(hidden_size=10, num_layers=2), 11, 8, True),
}


class Model(nn.Module):
    """An RNN and a linear head applied to every output row and to the last layer's final state."""

    def __init__(self, rnn_class: type[nn.Module], rnn_args: dict) -> None:
        super().__init__()
        self.rnn = rnn_class(input_size=INPUT, **rnn_args)
        self.directions = 2 if self.rnn.bidirectional else 1
        self.head = nn.Linear(self.directions * self.rnn.hidden_size, OUTPUT)

    def forward(self, x):
        out, h_n = self.rnn(x)
        rows = out.data if isinstance(out, PackedSequence) else out.reshape(-1, out.size(-1))
        last = h_n.view(self.rnn.num_layers, self.directions, -1, self.rnn.hidden_size)[-1]
        last = last.permute(1, 0, 2).reshape(last.size(1), -1)  # (batch, directions * hidden)
        return self.head(rows), self.head(last)


def make_model(name: str) -> Model:
    rnn_args = SCENARIOS[name][0]
    torch.manual_seed(7)
    return Model(rnnkern.RNN, rnn_args)


def loss_fn(model_outputs, target: torch.Tensor, denominator: int) -> torch.Tensor:
    """A sum over sequences (and over output rows) divided by a constant: splitting the batch in
    two halves and averaging their gradients gives the whole batch's gradient."""
    rows, final = model_outputs
    return (((final - target) ** 2).sum() + 0.05 * (rows**2).sum()) / denominator


def step_data(name: str, step: int):
    """The whole batch of one step: the sequences (each (length, INPUT)) and the targets."""
    _, seq_len, batch, packed = SCENARIOS[name]
    gen = torch.Generator().manual_seed(1000 * list(SCENARIOS).index(name) + step)
    half = batch // WORLD
    lengths = [seq_len] * batch
    if packed:  # rank 0's sequences have random lengths, rank 1's are dense
        lengths[:half] = torch.randint(1, seq_len + 1, (half,), generator=gen).tolist()
    seqs = [torch.randn(n, INPUT, generator=gen) for n in lengths]
    target = torch.randn(batch, OUTPUT, generator=gen)
    return seqs, target


def as_input(name: str, seqs: list[torch.Tensor], packed: bool):
    if packed:
        return pack_sequence(seqs, enforce_sorted=False)
    return torch.stack(seqs, dim=0 if SCENARIOS[name][0].get("batch_first") else 1)


def rank_batch(name: str, step: int, rank: int):
    _, _, batch, packed = SCENARIOS[name]
    seqs, target = step_data(name, step)
    half = batch // WORLD
    mine = slice(rank * half, (rank + 1) * half)
    return as_input(name, seqs[mine], packed and rank == 0), target[mine]


def optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def _worker(rank: int, port: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)  # two processes on two cores
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        for name, (_, _, batch, _) in SCENARIOS.items():
            model = make_model(name)
            ddp = DistributedDataParallel(model)
            opt = optimizer(ddp.parameters())
            for step in range(STEPS):
                x, target = rank_batch(name, step, rank)
                opt.zero_grad()
                loss_fn(ddp(x), target, batch // WORLD).backward()
                opt.step()
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            torch.save(state, Path(out_dir) / f"{name}-rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's finalisation: there, after destroy_process_group has returned, a
    # worker sometimes aborts ("terminate called without an active exception", SIGABRT), a
    # torch/gloo teardown race seen in ~10% of runs without the barrier and ~2% with it, with
    # torch.nn.RNN models and without rnnkern imported too. Everything this test needs is saved.
    os._exit(0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not context.join(timeout=1):  # raises, with the worker's traceback, if a worker failed
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            pytest.fail(f"DDP workers did not finish within {TIMEOUT_S:.0f} s (hang?)")
    return out_dir


def train_whole_batch(name: str, rnn_class: type[nn.Module]) -> dict[str, torch.Tensor]:
    """One process, the whole batch, the same initial weights (copied from the rnnkern model)."""
    init = make_model(name)
    model = Model(rnn_class, SCENARIOS[name][0])
    model.load_state_dict(init.state_dict())
    _, _, batch, packed = SCENARIOS[name]
    opt = optimizer(model.parameters())
    for step in range(STEPS):
        seqs, target = step_data(name, step)
        opt.zero_grad()
        loss_fn(model(as_input(name, seqs, packed)), target, batch).backward()
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ddp_matches_single_process(name: str, ddp_results: Path) -> None:
    ranks = [torch.load(ddp_results / f"{name}-rank{r}.pt") for r in range(WORLD)]
    initial = make_model(name).state_dict()
    references = {
        "rnnkern.RNN": train_whole_batch(name, rnnkern.RNN),
        "torch.nn.RNN": train_whole_batch(name, nn.RNN),
    }
    assert set(ranks[0]) == set(initial)
    for key in initial:
        # training really moved every parameter, far beyond the tolerance
        assert (ranks[0][key] - initial[key]).abs().max() > 1e-3, key
        # DDP keeps the replicas in sync
        torch.testing.assert_close(ranks[1][key], ranks[0][key], **TOL[torch.float32])
        for ref_name, reference in references.items():
            torch.testing.assert_close(
                ranks[0][key],
                reference[key],
                **TOL[torch.float32],
                msg=lambda m, key=key, ref_name=ref_name: (
                    f"{key}, DDP vs one process with {ref_name}: {m}"
                ),
            )
