"""H6: tier sizing and eviction policy on the tiered stack.

Three families of tier points, each point its own launch (the cell reads back the capacity and policy
the stack reports and fails when they differ from the request — ``stacks/capacity.py``):

* ``split``  — T0/T1 split at a fixed total (``points: [{tier0, tier1}, ...]``),
* ``total``  — T0+T1 at the profile's ratio (``tier_total``),
* ``policy`` — eviction policy LRU / LFU / FIFO (``eviction_policy``), on the hot-set + scan workload
  (``scan_share`` > 0: a recency policy is flushed by one-off scan prompts, a frequency policy keeps the hot set).

Every point is crossed with a concurrency sweep; with ``nonce: per_user`` the reusable working set is
users x prompt, so one sweep gives both knees of a tier point: **U_work** (kvharness.analysis.knee) and
the **hit-rate knee** = the highest swept concurrency up to which the memory-tier hit rate (T0+T1 hits over
prompt blocks) stays >= 50 %. Known truth from the model: the hit-rate knee cannot fall as T0+T1 grows,
and on the hot-set + scan workload LFU's memory hit rate is above LRU's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis import gates as G
from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.h4 import storage_row
from kvharness.analysis.knee import u_work
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.cellfolder import CellFolder

HIT_KNEE_PCT = 50.0
POLICY_MARGIN_PP = 1.0  # LFU must beat LRU by more than this many percentage points somewhere
HIT_KNEE_GATE = "hit-rate knee non-decreasing as T0+T1 grows"
LFU_GATE = "LFU beats LRU on the hot-set + scan workload"
POINT_COLUMNS = ["family", "tier0_bytes", "tier1_bytes", "memory_budget_bytes", "eviction_policy", "scan_share",
                 "concurrency", "rep", "status", "n_ok", "ttft_ms_p50", "ttft_ms_p99", "ttft_p99_over_p50",
                 "memory_hit_pct", "t0_hit_pct", "t2_hit_pct", "kv_hit_pct", "working_set_bytes", "fits_in", "req_s"]
KNEE_COLUMNS = ["family", "tier0_bytes", "tier1_bytes", "memory_budget_bytes", "eviction_policy", "scan_share",
                "u_work", "u_work_censored", "hit_knee", "hit_knee_censored", "n_steps", "note"]
POLICY_COLUMNS = ["eviction_policy", "concurrency", "memory_budget_bytes", "scan_share", "memory_hit_pct", "t0_hit_pct",
                  "t2_hit_pct", "kv_hit_pct", "ttft_ms_p50", "ttft_ms_p99", "vs_lru_memory_hit_pp"]


def family(row: dict) -> str:
    if row.get("eviction_policy") is not None or row.get("scan_share"):
        return "policy"
    if row.get("tier_total") is not None:
        return "total"
    if row.get("tier0") is not None or row.get("tier1") is not None:
        return "split"
    return "profile"


def h6_row(cell_dir: str | Path) -> dict:
    row = storage_row(cell_dir)

    spec = CellFolder(cell_dir).spec
    row["family"] = family(row)
    row["eviction_policy"] = spec["engine"].get("eviction_policy")
    row["scan_share"] = spec["load"]["workload"].get("scan_share") or 0.0
    return row


def point_key(r: dict) -> tuple:
    return (r["family"], r["tier0_bytes"], r["tier1_bytes"], r["eviction_policy"], r["scan_share"])


def hit_knee(steps: Sequence[dict], limit: float = HIT_KNEE_PCT) -> tuple[int | None, bool]:
    """(highest concurrency up to which every step's memory hit rate is >= limit, censored = all steps were)."""
    ordered = sorted(steps, key=lambda s: s["concurrency"])
    knee = None
    for s in ordered:
        if s.get("memory_hit_pct") is None or s["memory_hit_pct"] < limit:
            return knee, False
        knee = s["concurrency"]
    return knee, bool(ordered)


def _mean_steps(members: Sequence[dict]) -> list[dict]:
    """One step per concurrency: the mean over its reps of the knee inputs."""
    by_c: dict[int, list[dict]] = {}
    for r in members:
        by_c.setdefault(r["concurrency"], []).append(r)
    steps = []
    for c, rs in sorted(by_c.items()):
        step = {"concurrency": c}
        for k in ("ttft_ms_p50", "ttft_ms_p99", "memory_hit_pct"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            step[k] = sum(vals) / len(vals) if vals else None
        steps.append(step)
    return steps


def knee_table(rows: Sequence[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(point_key(r), []).append(r)
    out = []
    for key, members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] + kv[0][2], kv[0][1], str(kv[0][3]))):
        steps = _mean_steps(members)
        uw = u_work(steps)
        hk, hk_cens = hit_knee(steps)
        note = "" if hk is not None else f"memory hit rate < {HIT_KNEE_PCT:g} % already at concurrency {steps[0]['concurrency']}"
        out.append({"family": key[0], "tier0_bytes": key[1], "tier1_bytes": key[2], "memory_budget_bytes": key[1] + key[2],
                    "eviction_policy": key[3], "scan_share": key[4], "u_work": uw["u_work"], "u_work_censored": uw["censored"],
                    "hit_knee": hk, "hit_knee_censored": hk_cens, "n_steps": len(steps), "note": note})
    return out


def shown(value, censored: bool) -> str | None:
    """A knee as a reader sees it: "64+" when censored (no knee within the sweep: it lies at or beyond the
    last step), the plain value otherwise; None stays None (no step qualified)."""
    if value is None:
        return None
    return f"{value}+" if censored else str(value)


def display_knees(knees: Sequence[dict]) -> list[dict]:
    """The summary table's rows: ``u_work`` and ``hit_knee`` as shown (censored ones marked "+")."""
    return [{**k, "u_work": shown(k["u_work"], k["u_work_censored"]),
             "hit_knee": shown(k["hit_knee"], k["hit_knee_censored"])} for k in knees]


def non_decreasing(knees: Sequence[dict], field: str) -> bool | None:
    """Is ``field`` non-decreasing as T0+T1 grows (None counts as below the lowest step)? None: < 2 points."""
    ordered = sorted(knees, key=lambda k: k["memory_budget_bytes"])
    vals = [k[field] if k[field] is not None else 0 for k in ordered]
    if len(vals) < 2:
        return None
    return all(b >= a for a, b in zip(vals, vals[1:]))


def policy_table(rows: Sequence[dict]) -> list[dict]:
    pol = [r for r in rows if r["family"] == "policy"]
    groups: dict[tuple, list[dict]] = {}
    for r in pol:
        groups.setdefault((r["eviction_policy"], r["concurrency"], r["memory_budget_bytes"], r["scan_share"]), []).append(r)
    out = []
    for (policy, c, budget, scan), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row = {"eviction_policy": policy, "concurrency": c, "memory_budget_bytes": budget, "scan_share": scan}
        for k in ("memory_hit_pct", "t0_hit_pct", "t2_hit_pct", "kv_hit_pct", "ttft_ms_p50", "ttft_ms_p99"):
            vals = [r[k] for r in rs if r.get(k) is not None]
            row[k] = sum(vals) / len(vals) if vals else None
        out.append(row)
    for row in out:
        lru = next((o for o in out if o["eviction_policy"] == "lru" and o["concurrency"] == row["concurrency"]
                    and o["memory_budget_bytes"] == row["memory_budget_bytes"] and o["scan_share"] == row["scan_share"]), None)
        row["vs_lru_memory_hit_pp"] = (row["memory_hit_pct"] - lru["memory_hit_pct"]
                                       if lru and row["memory_hit_pct"] is not None and lru["memory_hit_pct"] is not None else None)
    return out


def lfu_beats_lru(policy: Sequence[dict]) -> tuple[bool | None, float | None]:
    """(LFU >= LRU at every concurrency and > by POLICY_MARGIN_PP somewhere, the largest LFU - LRU gap in pp)."""
    gaps = [r["vs_lru_memory_hit_pp"] for r in policy if r["eviction_policy"] == "lfu" and r["vs_lru_memory_hit_pp"] is not None]
    if not gaps:
        return None, None
    return (min(gaps) >= -POLICY_MARGIN_PP and max(gaps) > POLICY_MARGIN_PP), max(gaps)


def plot_knees(points: Sequence[dict], path: Path) -> Path:
    plt = pyplot()

    fams = [f for f in ("split", "total", "policy") if any(p["family"] == f for p in points)]
    fig, axes = plt.subplots(1, max(1, len(fams)), figsize=(5.2 * max(1, len(fams)), 4.2), squeeze=False)
    gib = 1024**3
    for ax, fam in zip(axes[0], fams):
        mine = [p for p in points if p["family"] == fam]
        keys = sorted({(p["tier0_bytes"], p["tier1_bytes"], p["eviction_policy"]) for p in mine})
        for k in keys:
            pts = sorted((p for p in mine if (p["tier0_bytes"], p["tier1_bytes"], p["eviction_policy"]) == k),
                         key=lambda p: p["concurrency"])
            label = (f"{k[2]}" if fam == "policy" else f"T0 {k[0] / gib:.2g} + T1 {k[1] / gib:.2g} GiB")
            ax.plot([p["concurrency"] for p in pts], [p.get("memory_hit_pct") or 0 for p in pts], marker="o", label=label)
        ax.axhline(HIT_KNEE_PCT, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency (users; working set = users x prompt)")
        ax.set_ylabel("memory-tier (T0+T1) hit rate (%)")
        ax.set_title({"split": "T0/T1 split at fixed total", "total": "T0+T1 total", "policy": "eviction policy (hot set + scan)"}[fam])
        ax.legend(fontsize=8)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    rows = [h6_row(d) for d in ctx.cell_dirs]
    points = sorted(({k: r.get(k) for k in POINT_COLUMNS} for r in rows),
                    key=lambda p: (p["family"], p["memory_budget_bytes"], p["tier0_bytes"], str(p["eviction_policy"]), p["concurrency"], p["rep"] or 0))
    knees = knee_table(rows)
    policy = policy_table(rows)
    facts = {"knees": knees, "policy": policy}
    for fam in ("split", "total"):
        mine = [k for k in knees if k["family"] == fam]
        facts[f"{fam}_hit_knee_monotone"] = non_decreasing(mine, "hit_knee") if fam == "total" else None
        facts[f"{fam}_u_work_monotone"] = non_decreasing(mine, "u_work") if fam == "total" else None
    facts["lfu_beats_lru"], facts["lfu_gap_pp"] = lfu_beats_lru(policy)
    # U_work reads each cell's p99 TTFT: its claims depend on the samples gate over that family's cells
    facts["claim_gates"] = [G.renamed(G.samples_gate([{**r, "cell": Path(d).name} for r, d in zip(rows, ctx.cell_dirs)
                                                      if r["family"] == fam]), f"enough samples for p99 ({fam})")
                            for fam in ("split", "total") if any(r["family"] == fam for r in rows)]
    return Result(tables={"summary": display_knees(knees), "cells": points, "policy": policy},
                  figures={"knees": lambda path: plot_knees(points, path)}, facts=facts)


def _knees_text(knees: Sequence[dict], field: str) -> str:
    return ", ".join(shown(k[field], k[f"{field}_censored"]) or "none" for k in knees)


def verdict(result: Result) -> str:
    f = result.facts
    own = gates(result) + f.get("claim_gates", [])
    knees = sorted((k for k in f["knees"] if k["family"] == "total"), key=lambda k: k["memory_budget_bytes"])
    parts = []
    if knees:
        sizes = ", ".join(f"{k['memory_budget_bytes'] / 1024**3:.3g}" for k in knees)
        hit = G.gated_sentence(f"the hit-rate knee never falls ({_knees_text(knees, 'hit_knee')} users)", own,
                               [HIT_KNEE_GATE])
        uw = "U_work " + G.gated_sentence(_knees_text(knees, "u_work"), own, ["enough samples for p99 (total)"])
        parts.append(f"T0+T1 of {sizes} GiB: {hit}; {uw}")
    split = [k for k in f["knees"] if k["family"] == "split"]
    if split:
        moves = ", ".join(f"{shown(k['u_work'], k['u_work_censored']) or 'none'} (T0 {k['tier0_bytes'] / 1024**3:.3g} GiB)"
                          for k in split)
        parts.append("at a fixed total the split gives U_work " + G.gated_sentence(moves, own,
                                                                                   ["enough samples for p99 (split)"]))
    if f["lfu_beats_lru"] is not None:
        parts.append("eviction on the hot set + scan: " + G.gated_sentence(
            f"LFU beats LRU (largest memory-hit gap {f['lfu_gap_pp']:+.1f} pp)", own, [LFU_GATE]))
    return ("; ".join(parts) + ". A knee marked + lies at or beyond the last swept step.") if parts \
        else "No H6 tier point finished."


def gates(result: Result) -> list[Gate]:
    f = result.facts
    total = sorted((k for k in f["knees"] if k["family"] == "total"), key=lambda k: k["memory_budget_bytes"])
    return [
        Gate(HIT_KNEE_GATE, f["total_hit_knee_monotone"], _knees_text(total, "hit_knee") or None,
             "non-decreasing (known truth of the model)"),
        Gate("U_work non-decreasing as T0+T1 grows", f["total_u_work_monotone"], _knees_text(total, "u_work") or None,
             "non-decreasing (expected; timing-based)"),
        Gate(LFU_GATE, f["lfu_beats_lru"],
             round(f["lfu_gap_pp"], 2) if f["lfu_gap_pp"] is not None else None, f"> {POLICY_MARGIN_PP:g} pp, never below"),
    ]


register(Hypothesis(
    id="H6",
    question="How do the T0/T1 split, the T0+T1 total and the eviction policy move the tiered stack's knees?",
    analyze=analyze,
    tables=(Table("summary", KNEE_COLUMNS, "per tier point: U_work and the memory hit-rate knee"),
            Table("cells", POINT_COLUMNS, "per cell: tier sizes, policy, concurrency, hit rates, TTFT"),
            Table("policy", POLICY_COLUMNS, "eviction policies on the hot-set + scan workload, per concurrency")),
    figures=(Figure("knees", "Memory-tier (T0+T1) hit rate (%) vs concurrency (users, log2) per tier point; the dashed "
                             "line is the 50 % hit-rate knee threshold."),),
    verdict=verdict,
    verdict_gates=(),  # each claim reads its own gates inline (gates.gated_sentence)
    gates=gates,
    how_to_read="memory_hit_pct = (T0 + T1 block hits) / prompt blocks looked up; tier-2 hits are not memory hits. "
                "hit_knee = the highest concurrency up to which it stays >= 50 %; U_work as in H0. A knee shown as "
                "\"64+\" is censored: no knee within the sweep, it lies at or beyond the last step.",
))
