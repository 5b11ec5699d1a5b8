"""The hero figure: Stack A vs Stack B at equal memory budget, one panel per workload, side by side."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

from kvharness.units import format_bytes

PANEL_WIDTH_IN = 6.5


def pct_label(delta: float) -> str:
    """``+12 %``, ``-3 %``; a change that rounds to zero is ``±0 %`` (never ``-0 %``)."""
    r = round(delta)
    return "±0 %" if r == 0 else f"{r:+d} %"


def build_hero(table: Sequence[dict], capacity: Sequence[dict],
               title: str = "H8 hero: memory-only (A) vs tiered KV (B) at equal memory"):
    """The figure (matplotlib): per workload, p99 TTFT (ms) vs concurrency for every stack (the SLO sweep
    and the equal-load cells), the SLO's TTFT as a horizontal line, the equal-load points ringed; B's
    change vs A at each equal load is listed in a box inside the panel (never over the tick labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="talk", font_scale=0.7)
    workloads = sorted({r["workload"] for r in capacity} | {r["workload"] for r in table}) or ["-"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(PANEL_WIDTH_IN * len(workloads), 4.8), squeeze=False)
    stacks = sorted({(r["role"], r["stack"]) for r in capacity} | {(r["role"], r["stack"]) for r in table})
    colors = dict(zip(stacks, sns.color_palette("deep", max(len(stacks), 1))))
    for ax, wl in zip(axes[0], workloads):
        deltas = []
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
                        deltas.append(f"{r['load_rule']} (c={r['concurrency']:g}): {pct_label(d)}")
        if deltas:
            ax.text(0.02, 0.97, "B vs A, p99 TTFT\n" + "\n".join(deltas), transform=ax.transAxes, va="top",
                    ha="left", fontsize=7, bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.85,
                                                 "edgecolor": "#bbb"})
        slo_p = next((p for p in capacity if p["workload"] == wl and p.get("slo_ttft_ms")), None)
        if slo_p:  # the SLO is stated in the stack's time; the axis is measured wall time (kvharness.clock)
            slo, wall = float(slo_p["slo_ttft_ms"]), float(slo_p.get("slo_ttft_ms_wall") or slo_p["slo_ttft_ms"])
            label = f"SLO TTFT {slo:g} ms" + (f" ({wall:.4g} ms wall)" if wall != slo else "")
            ax.axhline(wall, color="crimson", linestyle="--", linewidth=1.2, label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency (users in flight)")
        ax.set_ylabel("p99 TTFT (ms)")
        row = next((r for r in table if r["workload"] == wl and r.get("tiered")), None) or \
            next((r for r in table if r["workload"] == wl), {})
        ws = row.get("working_set_bytes")
        ax.set_title(f"{wl}" + (f" — working set {format_bytes(ws)} (fits B's {row.get('fits_in')})" if ws else ""), fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    budget = next((r.get("memory_budget_bytes") for r in table if r.get("memory_budget_bytes")), None)
    text = f"{title} ({format_bytes(budget) if budget else '?'} each); dotted: highest load meeting the SLO"
    width = len(text)
    renderer = fig.canvas.get_renderer()
    while True:  # wrap until the title fits the figure's width (one panel is narrow)
        lines = textwrap.wrap(text, width=width)
        title = fig.suptitle("\n".join(lines))
        box = title.get_window_extent(renderer)
        if (box.x0 >= 0 and box.x1 <= fig.bbox.x1) or width <= 20:
            break
        width = int(width * 0.85)
    fig.tight_layout()  # makes room for the (wrapped) title above the panels
    return fig


def plot_hero(table: Sequence[dict], capacity: Sequence[dict], path: str | Path,
              title: str = "H8 hero: memory-only (A) vs tiered KV (B) at equal memory") -> Path:
    import matplotlib.pyplot as plt

    fig = build_hero(table, capacity, title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
