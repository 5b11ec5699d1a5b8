"""The hero figure: Stack A vs Stack B at equal memory budget, one panel per workload, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.units import format_bytes


def plot_hero(table: Sequence[dict], capacity: Sequence[dict], path: str | Path,
              title: str = "H8 hero: memory-only (A) vs tiered KV (B) at equal memory") -> Path:
    """Per workload: p99 TTFT (ms) vs concurrency for every stack (the SLO sweep and the equal-load
    cells), the SLO's TTFT as a horizontal line, the equal-load points ringed and labelled with B's delta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="talk", font_scale=0.7)
    workloads = sorted({r["workload"] for r in capacity} | {r["workload"] for r in table}) or ["-"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(6.5 * len(workloads), 4.8), squeeze=False)
    stacks = sorted({(r["role"], r["stack"]) for r in capacity} | {(r["role"], r["stack"]) for r in table})
    colors = dict(zip(stacks, sns.color_palette("deep", max(len(stacks), 1))))
    for ax, wl in zip(axes[0], workloads):
        for key in stacks:
            role, stack = key
            pts = sorted((p["concurrency"], p["ttft_ms_p99"]) for p in capacity
                         if p["workload"] == wl and p["stack"] == stack and p["ttft_ms_p99"] is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", color=colors[key],
                        label=f"{stack} ({role})")
                best = next((p["max_slo_concurrency"] for p in capacity if p["workload"] == wl and p["stack"] == stack), None)
                if best is not None:
                    ax.axvline(best, color=colors[key], linestyle=":", linewidth=1)
            for r in table:
                if r["workload"] == wl and r["stack"] == stack and r.get("ttft_ms_p99") is not None and r.get("concurrency"):
                    ax.scatter([r["concurrency"]], [r["ttft_ms_p99"]], s=160, facecolors="none", edgecolors=colors[key],
                               linewidths=2)
                    d = r.get("vs_A_ttft_ms_p99_pct")
                    if d is not None:
                        dy = -24 if r["load_rule"] == "uwork_min" else 10  # equal U_work: both at one x
                        ax.annotate(f"B {d:+.0f} % ({r['load_rule']})", (r["concurrency"], r["ttft_ms_p99"]),
                                    textcoords="offset points", xytext=(8, dy), fontsize=7)
        slo = next((p["slo_ttft_ms"] for p in capacity if p["workload"] == wl and p.get("slo_ttft_ms")), None)
        if slo:
            ax.axhline(slo, color="crimson", linestyle="--", linewidth=1.2, label=f"SLO TTFT {slo:g} ms")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (users in flight)")
        ax.set_ylabel("p99 TTFT (ms)")
        row = next((r for r in table if r["workload"] == wl and r.get("tiered")), None) or \
            next((r for r in table if r["workload"] == wl), {})
        ws = row.get("working_set_bytes")
        ax.set_title(f"{wl}" + (f" — working set {format_bytes(ws)} (fits B's {row.get('fits_in')})" if ws else ""), fontsize=9)
        ax.legend(fontsize=7)
    budget = next((r.get("memory_budget_bytes") for r in table if r.get("memory_budget_bytes")), None)
    fig.suptitle(f"{title} ({format_bytes(budget) if budget else '?'} each); dotted: highest load meeting the SLO")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
