"""H8, the hero comparison: Stack A (memory-only) vs Stack B (tiered KV) at equal memory budget and
at equal load, on three workloads.

* ``noreuse``: SPEC's mixed context (60 % 200-500, 30 % 800-1500, 10 % 2500-3200 tokens), bursty, every
  prompt unique: what tiering costs when nothing is reused (B should be within +-5 % of A).
* ``chat``: the same mix as the first turns of chat sessions that come back after all of them were
  built, their histories sized (``working_set`` in cell.json) to exceed T0+T1 and fit T0+T1+T2: where
  tiering should pay.
* ``trace``: a short window of production traffic (the Mooncake conversation trace, ``data/traces/``),
  replayed with at most ``concurrency`` requests in flight: the reuse real traffic has (H10 sizes T2 on
  a long window).

Equal load: both stacks run at ``uwork_min`` and ``uwork_max`` (the lower and the higher of the two
U_work values H0 measured), so every A-vs-B delta compares the same concurrency. A short concurrency
sweep per stack gives the highest load at which each still meets the SLO (goodput >= 95 % of requests).
A p99 is reported only for cells with enough successful requests (``evidence.min_samples``), else marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness import stats
from kvharness.analysis import evidence
from kvharness.analysis.records import read_json
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.units import format_bytes

SLO_GOOD_FRACTION = 0.95     # a load "meets the SLO" when >= 95 % of its requests meet every SLO
TRANSPARENT_PCT = 5.0        # no-reuse: B within +-5 % of A
EQUAL_RULES = ("uwork_min", "uwork_max")
METRICS = ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "e2e_ms_p99", "goodput_req_s", "good_fraction", "req_s")

H8_COLUMNS = [
    "workload", "load_rule", "stack", "role", "tiered", "concurrency", "same_concurrency", "u_work", "n_reps",
    "n_ok", "n_errors", "enough_samples_p99", "memory_budget_bytes", "tier0_bytes", "tier1_bytes", "tier2_bytes",
    "working_set_bytes", "fits_in", *[f"{m}" for m in METRICS], "ttft_ms_p99_spread",
    "t0_hit_pct", "t1_hit_pct", "t2_hit_pct", "miss_pct",
    "vs_A_ttft_ms_p50_pct", "vs_A_ttft_ms_p99_pct", "vs_A_tpot_ms_p50_pct", "vs_A_goodput_req_s_pct",
    "b_p99_differs", "differs_method", "b_p99_ci_apart", "status", "engine_diff_vs_A", "code_fingerprint",
]
CAPACITY_COLUMNS = [
    "workload", "stack", "role", "concurrency", "n_cells", "n_ok", "ttft_ms_p99", "good_fraction",
    "meets_slo", "enough_samples_p99", "max_slo_concurrency", "censored", "slo_ttft_ms",
]


# --------------------------------------------------------------------------- per cell

#: engine settings that may differ between A and B: the KV connector and the device pool size
PARITY_EXEMPT = ("kv_connector_config", "kv_cache_config.max_tokens", "tier0_tokens")


def _flat(d, prefix=""):
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def engine_diff(a: dict | None, b: dict | None) -> str | None:
    """Engine settings in which B differs from A beyond the connector and the pool ('' = identical)."""
    if not a or not b:
        return None
    fa, fb = _flat(a), _flat(b)
    keys = sorted(k for k in set(fa) | set(fb)
                  if fa.get(k) != fb.get(k) and not any(k == e or k.startswith(e + ".") for e in PARITY_EXEMPT))
    return ";".join(f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys)


def cell_extras(cell_dir: str | Path) -> dict:
    """What the flat row lacks: the concurrency rule, the U_work values behind it, the tier hit split
    over the whole cell (blocks found in T0, onboarded from T1 / T2, and missed), the SLO."""
    from kvharness.analysis.tiercounts import tier_hits
    from kvharness.telemetry.read import read_jsonl

    cell = Path(cell_dir)
    spec = read_json(cell / "cell.json")
    source = spec["load"].get("concurrency_source") or {}
    out = {"load_rule": source.get("rule", "uwork") if source else f"c{spec['load']['concurrency']}",
           "u_work": source.get("value") if source.get("rule", "uwork") == "uwork" else None,
           "slo": spec["load"].get("slo") or {}}
    hits = [0.0, 0.0, 0.0]
    misses = 0.0
    if (cell / "dynkv.jsonl").exists():
        for tick in read_jsonl(cell / "dynkv.jsonl"):
            for i, v in enumerate(tier_hits(tick)):
                hits[i] += v
            raw = {k: v for src in (tick.get("raw") or {}).values() for k, v in src.items()}
            m = (tick.get("tier0") or {}).get("misses")
            if m is None:
                m = raw.get("kvsim_tier_miss_blocks{tier=0}")
            if m is not None:
                misses += float(m)
    # a block onboarded from T1/T2 is a T0 miss: the blocks no tier had are T0 misses - T1 - T2 onboards
    total = hits[0] + misses
    true_miss = max(misses - hits[1] - hits[2], 0.0)
    for i, name in enumerate(("t0", "t1", "t2")):
        out[f"{name}_hit_pct"] = 100.0 * hits[i] / total if total else None
    out["miss_pct"] = 100.0 * true_miss / total if total else None
    return out


# --------------------------------------------------------------------------- tables

def _workload_of(row: dict) -> str:
    return str(row.get("variant") or row.get("workload"))


def _stack_rows(rows: Sequence[dict]) -> dict:
    return {r["stack"]: r for r in rows}


def hero_table(rows: Sequence[dict]) -> list[dict]:
    """Equal-load comparison: per workload and load rule (uwork_min / uwork_max; plain ``uwork`` when the
    config runs each stack at its own U_work), one row per stack over its repetitions, B-vs-A deltas."""
    rules_present = {r["load_rule"] for r in rows}
    rules = [x for x in EQUAL_RULES if x in rules_present] or (["uwork"] if "uwork" in rules_present else [])
    out = []
    for wl in sorted({_workload_of(r) for r in rows}):
        for rule in rules:
            mine = [r for r in rows if _workload_of(r) == wl and r["load_rule"] == rule]
            by_stack: dict[str, list[dict]] = {}
            for r in mine:
                by_stack.setdefault(r["stack"], []).append(r)
            concs = {r["concurrency"] for r in mine}
            group = []
            for stack, cells in sorted(by_stack.items(), key=lambda kv: (kv[1][0]["role"], kv[0])):
                first = cells[0]
                row = {k: first.get(k) for k in ("stack", "role", "tiered", "memory_budget_bytes", "tier0_bytes",
                                                  "tier1_bytes", "tier2_bytes", "working_set_bytes", "fits_in")}
                row.update(workload=wl, load_rule=rule, n_reps=len(cells),
                           concurrency=first["concurrency"] if len({c["concurrency"] for c in cells}) == 1 else None,
                           same_concurrency=len(concs) == 1, u_work=first.get("u_work") or first["concurrency"],
                           n_ok=sum(c.get("n_ok") or 0 for c in cells), n_errors=sum(c.get("n_errors") or 0 for c in cells),
                           enough_samples_p99=all(evidence.enough_samples(c.get("n_ok"), 99) for c in cells),
                           status=",".join(sorted({str(c.get("status")) for c in cells})))
                for m in METRICS:
                    row[m] = evidence.mean_ci(c.get(m) for c in cells)["mean"]
                p99s = [c.get("ttft_ms_p99") for c in cells if c.get("ttft_ms_p99") is not None]
                row["ttft_ms_p99_spread"] = (max(p99s) - min(p99s)) if len(p99s) >= 2 else None
                row["_p99s"] = p99s
                for k in ("t0_hit_pct", "t1_hit_pct", "t2_hit_pct", "miss_pct"):
                    row[k] = evidence.mean_ci(c.get(k) for c in cells)["mean"]
                group.append(row)
            ref = next((g for g in group if g["role"] == "A"), None)
            for g in group:
                for m in ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "goodput_req_s"):
                    g[f"vs_A_{m}_pct"] = None if ref is None or g is ref else stats.pct_delta(g.get(m), ref.get(m))
                if ref is not None and g is not ref:
                    spread = max([x for x in (g["ttft_ms_p99_spread"], ref["ttft_ms_p99_spread"]) if x is not None],
                                 default=None)
                    # the acceptance's rule: |B - A| (means over reps) beyond the larger of the two cells'
                    # repetition spreads (max - min); the 95 % t intervals are kept beside it (with 2 reps
                    # they are 12.7 sd wide, so they rarely separate)
                    d = evidence.differs([ref["ttft_ms_p99"]], [g["ttft_ms_p99"]], spread)
                    ci = evidence.differs(ref["_p99s"], g["_p99s"])
                    g["b_p99_differs"], g["differs_method"] = d["differs"], d["method"]
                    g["b_p99_ci_apart"] = ci["differs"]
                else:
                    g["b_p99_differs"] = g["differs_method"] = g["b_p99_ci_apart"] = None
            out.extend(group)
    return out


def capacity_table(rows: Sequence[dict]) -> list[dict]:
    """Per workload, stack and measured concurrency: does the load meet the SLO (>= 95 % of requests good)?
    ``max_slo_concurrency`` = the highest measured concurrency that does (``censored`` when it is the
    highest measured: the real limit is above the sweep)."""
    out = []
    for wl in sorted({_workload_of(r) for r in rows}):
        for stack in sorted({r["stack"] for r in rows if _workload_of(r) == wl}):
            mine = [r for r in rows if _workload_of(r) == wl and r["stack"] == stack]
            by_c: dict[int, list[dict]] = {}
            for r in mine:
                by_c.setdefault(int(r["concurrency"]), []).append(r)
            points = []
            for c, cells in sorted(by_c.items()):
                gf = evidence.mean_ci(x.get("good_fraction") for x in cells)["mean"]
                points.append({
                    "workload": wl, "stack": stack, "role": cells[0]["role"], "concurrency": c, "n_cells": len(cells),
                    "n_ok": sum(x.get("n_ok") or 0 for x in cells),
                    "ttft_ms_p99": evidence.mean_ci(x.get("ttft_ms_p99") for x in cells)["mean"],
                    "good_fraction": gf, "meets_slo": gf is not None and gf >= SLO_GOOD_FRACTION,
                    "enough_samples_p99": all(evidence.enough_samples(x.get("n_ok"), 99) for x in cells),
                    "slo_ttft_ms": (cells[0].get("slo") or {}).get("ttft_ms"),
                })
            meeting = [p["concurrency"] for p in points if p["meets_slo"]]
            best = max(meeting) if meeting else None
            for p in points:
                p["max_slo_concurrency"] = best
                p["censored"] = best is not None and best == points[-1]["concurrency"]
            out.extend(points)
    return out


# --------------------------------------------------------------------------- verdict

def _capacity(cap: Sequence[dict], wl: str, role: str) -> tuple[int | None, bool]:
    p = next((x for x in cap if x["workload"] == wl and x["role"] == role), None)
    return (p["max_slo_concurrency"], p["censored"]) if p else (None, False)


def _sweep_deltas(cap: Sequence[dict], wl: str) -> list[tuple[int, float]]:
    """(concurrency, B's p99 TTFT vs A's in %) at every swept load both stacks ran."""
    a = {p["concurrency"]: p["ttft_ms_p99"] for p in cap if p["workload"] == wl and p["role"] == "A"}
    b = {p["concurrency"]: p["ttft_ms_p99"] for p in cap if p["workload"] == wl and p["role"] == "B"}
    return [(c, stats.pct_delta(b[c], a[c])) for c in sorted(set(a) & set(b)) if a[c] and b[c] is not None]


def workload_sentence(wl: str, hero: Sequence[dict], cap: Sequence[dict]) -> str:
    mine = [r for r in hero if r["workload"] == wl]
    bs = [r for r in mine if r["role"] != "A" and r.get("vs_A_ttft_ms_p99_pct") is not None]
    if not bs:
        return f"{wl}: no A-vs-B pair at equal load"
    parts = []
    for r in bs:
        d = r["vs_A_ttft_ms_p99_pct"]
        load = f"c={r['concurrency']} ({r['load_rule']})" if r["same_concurrency"] else \
            "different concurrencies (not an equal-load comparison)"
        beyond = {True: "beyond", False: "within", None: "without"}[r["b_p99_differs"]]
        parts.append(f"p99 TTFT {d:+.1f} % at {load}, {beyond} the repetition spread")
    deltas = [r["vs_A_ttft_ms_p99_pct"] for r in bs]
    worst = max(abs(d) for d in deltas)
    if all(d < 0 for d in deltas) and all(r["b_p99_differs"] for r in bs):
        lead = "B beats A"
    elif all(d > 0 for d in deltas) and any(r["b_p99_differs"] for r in bs):
        lead = f"B is slower than A (p99 up to {max(deltas):+.1f} %)"
    elif worst <= TRANSPARENT_PCT:
        lead = f"B is within {worst:.1f} % of A"
    elif all(r["b_p99_differs"] is False for r in bs):
        lead = (f"B is not within ±{TRANSPARENT_PCT:g} % of A (up to {worst:.1f} % off) but within the repetition "
                f"spread: ±{TRANSPARENT_PCT:g} % is not resolvable at this noise")
    else:
        lead = f"B is not within ±{TRANSPARENT_PCT:g} % of A (up to {worst:.1f} % off)"
    ca, cens_a = _capacity(cap, wl, "A")
    cb, cens_b = _capacity(cap, wl, "B")
    slo = next((x["slo_ttft_ms"] for x in cap if x["workload"] == wl), None)

    def fmt(c, cens):
        return "none" if c is None else f"{'≥ ' if cens else ''}{c}"
    capacity = f"highest load meeting the SLO (TTFT ≤ {slo} ms for ≥ 95 % of requests): A {fmt(ca, cens_a)}, B {fmt(cb, cens_b)}"
    if ca and cb and cb != ca:
        capacity += f" ({cb / ca:.2g}× for B)" if cb > ca else f" ({ca / cb:.2g}× for A)"
    sweep = _sweep_deltas(cap, wl)
    if sweep:
        capacity += "; B's p99 vs A's across the loads: " + ", ".join(f"c{c} {d:+.0f} %" for c, d in sweep)
    b_row = next((r for r in mine if r["role"] != "A"), mine[0])
    ws = b_row.get("working_set_bytes")
    head = wl if not ws else f"{wl} (working set {format_bytes(ws)}, fits B's {b_row.get('fits_in')})"
    return f"{head}: {lead}: " + "; ".join(parts) + f"; {capacity}"


def verdict(result: Result) -> str:
    hero, cap = result.facts["hero"], result.facts["capacity"]
    if not hero:
        return "H8 needs finished cells of Stack A and Stack B at the same load."
    return "At equal memory — " + "; ".join(workload_sentence(wl, hero, cap) for wl in result.facts["workloads"]) + "."


def gates(result: Result) -> list[Gate]:
    out = []
    for r in result.facts["hero"]:
        if r["role"] == "A":
            continue
        out.append(Gate(f"{r['workload']} {r['load_rule']}: A and B at the same concurrency", bool(r["same_concurrency"]),
                        r["concurrency"], "equal"))
    short = [r for r in result.facts["hero"] if not r["enough_samples_p99"]]
    out.append(Gate("every equal-load cell has enough ok requests for a p99", not short, len(short),
                    f"0 cells below {evidence.min_samples(99)}"))
    for r in result.facts["hero"]:
        if r["role"] != "A" and r["workload"] == "noreuse" and r.get("vs_A_ttft_ms_p99_pct") is not None:
            out.append(Gate(f"no reuse, {r['load_rule']}: B within ±5 % of A (p99 TTFT)",
                            abs(r["vs_A_ttft_ms_p99_pct"]) <= TRANSPARENT_PCT, round(r["vs_A_ttft_ms_p99_pct"], 1), "±5 %"))
    return out


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    from kvharness.analysis.hero import plot_hero

    from kvharness.analysis.run import uwork_by_stack

    own = uwork_by_stack(ctx.upstream.get("uwork") or [])
    rows = []
    for row, d in zip(ctx.rows, ctx.cell_dirs):
        extra = cell_extras(d)
        extra["u_work"] = own.get(row["stack"], extra["u_work"])  # the stack's own U_work, whatever load it ran at
        rows.append({**row, **extra})
    hero = hero_table(rows)
    cap = capacity_table(rows)
    from kvharness.analysis.records import read_json

    settings = {}  # stack -> the engine settings its cells ran with (A/B parity)
    fingerprints: dict[str, set] = {}
    for row, d in zip(ctx.rows, ctx.cell_dirs):
        settings.setdefault(row["stack"], read_json(d / "summary.json").get("engine_settings"))
        fingerprints.setdefault(row["stack"], set()).add(row.get("code_fingerprint"))
    ref = next((r["stack"] for r in hero if r["role"] == "A"), None)
    for r in hero:
        r["engine_diff_vs_A"] = None if ref is None or r["stack"] == ref else engine_diff(settings.get(ref), settings.get(r["stack"]))
        r["code_fingerprint"] = ";".join(sorted(str(f) for f in fingerprints.get(r["stack"], ())))
    for r in hero:
        if not r["enough_samples_p99"]:
            ctx.notes.append(f"{r['workload']} {r['load_rule']} {r['stack']}: fewer than {evidence.min_samples(99)} ok "
                             f"requests in a cell ({r['n_ok']} over {r['n_reps']} reps): its p99 is marked, not trusted")
    workloads = sorted({r["workload"] for r in hero})
    table = [{k: r.get(k) for k in H8_COLUMNS} for r in hero]
    return Result(tables={"summary": table, "capacity": cap},
                  figures={"hero": lambda path: plot_hero(table, cap, path)},
                  facts={"hero": hero, "capacity": cap, "workloads": workloads})


register(Hypothesis(
    id="H8",
    question="At equal memory budget and equal load, what does tiering cost without reuse and buy with it?",
    analyze=analyze,
    tables=(Table("summary", H8_COLUMNS, "hero table: per workload and equal load (the lower and the higher U_work), "
                                         "one row per stack with B-vs-A deltas"),
            Table("capacity", CAPACITY_COLUMNS, "per workload and stack: SLO attainment at every measured concurrency "
                                                "and the highest one that meets it")),
    figures=(Figure("hero", "Per workload (no reuse | multi-turn chat over T0+T1 | production trace window): p99 TTFT (ms) vs concurrency "
                            "(users in flight) for Stack A and Stack B at equal memory budget, with the SLO line; "
                            "the equal-load points are ringed."),),
    verdict=verdict,
    gates=gates,
    needs=("uwork",),
    how_to_read="Equal memory budget: A gets T0+T1 as its device pool, B gets T0 on the device and T1 in host memory "
                "(plus T2 on disk). Equal load: both stacks at uwork_min and uwork_max (the lower / higher U_work of "
                "the two from H0). vs_A_*_pct are B's percent differences from A; b_p99_differs compares them with the "
                "repetition spread. t0/t1/t2_hit_pct: share of looked-up prompt blocks served by each tier.",
))
