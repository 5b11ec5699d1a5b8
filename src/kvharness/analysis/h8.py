"""H8, the hero comparison: Stack A vs Stack B at equal memory budget, each at its own U_work,
mixed context, bursty load. One row per stack with B-vs-A deltas."""

from __future__ import annotations

from typing import Sequence

from kvharness.analysis.registry import Context, Figure, Hypothesis, Result, Table, register
from kvharness.stats import pct_delta

LATENCY_COLUMNS = [f"{m}_p{q}" for m in ("ttft_ms", "e2e_ms") for q in (50, 95, 99)]
H8_COLUMNS = [
    "stack", "role", "tiered", "profile", "status", "u_work", "concurrency", "memory_budget_bytes",
    "tier0_bytes", "tier1_bytes", "tier2_bytes", "n_reps", "n_requests", "n_ok", "n_errors", "error_rate",
    *LATENCY_COLUMNS, "ttft_ms_p99_ci_low", "ttft_ms_p99_ci_high", "req_s", "output_tok_s", "goodput_req_s", "good_fraction", "kv_hit_pct", "tier2_file_bytes", "client_bound", "code_fingerprint",
]
H8_DELTA_METRICS = [*LATENCY_COLUMNS, "req_s", "output_tok_s", "goodput_req_s", "error_rate"]


# What A and B may differ in: the KV connector and the device pool (tier0 + tier1 for A at equal memory).
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


def h8_table(rows: Sequence[dict], uwork: dict[str, int | None] | None = None) -> list[dict]:
    """Hero table: one row per stack, with B-vs-A deltas (percent) on every non-A row, and
    ``engine_diff_vs_A``: engine settings that differ from A's beyond the KV connector and the pool."""
    table = []
    ref = next((r for r in rows if r["role"] == "A"), None)
    for r in sorted(rows, key=lambda r: (r["role"], r["stack"])):
        row = {k: r.get(k) for k in H8_COLUMNS}
        row["u_work"] = (uwork or {}).get(r["stack"], r.get("concurrency"))
        row["engine_diff_vs_A"] = None if ref is None or r is ref else \
            engine_diff(ref.get("engine_settings"), r.get("engine_settings"))
        for m in H8_DELTA_METRICS:
            row[f"vs_A_{m}_pct"] = None if ref is None or r is ref else pct_delta(r.get(m), ref.get(m))
        table.append(row)
    return table


_REP_MEAN_METRICS = [*LATENCY_COLUMNS, "req_s", "output_tok_s", "goodput_req_s", "good_fraction", "error_rate",
                     "n_requests", "n_ok", "n_errors", "kv_hit_pct", "tier2_file_bytes"]


def mean_over_reps(rows: Sequence[dict]) -> list[dict]:
    """One row per stack: each metric the mean over the stack's repetitions (with the p99's 95 % t
    interval and n_reps), so B is compared with A's mean, never with one of A's reps."""
    from kvharness.analysis.evidence import aggregate

    out = []
    for agg in aggregate(rows, ["stack"], _REP_MEAN_METRICS):
        first = next(r for r in rows if r["stack"] == agg["stack"])
        row = {**first, **{m: agg[f"{m}_mean"] for m in _REP_MEAN_METRICS}, "n_reps": agg["n_reps"],
               "ttft_ms_p99_ci_low": agg["ttft_ms_p99_ci_low"], "ttft_ms_p99_ci_high": agg["ttft_ms_p99_ci_high"],
               "status": ";".join(sorted({str(r.get("status")) for r in rows if r["stack"] == agg["stack"]}))}
        out.append(row)
    return out


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    from kvharness.analysis.run import uwork_by_stack
    from kvharness.report.hero import plot_hero

    from kvharness.analysis.evidence import differs
    from kvharness.analysis.records import read_json

    for row, d in zip(ctx.rows, ctx.cell_dirs):  # what each engine ran with, for the A/B parity column
        row["engine_settings"] = read_json(d / "summary.json").get("engine_settings")
    table = h8_table(mean_over_reps(ctx.rows), uwork_by_stack(ctx.upstream["uwork"]))
    reps = {stack: [r.get("ttft_ms_p99") for r in ctx.rows if r["stack"] == stack] for stack in {r["stack"] for r in ctx.rows}}
    ref = next((r["stack"] for r in table if r["role"] == "A"), None)
    for row in table:
        if ref is not None and row["stack"] != ref:
            row["vs_A_ttft_ms_p99_differs"] = differs(reps[ref], reps[row["stack"]])["differs"]
    return Result(tables={"summary": table}, figures={"hero": lambda path: plot_hero(table, path)},
                  facts={"rows": table})


def verdict(result: Result) -> str:
    rows = result.facts["rows"]
    ref = next((r for r in rows if r["role"] == "A"), None)
    others = [r for r in rows if r is not ref]
    if ref is None or not others:
        return "H8 needs a finished cell of Stack A and of Stack B."
    parts = []
    for r in others:
        d = r.get("vs_A_ttft_ms_p99_pct")
        same = r.get("concurrency") == ref.get("concurrency")
        load = "at the same concurrency" if same else f"at concurrency {r.get('concurrency')} vs A's {ref.get('concurrency')}"
        beyond = {True: ", beyond the reps' 95 % intervals", False: ", within the reps' 95 % intervals: no clear difference"}
        parts.append(f"{r['stack']} p99 TTFT {'—' if d is None else f'{d:+.1f} %'} vs A ({load}"
                     f"{beyond.get(r.get('vs_A_ttft_ms_p99_differs'), '')})")
    return "; ".join(parts) + "."


register(Hypothesis(
    id="H8",
    question="At equal memory budget, what does tiering cost without reuse and buy with it?",
    analyze=analyze,
    tables=(Table("summary", H8_COLUMNS, "hero table: one row per stack with B-vs-A deltas",
                  key_columns=("stack", "role", "concurrency", "memory_budget_bytes", "ttft_ms_p50", "ttft_ms_p99",
                               "vs_A_ttft_ms_p99_pct", "e2e_ms_p99", "goodput_req_s", "good_fraction", "error_rate",
                               "status")),),
    figures=(Figure("hero", "Stack A (memory-only) vs Stack B (tiered KV) at equal memory budget: TTFT and E2E "
                            "percentiles in ms and throughput, each stack at the load in its row."),),
    verdict=verdict,
    needs=("uwork",),
    how_to_read="Equal memory budget: A gets T0+T1 as its device pool, B gets T0 on the device and T1 in host memory "
                "(plus T2 on disk). vs_A_*_pct are B's percent differences from A; with reps, each row is the mean "
                "over the stack's reps (points.csv has the intervals).",
))
