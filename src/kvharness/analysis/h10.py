"""H10: tier sizing on production traffic — how much tier 2 does this traffic need?

A window of a production KV-reuse trace (the Mooncake FAST'25 conversation trace, ``data/traces/``) is
replayed on both stacks at equal memory (A's pool = B's T0+T1), with two families of points:

* ``t2``     — B's tier-2 size swept at the profile's T0+T1 (A has no disk tier: one cell);
* ``budget`` — the memory budget T0+T1 (``tier_total``) at B's largest tier 2.

Per point: the prefix-hit fraction by tier (the simulator's per-tier block counts), the prefill tokens
it saved, TTFT p50/p99 and goodput. The **capacity curve** is B's hit fraction and p99 TTFT vs T2 bytes;
its marked point is the smallest swept T2 whose hit fraction is within 5 % (relative) of the unbounded
one — the hit fraction at the largest swept T2, which is unbounded when it holds every distinct full
block of the window (a gate checks that against the trace itself).

Sizes are given twice: in the stack's bytes (the simulator's block of ``tokens_per_block`` tokens) and
in the trace's bytes, i.e. what a deployment of the measured model needs: the trace's blocks are
``trace_block_tokens`` (512) tokens, replayed one stack block each (docs/loadgen.md, block mapping), so a
T2 of N blocks stands for N x 512 tokens x the model's KV bytes per token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis.h4 import storage_row
from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.cellfolder import CellFolder

WITHIN = 0.05  # the marked T2: hit fraction >= (1 - WITHIN) x the unbounded one
GIB = 1024**3
METRICS = ("hit_pct", "t0_hit_pct", "t1_hit_pct", "t2_hit_pct", "prefill_tokens_saved",
           "prefill_trace_tokens_saved", "ttft_ms_p50", "ttft_ms_p99", "goodput_req_s", "good_fraction", "n_ok")
COLUMNS = ["family", "stack", "role", "memory_budget_bytes", "tier0_bytes", "tier1_bytes", "tier2_bytes",
           "tier2_blocks", "tier2_trace_gib", "n_reps", *METRICS, "n_requests", "prompt_blocks", "status"]
CURVE_COLUMNS = ["tier2_bytes", "tier2_blocks", "tier2_trace_gib", "hit_pct", "t2_hit_pct", "ttft_ms_p99",
                 "a_hit_pct", "a_ttft_ms_p99", "within_5pct_of_unbounded", "marked"]


def block_geometry(spec: dict) -> dict:
    """Tokens and KV bytes of one stack block and one trace block for a cell (the block mapping)."""
    from kvharness.sim.profiles import kv_bytes_per_token

    kv = kv_bytes_per_token(spec["model"], spec["precision"], spec["hardware"]) or 0
    tpb = int(spec["engine"]["tokens_per_block"])
    w = spec["load"]["workload"]
    trace_tpb = int(w.get("trace_block_tokens") or tpb) if w.get("kind") == "trace" else tpb
    return {"tokens_per_block": tpb, "trace_block_tokens": trace_tpb, "block_bytes": tpb * kv,
            "trace_block_bytes": trace_tpb * kv}


def h10_row(cell_dir: str | Path) -> dict:
    row = storage_row(cell_dir)
    spec = CellFolder(cell_dir).spec
    geo = block_geometry(spec)
    row.update(geo)
    row["family"] = "budget" if (spec.get("sweep") or {}).get("tier_total") is not None else "t2"
    looked = row.get("prompt_blocks")
    hits = [row.get(f"t{i}_hit_blocks") or 0 for i in range(3)]
    row["t1_hit_pct"] = 100.0 * hits[1] / looked if looked else None
    row["hit_pct"] = 100.0 * sum(hits) / looked if looked else None
    row["prefill_tokens_saved"] = sum(hits) * geo["tokens_per_block"]
    row["prefill_trace_tokens_saved"] = sum(hits) * geo["trace_block_tokens"]
    t2 = row.get("tier2_bytes") or 0
    row["tier2_blocks"] = t2 // geo["block_bytes"] if geo["block_bytes"] else None
    row["tier2_trace_gib"] = row["tier2_blocks"] * geo["trace_block_bytes"] / GIB if row["tier2_blocks"] is not None else None
    row["n_requests"] = (row.get("n_ok") or 0) + (row.get("n_errors") or 0)
    return row


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def point_table(rows: Sequence[dict]) -> list[dict]:
    """One row per stack x family x tier point, the mean over its reps."""
    keys = ("family", "stack", "role", "memory_budget_bytes", "tier0_bytes", "tier1_bytes", "tier2_bytes")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        p = dict(zip(keys, key))
        p["n_reps"] = len(members)
        for k in (*METRICS, "n_requests", "prompt_blocks", "tier2_trace_gib"):
            p[k] = _mean(m.get(k) for m in members)
        p["tier2_blocks"] = members[0].get("tier2_blocks")  # the same for every rep of the point
        p["status"] = "ok" if all(m.get("status") == "ok" for m in members) else \
            ",".join(sorted({str(m.get("status")) for m in members}))
        out.append(p)
    return sorted(out, key=lambda p: (p["family"], p["role"], p["memory_budget_bytes"] or 0, p["tier2_bytes"] or 0))


def marked_size(curve: Sequence[tuple[int, float]], within: float = WITHIN) -> int | None:
    """The smallest size whose hit fraction is >= (1 - within) x the hit fraction at the largest size."""
    pts = sorted(curve)
    if not pts:
        return None
    target = (1.0 - within) * pts[-1][1]
    return next(size for size, hit in pts if hit >= target)


def capacity_curve(points: Sequence[dict]) -> tuple[list[dict], dict | None]:
    """B's T2 family with A's value at the same budget beside it, and the marked (smallest within-5 %) row."""
    b = sorted((p for p in points if p["family"] == "t2" and p["role"] == "B" and p["hit_pct"] is not None),
               key=lambda p: p["tier2_bytes"])
    if not b:
        return [], None
    a = next((p for p in points if p["family"] == "t2" and p["role"] == "A"), None)
    mark = marked_size([(p["tier2_bytes"], p["hit_pct"]) for p in b])
    unbounded = b[-1]["hit_pct"]
    curve = []
    for p in b:
        curve.append({**{k: p[k] for k in ("tier2_bytes", "tier2_blocks", "tier2_trace_gib", "hit_pct", "t2_hit_pct",
                                          "ttft_ms_p99")},
                      "a_hit_pct": a["hit_pct"] if a else None, "a_ttft_ms_p99": a["ttft_ms_p99"] if a else None,
                      "within_5pct_of_unbounded": p["hit_pct"] >= (1.0 - WITHIN) * unbounded,
                      "marked": p["tier2_bytes"] == mark})
    return curve, next(c for c in curve if c["marked"])


def window_distinct_blocks(spec: dict) -> int | None:
    """Distinct full trace blocks of the replayed window (what an unbounded T2 must hold), from the trace."""
    p, w = spec["load"]["pattern"], spec["load"]["workload"]
    if p.get("kind") != "trace":
        return None
    from kvharness.loadgen.patterns import trace_rows

    tb = int(w.get("trace_block_tokens") or w.get("block_tokens") or 512)
    seen: set = set()
    for r in trace_rows(p):
        seen.update(r.get("hash_ids", [])[: int(r["input_length"]) // tb])
    return len(seen)


def plot_curve(curve: Sequence[dict], mark: dict | None, path: Path) -> Path:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [c["tier2_bytes"] / GIB for c in curve]
    ax1.plot(x, [c["hit_pct"] for c in curve], marker="o", label="B: all tiers")
    ax1.plot(x, [c["t2_hit_pct"] for c in curve], marker=".", ls=":", label="B: from T2")
    ax2.plot(x, [c["ttft_ms_p99"] for c in curve], marker="o", label="B p99 TTFT")
    if curve and curve[0]["a_hit_pct"] is not None:
        ax1.axhline(curve[0]["a_hit_pct"], color="C3", ls="--", lw=1, label="A (memory-only, same memory)")
    if curve and curve[0]["a_ttft_ms_p99"] is not None:
        ax2.axhline(curve[0]["a_ttft_ms_p99"], color="C3", ls="--", lw=1, label="A p99 TTFT")
    if curve:
        ax1.axhline((1 - WITHIN) * curve[-1]["hit_pct"], color="grey", lw=0.8, ls="-.",
                    label="95 % of unbounded")
    if mark is not None:
        for ax in (ax1, ax2):
            ax.axvline(mark["tier2_bytes"] / GIB, color="C2", lw=1.2,
                       label=f"smallest T2 within 5 %: {mark['tier2_bytes'] / GIB:g} GiB"
                             f" (= {mark['tier2_trace_gib']:,.0f} GiB at 512-token blocks)")
    ratio = (curve[0]["tier2_trace_gib"] * GIB / curve[0]["tier2_bytes"]) if curve and curve[0]["tier2_bytes"] else None
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("B's tier-2 size (GiB of simulator blocks)")
        ax.legend(fontsize=7)
        if ratio:  # the same sizes at the trace's 512-token blocks: what the measured model needs
            top = ax.secondary_xaxis("top", functions=(lambda x, r=ratio: x * r, lambda x, r=ratio: x / r))
            top.set_xlabel("= GiB of the model's KV at 512-token trace blocks", fontsize=8)
    ax1.set_ylim(bottom=0)
    ax1.set_ylabel("prefix-hit fraction of prompt blocks (%)")
    ax2.set_ylabel("p99 TTFT (ms, wall)")
    ax1.set_title("hit fraction vs T2")
    ax2.set_title("p99 TTFT vs T2")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    rows = [h10_row(d) for d in ctx.cell_dirs]
    points = point_table(rows)
    curve, mark = capacity_curve(points)
    specs = [CellFolder(d).spec for d in ctx.cell_dirs]
    distinct = window_distinct_blocks(specs[0]) if specs else None
    largest = max((c["tier2_blocks"] for c in curve), default=None)
    facts = {"mark": mark, "curve": curve, "distinct_blocks": distinct, "largest_t2_blocks": largest,
             "model": specs[0]["model"] if specs else None, "precision": specs[0]["precision"] if specs else None,
             "a": next((p for p in points if p["family"] == "t2" and p["role"] == "A"), None),
             "n_requests": next((p["n_requests"] for p in points), None)}
    return Result(tables={"summary": points, "curve": curve},
                  figures={"capacity": lambda path: plot_curve(curve, mark, path)}, facts=facts)


def verdict(result: Result) -> str:
    f = result.facts
    m = f["mark"]
    if m is None:
        return "No H10 tier-2 point of Stack B finished."
    unb = f["curve"][-1]["hit_pct"]
    a = f["a"]
    a_part = (f"; Stack A (memory-only, same {a['memory_budget_bytes'] / GIB:g} GiB) reaches {a['hit_pct']:.1f} % "
              f"at p99 TTFT {a['ttft_ms_p99']:.0f} ms vs B's {m['ttft_ms_p99']:.0f} ms there") if a and a["hit_pct"] is not None else ""
    return (f"On this production trace window ({f['n_requests']:.0f} requests), the smallest tier 2 within 5 % of the "
            f"unbounded prefix-hit fraction ({m['hit_pct']:.1f} % vs {unb:.1f} %) is {int(m['tier2_blocks']):,} blocks: "
            f"{m['tier2_trace_gib']:,.0f} GiB of {f['model']} {f['precision']} KV at the trace's 512-token blocks "
            f"({m['tier2_bytes'] / GIB:g} GiB on the simulator's scaled blocks){a_part}.")


def gates(result: Result) -> list[Gate]:
    f = result.facts
    d, big = f["distinct_blocks"], f["largest_t2_blocks"]
    return [Gate("largest T2 holds every distinct block of the window (unbounded)",
                 (big >= d) if d is not None and big is not None else None, big, f">= {d} blocks" if d else None)]


register(Hypothesis(
    id="H10",
    question="How much tier 2 does production traffic need? Hit fraction and tail TTFT vs T2 size on a "
             "Mooncake trace window, A vs B at equal memory",
    analyze=analyze,
    tables=(Table("summary", COLUMNS, "per stack x point (T2 family, memory-budget family): hit fraction by tier, "
                                      "prefill tokens saved, TTFT p50/p99, goodput",
                  key_columns=("family", "stack", "memory_budget_bytes", "tier2_bytes", "hit_pct", "t2_hit_pct",
                               "ttft_ms_p50", "ttft_ms_p99", "goodput_req_s")),
            Table("curve", CURVE_COLUMNS, "the capacity curve: B's hit fraction and p99 TTFT per T2 size, A beside it, "
                                             "the smallest T2 within 5 % of unbounded marked")),
    figures=(Figure("capacity", "Left: Stack B's prefix-hit fraction (all tiers, and from T2) vs its tier-2 size "
                                "(log2), with Stack A at the same memory dashed and 95 % of the unbounded hit fraction "
                                "dash-dotted; the green line marks the smallest T2 within 5 %. Right: p99 TTFT vs T2."),),
    verdict=verdict,
    gates=gates,
    how_to_read="hit_pct = prompt blocks found in any tier (T0, then the chain continued in T1/T2) over prompt blocks "
                "looked up, from the simulator's per-tier counts; prefill_trace_tokens_saved counts them in trace tokens "
                "(512 per block). tier2_trace_gib = T2 blocks x 512 tokens x KV bytes per token: the size a deployment "
                "of the measured model needs. Unbounded = the largest swept T2 (the gate checks it holds the window).",
))
