"""Figures shared by hypotheses: latency vs load with the knee marked."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _num(v):
    try:
        return None if v in (None, "") else float(v)
    except (TypeError, ValueError):
        return None


def plot_latency_vs_concurrency(summary: Sequence[dict], uwork_rows: Sequence[dict], path: str | Path,
                                x: str = "concurrency", title: str = "H0: TTFT vs concurrency") -> Path:
    """One panel per stack: p50 and p99 TTFT (ms) vs ``x`` (log-log), p99 with its 95 % interval when
    the rows carry ``ttft_ms_p99_ci_low/high``; U_work (solid), its per-rep range (band) and the knee (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stacks = sorted({r["stack"] for r in summary})
    marks = {r["stack"]: r for r in uwork_rows}
    fig, axes = plt.subplots(1, max(len(stacks), 1), figsize=(6.2 * max(len(stacks), 1), 4.4), squeeze=False, sharey=True)
    for ax, stack in zip(axes[0], stacks):
        rows = sorted((r for r in summary if r["stack"] == stack), key=lambda r: _num(r[x]) or 0)
        xs = [_num(r[x]) for r in rows]
        p50 = [_num(r.get("ttft_ms_p50")) for r in rows]
        p99 = [_num(r.get("ttft_ms_p99")) for r in rows]
        ax.plot(xs, p50, "o-", color="#1f77b4", label="p50 TTFT")
        ax.plot(xs, p99, "s-", color="#d62728", label="p99 TTFT")
        lo = [_num(r.get("ttft_ms_p99_ci_low")) for r in rows]
        hi = [_num(r.get("ttft_ms_p99_ci_high")) for r in rows]
        floor = 0.5 * min((v for v in p50 + p99 if v), default=1.0)  # a t interval can reach below 0 ms
        if any(v is not None for v in lo):
            pts = [(a, b, c) for a, b, c in zip(xs, lo, hi) if b is not None and c is not None]
            ax.fill_between([p[0] for p in pts], [max(p[1], floor) for p in pts], [p[2] for p in pts],
                            color="#d62728", alpha=0.15, label="p99 95 % interval (t, over reps; clipped)")
        m = marks.get(stack, {})
        lo_u, hi_u = _num(m.get("u_work_min")), _num(m.get("u_work_max"))
        if lo_u is not None and hi_u is not None and hi_u > lo_u:
            ax.axvspan(lo_u, hi_u, color="#2ca02c", alpha=0.12, label=f"U_work range over reps {lo_u:g}–{hi_u:g}")
        u = _num(m.get("u_work"))
        if u is not None:
            ax.axvline(u, color="#2ca02c", lw=2, label=f"U_work {u:g}{' (censored)' if str(m.get('censored')) == 'True' else ''}")
        knee = _num(m.get("knee_at"))
        if knee is not None:
            ax.axvline(knee, color="#7f7f7f", lw=1.5, ls="--", label=f"knee {knee:g}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        top = max((v for v in p99 + hi if v), default=10.0)
        ax.set_ylim(floor * 0.9, top * 1.5)
        ax.set_xlabel("concurrency (users in flight)")
        ax.set_title(f"{stack} ({m.get('role', '?')})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0][0].set_ylabel("TTFT (ms)")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
