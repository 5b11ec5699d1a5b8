"""H4A / H4B: storage QoS. Real fio noise on the tier-2 device (``background_io: off/on``, started by the
cell for the length of its load), with repetitions so "moved" means beyond the 95 % confidence interval.

H4A (Stack A, memory-only) is the control: KV never touches the disk, so its p99 TTFT must not move beyond
the interval. H4B (Stack B, tiered) runs a workload whose reusable working set exceeds T0+T1, so requests
really read tier 2 (checked per cell: working set vs T0+T1 and tier-2 read bytes): its p99 drift is joined
per window with the NVMe r_await and tier-2 fetch latency, and "B stays up" (no collapse) is a gate.

Comparison: :func:`kvharness.stats.compare` on the reps' requests (fio off vs on, per stack and profile):
p99 TTFT **moved** (95 % interval of on/off excludes 1), **held** (90 % interval inside [0.95, 1.05]) or
**inconclusive** (with the smallest effect the reps could detect). H4B names the mechanism (tier-2 reads)
only when the on cells read tier 2 and the NVMe r_await or the tier-2 fetch time rose across the reps
(:func:`kvharness.stats.rises`, an exact permutation test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.cells import cell_row
import zlib

from kvharness import stats
from kvharness.stats import mean_ci
from kvharness.analysis.knee import COLLAPSE_TTFT_P99_MS, collapse_limit_wall_ms, over_collapse_limit
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.analysis.storage import tier_stats, windows
from kvharness.stacks.bgio import cell_fio_row

KEYS = ("stack", "role", "profile")
FIO_COLUMNS = ["fio_engine", "fio_direct", "fio_read_iops", "fio_read_mib_s", "fio_read_clat_p50_ms",
               "fio_read_clat_p95_ms", "fio_read_clat_p99_ms", "fio_write_iops", "fio_write_mib_s",
               "fio_write_clat_p50_ms", "fio_write_clat_p95_ms", "fio_write_clat_p99_ms"]
CELL_COLUMNS = [
    "stack", "role", "profile", "background_io", "rep", "status", "n_ok", "n_errors", "ttft_ms_p50", "ttft_ms_p99",
    "enough_samples_p99", "working_set_bytes", "memory_budget_bytes", "ws_exceeds_t0_t1", "tier2_read_kv_bytes",
    "tier2_file_read_bytes", "t2_hit_pct", "tier2_fetch_ms_mean", "tier2_fetch_ms_p95", "tier2_read_io_ms_mean",
    "nvme_r_await_ms_mean", *FIO_COLUMNS,
]
SUMMARY_COLUMNS = [
    "stack", "role", "profile", "background_io", "n_reps", "ttft_ms_p99_mean", "ttft_ms_p99_ci_low",
    "ttft_ms_p99_ci_high", "ttft_ms_p50_mean", "tier2_fetch_ms_mean_mean", "tier2_read_io_ms_mean_mean",
    "nvme_r_await_ms_mean_mean", "tier2_read_kv_bytes_mean", "fio_read_iops_mean", "fio_write_iops_mean",
    "fio_read_mib_s_mean", "fio_write_mib_s_mean", "fio_read_clat_p99_ms_mean", "fio_engine", "fio_direct",
]
COMPARE_COLUMNS = ["stack", "role", "profile", "p99_off_ms", "p99_on_ms", "p99_off_ci_half_ms", "p99_on_ci_half_ms",
                   "p99_delta_ms", "p99_delta_pct", "p99_ratio", "p99_ratio_ci95_low", "p99_ratio_ci95_high",
                   "p99_ratio_ci90_low", "p99_ratio_ci90_high", "outcome", "mde_pct", "method",
                   "r_await_rises", "tier2_reads_on", "mechanism", "fetch_off_ms", "fetch_on_ms", "fetch_delta_pct", "fetch_rises", "read_io_off_ms", "read_io_on_ms",
                   "r_await_off_ms", "r_await_on_ms", "n_reps_off", "n_reps_on"]
WINDOW_COLUMNS = ["stack", "profile", "background_io", "rep", "window_start_s", "n_ok", "ttft_ms_p50", "ttft_ms_p99",
                  "nvme_r_await_ms", "nvme_rMBs", "tier2_read_kv_bytes", "tier2_file_read_bytes", "tier2_fetch_ms_p95"]
MEAN_METRICS = ("ttft_ms_p99", "ttft_ms_p50", "tier2_fetch_ms_mean", "tier2_read_io_ms_mean", "nvme_r_await_ms_mean",
                "tier2_read_kv_bytes", "fio_read_iops", "fio_write_iops", "fio_read_mib_s", "fio_write_mib_s",
                "fio_read_clat_p99_ms")


def storage_row(cell_dir: str | Path) -> dict:
    """cell_row + tier-2 facts + fio's achieved numbers, for one cell."""
    row = cell_row(cell_dir)
    row.update(tier_stats(cell_dir))
    row.update(cell_fio_row(cell_dir))
    row.setdefault("background_io", "off")
    ws, budget = row.get("working_set_bytes"), row.get("memory_budget_bytes")
    row["ws_exceeds_t0_t1"] = (ws > budget) if ws is not None and budget else None
    return row


def summarize(rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(one row per stack x profile x fio off/on over its reps, one off-vs-on comparison per stack x profile)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((*(r.get(k) for k in KEYS), r.get("background_io")), []).append(r)
    summary = []
    for key, members in sorted(groups.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
        out = dict(zip((*KEYS, "background_io"), key))
        out["n_reps"] = len(members)
        for m in MEAN_METRICS:
            s = mean_ci(r.get(m) for r in members)
            out[f"{m}_mean"] = s["mean"]
            if m == "ttft_ms_p99":
                out["ttft_ms_p99_ci_low"], out["ttft_ms_p99_ci_high"] = s["ci_low"], s["ci_high"]
        out["fio_engine"] = next((r["fio_engine"] for r in members if r.get("fio_engine")), None)
        out["fio_direct"] = next((r["fio_direct"] for r in members if r.get("fio_direct") is not None), None)
        summary.append(out)
    compare = []
    points = sorted({tuple(r.get(k) for k in KEYS) for r in rows}, key=lambda p: tuple(str(x) for x in p))
    for point in points:
        off = groups.get((*point, "off"), [])
        on = groups.get((*point, "on"), [])
        if not off or not on:
            continue
        c = stats.compare([stats.samples(r) for r in off], [stats.samples(r) for r in on], 99,
                          seed=zlib.crc32(repr(point).encode()))
        fetch = stats.rises([r.get("tier2_fetch_ms_mean") for r in off], [r.get("tier2_fetch_ms_mean") for r in on])
        rawait = stats.rises([r.get("nvme_r_await_ms_mean") for r in off], [r.get("nvme_r_await_ms_mean") for r in on])
        reads_on = all((r.get("tier2_read_kv_bytes") or 0) > 0 or (r.get("tier2_file_read_bytes") or 0) > 0 for r in on)
        so, sn = mean_ci(r.get("ttft_ms_p99") for r in off), mean_ci(r.get("ttft_ms_p99") for r in on)
        mo, mn = so["mean"], sn["mean"]
        fo = mean_ci(r.get("tier2_fetch_ms_mean") for r in off)["mean"]
        fn = mean_ci(r.get("tier2_fetch_ms_mean") for r in on)["mean"]
        moved = {stats.DIFFERS: "moved", stats.EQUIVALENT: "held"}.get(c["outcome"], "inconclusive")
        if moved == "moved" and (c["ratio"] or 0) > 1 and reads_on and (rawait["rises"] or fetch["rises"]):
            mechanism = "tier-2 reads (" + " and ".join(
                x for x, ev in (("NVMe r_await", rawait), ("tier-2 fetch time", fetch)) if ev["rises"]) + " rose)"
        elif moved == "moved":
            mechanism = ("not established: " + ("no tier-2 reads in the fio-on cells" if not reads_on else
                         "neither NVMe r_await nor tier-2 fetch time rose across the reps"))
        else:
            mechanism = None
        compare.append({
            **dict(zip(KEYS, point)), "p99_off_ms": mo, "p99_on_ms": mn, "p99_off_ci_half_ms": so["half_width"],
            "p99_on_ci_half_ms": sn["half_width"], "p99_delta_ms": None if mo is None or mn is None else mn - mo,
            "p99_delta_pct": stats.pct_delta(mn, mo), "p99_ratio": c["ratio"], "p99_ratio_ci95_low": c["ci95_low"],
            "p99_ratio_ci95_high": c["ci95_high"], "p99_ratio_ci90_low": c["ci90_low"],
            "p99_ratio_ci90_high": c["ci90_high"], "outcome": moved, "mde_pct": c["mde_pct"], "method": c["method"],
            "short": c["short"], "r_await_rises": rawait["rises"], "tier2_reads_on": reads_on, "mechanism": mechanism,
            "fetch_off_ms": fo, "fetch_on_ms": fn, "fetch_delta_pct": stats.pct_delta(fn, fo),
            "fetch_rises": fetch["rises"],
            "read_io_off_ms": mean_ci(r.get("tier2_read_io_ms_mean") for r in off)["mean"],
            "read_io_on_ms": mean_ci(r.get("tier2_read_io_ms_mean") for r in on)["mean"],
            "r_await_off_ms": mean_ci(r.get("nvme_r_await_ms_mean") for r in off)["mean"],
            "r_await_on_ms": mean_ci(r.get("nvme_r_await_ms_mean") for r in on)["mean"],
            "n_reps_off": len(off), "n_reps_on": len(on),
        })
    return summary, compare


def window_table(cell_dirs: Sequence[Path], rows: Sequence[dict]) -> list[dict]:
    out = []
    for d, r in zip(cell_dirs, rows):
        for w in windows(d):
            out.append({"stack": r["stack"], "profile": r["profile"], "background_io": r["background_io"],
                        "rep": r.get("rep", 0), **w})
    return out


def plot_p99(summary: Sequence[dict], path: Path, title: str) -> Path:
    plt = pyplot()

    points = sorted({(r["stack"], r["profile"]) for r in summary})
    fig, ax = plt.subplots(figsize=(max(5, 2.2 * len(points)), 4.2))
    width = 0.38
    for j, (bio, color) in enumerate((("off", "#4C72B0"), ("on", "#DD8452"))):
        xs, ys, lo, hi = [], [], [], []
        for i, p in enumerate(points):
            r = next((s for s in summary if (s["stack"], s["profile"]) == p and s["background_io"] == bio), None)
            if r is None or r.get("ttft_ms_p99_mean") is None:
                continue
            m = r["ttft_ms_p99_mean"]
            xs.append(i + (j - 0.5) * width)
            ys.append(m)
            lo.append(m - r["ttft_ms_p99_ci_low"] if r.get("ttft_ms_p99_ci_low") is not None else 0)
            hi.append(r["ttft_ms_p99_ci_high"] - m if r.get("ttft_ms_p99_ci_high") is not None else 0)
        ax.bar(xs, ys, width=width, color=color, yerr=[lo, hi], capsize=4, label=f"fio {bio}")
    ax.set_xticks(range(len(points)), [f"{s}\n{p}" for s, p in points])
    ax.set_xlabel("stack / profile")
    ax.set_ylabel("p99 TTFT (ms), mean of reps ± 95 % CI")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def plot_windows(table: Sequence[dict], path: Path) -> Path:
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for bio, color in (("off", "#4C72B0"), ("on", "#DD8452")):
        pts = [w for w in table if w["background_io"] == bio and w.get("ttft_ms_p99") is not None]
        axes[0].scatter([w.get("nvme_r_await_ms") or 0 for w in pts], [w["ttft_ms_p99"] for w in pts],
                        s=14, color=color, label=f"fio {bio}", alpha=0.7)
        axes[1].scatter([w.get("tier2_fetch_ms_p95") or 0 for w in pts], [w["ttft_ms_p99"] for w in pts],
                        s=14, color=color, label=f"fio {bio}", alpha=0.7)
    axes[0].set_xlabel("NVMe r_await (ms), window mean")
    axes[1].set_xlabel("tier-2 fetch p95 (ms), window")
    for ax in axes:
        ax.set_ylabel("p99 TTFT (ms) of requests scheduled in the window")
        ax.legend()
    fig.suptitle("H4B: p99 TTFT per 1 s window vs NVMe latency and tier-2 fetch")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- declarations

def _analyze(ctx: Context, with_windows: bool) -> Result:
    rows = [storage_row(d) for d in ctx.cell_dirs]
    summary, compare = summarize(rows)
    cells = [{k: r.get(k) for k in CELL_COLUMNS} for r in rows]
    tables = {"summary": summary, "compare": compare, "cells": cells}
    title = f"{ctx.hyp}: p99 TTFT with background fio off / on"
    figures = {"p99": lambda path: plot_p99(summary, path, title)}
    if with_windows:
        win = window_table(ctx.cell_dirs, rows)
        tables["H4B_p99_vs_nvme"] = win
        figures["p99_vs_nvme"] = lambda path: plot_windows(win, path)
    for r in rows:
        if r.get("background_io") == "on" and not r.get("fio_read_iops") and not r.get("fio_write_iops"):
            ctx.notes.append(f"cell {r['cell']}: background_io on but fio reported no I/O")
    return Result(tables=tables, figures=figures, facts={"rows": rows, "compare": compare})


def _p99_sentence(c: dict) -> str:
    if c["p99_ratio"] is None:
        return f"{c['stack']} ({c['profile']}): no requests to compare"
    ci = "" if c["p99_ratio_ci95_low"] is None else f" [{c['p99_ratio_ci95_low']:.2f}, {c['p99_ratio_ci95_high']:.2f}]"
    why = ""
    if c["outcome"] == "inconclusive":
        why = (f", too few requests in {'/'.join(c['short'])}" if c.get("short") else
               f", could detect ≥ {c['mde_pct']:.0f} %" if c.get("mde_pct") is not None else "")
    return (f"{c['stack']} ({c['profile']}): p99 TTFT on/off {c['p99_ratio']:.2f}×{ci}, {c['outcome']}{why} "
            f"({c['n_reps_off']} + {c['n_reps_on']} reps)")


def verdict_a(result: Result) -> str:
    comp = result.facts["compare"]
    if not comp:
        return "H4A needs Stack A cells with background fio off and on."
    outcomes = {c["outcome"] for c in comp}
    head = ("The control fails: fio noise moves Stack A's p99 TTFT" if "moved" in outcomes
            else "The control holds: Stack A's p99 TTFT is unchanged by fio within ±5 %" if outcomes == {"held"}
            else "The control is inconclusive: neither a move nor ±5 % equivalence is resolved")
    return f"{head}; " + "; ".join(_p99_sentence(c) for c in comp) + "."


def gates_a(result: Result) -> list[Gate]:
    return [Gate(f"{c['stack']} {c['profile']}: p99 unmoved by fio (control)",
                 {"held": True, "moved": False}.get(c["outcome"]),
                 None if c["p99_ratio"] is None else round(c["p99_ratio"], 3), "on/off within [0.95, 1.05] (90 %)",
                 c["method"]) for c in result.facts["compare"]]


def verdict_b(result: Result) -> str:
    comp = result.facts["compare"]
    if not comp:
        return "H4B needs Stack B cells with background fio off and on."
    parts = []
    for c in comp:
        fetch = ("" if c["fetch_delta_pct"] is None else
                 f", tier-2 fetch {c['fetch_off_ms']:.1f} → {c['fetch_on_ms']:.1f} ms")
        rawait = ("" if c["r_await_off_ms"] is None or c["r_await_on_ms"] is None else
                  f", NVMe r_await {c['r_await_off_ms']:.2f} → {c['r_await_on_ms']:.2f} ms")
        mech = f"; mechanism: {c['mechanism']}" if c.get("mechanism") else ""
        parts.append(_p99_sentence(c) + fetch + rawait + mech)
    moved = [c for c in comp if c["outcome"] == "moved" and (c["p99_ratio"] or 0) > 1]
    through = [c for c in moved if (c.get("mechanism") or "").startswith("tier-2")]
    if through:
        head = f"Background NVMe noise reaches Stack B's tail through tier-2 reads in {len(through)} of {len(comp)} profiles"
    elif moved:
        head = f"Background NVMe noise moves Stack B's p99 TTFT in {len(moved)} of {len(comp)} profiles (mechanism not established)"
    elif all(c["outcome"] == "held" for c in comp):
        head = "Background NVMe noise leaves Stack B's p99 TTFT within ±5 %"
    else:
        head = "Whether background NVMe noise moves Stack B's p99 TTFT is inconclusive"
    return f"{head}: " + "; ".join(parts) + "."


def gates_b(result: Result) -> list[Gate]:
    rows = result.facts["rows"]
    out = []
    for r in rows:
        if r.get("background_io") != "on":
            continue
        p99 = r.get("ttft_ms_p99")
        up = bool(r.get("n_ok")) and not r.get("n_errors") and p99 is not None and not over_collapse_limit(r)
        out.append(Gate(f"B stays up under fio: {r['cell']}", up, p99,
                        f"no errors, p99 <= {collapse_limit_wall_ms(r):.4g} ms wall ({COLLAPSE_TTFT_P99_MS:g} ms stack time)"))
    reads = [r for r in rows if r.get("ws_exceeds_t0_t1") and (r.get("tier2_read_kv_bytes") or r.get("tier2_file_read_bytes"))]
    out.append(Gate("workload reads tier 2 (working set > T0+T1, tier-2 read bytes > 0) in every cell",
                    len(reads) == len(rows) if rows else None, f"{len(reads)}/{len(rows)}", "all cells"))
    return out


register(Hypothesis(
    id="H4A",
    question="Control: does background fio on the NVMe move the memory-only stack's p99 TTFT? (it must not)",
    analyze=lambda ctx: _analyze(ctx, with_windows=False),
    tables=(Table("summary", SUMMARY_COLUMNS, "per stack x profile x fio off/on: reps, p99 mean and 95 % CI, fio numbers"),
            Table("compare", COMPARE_COLUMNS, "fio off vs on per stack x profile: p99 on/off with its interval and outcome"),
            Table("cells", CELL_COLUMNS, "one row per cell, with fio's achieved IOPS, bandwidth and latency")),
    figures=(Figure("p99", "p99 TTFT (ms; mean of repetitions, 95 % CI whiskers) with background fio off and on, "
                           "per stack and profile (x axis)."),),
    verdict=verdict_a,
    gates=gates_a,
    how_to_read="Each background_io point runs reps times, each its own launch. p99_ratio is p99 TTFT with fio on "
                "over off, with a hierarchical-bootstrap interval over reps and requests; outcome moved (95 % interval "
                "excludes 1), held (90 % interval inside [0.95, 1.05]) or inconclusive (mde_pct: the smallest change "
                "the reps could detect). fio_* are fio's own achieved numbers (fio.json).",
))

register(Hypothesis(
    id="H4B",
    question="Does background NVMe noise reach the tiered stack's tail through tier-2 reads, and does B stay up?",
    analyze=lambda ctx: _analyze(ctx, with_windows=True),
    tables=(Table("summary", SUMMARY_COLUMNS, "per stack x profile x fio off/on: reps, p99 mean and 95 % CI, fio numbers"),
            Table("compare", COMPARE_COLUMNS, "fio off vs on per stack x profile: p99 drift, tier-2 fetch, r_await"),
            Table("cells", CELL_COLUMNS, "one row per cell: working set vs T0+T1, tier-2 read bytes, fio numbers"),
            Table("H4B_p99_vs_nvme", WINDOW_COLUMNS, "per 1 s window: TTFT joined with NVMe r_await and tier-2 bytes/fetch")),
    figures=(Figure("p99", "p99 TTFT (ms; mean of repetitions, 95 % CI whiskers) with background fio off and on, "
                           "per stack and profile (x axis)."),
             Figure("p99_vs_nvme", "Per 1 s window: p99 TTFT (ms) against the window's NVMe r_await (ms) and "
                                   "tier-2 fetch p95 (ms), fio off and on.")),
    verdict=verdict_b,
    gates=gates_b,
    how_to_read="The workload's working set exceeds T0+T1 (ws_exceeds_t0_t1), so prefix hits are read from tier-2 "
                "files (tier2_read_kv_bytes: KV bytes onboarded from disk; tier2_file_read_bytes: real file bytes). "
                "tier2_fetch_ms_mean is the mean onboarding time of a tier-2 hit over the cell.",
))
