"""The persistent CUDA kernels' launch plan (csrc/cuda/persistent_plan.*), checked on the CPU.

The plan is a pure function of the shape and the device's properties, so every shape class can be
checked here for devices we do not have: each output (direction, hidden row, batch entry) is owned
by exactly one thread of one block, and every block stays within the device's shared memory,
threads and (from the compiler's report) registers.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from rnnkern import _testing
from tests.conftest import ROOT

P = _testing  # the test-only module (csrc/testing/)

# (multiprocessors, shared memory per block (opt-in), threads per block, cooperative launch)
A100 = (108, 166912, 1024, True)
H100 = (132, 232448, 1024, True)
NO_COOPERATIVE = (132, 232448, 1024, False)
DEVICES = {"A100": A100, "H100": H100}
# (weight_bytes, state_bytes) of float32, float64 and float16/bfloat16.
DTYPES = {"float32": (4, 4), "float64": (8, 8), "half": (2, 4)}
HIDDEN = [1, 31, 64, 100, 128, 224, 256, 320, 512, 1000, 1024, 2048, 4096]
BATCH = [1, 5, 16, 64, 256]
REGISTERS_PER_SM = 65536  # sm_80 and sm_90


def plan(hidden, batch, directions, dtype, device, algorithm="auto"):
    return P.plan_launch(hidden, batch, directions, *DTYPES[dtype], device, algorithm)


def check_plan(hidden, batch, directions, dtype, device, algorithm="auto"):
    """Checks one plan's budgets and coverage; returns the plan."""
    p = plan(hidden, batch, directions, dtype, device, algorithm)
    if p["algorithm"] == "per_step":
        assert p["why_not"], "a shape sent to the per-step path says why"
        return p
    sm_count, shared, max_threads, _ = device
    weight_bytes, state_bytes = DTYPES[dtype]
    assert p["shared_bytes"] <= shared
    assert p["shared_bytes"] == (
        p["state_buffers"] * p["batch_per_group"] * hidden * state_bytes
        + p["rows_per_block"] * p["m_stride"] * weight_bytes
    )
    assert p["threads"] % 32 == 0 and 32 <= p["threads"] <= min(max_threads, P.max_threads)
    assert 1 <= p["outputs_per_thread"] <= P.max_outputs_per_thread
    assert p["split"] in (1, 2, 4, 8, 16, 32) and p["threads"] % p["split"] == 0
    assert p["m_stride"] >= hidden
    if p["algorithm"] == "grid":
        assert p["blocks"] <= sm_count, "a cooperative grid must be resident: a block per SM"
        assert p["state_buffers"] == 1
    else:
        assert p["blocks_per_group"] == 1 and p["rows_per_block"] == hidden
        assert p["state_buffers"] == 2

    owners = P.plan_owners(hidden, batch, directions, *DTYPES[dtype], device, algorithm).numpy()
    assert len(owners) == p["blocks"] * p["threads"] * P.max_outputs_per_thread
    owned = owners[owners[:, 0] >= 0]
    assert (owned[:, 0] < directions).all() and (owned[:, 1] < hidden).all()
    assert (owned[:, 2] < batch).all()
    flat = (owned[:, 0] * hidden + owned[:, 1]) * batch + owned[:, 2]
    counts = np.bincount(flat, minlength=directions * hidden * batch)
    assert (counts == 1).all(), f"outputs owned {set(counts.tolist())} times, not once"
    return p


@pytest.mark.parametrize("device", DEVICES.values(), ids=DEVICES.keys())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("directions", [1, 2])
def test_every_output_owned_once_within_budgets(device, dtype, directions):
    seen = set()
    for hidden in HIDDEN:
        for batch in BATCH:
            for algorithm in ("auto", "block", "grid"):
                p = check_plan(hidden, batch, directions, dtype, device, algorithm)
                seen.add(p["algorithm"])
    assert seen == {"block", "grid", "per_step"}


@pytest.mark.parametrize("device", DEVICES.values(), ids=DEVICES.keys())
@pytest.mark.parametrize("dtype", DTYPES)
def test_around_the_boundaries_of_each_algorithm(device, dtype):
    # The largest hidden size each algorithm takes at batch 1, and one past it: both covered.
    for algorithm in ("block", "grid"):
        fits = [
            h
            for h in range(1, 4097)
            if plan(h, 1, 1, dtype, device, algorithm)["algorithm"] == algorithm
        ]
        assert fits, algorithm
        largest = max(fits)
        assert fits == list(range(1, largest + 1)), "what fits is one range of hidden sizes"
        for hidden in (largest - 1, largest, largest + 1):
            for batch, directions in ((1, 1), (3, 2), (64, 1)):
                check_plan(hidden, batch, directions, dtype, device)
                check_plan(hidden, batch, directions, dtype, device, algorithm)


def test_which_algorithm_a_shape_gets():
    assert plan(64, 1, 1, "float32", H100)["algorithm"] == "block"
    assert plan(256, 16, 2, "half", H100)["algorithm"] == "block"
    assert plan(1024, 1, 1, "float32", H100)["algorithm"] == "grid"
    assert plan(2048, 4, 2, "half", H100)["algorithm"] == "grid"
    assert plan(8192, 1, 1, "float32", H100)["algorithm"] == "per_step"
    assert plan(1024, 256, 1, "float32", H100)["algorithm"] == "per_step"
    no_coop = plan(1024, 1, 1, "float32", NO_COOPERATIVE)
    assert no_coop["algorithm"] == "per_step" and "cooperative" in no_coop["why_not"]
    forced = plan(1024, 1, 1, "float32", H100, "block")
    assert forced["algorithm"] == "per_step" and "shared memory" in forced["why_not"]
    assert plan(0, 4, 1, "float32", H100)["algorithm"] == "per_step"
    assert plan(64, 0, 1, "float32", H100)["algorithm"] == "per_step"


def test_small_batches_spread_over_the_multiprocessors():
    # kBlock gives each block as little of the batch as the multiprocessors allow.
    p = plan(128, 16, 1, "float32", H100)
    assert p["batch_per_group"] == 1 and p["blocks"] == 16
    p = plan(128, 256, 2, "float32", H100)
    assert p["batch_per_group"] == 4 and p["blocks"] == 2 * 64


def test_unknown_algorithm_is_a_clear_error():
    with pytest.raises(ValueError, match="expected one of auto, block, grid, per_step"):
        plan(64, 1, 1, "float32", H100, "fast")


def resource_report() -> list[dict]:
    text = (ROOT / "csrc" / "cuda" / "RESOURCES.md").read_text()
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 7 and re.fullmatch(r"sm_\d+", cells[1]):
            kernel, arch, *numbers = cells
            rows.append(
                dict(
                    zip(
                        ["registers", "shared", "stack", "spill_st", "spill_ld"], map(int, numbers)
                    ),
                    kernel=kernel,
                    arch=arch,
                )
            )
    return rows


def test_persistent_kernels_fit_the_register_file_without_spills():
    rows = [r for r in resource_report() if "persistent" in r["kernel"]]
    assert {r["arch"] for r in rows} == {"sm_80", "sm_90"}
    assert len(rows) == 2 * 2 * 2 * 4, "forward/backward x block/grid x arch x dtype"
    for r in rows:
        assert r["registers"] * P.max_threads <= REGISTERS_PER_SM, r
        assert r["stack"] == r["spill_st"] == r["spill_ld"] == 0, r
        assert r["shared"] == 0, "all shared memory is dynamic, counted by the plan"
