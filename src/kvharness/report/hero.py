"""The hero figure: Stack A vs Stack B at equal memory budget, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.units import format_bytes


def plot_hero(table: Sequence[dict], path: str | Path, title: str = "H8 hero: memory-only (A) vs tiered KV (B)") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="talk", font_scale=0.7)
    rows = list(table)
    labels = [f"{r['stack']} ({r['role']})\nc={r.get('concurrency')}" for r in rows]
    colors = sns.color_palette("deep", len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
    width = 0.8 / max(len(rows), 1)
    for panel, (metric, ax) in enumerate(zip(("ttft_ms", "e2e_ms"), axes[:2])):
        for i, r in enumerate(rows):
            vals = [r.get(f"{metric}_p{q}") or 0 for q in (50, 95, 99)]
            xs = [x + i * width for x in range(3)]
            ax.bar(xs, vals, width=width, color=colors[i], label=labels[i] if panel == 0 else None)
        ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(3)], ["p50", "p95", "p99"])
        ax.set_ylabel("ms")
        ax.set_title("TTFT" if metric == "ttft_ms" else "end-to-end latency")
    ax = axes[2]
    ax.bar(range(len(rows)), [r.get("output_tok_s") or 0 for r in rows], color=colors)
    ax.set_xticks(range(len(rows)), [r["stack"] for r in rows])
    ax.set_ylabel("output tokens / s")
    ax.set_ylim(0, 1.3 * max([r.get("output_tok_s") or 0 for r in rows] + [1]))
    ax.set_title("throughput")
    for i, r in enumerate(rows):
        err = r.get("error_rate") or 0
        ax.annotate(f"{r.get('req_s') or 0:.1f} req/s\nerr {100 * err:.1f} %", (i, r.get("output_tok_s") or 0),
                    ha="center", va="bottom", fontsize=8)
    budget = rows[0].get("memory_budget_bytes") if rows else None
    fig.suptitle(f"{title} — memory budget {format_bytes(budget) if budget else '?'} each")
    fig.legend(loc="lower center", ncol=len(rows), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
