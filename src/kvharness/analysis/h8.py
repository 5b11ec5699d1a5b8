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
Every A-vs-B statement goes through :func:`kvharness.stats.compare` (hierarchical bootstrap of B/A's p99
TTFT over reps and requests; differs / equivalent within ±5 % / inconclusive with its minimum detectable
effect). A comparison with a rep short of :func:`kvharness.stats.min_ok_requests` is inconclusive and
names the short cells.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import zlib

from kvharness.clock import wall_ms
from kvharness import stats
from kvharness.analysis.evidence import aggregate
from kvharness.analysis.gates import cov_p99_gate, gate_sentence, reproducible_p99_gate
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.cellfolder import CellFolder
from kvharness.cellfiles import DYNKV_JSONL

SLO_GOOD_FRACTION = 0.95     # a load "meets the SLO" when >= 95 % of its requests meet every SLO
EQUAL_RULES = ("uwork_min", "uwork_max")
METRICS = ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "e2e_ms_p99", "goodput_req_s", "good_fraction", "req_s")

H8_COLUMNS = [
    "workload", "load_rule", "stack", "role", "tiered", "concurrency", "same_concurrency", "u_work", "n_reps",
    "n_ok", "n_errors", "enough_samples_p99", "memory_budget_bytes", "tier0_bytes", "tier1_bytes", "tier2_bytes",
    "working_set_bytes", "fits_in", *[f"{m}" for m in METRICS], "ttft_ms_p99_spread",
    "t0_hit_pct", "t1_hit_pct", "t2_hit_pct", "miss_pct",
    "vs_A_ttft_ms_p50_pct", "vs_A_ttft_ms_p99_pct", "vs_A_tpot_ms_p50_pct", "vs_A_goodput_req_s_pct",
    "p99_ratio", "p99_ratio_ci95_low", "p99_ratio_ci95_high", "p99_ratio_ci90_low", "p99_ratio_ci90_high",
    "outcome", "mde_pct", "short_cells", "compare_method", "status", "engine_diff_vs_A", "code_fingerprint",
]
CAPACITY_COLUMNS = [
    "workload", "stack", "role", "concurrency", "n_cells", "n_ok", "ttft_ms_p99", "good_fraction",
    "meets_slo", "enough_samples_p99", "max_slo_concurrency", "censored", "slo_ttft_ms", "slo_ttft_ms_wall",
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
    spec = CellFolder(cell).spec
    source = spec["load"].get("concurrency_source") or {}
    out = {"load_rule": source.get("rule", "uwork") if source else f"c{spec['load']['concurrency']}",
           "u_work": source.get("value") if source.get("rule", "uwork") == "uwork" else None,
           "slo": spec["load"].get("slo") or {}}
    hits = [0.0, 0.0, 0.0]
    misses = 0.0
    if (cell / DYNKV_JSONL).exists():
        for tick in read_jsonl(cell / DYNKV_JSONL):
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
                           enough_samples_p99=all(stats.enough_samples(c.get("n_ok"), 99) for c in cells),
                           status=",".join(sorted({str(c.get("status")) for c in cells})))
                for m in METRICS:
                    row[m] = stats.mean_ci(c.get(m) for c in cells)["mean"]
                p99s = [c.get("ttft_ms_p99") for c in cells if c.get("ttft_ms_p99") is not None]
                row["ttft_ms_p99_spread"] = (max(p99s) - min(p99s)) if len(p99s) >= 2 else None
                row["_cells"] = cells
                for k in ("t0_hit_pct", "t1_hit_pct", "t2_hit_pct", "miss_pct"):
                    row[k] = stats.mean_ci(c.get(k) for c in cells)["mean"]
                group.append(row)
            ref = next((g for g in group if g["role"] == "A"), None)
            for g in group:
                for m in ("ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "goodput_req_s"):
                    g[f"vs_A_{m}_pct"] = None if ref is None or g is ref else stats.pct_delta(g.get(m), ref.get(m))
                if ref is not None and g is not ref:
                    g.update(compare_cells(ref["_cells"], g["_cells"], seed=f"{wl}/{rule}/{g['stack']}"))
                else:
                    g.update({k: None for k in COMPARE_KEYS})
            out.extend(group)
    return out


COMPARE_KEYS = ("p99_ratio", "p99_ratio_ci95_low", "p99_ratio_ci95_high", "p99_ratio_ci90_low", "p99_ratio_ci90_high",
                "outcome", "mde_pct", "short_cells", "compare_method")


def compare_cells(a_cells: Sequence[dict], b_cells: Sequence[dict], seed: str = "") -> dict:
    """B vs A on p99 TTFT through :func:`kvharness.stats.compare`, one rep per cell (its ok requests'
    TTFTs, ``_ttft_ms``); falls back to the cells' p99 when a row carries no samples (then inconclusive)."""
    c = stats.compare([stats.samples(x) for x in a_cells], [stats.samples(x) for x in b_cells], 99,
                      seed=zlib.crc32(seed.encode()))
    need = stats.min_ok_requests(99)
    short = [str(x.get("cell") or f"{x.get('stack')} rep {x.get('rep')}") for x in (*a_cells, *b_cells)
             if len(stats.samples(x)) < need]
    return {"p99_ratio": c["ratio"], "p99_ratio_ci95_low": c["ci95_low"], "p99_ratio_ci95_high": c["ci95_high"],
            "p99_ratio_ci90_low": c["ci90_low"], "p99_ratio_ci90_high": c["ci90_high"], "outcome": c["outcome"],
            "mde_pct": c["mde_pct"], "short_cells": ";".join(short), "compare_method": c["method"], "_compare": c}


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
                gf = stats.mean_ci(x.get("good_fraction") for x in cells)["mean"]
                points.append({
                    "workload": wl, "stack": stack, "role": cells[0]["role"], "concurrency": c, "n_cells": len(cells),
                    "n_ok": sum(x.get("n_ok") or 0 for x in cells),
                    "ttft_ms_p99": stats.mean_ci(x.get("ttft_ms_p99") for x in cells)["mean"],
                    "good_fraction": gf, "meets_slo": gf is not None and gf >= SLO_GOOD_FRACTION,
                    "enough_samples_p99": all(stats.enough_samples(x.get("n_ok"), 99) for x in cells),
                    "slo_ttft_ms": (cells[0].get("slo") or {}).get("ttft_ms"),  # the stack's time
                    "slo_ttft_ms_wall": wall_ms((cells[0].get("slo") or {}).get("ttft_ms"), cells[0].get("speedup")),
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


OUTCOME_WORDS = {stats.DIFFERS: "differs", stats.EQUIVALENT: "equivalent within ±5 %"}


def _outcome(r: dict) -> str:
    if r["outcome"] in OUTCOME_WORDS:
        return OUTCOME_WORDS[r["outcome"]]
    if r.get("short_cells"):
        return f"inconclusive, {len(r['short_cells'].split(';'))} short cells"
    return "inconclusive" + (f", MDE {r['mde_pct']:.0f} %" if r.get("mde_pct") is not None else "")


def workload_sentence(wl: str, hero: Sequence[dict], cap: Sequence[dict]) -> str:
    """One headline for one workload (<= 30 words): B/A p99 TTFT with its 95 % interval and outcome at each
    equal load, then the highest load meeting the SLO for each stack."""
    bs = [r for r in hero if r["workload"] == wl and r["role"] != "A" and r.get("p99_ratio") is not None]
    if not bs:
        return f"{wl}: no A-vs-B pair at equal load"
    parts = []
    for r in bs:
        where = f"c={r['concurrency']}" if r["same_concurrency"] else f"{r['load_rule']} (unequal loads)"
        ci = "" if r.get("p99_ratio_ci95_low") is None else f" [{r['p99_ratio_ci95_low']:.2f}, {r['p99_ratio_ci95_high']:.2f}]"
        parts.append(f"{r['p99_ratio']:.2f}×{ci} at {where} ({_outcome(r)})")
    ca, cens_a = _capacity(cap, wl, "A")
    cb, cens_b = _capacity(cap, wl, "B")

    def fmt(c, cens):
        return "none" if c is None else f"{'≥' if cens else ''}{c}"
    claim = "B/A p99 TTFT " + ", ".join(parts)
    cells = [c for r in hero if r["workload"] == wl for c in r.get("_cells", ())]
    gated = gate_sentence(claim, workload_gates(cells), None)
    if gated.startswith("not established"):  # the rep spread the claim rests on failed its gate: say so first
        return f"{wl}: {gated} (measured {claim})"
    return f"{wl}: {claim}; highest load within SLO: A {fmt(ca, cens_a)}, B {fmt(cb, cens_b)}"


def workload_gates(cells: Sequence[dict]) -> list[Gate]:
    """The common reproducibility gates on one workload's equal-load cells, per measured point (stack and
    concurrency, as the common gates name a point: when ``uwork_min`` = ``uwork_max`` their cells are launches
    of one point): the claim of that workload's headline rests on them (gates.gate_sentence)."""
    keys = ("stack", "concurrency")
    return [cov_p99_gate(aggregate(cells, keys, ("ttft_ms_p99",)), keys), reproducible_p99_gate(cells, keys)]


def verdict(result: Result) -> str:
    hero, cap = result.facts["hero"], result.facts["capacity"]
    if not hero:
        return "H8 needs finished cells of Stack A and Stack B at the same load."
    text = " ".join(workload_sentence(wl, hero, cap) + "." for wl in result.facts["workloads"])
    short = sorted({c for r in hero if r.get("short_cells") for c in r["short_cells"].split(";")})
    if short:
        text += f" Short of {stats.min_ok_requests(99)} ok requests (no verdict on their p99): {', '.join(short)}."
    return text


def gates(result: Result) -> list[Gate]:
    out = []
    for r in result.facts["hero"]:
        if r["role"] == "A":
            continue
        out.append(Gate(f"{r['workload']} {r['load_rule']}: A and B at the same concurrency", bool(r["same_concurrency"]),
                        r["concurrency"], "equal"))
    short = [r for r in result.facts["hero"] if not r["enough_samples_p99"]]
    out.append(Gate("every equal-load cell has enough ok requests for a p99", not short, len(short),
                    f"0 cells below {stats.min_ok_requests(99)}"))
    for r in result.facts["hero"]:
        if r["role"] != "A" and r["workload"] == "noreuse" and r.get("p99_ratio") is not None:
            # a finding, not a precondition: None (undecided) unless the comparison decided either way
            decided = {stats.EQUIVALENT: True, stats.DIFFERS: False}.get(r["outcome"])
            out.append(Gate(f"no reuse, {r['load_rule']}: B equivalent to A within ±5 % (p99 TTFT, 90 % interval)",
                            decided, f"{r['p99_ratio']:.3f} [{_fmt(r['p99_ratio_ci90_low'])}, {_fmt(r['p99_ratio_ci90_high'])}]",
                            "[0.95, 1.05]", _outcome(r)))
    return out


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


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

    settings = {}  # stack -> the engine settings its cells ran with (A/B parity)
    fingerprints: dict[str, set] = {}
    for row, d in zip(ctx.rows, ctx.cell_dirs):
        settings.setdefault(row["stack"], CellFolder(d).summary.get("engine_settings"))
        fingerprints.setdefault(row["stack"], set()).add(row.get("code_fingerprint"))
    ref = next((r["stack"] for r in hero if r["role"] == "A"), None)
    for r in hero:
        r["engine_diff_vs_A"] = None if ref is None or r["stack"] == ref else engine_diff(settings.get(ref), settings.get(r["stack"]))
        r["code_fingerprint"] = ";".join(sorted(str(f) for f in fingerprints.get(r["stack"], ())))
    for r in hero:
        if not r["enough_samples_p99"]:
            ctx.notes.append(f"{r['workload']} {r['load_rule']} {r['stack']}: a cell has fewer than "
                             f"{stats.min_ok_requests(99)} ok requests ({r['n_ok']} over {r['n_reps']} reps): its p99 "
                             f"is not the basis of a verdict")
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
                                         "one row per stack with B/A p99 TTFT, its interval and outcome",
                  key_columns=("workload", "load_rule", "stack", "concurrency", "n_reps", "n_ok", "ttft_ms_p99",
                               "p99_ratio", "p99_ratio_ci95_low", "p99_ratio_ci95_high", "outcome", "mde_pct")),
            Table("capacity", CAPACITY_COLUMNS, "per workload and stack: SLO attainment at every measured concurrency "
                                                "and the highest one that meets it")),
    figures=(Figure("hero", "Per workload (no reuse | multi-turn chat over T0+T1 | production trace window): p99 TTFT (ms) vs concurrency "
                            "(users in flight) for Stack A and Stack B at equal memory budget, with the SLO line; "
                            "the equal-load points are ringed."),),
    verdict=verdict,
    gates=gates,
    # each workload's headline is gated on its own equal-load cells (workload_gates) and a short cell makes
    # its comparison inconclusive by name; the SLO sweep's cells need no p99, so the common gates over all
    # cells do not gate the whole sentence (they stay on the page and in gate_status)
    verdict_gates=(),
    needs=("uwork",),
    how_to_read="Equal memory budget: A gets T0+T1 as its device pool, B gets T0 on the device and T1 in host memory "
                "(plus T2 on disk). Equal load: both stacks at uwork_min and uwork_max (the lower / higher U_work of "
                "the two from H0). p99_ratio is B's p99 TTFT over A's with its hierarchical-bootstrap 95 % interval; "
                "outcome: differs (95 % interval excludes 1), equivalent (90 % interval inside [0.95, 1.05]) or "
                "inconclusive (mde_pct: the smallest difference these samples detect with 80 % power). t0/t1/t2_hit_pct: share of looked-up prompt blocks served by each tier.",
))
