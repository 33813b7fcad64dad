"""The benchmark runner's own logic, on a tiny sweep: arguments, the correctness gate, the outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import rnnkern
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


PEERS = ("jax", "onnxruntime")


def installed_peers() -> list[str]:
    return [name for name in PEERS if name in implementations.IMPLEMENTATIONS]


def skip_unless_installed(name: str) -> None:
    if name not in implementations.IMPLEMENTATIONS:
        pytest.skip(f"{name} is not installed (the peers extra), so the runner cannot time it")


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
    """A tiny sweep naming rnnkern and the installed peers, run in a fresh Python process (whose
    modules are then known to be the runner's own): its results.json and the modules of the
    peers' packages that process imported."""
    peers = installed_peers()
    if not peers:
        pytest.skip("neither jax nor onnxruntime is installed (the peers extra)")
    out = tmp_path_factory.mktemp("peers")
    argv = [
        *("--device", "cpu", "--modes", "inference", "forward+backward"),
        *("--batch-sizes", "1", "--hidden-sizes", "8", "--seq-lens", "4", "8"),
        *("--implementations", "rnnkern", *peers, "--repeats", "2", "--warmup", "1"),
        *("--out", str(out), "--no-plot", "--quiet"),
    ]
    script = (
        "import json, sys\n"
        "from benchmarks import run\n"
        f"run.main({argv!r})\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {PEERS!r})))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    return json.loads((out / "results.json").read_text()), imported, done.stdout


@pytest.mark.parametrize("name", PEERS)
def test_peers_are_timed_in_their_own_process_against_its_nn_rnn(name, peers_run):
    skip_unless_installed(name)
    report, _, printed = peers_run
    assert f"| 4 | {name} (own process) |" in printed
    for entry in report["configs"]:
        rows = entry["results"]
        # One table as before: each length's rows in the order named, nn.RNN first; the only
        # nn.RNN rows are this process's own.
        assert [(r["seq_len"], r["implementation"]) for r in rows] == [
            (n, impl) for n in (4, 8) for impl in ["nn.RNN", "rnnkern", *installed_peers()]
        ]
        for r in rows:
            if r["implementation"] in ("nn.RNN", "rnnkern"):
                assert "process" not in r  # timed here
            elif r["implementation"] != name:
                continue
            elif name == "onnxruntime" and entry["config"]["mode"] == "forward+backward":
                # Never run for this mode, in no process: skipped as it would be here.
                assert r["status"] == "skipped" and "no backward" in r["note"], r
                assert "process" not in r
            else:
                assert r["status"] == "ok", r
                assert r["process"] == "own"
                baseline = next(
                    b
                    for b in rows
                    if b["implementation"] == "nn.RNN" and b["seq_len"] == r["seq_len"]
                )
                # Its ratio is against the nn.RNN timed in its own process, not this one's.
                assert r["baseline_us_per_step"] > 0
                assert r["baseline_us_per_step"] != baseline["us_per_step"]
                assert r["speedup_vs_nn_rnn"] == pytest.approx(
                    r["baseline_us_per_step"] / r["us_per_step"]
                )
                assert (
                    f"{r['speedup_vs_nn_rnn']:.2f}x (nn.RNN {r['baseline_us_per_step']:.2f})"
                    in (printed)
                )


def test_the_runner_does_not_import_the_peers_it_times_in_their_own_process(peers_run):
    report, imported, _ = peers_run
    timed_elsewhere = {
        r["implementation"]
        for entry in report["configs"]
        for r in entry["results"]
        if r.get("process") == "own"
    }
    assert timed_elsewhere == set(installed_peers())
    assert imported == []


def test_the_child_command_carries_the_run_s_own_arguments():
    argv = ["--load", "1", "--seq-lens", "4", "--implementations", "rnnkern", "jax", "--out", "x"]
    command = run.own_process_command("rnnkern", ["inference"], argv, run.Path("/tmp/o"))
    assert command[:3] == [sys.executable, "-m", "benchmarks.run"]
    args = run.parse_args(command[3:])
    assert args.implementations == ["nn.RNN", "rnnkern"] and args.modes == ["inference"]
    assert args.load == 1 and args.seq_lens == [4]  # its own load, as this run's
    assert args.out == "/tmp/o" and args.no_plot and args.quiet


def test_a_failing_own_process_is_a_result_not_a_crash(monkeypatch, tmp_path, capsys):
    # An implementation that the child process does not have (it is registered here only): the
    # child fails on its arguments, as it would without the package installed.
    def never_built_here(reference):
        raise AssertionError("built in the runner's own process")

    isolated = Implementation("isolated", never_built_here, packed=False, own_process=True)
    monkeypatch.setitem(run.IMPLEMENTATIONS, "isolated", isolated)
    report = run.main(
        [
            *("--device", "cpu", "--modes", "inference", "--batch-sizes", "1"),
            *("--hidden-sizes", "8", "--seq-lens", "4", "8", "--repeats", "2", "--warmup", "1"),
            *("--implementations", "rnnkern", "isolated", "--out", str(tmp_path), "--no-plot"),
            "--quiet",
        ]
    )
    rows = report["configs"][0]["results"]
    by_name = {(r["implementation"], r["seq_len"]): r for r in rows}
    assert by_name[("rnnkern", 8)]["status"] == "ok"
    for n in (4, 8):
        failed = by_name[("isolated", n)]
        assert failed["status"] == "error" and failed["process"] == "own"
        assert "its own process failed (exit code 2)" in failed["note"]
        assert "invalid choice: 'isolated'" in failed["note"]
    assert "| 4 | isolated (own process) | ERROR: its own process failed" in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["configs"][0]["results"] == rows


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


def test_second_thread_times_both_choices_and_leaves_the_mode_as_it_was():
    from benchmarks import second_thread

    medians = second_thread.time_shape((1, 8, 4), rounds=1, calls=1)
    kinds = ("inference", "forward+backward")
    expected = {(k, m, o) for k in kinds for m in second_thread.MODES for o in second_thread.ORDERS}
    assert set(medians) == expected
    assert all(us > 0 for us in medians.values())
    assert rnnkern._C.set_teammate_mode("auto") == "auto"


def test_peers_alternated_takes_medians_and_leads_round_by_round():
    from benchmarks.peers_alternated import summary

    key = ("inference", 1, 64, 256)
    other = ("forward+backward", 1, 64, 256)
    rounds = [
        {
            "rnnkern": {key: 1.0, other: 2.0},
            "jax": {key: 3.0, other: 1.0},
            "onnxruntime": {key: 2.0},
        },
        {
            "rnnkern": {key: 4.0, other: 2.0},
            "jax": {key: 4.0, other: 4.0},
            "onnxruntime": {key: 6.0},
        },
        {
            "rnnkern": {key: 2.0, other: 3.0},
            "jax": {key: 7.0, other: 3.0},
            "onnxruntime": {key: 5.0},
        },
    ]
    lines = summary(rounds, ["jax", "onnxruntime"])
    by_mode = {line.split()[0]: line.split() for line in lines[3:]}
    # Medians over rounds per implementation; the lead is taken within each round (the fastest
    # peer's time over rnnkern's: 2/1, 4/4, 5/2), its median and range over rounds.
    assert by_mode["inference"][2:5] == ["2.00", "4.00", "5.00"]
    assert by_mode["inference"][5:] == ["2.00x", "[1.00-2.50]"]
    # onnxruntime has no training row: a dash, and the lead comes from jax alone (1/2, 4/2, 3/3).
    assert by_mode["forward+backward"][2:5] == ["2.00", "3.00", "-"]
    assert by_mode["forward+backward"][5:] == ["1.00x", "[0.50-2.00]"]


def test_peers_alternated_runs_the_runner_on_each_implementation(tmp_path):
    from benchmarks import peers_alternated

    args = peers_alternated.argparse.Namespace(
        modes=["inference"], repeats=1, batch_sizes=[1], hidden_sizes=[8], seq_lens=[4]
    )
    times = peers_alternated.runner_times("rnnkern", args)
    assert list(times) == [("inference", 1, 8, 4)] and times[("inference", 1, 8, 4)] > 0
