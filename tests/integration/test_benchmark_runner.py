"""The benchmark runner's own logic, on a tiny sweep: arguments, the correctness gate, the outputs."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
import torch

from benchmarks import gpu_sweep, implementations, run
from benchmarks.implementations import Implementation


def test_defaults():
    args = run.parse_args([])
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert args.seq_lens == [16, 64, 256, 1024, 4096]
    assert args.modes == ["forward+backward"]
    assert set(args.implementations) == {
        name
        for name, impl in implementations.IMPLEMENTATIONS.items()
        if args.device in impl.devices and impl.default
    }
    assert "rnnkern-streaming" not in args.implementations


def test_baseline_is_always_measured():
    args = run.parse_args(["--implementations", "rnnkern"])
    assert args.implementations == ["nn.RNN", "rnnkern"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--batch-sizes", "0"],
        ["--seq-lens", "-4"],
        ["--repeats", "0"],
        ["--dtype", "int8"],
        ["--modes", "training"],
        ["--implementations", "mystery"],
        ["--load", "-1"],
    ],
)
def test_bad_arguments_are_rejected(argv, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(argv)
    assert "error" in capsys.readouterr().err


def test_forward_flops():
    config = run.Config(
        "cpu",
        "float32",
        "inference",
        batch=2,
        hidden=8,
        input_size=3,
        layers=2,
        bidirectional=True,
        nonlinearity="tanh",
    )
    # layer 0: 2 directions * 2*B*T*H*(I+H); layer 1 takes 2H inputs.
    expected = 2 * 2 * 2 * 5 * 8 * (3 + 8) + 2 * 2 * 2 * 5 * 8 * (16 + 8)
    assert run.forward_flops(config, 5) == expected
    training = run.Config(**{**config.__dict__, "mode": "forward+backward"})
    assert run.mode_flops(training, 5) == 3 * expected


def broken(reference):
    good = implementations.build_rnnkern(reference)

    def fn(x, h0):
        out, h_n = good(x, h0)
        return out * 1.01, h_n

    return fn


def crashing(reference):
    def fn(x, h0):
        raise RuntimeError("kernel exploded")

    return fn


def test_wrong_and_failing_implementations_are_reported_not_timed(monkeypatch):
    monkeypatch.setitem(run.IMPLEMENTATIONS, "broken", Implementation("broken", broken))
    monkeypatch.setitem(run.IMPLEMENTATIONS, "crashing", Implementation("crashing", crashing))
    config = run.Config("cpu", "float32", "forward+backward", 2, 8, 3, 1, False, "tanh")
    rows = run.measure_point(
        config,
        6,
        ["nn.RNN", "rnnkern", "broken", "crashing"],
        repeats=2,
        warmup=1,
        memory_fraction=0.5,
        gemm=100.0,
    )
    by_name = {r["implementation"]: r for r in rows}
    assert by_name["broken"]["status"] == "wrong"
    assert "differs from nn.RNN" in by_name["broken"]["note"]
    assert "median_s" not in by_name["broken"]
    assert by_name["crashing"]["status"] == "error"
    assert "kernel exploded" in by_name["crashing"]["note"]
    assert by_name["rnnkern"]["status"] == "ok" and by_name["rnnkern"]["max_abs_error"] < 1e-5
    assert by_name["nn.RNN"]["speedup_vs_nn_rnn"] == 1.0


def test_points_that_do_not_fit_are_skipped_with_a_note():
    config = run.Config("cpu", "float32", "inference", 4, 8, 3, 1, False, "tanh")
    rows = run.measure_point(
        config, 10, ["nn.RNN", "rnnkern"], repeats=1, warmup=0, memory_fraction=1e-12, gemm=100.0
    )
    assert all(r["status"] == "skipped" and "GiB" in r["note"] for r in rows)


def test_cell_loops_match_nn_rnn_bidirectional_stack():
    torch.manual_seed(0)
    reference = torch.nn.RNN(3, 5, 2, bidirectional=True, nonlinearity="relu")
    x, h0 = torch.randn(7, 2, 3), torch.randn(4, 2, 5)
    expected = reference(x, h0)
    got = implementations.build_cell_loop(reference)(x, h0)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "name, bidirectional",
    [
        ("rnnkern-RNNCell-loop", True),
        ("nn.RNN-streaming", False),
        ("rnnkern-streaming", False),
        ("jax", True),
        ("onnxruntime", True),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_added_implementations_match_nn_rnn(name, bidirectional, dtype):
    # The cell loop over rnnkern's cells, streaming one step per call, and the peers outside torch
    # (in requirements.txt, so they run here): each must compute nn.RNN's function, on a stack
    # with every feature it supports, before the runner may time it.
    torch.manual_seed(0)
    reference = torch.nn.RNN(3, 5, 2, bidirectional=bidirectional, nonlinearity="relu", dtype=dtype)
    directions = 2 if bidirectional else 1
    x, h0 = torch.randn(7, 2, 3, dtype=dtype), torch.randn(2 * directions, 2, 5, dtype=dtype)
    config = run.Config("cpu", str(dtype)[6:], "inference", 2, 5, 3, 2, bidirectional, "relu")
    if name == "onnxruntime" and dtype == torch.float64:
        # ONNX Runtime has no float64 RNN kernel: the runner says so rather than timing it.
        assert "float32 only" in run.unsupported_reason(name, config)
        return
    assert run.unsupported_reason(name, config) is None
    with torch.no_grad():
        expected = reference(x, h0)
        got = implementations.IMPLEMENTATIONS[name].build(reference)(x, h0)
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)


def test_peers_time_their_own_work_and_say_what_they_cannot_run():
    reference = torch.nn.RNN(4, 6)
    x, h0 = torch.randn(5, 3, 4), torch.randn(1, 3, 6)
    jax_rnn = implementations.IMPLEMENTATIONS["jax"].build(reference)
    loss, (weight_grads, grad_x, grad_h0) = run.make_call(jax_rnn, x, h0, "forward+backward")()
    xg, hg = x.clone().requires_grad_(), h0.clone().requires_grad_()
    out, h_n = reference(xg, hg)
    (out.sum() + h_n.sum()).backward()
    torch.testing.assert_close(float(loss), (out.sum() + h_n.sum()).item(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(np.asarray(grad_x)), xg.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(np.asarray(grad_h0)), hg.grad, rtol=1e-4, atol=1e-5)
    w_hh_grad = torch.from_numpy(np.asarray(weight_grads[0][0][1]))
    torch.testing.assert_close(w_hh_grad, reference.weight_hh_l0.grad, rtol=1e-4, atol=1e-5)

    config = run.Config("cpu", "float32", "forward", 1, 8, 8, 1, True, "tanh")
    assert "inference only" in run.unsupported_reason("onnxruntime", config)
    assert "one direction" in run.unsupported_reason("rnnkern-streaming", config)
    assert run.unsupported_reason("jax", config) is None


def test_tiny_sweep_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    run.main(
        [
            "--device",
            "cpu",
            "--batch-sizes",
            "1",
            "2",
            "--hidden-sizes",
            "8",
            "--seq-lens",
            "4",
            "8",
            "--modes",
            "inference",
            "forward+backward",
            "--implementations",
            "rnnkern",
            "RNNCell-loop",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert printed.count("| seq len | implementation |") == 4  # 2 modes x 2 batch sizes
    report = json.loads((out / "results.json").read_text())
    assert report["meta"]["gemm_gflops"] > 0 and report["meta"]["torch"] == torch.__version__
    assert len(report["configs"]) == 4
    for entry in report["configs"]:
        assert entry["config"]["hidden"] == 8
        assert [r["seq_len"] for r in entry["results"]] == [4, 4, 4, 8, 8, 8]
        for r in entry["results"]:
            assert r["status"] == "ok", r
            assert r["tokens_per_s"] > 0 and r["gflops"] > 0 and len(r["times_s"]) == 2
    png = (out / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_packed_sweep_and_the_gpu_summary(tmp_path):
    # Variable-length batches as PackedSequence: rnnkern checked and timed against nn.RNN, the
    # cell loops (no PackedSequence) skipped with a note; then gpu_sweep's summary of such reports,
    # packed against padded.
    common = [
        "--device",
        "cpu",
        "--batch-sizes",
        "3",
        "--hidden-sizes",
        "8",
        "--seq-lens",
        "4",
        "8",
        "--repeats",
        "2",
        "--warmup",
        "1",
        "--quiet",
        "--no-plot",
    ]
    packed = run.main([*common, "--packed", "--out", str(tmp_path / "p")])
    padded = run.main([*common, "--out", str(tmp_path / "d")])
    results = packed["configs"][0]["results"]
    assert packed["configs"][0]["config"]["packed"]
    by_name = {(r["implementation"], r["seq_len"]): r for r in results}
    assert (
        by_name[("rnnkern", 8)]["status"] == "ok"
        and by_name[("rnnkern", 8)]["max_abs_error"] < 1e-5
    )
    assert by_name[("RNNCell-loop", 8)]["status"] == "skipped"
    assert "rnnkern-floor" not in {r["implementation"] for r in results}, "CUDA only"
    sweeps = [
        dict(name="standard: packed", dtype="float32", target=5.0, argv=[], report=packed),
        dict(name="padded", dtype="float32", target=None, argv=[], report=padded),
    ]
    summary = gpu_sweep.summarise(sweeps)
    assert "## standard: packed (float32): target 5.0x over nn.RNN" in summary
    assert "Lowest speedup" in summary
    assert summary.count("| float32 | forward+backward | 3 | 8 |") == 2  # packed / padded rows


def test_the_plot_says_what_was_not_timed_and_why():
    from benchmarks.report import _not_timed

    results = [
        {"seq_len": 16, "implementation": "rnnkern", "status": "ok"},
        {
            "seq_len": 4096,
            "implementation": "RNNCell-loop",
            "status": "skipped",
            "note": "too slow",
        },
        {"seq_len": 1024, "implementation": "RNNCell-loop", "status": "skipped", "note": "x"},
    ]
    text = _not_timed(results)
    assert "RNNCell-loop not plotted at seq len 4096, 1024, skipped: too slow" in text
    assert "rnnkern" not in text
    assert _not_timed(results[:1]) == ""


def test_outside_load_keeps_cores_busy_only_while_timing():
    from benchmarks.load import outside_load

    def cpu_seconds(pid: int) -> float:  # user + system time, from /proc (Linux)
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    with outside_load(2) as spinners:
        assert len(spinners) == 2 and all(p.is_alive() for p in spinners)
        time.sleep(0.5)  # started
        start = [cpu_seconds(p.pid) for p in spinners]
        time.sleep(1.0)
        busy = [cpu_seconds(p.pid) - s for p, s in zip(spinners, start)]
        assert all(b > 0.3 for b in busy), busy  # each is using a core (shared with this test)
    assert not any(p.is_alive() for p in spinners)
    with outside_load(0) as none:
        assert none == []
