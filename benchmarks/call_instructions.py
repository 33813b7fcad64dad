"""Instructions per call of rnnkern.RNN and nn.RNN at a few small shapes, counted by callgrind.

On a machine whose timings drift (this project's shared 2-core VM), instruction counts are the
deterministic measure of a call's fixed costs. Run under valgrind, one case after another in one
process; each case is bracketed by two marker calls that zero and dump callgrind's counters:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out.%p \\
        --zero-before=getppid --dump-before=getpgrp \\
        python benchmarks/call_instructions.py rnnkern_1_64_4 nn_1_64_4 ...

Dump k (/tmp/cg.out.<pid>.k) then holds case k's CALLS calls after 5 warm-up calls: its
"summary:" line divided by CALLS is the instructions a call (the loop's own cost is a few hundred
instructions a call). With no arguments it lists the cases. One thread; importing torch under
valgrind takes a few minutes.
"""

from __future__ import annotations

import os
import sys

import torch

import rnnkern

CALLS = 200
I = H = 64


def pair(layers: int) -> tuple[rnnkern.RNN, torch.nn.RNN]:
    ours, theirs = rnnkern.RNN(I, H, layers), torch.nn.RNN(I, H, layers)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def inference(module, x, hx=None):
    def call():
        with torch.no_grad():
            module(x, hx)

    return call


def training(module, x):
    def call():
        output, h_n = module(x)
        (output.sum() + h_n.sum()).backward()

    return call


def cases() -> dict:
    torch.manual_seed(0)
    one, two = pair(1), pair(2)
    both = rnnkern.RNN(I, H, bidirectional=True), torch.nn.RNN(I, H, bidirectional=True)
    both[1].load_state_dict(both[0].state_dict())
    x1, x4 = torch.randn(1, 1, I), torch.randn(4, 1, I)
    h1 = torch.randn(1, 1, H)
    found = {}
    for name, index in (("rnnkern", 0), ("nn", 1)):
        found[f"{name}_1_64_4"] = inference(one[index], x4)
        found[f"{name}_1_64_1_streaming"] = inference(one[index], x1, h1)
        found[f"{name}_2layers_1_64_4"] = inference(two[index], x4)
        found[f"{name}_1_64_4_training"] = training(one[index], x4)
        found[f"{name}_bidirectional_1_64_4"] = inference(both[index], x4)
        found[f"{name}_bidirectional_1_64_4_training"] = training(both[index], x4)
    return found


def main() -> None:
    torch.set_num_threads(1)
    available = cases()
    if len(sys.argv) == 1:
        print("\n".join(available))
        return
    for name in sys.argv[1:]:
        call = available[name]
        for _ in range(5):
            call()
        os.getppid()  # --zero-before=getppid
        for _ in range(CALLS):
            call()
        os.getpgrp()  # --dump-before=getpgrp
        print(name, file=sys.stderr)


if __name__ == "__main__":
    main()
