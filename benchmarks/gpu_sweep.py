"""The GPU benchmark in one command: the benchmark runner over the shapes the speed
targets name, with a summary of each target. `make gpu-check` runs it after the GPU tests.

    RNNKERN_CUDA_KERNELS=1 python -m benchmarks.gpu_sweep --out benchmarks/results/cuda

Writes to --out: results.json (every sweep's runner report), throughput.png (the first sweep) and
SUMMARY.md (per target: the speedups over nn.RNN (cuDNN) measured side by side, which cuDNN kernels
nn.RNN ran and which algorithm rnnkern chose; the batch-1 time per step against the persistent
kernel's floor; packed against padded).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from rnnkern import _ops

from . import run
from .report import plot_throughput

SEQ_LENS = ["256", "1024", "4096"]
MODES = ["forward", "forward+backward"]
IMPLS = ["rnnkern", "nn.RNN"]

# (name, target speedup over nn.RNN, runner arguments). cuDNN's standard algorithm runs hidden
# >= 512, PackedSequence input and float64; its persistent one hidden 64-256 (tanh/relu).
SWEEPS = [
    (
        "standard: hidden 512-2048",
        5.0,
        ["--hidden-sizes", "512", "1024", "2048", "--batch-sizes", "1", "16"],
    ),
    (
        "persistent: hidden 64-256",
        1.5,
        ["--hidden-sizes", "64", "128", "256", "--batch-sizes", "1", "16"],
    ),
    (
        "large batch: hidden 1024",
        1.0,
        ["--hidden-sizes", "1024", "--batch-sizes", "64", "256", "--seq-lens", "256", "1024"],
    ),
    (
        "standard: packed",
        5.0,
        [
            "--packed",
            "--hidden-sizes",
            "256",
            "1024",
            "--batch-sizes",
            "16",
            "--seq-lens",
            "256",
            "1024",
        ],
    ),
    (
        "padded twins of the packed sweep",
        None,
        ["--hidden-sizes", "256", "1024", "--batch-sizes", "16", "--seq-lens", "256", "1024"],
    ),
    (
        "standard: float64",
        5.0,
        [
            "--dtype",
            "float64",
            "--hidden-sizes",
            "256",
            "--batch-sizes",
            "1",
            "16",
            "--seq-lens",
            "256",
            "1024",
        ],
    ),
    (
        "floor: batch 1",
        None,
        [
            "--hidden-sizes",
            "64",
            "256",
            "1024",
            "--batch-sizes",
            "1",
            "--modes",
            "forward",
            "--implementations",
            "rnnkern",
            "rnnkern-floor",
        ],
    ),
]
DTYPES = ["float32", "bfloat16"]


def argv_for(extra: list[str], dtype: str, out: str) -> list[str]:
    argv = ["--device", "cuda", "--out", out, "--no-plot", "--quiet", "--repeats", "7"]
    if "--dtype" not in extra:
        argv += ["--dtype", dtype]
    if "--seq-lens" not in extra:
        argv += ["--seq-lens", *SEQ_LENS]
    if "--modes" not in extra:
        argv += ["--modes", *MODES]
    if "--implementations" not in extra:
        argv += ["--implementations", *IMPLS]
    return argv + extra


def cudnn_kind(names: list[str]) -> str:
    text = " ".join(names).lower()
    return "persistent" if "persist" in text else "standard" if text else "?"


def points(report: dict):
    """(config, seq_len, {implementation: result}) for every point of a runner report."""
    for entry in report["configs"]:
        by_len: dict[int, dict] = {}
        for r in entry["results"]:
            by_len.setdefault(r["seq_len"], {})[r["implementation"]] = r
        for seq_len, results in sorted(by_len.items()):
            yield entry["config"], seq_len, results


def summarise(sweeps: list[dict]) -> str:
    lines = ["# GPU benchmark summary (benchmarks/gpu_sweep.py)", ""]
    meta = sweeps[0]["report"]["meta"] if sweeps else {}
    lines.append(f"{meta.get('device')}, torch {meta.get('torch')}, cuDNN {meta.get('cudnn')}")
    for sweep in sweeps:
        target = sweep["target"]
        lines += [
            "",
            f"## {sweep['name']} ({sweep['dtype']})"
            + (f": target {target}x over nn.RNN" if target else ""),
            "",
        ]
        lines.append(
            "| mode | batch | hidden | seq | rnnkern us/step | nn.RNN us/step | speedup "
            "| cuDNN kernels | rnnkern algorithm |"
        )
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
        worst = None
        for config, seq_len, results in points(sweep["report"]):
            ours, theirs = results.get("rnnkern", {}), results.get("nn.RNN", {})
            floor = results.get("rnnkern-floor", {})
            if ours.get("status") != "ok":
                lines.append(
                    f"| {config['mode']} | {config['batch']} | {config['hidden']} | "
                    f"{seq_len} | {ours.get('status')}: {ours.get('note', '')} | | | | |"
                )
                continue
            speedup = ours.get("speedup_vs_nn_rnn")
            if speedup is not None:
                worst = speedup if worst is None else min(worst, speedup)
            other = (
                f"floor {floor['us_per_step']:.2f} ({ours['us_per_step'] / floor['us_per_step']:.2f}x)"
                if floor.get("status") == "ok"
                else f"{theirs.get('us_per_step', float('nan')):.2f}"
            )
            lines.append(
                f"| {config['mode']} | {config['batch']} | {config['hidden']} | {seq_len} | "
                f"{ours['us_per_step']:.2f} | {other} | "
                f"{'' if speedup is None else f'{speedup:.2f}x'} | "
                f"{cudnn_kind(theirs.get('cuda_kernels', []))} | {ours.get('algorithm', '?')} |"
            )
        if target and worst is not None:
            verdict = "met" if worst >= target else "NOT met"
            lines += ["", f"Lowest speedup {worst:.2f}x against the target {target}x: {verdict}."]
    lines += packed_against_padded(sweeps)
    return "\n".join(lines) + "\n"


def packed_against_padded(sweeps: list[dict]) -> list[str]:
    """rnnkern's time on variable-length (packed) batches over its time on the padded batch."""
    times: dict[tuple, dict[bool, float]] = {}
    for sweep in sweeps:
        for config, seq_len, results in points(sweep["report"]):
            ours = results.get("rnnkern", {})
            if ours.get("status") == "ok":
                key = (sweep["dtype"], config["mode"], config["batch"], config["hidden"], seq_len)
                times.setdefault(key, {})[bool(config.get("packed"))] = ours["median_s"]
    lines = [
        "",
        "## packed over padded (rnnkern; at most 1.0 is the target)",
        "",
        "| dtype | mode | batch | hidden | seq | packed / padded |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, pair in sorted(times.items()):
        if True in pair and False in pair:
            lines.append("| " + " | ".join(map(str, key)) + f" | {pair[True] / pair[False]:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_sweep", description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/cuda")
    parser.add_argument("--quick", action="store_true", help="one dtype, shorter sequences")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("benchmarks.gpu_sweep: no CUDA device is available to torch here")
    if not _ops.CUDA_KERNELS_ENABLED:
        sys.exit(
            "benchmarks.gpu_sweep: rnnkern's CUDA kernels are not in use: this build must have them "
            "(rnnkern._C.has_cuda_kernels()) and RNNKERN_CUDA_KERNELS=1 must be set"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sweeps = []
    for dtype in DTYPES[:1] if args.quick else DTYPES:
        for name, target, extra in SWEEPS:
            if "--dtype" in extra and dtype != DTYPES[0]:
                continue
            if args.quick:
                extra = [*extra, "--seq-lens", "256"] if "--seq-lens" not in extra else extra
            with tempfile.TemporaryDirectory() as tmp:
                argv_run = argv_for(extra, dtype, tmp)
                print(
                    f"\n### {name} ({dtype}): python -m benchmarks.run {' '.join(argv_run)}",
                    flush=True,
                )
                report = run.main(argv_run)
            sweeps.append(dict(name=name, dtype=dtype, target=target, argv=argv_run, report=report))
            # Written after every sweep, so a run cut short still leaves its results and summary.
            (out / "results.json").write_text(json.dumps(sweeps, indent=1))
            (out / "SUMMARY.md").write_text(summarise(sweeps))
    print(summarise(sweeps))
    plot_throughput(sweeps[0]["report"], out / "throughput.png")


if __name__ == "__main__":
    main()
