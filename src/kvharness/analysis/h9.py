"""H9, session rehydration: build chat sessions (every turn resends the history), push them out of
the device tier (eviction pressure sized in bytes) or leave them idle, then resume them.

Per cell: the next-turn TTFT of the first resume turn of every session; the tier that served the
resumes, from the stack's own counters in the resume window (``dynkv.jsonl``: T0 prefix hits, T1/T2
onboarded blocks); tier read bytes; and the rehydration cost = resume TTFT - warm resume TTFT (same
stack and context, resumed at once). Across contexts, the cost per tier is fitted against the bytes
loaded (ms per GiB) and compared with what the simulator charges for them. The simulator charges an
onboarding a *modelled* link transfer: bytes / 14 GB/s for G1<->G2 (T1) and bytes / 7 GB/s for G2<->G3
(T2; a T2 block is not charged the G1<->G2 hop), divided by the cell's speedup (configs/models.yaml
``tier_bandwidth``; sim/engine.py ``_load``), overlapped with the *real* read of its tier-2 slots
(measured, ``kvsim_tier2_read_io_seconds``): the blocks are in when both are done. So the fitted slope
should be 1000 x 2^30 / bandwidth / speedup ms per GiB, 76.7 (T1) and 153.4 (T2) at speedup 1, unless
the real reads were slower per GiB than that; then the disk decides and the model is the real read
time per GiB.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Sequence

from kvharness.analysis import gates as G
from kvharness.analysis.plotting import pyplot, save_figure
from kvharness import clock, stats
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.analysis.tiercounts import tier_hits
from kvharness.cellfolder import CellFolder
from kvharness.cellfiles import COLLECTOR_SUMMARY_JSON, DYNKV_JSONL, SCRAPES_JSONL_GZ

GIB = 1024**3
FIT_TOLERANCE = 0.25        # acceptance: fitted cost per GiB within 25 % of the model
SERVED_SHARE = 0.5          # a tier "served" the resumes when it supplied at least half of their prompt blocks
CONDITION_ORDER = ("warm", "idle", "T1", "T2", "cold")

H9_COLUMNS = [
    "stack", "role", "tiered", "condition", "context_tokens", "pressure_bytes", "idle_gap_s", "speedup",
    "n_resumes", "resume_prompt_tokens", "resume_cached_tokens", "resume_ttft_ms_mean", "resume_ttft_ms_min",
    "resume_ttft_ms_max", "warm_ttft_ms", "cold_ttft_ms", "vs_warm_ms", "served_by",
    "t0_hit_blocks", "t1_onboard_blocks", "t2_onboard_blocks", "prompt_blocks", "tier1_read_bytes",
    "tier2_read_bytes", "bytes_loaded_per_resume", "tier2_real_io_ms", "stack_fetch_ms", "rehydration_ms_modelled",
    "status",
]
FIT_COLUMNS = [
    "stack", "tier", "n_points", "gib_min", "gib_max", "fitted_ms_per_gib", "intercept_ms", "link_ms_per_gib",
    "real_io_ms_per_gib", "model_ms_per_gib", "fitted_vs_model_pct", "within_tolerance", "speedup",
    "fitted_ms_per_gib_modelled", "bandwidth_bytes_s", "stack_fetch_ms_per_gib", "stack_fetch_vs_model_pct",
]


# --------------------------------------------------------------------------- per cell

def _scrape_counter(cell: Path, name: str, start_ns: int, end_ns: int) -> float | None:
    """Delta of a raw counter of the stack's scrapes (``scrapes.jsonl.gz``) over [start, end], summed over
    its label sets: the last scrape at or before start against the first at or after end. None when the
    counter is not exported."""
    from kvharness.telemetry.prom import parse_body

    path = cell / SCRAPES_JSONL_GZ
    if not path.exists():
        return None
    before = after = None
    with gzip.open(path, "rt") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            body = rec.get("body")
            if not body or name not in body:
                continue
            values = [v for (n, _l), v in parse_body(body).counters.items() if n == name]
            if not values:
                continue
            value = sum(values)
            if rec["mono_ns"] <= start_ns:
                before = value
            elif rec["mono_ns"] >= end_ns:
                after = value
                break
    if after is None:
        return None
    return after - (before or 0.0)


def condition_of(spec: dict) -> str:
    w = spec["load"]["workload"]
    if w.get("cold_resume"):
        return "cold"
    if w.get("pressure"):
        return "pressure"
    return "idle" if float(w.get("idle_s") or 0) >= 1.0 else "warm"


def cell_resumes(cell_dir: str | Path) -> dict:
    """One row of a cell: its first resume turn per session, and the tiers that served them."""
    from kvharness.telemetry.read import TickIndex

    cell = Path(cell_dir)
    folder = CellFolder(cell)
    spec, summary = folder.spec, folder.summary
    records, _ = folder.records()
    w = spec["load"]["workload"]
    first_resume_turn = int(w["turns"])
    resumes = [r for r in records if r.get("phase") == "resume" and r.get("turn") == first_resume_turn and stats.is_ok(r)]
    tpb = int(spec["engine"]["tokens_per_block"])
    kv = (spec.get("working_set") or {}).get("kv_bytes_per_token")
    block_bytes = kv * tpb if kv else None
    speedup = clock.speedup_of(spec)
    row = {
        "cell": spec["cell"], "stack": spec["stack"]["name"], "role": spec["role"],
        "tiered": bool(spec["stack"].get("tiered")), "condition": condition_of(spec),
        "context_tokens": int(w["first_turn_tokens"]), "pressure_bytes": int(spec["load"].get("pressure_bytes") or 0),
        "idle_gap_s": float(w.get("idle_s") or 0), "speedup": speedup, "rep": spec.get("rep", 0),
        "n_resumes": len(resumes), "status": summary.get("status"), "block_bytes": block_bytes,
        "bandwidths": _bandwidths(spec),
    }
    ttfts = [r["lat_ttft_ms"] for r in resumes]
    row["ttfts"] = ttfts
    row["resume_ttft_ms_mean"] = stats.mean(ttfts)
    row["resume_ttft_ms_min"] = min(ttfts) if ttfts else None
    row["resume_ttft_ms_max"] = max(ttfts) if ttfts else None
    row["resume_prompt_tokens"] = stats.mean([r["prompt_tokens"] for r in resumes if r.get("prompt_tokens") is not None])
    row["resume_cached_tokens"] = stats.mean([r["cached_tokens"] for r in resumes if r.get("cached_tokens") is not None])
    for key in ("t0_hit_blocks", "t1_onboard_blocks", "t2_onboard_blocks", "prompt_blocks", "tier1_read_bytes",
                "tier2_read_bytes", "bytes_loaded_per_resume", "tier2_real_io_ms", "stack_fetch_ms"):
        row[key] = None
    row["served_by"] = None
    if not resumes:
        return row
    start = min(r["sched_ns"] for r in resumes)
    end = max(r["first_token_ns"] for r in resumes)
    row["prompt_blocks"] = sum(math.ceil((r.get("prompt_tokens") or 0) / tpb) for r in resumes)
    if (cell / DYNKV_JSONL).exists() and (cell / COLLECTOR_SUMMARY_JSON).exists():
        ticks = TickIndex.from_cell(cell, DYNKV_JSONL).covering(start, end)
        t0 = t1 = t2 = 0.0
        for t in ticks:
            h0, h1, h2 = tier_hits(t)
            t0, t1, t2 = t0 + h0, t1 + h1, t2 + h2
        # bytes read back into T0 = onboarded blocks x block bytes (a tier's bytes_out also counts its
        # offloads to the tier below, which the resume's allocations cascade in the same window)
        b1, b2 = (t1 * block_bytes, t2 * block_bytes) if block_bytes else (None, None)
        row.update(t0_hit_blocks=int(t0), t1_onboard_blocks=int(t1), t2_onboard_blocks=int(t2),
                   tier1_read_bytes=None if b1 is None else int(b1), tier2_read_bytes=None if b2 is None else int(b2))
        row["bytes_loaded_per_resume"] = None if b1 is None else (b1 + b2) / len(resumes)
        share = {"T0": t0, "T1": t1, "T2": t2}
        deepest = max(("T2", "T1", "T0"), key=lambda k: (share[k] >= SERVED_SHARE * row["prompt_blocks"], share[k]))
        row["served_by"] = deepest if share[deepest] >= SERVED_SHARE * row["prompt_blocks"] else "recompute"
        io_s = _scrape_counter(cell, "kvsim_tier2_read_io_seconds_sum", start, end)
        row["tier2_real_io_ms"] = None if io_s is None else 1000.0 * io_s
        fetch_s = _scrape_counter(cell, "kvsim_tier_fetch_seconds_sum", start, end)
        row["stack_fetch_ms"] = None if fetch_s is None else 1000.0 * fetch_s / len(resumes)
    return row


def _bandwidths(spec: dict) -> dict:
    """The simulator's configured link bandwidths (bytes/s) for this cell's model profile."""
    if spec["stack"]["kind"] != "sim":
        return {}
    from kvharness.sim.profiles import build_timing_model

    try:
        tm = build_timing_model(spec["hardware"], spec["model"], spec["precision"])
    except (KeyError, ValueError, TypeError, OSError):
        return {}
    return {"T1": float(tm.bw_g1_g2), "T2": float(tm.bw_g2_g3)}


# --------------------------------------------------------------------------- tables

def h9_table(cells: Sequence[dict]) -> list[dict]:
    """One row per cell, with its warm and cold references: the mean resume TTFT over every warm (cold)
    cell of the same stack, context and speedup, all repetitions pooled."""
    def key(c):
        return (c["stack"], c["context_tokens"], c["speedup"])

    def pooled(condition):
        ref: dict = {}
        for c in cells:
            if c["condition"] == condition:
                ref.setdefault(key(c), []).extend(c["ttfts"])
        return {k: stats.mean(v) for k, v in ref.items() if v}

    warm, cold = pooled("warm"), pooled("cold")
    out = []
    for c in cells:
        row = dict(c)
        if row["condition"] == "pressure":
            row["condition"] = {"T1": "T1", "T2": "T2"}.get(c["served_by"], f"pressure→{c['served_by']}")
        row["warm_ttft_ms"] = warm.get(key(c))
        row["cold_ttft_ms"] = cold.get(key(c))
        m = row["resume_ttft_ms_mean"]
        row["vs_warm_ms"] = None if m is None or row["warm_ttft_ms"] is None else m - row["warm_ttft_ms"]
        row["rehydration_ms_modelled"] = None if row["vs_warm_ms"] is None else row["vs_warm_ms"] * c["speedup"]
        out.append(row)
    order = {name: i for i, name in enumerate(CONDITION_ORDER)}
    out.sort(key=lambda r: (r["role"], r["stack"], r["context_tokens"], order.get(r["condition"], 9), r["rep"]))
    return out


def _linfit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float | None, float | None]:
    n = len(xs)
    if n < 2:
        return None, None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None, None
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return slope, my - slope * mx


def fit_table(rows: Sequence[dict]) -> list[dict]:
    """Rehydration cost vs bytes loaded, per stack and serving tier: every resume of a T1/T2 cell is a
    point (GiB loaded, its TTFT - the warm mean); least squares with an intercept (the fixed extra work
    of an onboarding does not scale with bytes)."""
    out = []
    stacks = sorted({r["stack"] for r in rows})
    for stack in stacks:
        for tier in ("T1", "T2"):
            mine = [r for r in rows if r["stack"] == stack and r["condition"] == tier
                    and r.get("warm_ttft_ms") is not None and r.get("bytes_loaded_per_resume")]
            xs, ys, io_ms, gib_total = [], [], 0.0, 0.0
            for r in mine:
                gib = r["bytes_loaded_per_resume"] / GIB
                for t in r["ttfts"]:
                    xs.append(gib)
                    ys.append(t - r["warm_ttft_ms"])
                gib_total += gib * r["n_resumes"]
                io_ms += r.get("tier2_real_io_ms") or 0.0
            if not mine:
                continue
            slope, icpt = _linfit(xs, ys)
            # the same fit on the stack's own onboarding timer (kvsim_tier_fetch_seconds, per resume): free
            # of HTTP and scheduling noise, so it checks the bandwidth model even on a busy host
            fx = [r["bytes_loaded_per_resume"] / GIB for r in mine if r.get("stack_fetch_ms") is not None]
            fy = [r["stack_fetch_ms"] for r in mine if r.get("stack_fetch_ms") is not None]
            fslope, _ = _linfit(fx, fy)
            speedup = mine[0]["speedup"]
            bw = (mine[0].get("bandwidths") or {}).get(tier)
            link = 1000.0 * GIB / bw / speedup if bw else None
            real_io = io_ms / gib_total if tier == "T2" and gib_total else 0.0
            # the real read overlaps the modelled transfer: it decides only where it was the slower one
            model = max(link, real_io) if link is not None and tier == "T2" else link
            pct = None if slope is None or not model else 100.0 * (slope - model) / model
            out.append({
                "stack": stack, "tier": tier, "n_points": len(xs), "gib_min": min(xs) if xs else None,
                "gib_max": max(xs) if xs else None, "fitted_ms_per_gib": slope, "intercept_ms": icpt,
                "link_ms_per_gib": link, "real_io_ms_per_gib": real_io if tier == "T2" else 0.0,
                "model_ms_per_gib": model, "fitted_vs_model_pct": pct,
                "within_tolerance": None if pct is None else abs(pct) <= 100 * FIT_TOLERANCE,
                "speedup": speedup, "fitted_ms_per_gib_modelled": None if slope is None else slope * speedup,
                "bandwidth_bytes_s": bw, "_points": list(zip(xs, ys)),
                "stack_fetch_ms_per_gib": fslope,
                "stack_fetch_vs_model_pct": None if fslope is None or not model else 100.0 * (fslope - model) / model,
            })
    return out


def orderings(rows: Sequence[dict]) -> list[dict]:
    """Per tiered stack and context: is warm < T1 < T2 < cold (mean resume TTFT)?"""
    out = []
    for stack in sorted({r["stack"] for r in rows if r["tiered"]}):
        for ctx in sorted({r["context_tokens"] for r in rows if r["stack"] == stack}):
            by = {}
            for r in rows:
                if r["stack"] == stack and r["context_tokens"] == ctx and r["resume_ttft_ms_mean"] is not None:
                    by.setdefault(r["condition"], []).append(r["resume_ttft_ms_mean"])
            chain = [(c, stats.mean(by[c])) for c in ("warm", "T1", "T2", "cold") if c in by]
            ok = len(chain) == 4 and all(a[1] < b[1] for a, b in zip(chain, chain[1:]))
            gaps = [b[1] - a[1] for a, b in zip(chain, chain[1:])]
            out.append({"stack": stack, "context_tokens": ctx, "chain": chain, "ordered": ok,
                        "min_gap_ms": min(gaps) if gaps else None})
    return out


# --------------------------------------------------------------------------- figure

def plot_h9(rows: Sequence[dict], fits: Sequence[dict], path) -> Path:
    plt = pyplot()
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="talk", font_scale=0.7)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = dict(zip(CONDITION_ORDER, sns.color_palette("deep", len(CONDITION_ORDER))))
    markers = {}
    for stack in sorted({r["stack"] for r in rows}):
        markers[stack] = "o" if any(r["tiered"] for r in rows if r["stack"] == stack) else "s"
    for (stack, cond) in sorted({(r["stack"], r["condition"]) for r in rows}):
        pts = sorted((r["resume_prompt_tokens"], r["resume_ttft_ms_mean"]) for r in rows
                     if r["stack"] == stack and r["condition"] == cond and r["resume_ttft_ms_mean"] is not None)
        if not pts:
            continue
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[stack],
                 linestyle="-" if markers[stack] == "o" else "--", color=colors.get(cond, "grey"),
                 label=f"{stack} {cond}")
    ax1.set_xlabel("resume prompt (tokens)")
    ax1.set_ylabel("resume TTFT (ms)")
    ax1.set_yscale("log")
    ax1.set_title("next-turn TTFT on resume")
    ax1.legend(fontsize=7, ncol=2)
    for f in fits:
        pts = f["_points"]
        c = colors[f["tier"]]
        ax2.scatter([p[0] for p in pts], [p[1] for p in pts], color=c, s=18, label=f"{f['stack']} {f['tier']} resumes")
        if f["fitted_ms_per_gib"] is not None and pts:
            xs = [0, max(p[0] for p in pts) * 1.05]
            ax2.plot(xs, [f["intercept_ms"] + f["fitted_ms_per_gib"] * x for x in xs], color=c,
                     label=f"fit {f['fitted_ms_per_gib']:.0f} ms/GiB")
        if f["model_ms_per_gib"] is not None and pts:
            xs = [0, max(p[0] for p in pts) * 1.05]
            ax2.plot(xs, [(f["intercept_ms"] or 0) + f["model_ms_per_gib"] * x for x in xs], color=c, linestyle=":",
                     label=f"model {f['model_ms_per_gib']:.0f} ms/GiB")
    ax2.set_xlabel("KV loaded per resume (GiB)")
    ax2.set_ylabel("resume − warm TTFT (ms)")
    ax2.set_title("rehydration cost vs bytes loaded")
    ax2.legend(fontsize=7)
    fig.suptitle("H9 session rehydration: warm vs tier-1 vs tier-2 vs cold resume")
    return save_figure(fig, path, rect=(0, 0, 1, 0.94))


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    cells = [cell_resumes(d) for d in ctx.cell_dirs]
    rows = h9_table(cells)
    fits = fit_table(rows)
    order = orderings(rows)
    for r in rows:
        if not r["n_resumes"]:
            ctx.notes.append(f"{r['cell']}: no successful resume turn (nothing to report)")
    table = [{k: r.get(k) for k in H9_COLUMNS} | {"cell": r["cell"], "rep": r["rep"]} for r in rows]
    fit_rows = [{k: v for k, v in f.items() if not k.startswith("_")} for f in fits]
    return Result(tables={"summary": table, "fit": fit_rows},
                  figures={"rehydration": lambda path: plot_h9(rows, fits, path)},
                  facts={"rows": rows, "fits": fits, "orderings": order})


def _order_gate(o: dict) -> str:
    return f"{o['stack']} ctx {o['context_tokens']}: warm < T1 < T2 < cold"


def _fit_gate(f: dict) -> str:
    return f"{f['stack']} {f['tier']} fitted cost within 25 % of the model"


def verdict(result: Result) -> str:
    rows, fits, order = result.facts["rows"], result.facts["fits"], result.facts["orderings"]
    if not rows:
        return "H9 has no finished cell."
    own = gates(result)
    parts = []
    for o in order:
        if o is not order[-1] and any(x["stack"] == o["stack"] for x in order[order.index(o) + 1:]):
            continue  # the largest context of each stack speaks for it
        means = ", ".join(f"{c} {v:.0f} ms" for c, v in o["chain"])
        parts.append(f"{o['stack']} resumes at {o['context_tokens']} tokens: {means}; "
                     + G.gated_sentence("in the order warm < T1 < T2 < cold", own, [_order_gate(o)]))
    for f in fits:
        if f["fitted_ms_per_gib"] is None:
            continue
        claim = ("no model to compare with" if f["model_ms_per_gib"] is None else
                 G.gated_sentence(f"within 25 % of the {f['model_ms_per_gib']:.0f} modelled ({f['fitted_vs_model_pct']:+.0f} %)",
                                  own, [_fit_gate(f)]))
        parts.append(f"{f['stack']}'s rehydration from {f['tier']} costs {f['fitted_ms_per_gib']:.0f} ms/GiB, {claim}")
    for stack in sorted({r["stack"] for r in rows if not r["tiered"]}):
        press = [r for r in rows if r["stack"] == stack and r["pressure_bytes"] > 0 and r["resume_ttft_ms_mean"]]
        if press:
            recompute = sum(1 for r in press if r["served_by"] == "recompute")
            parts.append(f"{stack} recomputes {recompute} of {len(press)} pressured resumes")
    return "; ".join(parts) + "."


def gates(result: Result) -> list[Gate]:
    out = []
    for o in result.facts["orderings"]:
        missing = [c for c in ("warm", "T1", "T2", "cold") if c not in {name for name, _ in o["chain"]}]
        out.append(Gate(_order_gate(o), None if missing else bool(o["ordered"]), o["min_gap_ms"],
                        "> 0 ms between neighbours", f"no {', '.join(missing)} resume measured" if missing else ""))
    for f in result.facts["fits"]:
        if f["fitted_vs_model_pct"] is not None:
            out.append(Gate(_fit_gate(f), bool(f["within_tolerance"]), round(f["fitted_vs_model_pct"], 1), "|Δ| <= 25 %"))
    return out


register(Hypothesis(
    id="H9",
    question="What does resuming an evicted chat session cost, per tier it comes back from?",
    analyze=analyze,
    tables=(Table("summary", H9_COLUMNS, "one row per cell: resume TTFT, serving tier, bytes loaded, cost vs warm"),
            Table("fit", FIT_COLUMNS, "rehydration cost vs bytes loaded per tier, fitted, against the simulator's model")),
    figures=(Figure("rehydration", "Left: resume TTFT (ms, log) vs resume prompt (tokens) per condition and stack. "
                                   "Right: resume TTFT − warm TTFT (ms) vs KV loaded per resume (GiB), with the "
                                   "fitted and the modelled cost per GiB."),),
    verdict=verdict,
    verdict_gates=(),  # each claim reads its own gates inline (gates.gated_sentence)
    gates=gates,
    how_to_read="condition: warm = resumed at once; idle = after an idle gap only; T1/T2 = after eviction pressure, "
                "named by the tier the stack's counters show serving the resume window; cold = same lengths, new "
                "words. vs_warm_ms is the rehydration cost; the fit table compares its slope per GiB with the simulator's "
                "link bandwidth divided by its speedup (or the measured real tier-2 read time per GiB, where that "
                "was slower: the two overlap).",
))
