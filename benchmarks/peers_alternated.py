"""rnnkern against the compiled peers, each timed in processes of its own taken in turns, so that
a machine whose speed drifts (other programs' load, a shared host) moves every side alike.

The runner times a peer in a process of its own once, minutes after rnnkern (benchmarks/run.py):
on a machine whose speed drifts 2x in half an hour that settles nothing (PERFORMANCE.md, version
23). Here each round runs the runner once per implementation, in turn (rnnkern, then each peer, the
order rotating from round to round), and each implementation's figure is the median over rounds of
its time per step; rnnkern's lead over the fastest peer is also given per round, from runs minutes
apart at most, with the lowest and highest over rounds.

    python -m benchmarks.peers_alternated --rounds 4 --batch-sizes 1 16 --hidden-sizes 64 256 \
        --seq-lens 256 --peers jax onnxruntime

Peers that are not installed are left out, saying so. Every runner process checks its
implementation's output against nn.RNN before timing it, as the runner always does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from benchmarks.peers import installed

REPO_ROOT = Path(__file__).resolve().parent.parent
PEER_PACKAGES = {"jax": "jax", "onnxruntime": "onnxruntime"}


def runner_times(name: str, args: argparse.Namespace) -> dict[tuple, float]:
    """{(mode, batch, hidden, seq_len): us per step} of one runner process timing `name` alone."""
    with tempfile.TemporaryDirectory(prefix="rnnkern-peers-") as out:
        command = [sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--quiet"]
        command += ["--no-plot", "--out", out, "--implementations", name]
        command += ["--modes", *args.modes, "--repeats", str(args.repeats)]
        command += ["--batch-sizes", *map(str, args.batch_sizes)]
        command += ["--hidden-sizes", *map(str, args.hidden_sizes)]
        command += ["--seq-lens", *map(str, args.seq_lens)]
        subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
        report = json.loads((Path(out) / "results.json").read_text())
    times = {}
    for entry in report["configs"]:
        c = entry["config"]
        for row in entry["results"]:
            if row["implementation"] == name and row["status"] == "ok":
                key = (c["mode"], c["batch"], c["hidden"], row["seq_len"])
                times[key] = row["us_per_step"]
    return times


def summary(rounds: list[dict[str, dict[tuple, float]]], peers: list[str]) -> list[str]:
    """The table's lines, from each round's {implementation: runner_times(...)}."""
    names = ["rnnkern", *peers]
    per_key: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    leads: dict[tuple, list[float]] = defaultdict(list)
    for times in rounds:
        for name in names:
            for key, us in times.get(name, {}).items():
                per_key[key][name].append(us)
        for key, us in times.get("rnnkern", {}).items():
            peer_times = [times[p][key] for p in peers if key in times.get(p, {})]
            if peer_times:
                leads[key].append(min(peer_times) / us)
    lines = [
        "µs per step, median over rounds; rnnkern's lead = fastest peer's time / rnnkern's,",
        "per round, median [lowest-highest]",
        f"{'mode':>16} {'batch,hidden,T':>15} "
        + " ".join(f"{n:>12}" for n in names)
        + "   rnnkern's lead",
    ]
    for key in sorted(per_key):
        mode, batch, hidden, seq_len = key
        cells = " ".join(
            f"{statistics.median(per_key[key][n]):12.2f}" if per_key[key][n] else f"{'-':>12}"
            for n in names
        )
        lead = leads.get(key, [])
        lead_text = (
            f"{statistics.median(lead):.2f}x [{min(lead):.2f}-{max(lead):.2f}]" if lead else "-"
        )
        lines.append(f"{mode:>16} {f'{batch},{hidden},{seq_len}':>15} {cells}   {lead_text}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--peers", nargs="+", default=list(PEER_PACKAGES), choices=PEER_PACKAGES)
    parser.add_argument("--modes", nargs="+", default=["inference", "forward+backward"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--hidden-sizes", nargs="+", type=int, default=[64, 256])
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[256])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per runner process")
    args = parser.parse_args(argv)

    peers = [p for p in args.peers if installed(PEER_PACKAGES[p])]
    for p in sorted(set(args.peers) - set(peers)):
        print(f"{p}: not installed, left out (pip install -e '.[peers]')")
    names = ["rnnkern", *peers]
    rounds: list[dict[str, dict[tuple, float]]] = []
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        rounds.append({name: runner_times(name, args) for name in order})
        print(f"round {r + 1} of {args.rounds} done ({' '.join(order)})", flush=True)
    print("\n" + "\n".join(summary(rounds, peers)))


if __name__ == "__main__":
    main()
