"""H2B: where does NVMe start to decide the tiered stack's tail? Stack B under the spill profile, context
swept at U_work, with a working set set by ``prefix_groups`` (independent of the users) that crosses T0
and then T0+T1 inside the sweep.

Per point: p50/p95/p99 TTFT, where the working set stands against T0 / T0+T1, tier-1 and tier-2 hit %,
spill (bytes written to tier 2) and onboard bytes, tier-2 read bytes, NVMe r_await, and tier-2 fetch p95
two ways: the stack's own per-tier fetch latency (``stack metric``) and the per-window join of request
TTFT with NVMe r_await and tier-2 reads (``window join``). The **storage knee** (SPEC) is the first point
where tier-2 fetch p95 >= 50 % of TTFT p95; both methods are computed and the output says which one gave
the reported value (the stack metric when the stack exports one, else the window join). ``p99_vs_nvme``
is the per-window join table itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis import gates as G
from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.knee import STORAGE_KNEE_SHARE, storage_knee
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.analysis.spill import join_fetch_p95, spill_rows, window_join
from kvharness.analysis.storage import tier2_fetch_p95

AXIS = "context_tokens"
TIER2_HIT_GATE_PCT = 20.0
SUMMARY_COLUMNS = [
    "stack", "context_tokens", "concurrency", "status", "n_ok", "n_errors", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "p99_enough_samples",
    "working_set_bytes", "fits_in", "tier0_bytes", "tier1_bytes", "tier1_hit_pct", "tier2_hit_pct", "spill_bytes",
    "onboard_bytes", "tier2_read_bytes", "tier2_file_read_bytes", "nvme_r_await_ms_mean", "tier2_fetch_ms_p95_metric",
    "tier2_fetch_ms_p95_lo", "tier2_fetch_ms_p95_hi", "tier2_fetch_ms_p95_join", "join_note", "fetch_share_metric", "fetch_share_join", "kv_hit_pct", "preemptions",
]
KNEE_COLUMNS = ["method", "reported", "knee_at", "knee_from", "undecided_at", "censored", "n_points_with_data", "note", "methods_agree",
                "agreement_note", "first_tier2_read_at", "working_set_exceeds_t0t1_at"]
JOIN_COLUMNS = ["stack", "context_tokens", "cell", "tick", "ts", "n_first_tokens", "ttft_ms_p50", "ttft_ms_p95",
                "ttft_ms_p99", "nvme_device", "nvme_rps", "nvme_rMBs", "nvme_r_await_ms", "nvme_aqu_sz", "nvme_util_pct",
                "tier2_read_bytes", "tier2_file_read_bytes", "tier2_fetch_ms_p95_metric", "t2_read_ms", "tier2_fetched",
                "t2_fetchers", "t2_fetch_est_ms"]
#: a point "reads tier 2" when the stack onboarded at least this share of its prompt blocks from disk
#: (a stray block or two during warm-up is not spill)
TIER2_READ_MIN_PCT = 1.0


def _share(f, t):
    return f / t if f is not None and t else None


def h2b_tables(cell_dirs: Sequence[Path], rows: Sequence[dict]) -> dict[str, list[dict]]:
    points = sorted(spill_rows(cell_dirs, rows), key=lambda r: (r["stack"], r[AXIS]))
    dirs = {Path(d).name: Path(d) for d in cell_dirs}
    summary, joins = [], []
    for p in points:
        wrows = window_join(dirs[p["cell"]])
        joined, note = join_fetch_p95(wrows)
        awaits = [w["nvme_r_await_ms"] for w in wrows if w.get("nvme_r_await_ms") is not None]
        hist = tier2_fetch_p95(dirs[p["cell"]])  # the cell's fetch histogram: p95 and its bucket's bounds
        row = {**{k: p.get(k) for k in SUMMARY_COLUMNS}, "cell": p.get("cell"),
               "tier2_read_bytes": p.get("tier2_bytes_out"),
               "tier2_fetch_ms_p95_metric": (hist["tier2_fetch_ms_p95_hist"] if hist["tier2_fetch_ms_p95_hist"] is not None
                                             else p.get("tier2_fetch_ms_p95")),
               "tier2_fetch_ms_p95_lo": hist["tier2_fetch_ms_p95_lo"], "tier2_fetch_ms_p95_hi": hist["tier2_fetch_ms_p95_hi"],
               "tier2_fetch_ms_p95_join": joined, "join_note": note,
               "nvme_r_await_ms_mean": sum(awaits) / len(awaits) if awaits else None}
        row["fetch_share_metric"] = _share(row["tier2_fetch_ms_p95_metric"], row["ttft_ms_p95"])
        row["fetch_share_join"] = _share(joined, row["ttft_ms_p95"])
        summary.append(row)
        joins.extend({"stack": p["stack"], "context_tokens": p[AXIS], "cell": p["cell"], **w} for w in wrows)
    knee = knee_rows(summary)
    return {"summary": summary, "storage_knee": knee, "p99_vs_nvme": joins}


def reads_tier2(row: dict) -> bool:
    return (row.get("tier2_hit_pct") or 0.0) >= TIER2_READ_MIN_PCT


def knee_rows(summary: Sequence[dict]) -> list[dict]:
    """Two rows, one per method, whichever had data; ``reported`` marks the one the verdict uses."""
    first_read = next((r[AXIS] for r in summary if reads_tier2(r)), None)
    crosses = next((r[AXIS] for r in summary if r.get("working_set_bytes") is not None
                    and r["working_set_bytes"] > (r.get("tier0_bytes") or 0) + (r.get("tier1_bytes") or 0)), None)
    metric = storage_knee(summary, AXIS, fetch_key="tier2_fetch_ms_p95_metric",
                          bounds=("tier2_fetch_ms_p95_lo", "tier2_fetch_ms_p95_hi"))
    join = storage_knee(summary, AXIS, fetch_key="tier2_fetch_ms_p95_join")
    if not summary:
        metric["note"] = join["note"] = "no finished cell"
    elif join["n_with_data"] == 0:
        reasons = sorted({r["join_note"] for r in summary if r.get("join_note")})
        join["note"] += f" ({'; '.join(reasons)})" if reasons else ""
    if summary and metric["n_with_data"] == 0:
        metric["note"] = "the stack exports no tier-2 fetch latency (tier2.fetch_p95_ms is null in every window)"
    reported = "stack metric" if metric["n_with_data"] else "window join" if join["n_with_data"] else None
    agree, why = methods_agree(summary, metric, join)
    out = []
    for name, k in (("stack metric", metric), ("window join", join)):
        out.append({"method": name, "reported": name == reported, "knee_at": k["knee_at"], "knee_from": k["knee_from"],
                    "undecided_at": ";".join(str(x) for x in k["undecided"]), "censored": k["censored"],
                    "n_points_with_data": k["n_with_data"], "note": k["note"], "methods_agree": agree,
                    "agreement_note": why, "first_tier2_read_at": first_read, "working_set_exceeds_t0t1_at": crosses})
    return out


def methods_agree(summary: Sequence[dict], metric: dict, join: dict) -> tuple[bool | None, str]:
    """Whether the two methods' knees are within one sweep step ("not reached" = one step past the last
    point), and if not, the measured reason: how the two fetch estimates compare where both have data."""
    if not metric["n_with_data"] or not join["n_with_data"]:
        missing = "stack metric" if not metric["n_with_data"] else "window join"
        return None, f"not compared: the {missing} method had no data"
    values = [r[AXIS] for r in summary] + [None]
    a, b = values.index(metric["knee_at"]), values.index(join["knee_at"])
    if abs(a - b) <= 1:
        return True, "within one sweep step"
    both = [(r["tier2_fetch_ms_p95_metric"], r["tier2_fetch_ms_p95_join"]) for r in summary
            if r.get("tier2_fetch_ms_p95_metric") and r.get("tier2_fetch_ms_p95_join")]
    ratio = sorted(m / j for m, j in both)[len(both) // 2] if both else None
    return False, ("the stack's fetch p95 is " + (f"{ratio:.1f}x" if ratio else "not comparable to")
                   + " the window join's (median over points): the join sees only the device's read service time, "
                     "the stack's histogram also its transfer, queueing and bucket interpolation")


def plot_h2b(summary: Sequence[dict], joins: Sequence[dict], path: Path) -> None:
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [r[AXIS] for r in summary]
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        ax1.plot(xs, [r.get(f"ttft_ms_p{q}") for r in summary], style, marker="o", label=f"p{q} TTFT")
    ax1.plot(xs, [r.get("tier2_fetch_ms_p95_metric") for r in summary], marker="x", label="tier-2 fetch p95 (stack)")
    ax1.plot(xs, [r.get("tier2_fetch_ms_p95_join") or None for r in summary], marker="+",
             label="tier-2 fetch p95 (window join)")
    for r in summary:
        if r.get("fits_in"):
            ax1.annotate(r["fits_in"], (r[AXIS], r.get("ttft_ms_p99") or 0), fontsize=7, textcoords="offset points",
                         xytext=(0, 6))
    ax1.set_xlabel("context (tokens)")
    ax1.set_ylabel("latency (ms)")
    ax1.set_yscale("log")
    ax1.set_title("TTFT vs context; labels: where the working set fits")
    ax1.legend(fontsize=7)
    pts = [w for w in joins if w.get("nvme_r_await_ms") is not None and w.get("ttft_ms_p99") is not None]
    sc = ax2.scatter([w["nvme_r_await_ms"] for w in pts], [w["ttft_ms_p99"] for w in pts],
                     c=[w[AXIS] for w in pts], s=12, cmap="viridis")
    if pts:
        fig.colorbar(sc, ax=ax2, label="context (tokens)")
    ax2.set_xlabel("NVMe r_await in the window (ms)")
    ax2.set_ylabel("p99 TTFT of the window's requests (ms)")
    ax2.set_title("per telemetry window" + ("" if pts else " (no NVMe telemetry)"))
    save_figure(fig, path)


# --------------------------------------------------------------------------- declaration

KNEE_SAMPLES = "enough samples for p95 (storage knee)"
ENDS_SAMPLES = "enough samples for p99 (first and last context)"
HIT_GATE = "tier-2 hits >= 20 % near the knee"


def claim_gates(tables: dict) -> list[Gate]:
    """The samples gate on the cells each claim reads: the storage knee compares TTFT p95 up to the knee
    (every point when it was not reached); the p99 range reads the first and the last context."""
    summary = tables["summary"]
    if not summary:
        return []
    knee = next((k for k in tables["storage_knee"] if k["reported"]), None)
    at = knee["knee_at"] if knee is not None else None
    upto = [r for r in summary if at is None or r[AXIS] <= at]
    return [G.renamed(G.samples_gate(upto, q=95), KNEE_SAMPLES),
            G.renamed(G.samples_gate([summary[0], summary[-1]], q=99), ENDS_SAMPLES)]


def analyze(ctx: Context) -> Result:
    tables = h2b_tables(ctx.cell_dirs, ctx.rows)
    return Result(tables=tables,
                  figures={"ttft": lambda path: plot_h2b(tables["summary"], tables["p99_vs_nvme"], path)},
                  facts={**tables, "claim_gates": claim_gates(tables)})


def _reported(result: Result) -> dict | None:
    return next((k for k in result.facts["storage_knee"] if k["reported"]), None)


def verdict(result: Result) -> str:
    summary = result.facts["summary"]
    if not summary:
        return "No H2B cell finished."
    own = gates(result) + result.facts.get("claim_gates", [])
    knee = _reported(result)
    first = result.facts["storage_knee"][0]
    spill = (f"tier-2 reads start at {first['first_tier2_read_at']} tokens" if first["first_tier2_read_at"] is not None
             else "no point reads tier 2")
    cross = (f"the working set exceeds T0+T1 from {first['working_set_exceeds_t0t1_at']} tokens"
             if first["working_set_exceeds_t0t1_at"] is not None else "the working set never exceeds T0+T1")
    if knee is None:
        k = "storage knee: none could be computed (neither the stack's fetch latency nor NVMe telemetry has data)"
    elif knee["knee_at"] is None:
        where = (f"; it may lie at {knee['knee_from']} tokens or beyond (the fetch histogram's buckets cannot tell)"
                 if knee.get("knee_from") is not None else "")
        k = "storage knee: " + G.gated_sentence(f"not within the sweep ({knee['method']} method){where}", own, [KNEE_SAMPLES])
    else:
        claim = f"at {knee['knee_at']} tokens ({knee['method']} method)"
        if knee.get("knee_from") is not None and knee["knee_from"] != knee["knee_at"]:
            claim = (f"between {knee['knee_from']} and {knee['knee_at']} tokens ({knee['method']} method; the fetch "
                     f"histogram's buckets cannot place it closer)")
        if knee["censored"] == "below":
            claim += " (the first point with tier-2 fetches)"
        k = "storage knee: " + G.gated_sentence(claim, own, [HIT_GATE, KNEE_SAMPLES])
    other = next((r for r in result.facts["storage_knee"] if knee is not None and r["method"] != knee["method"]), None)
    if other is not None and knee["methods_agree"] is False:
        where = f"at {other['knee_at']} tokens" if other["knee_at"] is not None else "none within the sweep"
        k += f"; the {other['method']} method disagrees ({where})"
    top = summary[-1]
    p99 = "p99 TTFT " + G.gated_sentence(f"goes from {summary[0]['ttft_ms_p99']:.0f} ms at {summary[0][AXIS]} to "
                                         f"{top['ttft_ms_p99']:.0f} ms at {top[AXIS]} tokens", own, [ENDS_SAMPLES])
    return f"Stack B: {spill} ({cross}); {k}; {p99}."


def gates(result: Result) -> list[Gate]:
    knee = _reported(result)
    if knee is None or knee["knee_at"] is None:
        return [Gate(HIT_GATE, None, None, f">= {TIER2_HIT_GATE_PCT:g} %", "no storage knee within the sweep")]
    at = next(r for r in result.facts["summary"] if r[AXIS] == knee["knee_at"])
    hit = at.get("tier2_hit_pct")
    return [Gate(HIT_GATE, hit is not None and hit >= TIER2_HIT_GATE_PCT, hit,
                 f">= {TIER2_HIT_GATE_PCT:g} %", f"at {knee['knee_at']} tokens")]


register(Hypothesis(
    id="H2B",
    question="Where does NVMe latency start to decide Stack B's tail as the context (and working set) grows?",
    analyze=analyze,
    tables=(Table("summary", SUMMARY_COLUMNS, "per context: TTFT percentiles, working set vs tiers, tier hits, spill "
                                              "and onboard bytes, NVMe r_await, tier-2 fetch p95 by both methods"),
            Table("storage_knee", KNEE_COLUMNS, "storage knee by the stack-metric and window-join methods, which "
                                                "one is reported, and where tier-2 reads start"),
            Table("p99_vs_nvme", JOIN_COLUMNS, "per telemetry window: TTFT of the requests whose first token fell in "
                                               "it, joined with NVMe r_await and tier-2 reads")),
    figures=(Figure("ttft", "Left: p50/p95/p99 TTFT and tier-2 fetch p95 by both methods (ms, log) vs context (tokens), "
                            "labelled with the tiers the working set fits in. Right: p99 TTFT of each telemetry window's "
                            "requests (ms) vs that window's NVMe r_await (ms), coloured by context (tokens)."),),
    verdict=verdict,
    verdict_gates=(),  # each claim reads its own gates inline (gates.gated_sentence)
    gates=gates,
    how_to_read=f"Storage knee = the first context where tier-2 fetch p95 >= {STORAGE_KNEE_SHARE:.0%} of TTFT p95. "
                "tier-N hit % = blocks onboarded from tier N / prompt blocks requested. spill_bytes = bytes written to "
                "tier 2, onboard_bytes = bytes read back from tiers 1 and 2. The window-join fetch estimate shares the "
                "device's read service time in a window among the requests whose first token fell in it (an upper "
                "bound: reads overlap).",
))
