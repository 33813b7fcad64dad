"""Benchmark runner: throughput across sequence lengths, rnnkern against what a user would pick.

For every configuration (batch size x hidden size x mode) and sequence length it builds one
torch.nn.RNN, gives its weights to every implementation (benchmarks/implementations.py), checks
each one's output against nn.RNN's before timing it (a wrong answer is reported, not timed), then
times them side by side, interleaved. It prints a table per configuration and writes results.json
(everything measured, with the device, versions and configuration) and throughput.png (tokens per
second against sequence length, log axes, one line per implementation) to --out.

The compiled peers outside PyTorch (jax, onnxruntime) would slow what shares their process, so
where anything else is timed with them, each is timed in a process of its own: the runner runs
itself again on that peer alone (nn.RNN is timed there too, for its ratio) and merges the peer's
rows into its table and results.json, marked as timed in their own process.

    python -m benchmarks.run                       # the default sweep (a few minutes on 2 cores)
    python -m benchmarks.run --device cuda --dtype bfloat16 --batch-sizes 1 8 --hidden-sizes 512
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkern

from .implementations import BASELINE, IMPLEMENTATIONS
from .load import outside_load
from .report import plot_throughput, table
from .timing import gemm_gflops, interleaved, summary

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
MODES = ("inference", "forward", "forward+backward")
REPO_ROOT = Path(__file__).resolve().parent.parent  # where `-m benchmarks.run` runs again
PROFILED_SEQ_LEN = 256  # CUDA kernel names are recorded at this length and below
# Tolerance of the check against nn.RNN, per dtype: rounding differences only.
CHECK_TOLERANCE = {
    torch.float32: 1e-3,
    torch.float64: 1e-9,
    torch.bfloat16: 0.1,
    torch.float16: 0.05,
}


@dataclass(frozen=True)
class Config:
    device: str
    dtype: str
    mode: str
    batch: int
    hidden: int
    input_size: int
    layers: int
    bidirectional: bool
    nonlinearity: str
    packed: bool = False


def geometric(start: int, stop: int, factor: int) -> list[int]:
    values = []
    value = start
    while value <= stop:
        values.append(value)
        value *= factor
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Throughput of rnnkern.RNN and its alternatives across sequence lengths.",
    )
    # Added in this order so that --help lists them so: what runs, its shapes, what is compared
    # and how it is timed, then the outputs.
    add_device_arguments(parser)
    add_shape_arguments(parser)
    add_comparison_arguments(parser)
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    complete_implementations(args)
    check_arguments(parser, args)
    return args


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the sweep runs, in which dtype, and which unit of work is timed."""
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument(
        "--device",
        default=default_device,
        choices=["cpu", "cuda"],
        help=f"where to run (default: {default_device})",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=list(DTYPES),
        help="parameter and input dtype (default: float32)",
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        metavar="MODE",
        default=["forward+backward"],
        choices=MODES,
        help="any of: inference (forward under torch.no_grad), forward (forward with autograd "
        "recording), forward+backward (one training step); default: forward+backward",
    )
    parser.add_argument(
        "--load",
        type=int,
        default=0,
        metavar="N",
        help="keep N cores busy with other processes while timing, as other programs would "
        "(default: 0)",
    )


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The swept shapes (batch, hidden, sequence length) and the fixed shape of the layers."""
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        metavar="N",
        type=int,
        default=[1, 16],
        help="batch sizes to sweep (default: 1 16)",
    )
    parser.add_argument(
        "--hidden-sizes",
        nargs="+",
        metavar="N",
        type=int,
        default=[64, 256],
        help="hidden sizes to sweep (default: 64 256)",
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=0,
        help="input features; 0 means equal to the hidden size (default: 0)",
    )
    parser.add_argument("--layers", type=int, default=1, help="stacked layers (default: 1)")
    parser.add_argument("--bidirectional", action="store_true", help="bidirectional layers")
    parser.add_argument(
        "--nonlinearity",
        default="tanh",
        choices=["tanh", "relu"],
        help="activation (default: tanh)",
    )
    parser.add_argument(
        "--seq-lens",
        nargs="+",
        metavar="N",
        type=int,
        default=geometric(16, 4096, 4),
        help="sequence lengths (default: 16 64 256 1024 4096)",
    )
    parser.add_argument(
        "--packed",
        action="store_true",
        help="variable-length batches as a PackedSequence: lengths drawn between half the "
        "sequence length and all of it (the longest is the full length)",
    )


def add_comparison_arguments(parser: argparse.ArgumentParser) -> None:
    """What is compared, how often each is timed, and when a point or an implementation is
    skipped rather than timed."""
    parser.add_argument(
        "--implementations",
        nargs="+",
        metavar="NAME",
        default=None,
        choices=list(IMPLEMENTATIONS),
        help=f"what to compare, of {', '.join(IMPLEMENTATIONS)} (default: all that run on the "
        "device); nn.RNN, the baseline, is always included",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed calls per implementation and point (default: 5)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed calls first (default: 2; compilation happens here)",
    )
    parser.add_argument(
        "--max-call-seconds",
        type=float,
        default=0.5,
        help="stop timing an implementation (not nn.RNN) at the sequence lengths "
        "where one call is predicted to take longer than this, from its time at "
        "the previous length (default: 0.5); keeps sweeps to minutes",
    )
    parser.add_argument(
        "--memory-fraction",
        type=float,
        default=0.5,
        help="skip points whose estimated memory exceeds this fraction of the "
        "free memory (default: 0.5)",
    )


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the results go, and what is printed on the way."""
    parser.add_argument(
        "--out",
        default="bench-out",
        help="directory for results.json and throughput.png (default: bench-out)",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def complete_implementations(args: argparse.Namespace) -> None:
    """Fills in the default implementations (the default ones that run on the device) and puts the baseline
    first where it was not named: every speedup is relative to it."""
    if args.implementations is None:
        args.implementations = [
            n for n, i in IMPLEMENTATIONS.items() if args.device in i.devices and i.default
        ]
    if BASELINE not in args.implementations:
        args.implementations.insert(0, BASELINE)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rejects, through argparse's usage error, what argparse's types and choices let through."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to torch here")
    for name in ("batch_sizes", "hidden_sizes", "seq_lens"):
        if any(v <= 0 for v in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must all be positive")
    if args.repeats < 1 or args.warmup < 0 or args.layers < 1:
        parser.error("--repeats and --layers must be >= 1, --warmup >= 0")
    if args.load < 0:
        parser.error("--load must be >= 0")


def configs(args: argparse.Namespace) -> list[Config]:
    return [
        Config(
            args.device,
            args.dtype,
            mode,
            batch,
            hidden,
            args.input_size or hidden,
            args.layers,
            args.bidirectional,
            args.nonlinearity,
            args.packed,
        )
        for mode in args.modes
        for batch in args.batch_sizes
        for hidden in args.hidden_sizes
    ]


def forward_flops(config: Config, seq_len: int) -> float:
    """FLOPs of one forward pass: 2 * B * T * H * (I + H) per layer and direction."""
    directions = 2 if config.bidirectional else 1
    total = 0.0
    for layer in range(config.layers):
        layer_input = config.input_size if layer == 0 else directions * config.hidden
        total += (
            directions * 2 * config.batch * seq_len * config.hidden * (layer_input + config.hidden)
        )
    return total


def mode_flops(config: Config, seq_len: int) -> float:
    """The forward FLOPs, times 3 for a training step (backward does about twice the forward)."""
    return forward_flops(config, seq_len) * (3 if config.mode == "forward+backward" else 1)


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def estimated_bytes(config: Config, seq_len: int) -> int:
    """A generous estimate of one implementation's peak memory: inputs, every layer's outputs,
    and what autograd keeps for a Python cell loop (several tensors per step)."""
    directions = 2 if config.bidirectional else 1
    element = DTYPES[config.dtype].itemsize
    per_step = config.batch * (config.input_size + 6 * config.layers * directions * config.hidden)
    return per_step * seq_len * element * (3 if config.mode == "forward+backward" else 1)


def data(output) -> torch.Tensor:
    """An output's tensor (a PackedSequence's packed rows)."""
    return output.data if isinstance(output, PackedSequence) else output


def make_call(fn, x, h0: torch.Tensor, mode: str):
    """The unit of work timed for a mode (an implementation outside torch says what its is)."""
    if hasattr(fn, "make_call"):
        return fn.make_call(x, h0, mode)
    if mode == "inference":

        def call():
            with torch.no_grad():
                return fn(x, h0)
    elif mode == "forward":

        def call():
            return fn(x, h0)
    else:
        # The gradient of sum(output) + sum(h_n), handed to backward as it is rather than through
        # a loss: a reduction over the output is itself an OpenMP team, whose barrier under
        # outside load cost the step more than the RNN did (PERFORMANCE.md, version 17).
        grads = []

        def call():
            out, h_n = fn(x, h0)
            outputs = (data(out), h_n)
            if not grads:
                grads.extend(torch.ones_like(t) for t in outputs)
            torch.autograd.backward(outputs, grads)

    return call


def check(fn, reference_output, x, h0, dtype) -> float:
    """The largest difference from nn.RNN's output and final state (inf if shapes differ)."""
    with torch.no_grad():
        out, h_n = fn(x, h0)
    out, ref_out, ref_hn = data(out), data(reference_output[0]), reference_output[1]
    if out.shape != ref_out.shape or h_n.shape != ref_hn.shape:
        return math.inf
    return max((out - ref_out).abs().max().item(), (h_n - ref_hn).abs().max().item())


def measure_point(
    config: Config,
    seq_len: int,
    implementations: list[str],
    repeats: int,
    warmup: int,
    memory_fraction: float,
    gemm: float,
    too_slow: dict[str, str] | None = None,
) -> list[dict]:
    """Checks and times every implementation at one point; `too_slow` names those to skip, with
    the reason."""
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    base = {"seq_len": seq_len}
    too_slow = too_slow or {}
    if estimated_bytes(config, seq_len) > memory_fraction * free_memory_bytes(device):
        note = f"needs about {estimated_bytes(config, seq_len) / 2**30:.1f} GiB of memory"
        return [
            {**base, "implementation": name, "status": "skipped", "note": note}
            for name in implementations
        ]

    reference, x, h0 = point_inputs(config, seq_len, device, dtype)
    reference_output = oracle_output(reference, x, h0)
    results, calls = {}, {}
    for name in implementations:
        entry = {**base, "implementation": name}
        reason = too_slow[name] if name in too_slow else unsupported_reason(name, config)
        if reason is not None:
            entry.update(status="skipped", note=reason)
        else:
            call = checked_call(name, entry, reference, reference_output, x, h0, config)
            if call is not None:
                calls[name] = call
        results[name] = entry

    times = time_calls(calls, results, device, repeats, warmup)
    add_rates(results, times, config, seq_len, gemm)
    # Which kernels ran does not change with the length: profiled at short lengths only.
    if device.type == "cuda" and seq_len <= PROFILED_SEQ_LEN:
        # Only the calls that were timed: none where timing failed.
        add_cuda_details(results, {name: calls[name] for name in times}, config)
    return [results[name] for name in implementations]


def point_inputs(
    config: Config, seq_len: int, device: torch.device, dtype: torch.dtype
) -> tuple[nn.RNN, torch.Tensor | PackedSequence, torch.Tensor]:
    """nn.RNN (whose weights every implementation gets), the input and h0 for one point.

    Seeded with the length, so every implementation and every run sees the same point."""
    torch.manual_seed(seq_len)
    reference = nn.RNN(
        config.input_size,
        config.hidden,
        config.layers,
        nonlinearity=config.nonlinearity,
        bidirectional=config.bidirectional,
        device=device,
        dtype=dtype,
    )
    directions = 2 if config.bidirectional else 1
    x = torch.randn(seq_len, config.batch, config.input_size, device=device, dtype=dtype)
    h0 = torch.randn(
        config.layers * directions, config.batch, config.hidden, device=device, dtype=dtype
    )
    if config.mode == "forward+backward":
        x.requires_grad_()
    if config.packed:
        x = packed_input(x, seq_len, config.batch)
    return reference, x, h0


def packed_input(x: torch.Tensor, seq_len: int, batch: int) -> PackedSequence:
    """x as a PackedSequence of lengths drawn between half the length and all of it, the longest
    the full length (so the point's length is the one timed)."""
    gen = torch.Generator().manual_seed(seq_len)
    lengths = torch.randint(max(1, seq_len // 2), seq_len + 1, (batch,), generator=gen)
    lengths = lengths.sort(descending=True).values
    lengths[0] = seq_len
    packed = pack_padded_sequence(x.detach(), lengths)
    # A leaf, so that every timed backward has its own graph to run.
    return PackedSequence(packed.data.requires_grad_(x.requires_grad), packed.batch_sizes)


def oracle_output(reference: nn.RNN, x, h0: torch.Tensor):
    """nn.RNN's output and h_n, which every implementation is checked against."""
    # The oracle in full precision: cuDNN's default TF32 for float32 would be off by about 1e-3.
    # (nn.RNN is timed with the defaults a user gets.)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad():
            return reference(x, h0)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def unsupported_reason(name: str, config: Config) -> str | None:
    """Why an implementation cannot run this configuration at all; None where it can."""
    impl = IMPLEMENTATIONS[name]
    if config.device not in impl.devices:
        return f"{name} does not run on {config.device}"
    if config.packed and not impl.packed:
        return f"{name} takes no PackedSequence"
    if config.mode == "forward+backward" and not impl.backward:
        return f"{name} has no backward"
    if impl.dtypes is not None and config.dtype not in impl.dtypes:
        return f"{name} runs {', '.join(impl.dtypes)} only"
    if config.mode != "inference" and impl.inference_only:
        return f"{name} runs inference only"
    if config.bidirectional and not impl.bidirectional:
        return f"{name} runs one direction only"
    return None


def checked_call(name: str, entry: dict, reference: nn.RNN, reference_output, x, h0, config):
    """The call to time for one implementation, once its output matched nn.RNN's and one call
    (backward included) ran; None where it did not. Either way `entry` records what happened:
    a wrong or failing implementation is a result of the benchmark, not a crash of it."""
    impl, dtype = IMPLEMENTATIONS[name], DTYPES[config.dtype]
    try:
        fn = impl.build(reference)
        error = check(fn, reference_output, x, h0, dtype) if impl.checked else math.nan
        entry["max_abs_error"] = error
        if impl.checked and not error <= CHECK_TOLERANCE[dtype]:
            entry.update(status="wrong", note=f"differs from nn.RNN by {error:.3g}")
            return None
        call = make_call(fn, x, h0, config.mode)
        call()  # the timed call once, backward included: a failure here is a result
        entry["status"] = "ok"
        if not impl.checked:
            entry["note"] = "output not checked (a floor, wrong by design)"
        return call
    except torch.OutOfMemoryError as e:  # type: ignore[attr-defined]
        entry.update(status="skipped", note=f"out of memory: {str(e)[:120]}")
    except Exception as e:  # noqa: BLE001 - a failing implementation is a result, not a crash
        entry.update(status="error", note=f"{type(e).__name__}: {str(e)[:200]}")
    return None


def time_calls(
    calls: dict, results: dict[str, dict], device: torch.device, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """The calls' times, interleaved; none where timing failed, which the calls' results record."""
    try:
        return interleaved(calls, device, repeats, warmup)
    except torch.OutOfMemoryError as e:  # type: ignore[attr-defined]
        for name in calls:
            results[name].update(status="skipped", note=f"out of memory: {str(e)[:120]}")
    except Exception as e:  # noqa: BLE001 - one failing point must not end the sweep
        for name in calls:
            results[name].update(status="error", note=f"{type(e).__name__}: {str(e)[:200]}")
    return {}


def add_rates(
    results: dict[str, dict],
    times: dict[str, list[float]],
    config: Config,
    seq_len: int,
    gemm: float,
) -> None:
    """Adds each timed implementation's times, their spread and the rates derived from the
    median: per step, tokens per second, GFLOP/s, against a GEMM, and the speedup over nn.RNN."""
    flops = mode_flops(config, seq_len)
    baseline = summary(times[BASELINE])["median_s"] if BASELINE in times else None
    for name, t in times.items():
        stats = summary(t)
        median = stats["median_s"]
        results[name].update(
            times_s=t,
            **stats,
            us_per_step=median / seq_len * 1e6,
            tokens_per_s=config.batch * seq_len / median,
            gflops=flops / median / 1e9,
            fraction_of_gemm=flops / median / 1e9 / gemm,
            speedup_vs_nn_rnn=(baseline / median) if baseline else None,
        )


def add_cuda_details(results: dict[str, dict], timed: dict, config: Config) -> None:
    """Adds the CUDA kernels nn.RNN and rnnkern launched (of the timed calls) and the algorithm
    rnnkern's kernels chose."""
    for name in (BASELINE, "rnnkern"):
        if name in timed:
            try:
                results[name]["cuda_kernels"] = cuda_kernel_names(timed[name])
            except Exception as e:  # noqa: BLE001 - the profiler is a nicety
                results[name]["cuda_kernels"] = [f"profiler failed: {type(e).__name__}"]
    if "rnnkern" in results:
        results["rnnkern"]["algorithm"] = rnnkern_algorithm(config)


def cuda_kernel_names(call) -> list[str]:
    """The CUDA kernels one call launches (which cuDNN algorithm nn.RNN got, for example)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages() if e.device_time_total > 0}
    return sorted(names)[:12]


def rnnkern_algorithm(config: Config) -> str:
    """The recurrence algorithm rnnkern's CUDA kernels choose for this configuration."""
    from rnnkern._ops import cuda_launch_plan

    directions = 2 if config.bidirectional else 1
    plan = cuda_launch_plan(config.hidden, config.batch, directions, DTYPES[config.dtype])
    return plan["algorithm"]


def progress(done: int, total: int, what: str, quiet: bool) -> None:
    if quiet:
        return
    width = 30
    filled = int(width * done / total)
    line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {what}"
    print(f"{line[:110]:<110}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    gemm = gemm_gflops(device, dtype)
    meta = run_metadata(device, gemm, argv)
    meta["outside_load_processes"] = args.load
    print(
        f"{meta['device']}, torch {meta['torch']}, rnnkern {meta['rnnkern']} "
        f"({meta['rnnkern_cpu_isa']}); one {args.dtype} GEMM runs at {gemm:.0f} GFLOP/s"
    )

    all_configs = configs(args)
    total = len(all_configs) * len(args.seq_lens)
    report = {"meta": meta, "configs": []}
    # The implementations timed in processes of their own go first, one at a time. Each child runs
    # its sweep under its own --load (passed through with the other arguments), and this process
    # starts its own load only after them: every sweep runs under exactly the load it was asked
    # for, never under its parent's as well.
    delegated = own_process_implementations(args)
    own_rows = {name: own_process_rows(name, args, all_configs, argv) for name in delegated}
    here = [name for name in args.implementations if name not in delegated]
    with outside_load(args.load):
        for index, config in enumerate(all_configs):
            rows = sweep_seq_lens(config, args, here, gemm, index * len(args.seq_lens), total)
            for name in delegated:
                rows += own_rows[name][index]
            rows = in_order(rows, args.implementations)
            report["configs"].append({"config": asdict(config), "results": rows})
            print(table(config, rows))
    write_outputs(report, Path(args.out), plot=not args.no_plot)
    return report


def run_metadata(device: torch.device, gemm: float, argv: Sequence[str] | None) -> dict:
    """What a result depends on besides its configuration: the machine, the versions, the GEMM
    rate the FLOP rates are compared with, and the command that produced it."""
    return {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "rnnkern": rnnkern.__version__,
        "rnnkern_cpu_isa": rnnkern.cpu_isa(),
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "gemm_gflops": gemm,
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
    }


def sweep_seq_lens(
    config: Config,
    args: argparse.Namespace,
    implementations: list[str],
    gemm: float,
    done: int,
    total: int,
) -> list[dict]:
    """Every sequence length of one configuration for `implementations`, shortest first, so that
    each implementation's time at one length predicts whether the next is worth timing. `done` of
    `total` points were measured before (for the progress line)."""
    rows = []
    last: dict[str, tuple[int, float]] = {}  # implementation -> (seq len, seconds per call)
    for seq_len in sorted(args.seq_lens):
        progress(
            done,
            total,
            f"{config.mode} batch {config.batch} hidden {config.hidden} seq {seq_len}",
            args.quiet,
        )
        point = measure_point(
            config,
            seq_len,
            implementations,
            args.repeats,
            args.warmup,
            args.memory_fraction,
            gemm,
            predicted_too_slow(last, seq_len, args.max_call_seconds),
        )
        last.update(
            {r["implementation"]: (seq_len, r["median_s"]) for r in point if r["status"] == "ok"}
        )
        rows += point
        done += 1
    progress(done, total, "done", args.quiet)
    return rows


def predicted_too_slow(
    last: dict[str, tuple[int, float]], seq_len: int, max_call_seconds: float
) -> dict[str, str]:
    """The implementations (never the baseline) whose call at `seq_len` is predicted, linearly
    from their last timed length, to take over `max_call_seconds`, each with the reason."""
    return {
        name: f"about {t * seq_len / n:.1f} s per call predicted from seq len "
        f"{n} (over --max-call-seconds {max_call_seconds})"
        for name, (n, t) in last.items()
        if name != BASELINE and t * seq_len / n > max_call_seconds
    }


def own_process_implementations(args: argparse.Namespace) -> list[str]:
    """The implementations to time each in a process of its own: those that ask for one, when
    anything besides nn.RNN would be timed with them. One named alone (with nn.RNN) is in a
    process of its own already, and is timed here: that is how the child process times it."""
    timed = [name for name in args.implementations if name != BASELINE]
    if len(timed) <= 1:
        return []
    return [name for name in timed if IMPLEMENTATIONS[name].own_process]


def own_process_rows(
    name: str, args: argparse.Namespace, all_configs: list[Config], argv: Sequence[str] | None
) -> list[list[dict]]:
    """`name`'s rows for each configuration (in the order of `all_configs`), timed by this runner
    run again on `name` alone in a child process, over the modes where `name` runs. A child that
    fails leaves error rows saying why, as a failing implementation does."""
    runs = [config for config in all_configs if unsupported_reason(name, config) is None]
    report, failure = None, None
    if runs:
        if not args.quiet:
            print(f"timing {name} in a process of its own", file=sys.stderr, flush=True)
        modes = [mode for mode in args.modes if any(config.mode == mode for config in runs)]
        report, failure = own_process_report(name, modes, argv)
    timed = [(entry["config"], entry["results"]) for entry in (report or {}).get("configs", [])]
    per_config = []
    for config in all_configs:
        reason = unsupported_reason(name, config)
        results = next((rows for c, rows in timed if c == asdict(config)), None)
        if reason is not None:  # never timed, as it would be skipped here
            rows = [
                {"seq_len": n, "implementation": name, "status": "skipped", "note": reason}
                for n in sorted(args.seq_lens)
            ]
        elif results is not None:
            rows = marked_own_process(name, results)
        else:
            note = failure or "its own process gave no result for this configuration"
            rows = [
                {
                    "seq_len": n,
                    "implementation": name,
                    "status": "error",
                    "note": note,
                    "process": "own",
                }
                for n in sorted(args.seq_lens)
            ]
        per_config.append(rows)
    return per_config


def own_process_report(
    name: str, modes: list[str], argv: Sequence[str] | None
) -> tuple[dict | None, str | None]:
    """The report of this runner run on `name` alone in a child process, or None and why not."""
    with tempfile.TemporaryDirectory(prefix="rnnkern-bench-") as out:
        command = own_process_command(name, modes, argv, Path(out))
        try:
            child = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        except OSError as e:
            return None, f"its own process did not start: {type(e).__name__}: {e}"
        results = Path(out) / "results.json"
        if child.returncode == 0 and results.exists():
            return json.loads(results.read_text()), None
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    last = lines[-1].strip()[:200] if lines else "no message"
    return None, f"its own process failed (exit code {child.returncode}): {last}"


def own_process_command(
    name: str, modes: list[str], argv: Sequence[str] | None, out: Path
) -> list[str]:
    """This run's command line again, for `name` alone over `modes`, writing to `out` without the
    plot or progress. The options are appended: the last of an option counts, so every other
    option of this run (--load among them) carries over unchanged."""
    given = list(sys.argv[1:] if argv is None else argv)
    own = ["--implementations", name, "--modes", *modes, "--out", str(out), "--no-plot", "--quiet"]
    return [sys.executable, "-m", "benchmarks.run", *given, *own]


def marked_own_process(name: str, results: list[dict]) -> list[dict]:
    """`name`'s rows of its own process's results, each marked as timed there, with nn.RNN's time
    per step there (the baseline of its speedup); that process's nn.RNN rows are left out."""
    baseline = {
        r["seq_len"]: r["us_per_step"]
        for r in results
        if r["implementation"] == BASELINE and r["status"] == "ok"
    }
    return [
        {**r, "process": "own", "baseline_us_per_step": baseline.get(r["seq_len"])}
        for r in results
        if r["implementation"] == name
    ]


def in_order(rows: list[dict], implementations: list[str]) -> list[dict]:
    """Rows by sequence length, then in the order of `implementations`."""
    position = {name: i for i, name in enumerate(implementations)}
    return sorted(rows, key=lambda r: (r["seq_len"], position[r["implementation"]]))


def write_outputs(report: dict, out: Path, plot: bool) -> None:
    """Writes results.json and, unless told not to, throughput.png into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=1))
    written = [str(out / "results.json")]
    if plot:
        plot_throughput(report, out / "throughput.png")
        written.append(str(out / "throughput.png"))
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
