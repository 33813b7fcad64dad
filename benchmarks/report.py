"""What the runner shows: a Markdown table per configuration, and the throughput plot."""

from __future__ import annotations

import textwrap
from pathlib import Path


def _title(config) -> str:
    c = config if isinstance(config, dict) else config.__dict__
    shape = f"batch {c['batch']}, hidden {c['hidden']}, input {c['input_size']}"
    extra = f", {c['layers']} layers" if c["layers"] > 1 else ""
    extra += ", bidirectional" if c["bidirectional"] else ""
    extra += ", packed (variable lengths)" if c.get("packed") else ""
    return f"{c['mode']}, {c['dtype']} on {c['device']}: {shape}{extra}, {c['nonlinearity']}"


def table(config, rows: list[dict]) -> str:
    """Rows: sequence length and implementation; columns: median time per step, its spread (the
    interquartile range over the median), tokens per second, achieved GFLOP/s (and as a share of
    the machine's GEMM rate), speedup over nn.RNN. An implementation timed in a process of its own
    is marked so, and its speedup is over nn.RNN timed in that process, whose time per step
    follows it; a note under the table says so."""
    lines = [
        f"\n{_title(config)}",
        "| seq len | implementation | time/step (us) | spread | tokens/s | GFLOP/s "
        "| of GEMM peak | vs nn.RNN |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        own = r.get("process") == "own"
        name = f"{r['implementation']} (own process)" if own else r["implementation"]
        if r["status"] != "ok":
            lines.append(
                f"| {r['seq_len']} | {name} | {r['status'].upper()}: {r.get('note', '')} | | | | |"
            )
            continue
        speedup = r.get("speedup_vs_nn_rnn")
        ratio = f"{speedup:.2f}x" if speedup else "-"
        if own and speedup:
            ratio += f" (nn.RNN {r['baseline_us_per_step']:.2f})"
        spread = (r["q3_s"] - r["q1_s"]) / r["median_s"]
        lines.append(
            f"| {r['seq_len']} | {name} | {r['us_per_step']:.2f} | {100 * spread:.0f}% "
            f"| {r['tokens_per_s']:,.0f} | {r['gflops']:.2f} | {100 * r['fraction_of_gemm']:.1f}% "
            f"| {ratio} |"
        )
    if any(r.get("process") == "own" for r in rows):
        lines.append(
            "\n(own process): timed in a process of its own, against nn.RNN timed again in that "
            "process (its time/step in us after the ratio)."
        )
    return "\n".join(lines)


def _not_timed(results: list[dict]) -> str:
    """One line per implementation with points missing from the plot: which lengths, and why (the
    runner's note for the first of them)."""
    by_impl: dict[str, list[dict]] = {}
    for r in results:
        if r["status"] != "ok":
            by_impl.setdefault(r["implementation"], []).append(r)
    lines = []
    for name, missing in by_impl.items():
        lengths = ", ".join(str(r["seq_len"]) for r in missing)
        reason = missing[0].get("note") or missing[0]["status"]
        text = f"{name} not plotted at seq len {lengths}, {missing[0]['status']}: {reason}"
        lines.append(textwrap.fill(text, width=88, subsequent_indent="    "))
    return "\n".join(lines)


def plot_throughput(report: dict, path: Path) -> None:
    """Tokens per second against sequence length, log axes, one panel per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = report["configs"]
    columns = min(2, len(configs))
    rows = (len(configs) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 5.4 * rows), squeeze=False)
    for ax, entry in zip(axes.flat, configs):
        by_impl: dict[str, list[tuple[int, float]]] = {}
        for r in entry["results"]:
            if r["status"] == "ok":
                by_impl.setdefault(r["implementation"], []).append(
                    (r["seq_len"], r["tokens_per_s"])
                )
        for name, points in by_impl.items():
            points.sort()
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "o-",
                label=name,
                linewidth=2.5 if name == "rnnkern" else 1.5,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length")
        ax.set_ylabel("tokens / s (batch x seq len / s)")
        ax.set_title(_title(entry["config"]), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        # Below the panel, so that it covers no line; then what was not timed, and why.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
        missing = _not_timed(entry["results"])
        if missing:
            ax.text(0, -0.34, missing, transform=ax.transAxes, fontsize=7, va="top", wrap=True)
    for ax in list(axes.flat)[len(configs) :]:
        ax.axis("off")
    fig.suptitle(report["meta"]["device"] + f", torch {report['meta']['torch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
