"""H0: the queue knee. p50/p95/p99 TTFT vs concurrency, U_work and collapse point per stack, and
whether the tiered stack is transparent (within +-5 % of the memory-only one) where both are stable."""

from __future__ import annotations

from typing import Sequence

from kvharness.analysis.knee import collapse_point, u_work
from kvharness.analysis.registry import Context, Gate, Hypothesis, Result, Table, register
from kvharness.stats import pct_delta

TRANSPARENCY_PCT = 5.0
H0_COLUMNS = [
    "stack", "role", "tiered", "profile", "concurrency", "status", "n_requests", "n_ok", "n_errors", "error_rate",
    "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "ttft_p99_over_p50", "stable",
    "e2e_ms_p50", "e2e_ms_p95", "e2e_ms_p99", "tpot_ms_p50", "itl_ms_p99", "req_s", "output_tok_s",
    "kv_hit_pct", "alignment", "client_bound", "tier2_file_bytes", "code_fingerprint",
]


def by_stack(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["stack"], []).append(r)
    return out


def h0_tables(rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(summary rows per stack x concurrency, U_work row per stack)."""
    summary, uwork_rows = [], []
    per_stack = by_stack(rows)
    knees = {}
    for stack, steps in sorted(per_stack.items()):
        knee = u_work(steps)
        knees[stack] = knee
        for s in sorted(steps, key=lambda s: s["concurrency"]):
            summary.append({**{k: s.get(k) for k in H0_COLUMNS}, "stable": knee["stable"][s["concurrency"]]})
    roles = {r["stack"]: r["role"] for r in rows}
    ref_stack = next((s for s, role in roles.items() if role == "A"), None)
    for stack, knee in sorted(knees.items()):
        steps = sorted(per_stack[stack], key=lambda s: s["concurrency"])
        used, note = knee["u_work"], ""
        if used is None:
            used = steps[0]["concurrency"]
            unstable = [c for c, ok in sorted(knee["stable"].items()) if not ok]
            note = (f"no two consecutive stable steps below the knee (p99 > 2 x p50 at concurrency "
                    f"{', '.join(str(c) for c in unstable[:4])}{', ...' if len(unstable) > 4 else ''}); "
                    f"using the lowest swept concurrency {used}")
        elif knee["censored"]:
            note = f"stable to the end of the sweep: the knee lies above {used}"
        row = {"stack": stack, "role": roles[stack], "u_work": knee["u_work"], "u_work_used": used,
               "censored": knee["censored"], "knee_at": knee["knee_at"], "n_steps": knee["n_steps"], **collapse_point(steps), "note": note}
        # Transparency (B vs A within +-5 %): median TTFT at the concurrency levels both stacks hold stably.
        if ref_stack and stack != ref_stack:
            ref = {s["concurrency"]: s for s in per_stack[ref_stack]}
            shared = [s for s in steps if s["concurrency"] in ref and knee["stable"][s["concurrency"]]
                      and knees[ref_stack]["stable"].get(s["concurrency"])]
            deltas = [pct_delta(s.get("ttft_ms_p50"), ref[s["concurrency"]].get("ttft_ms_p50")) for s in shared]
            deltas = [d for d in deltas if d is not None]
            if deltas:
                worst = max(deltas, key=abs)
                row["vs_A_ttft_p50_worst_pct"] = round(worst, 2)
                row["transparent"] = abs(worst) <= TRANSPARENCY_PCT
        uwork_rows.append(row)
    return summary, uwork_rows




# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    summary, uwork_rows = h0_tables(ctx.rows)
    return Result(tables={"summary": summary, "uwork": uwork_rows}, facts={"uwork": uwork_rows})


def verdict(result: Result) -> str:
    rows = result.facts["uwork"]
    if not rows:
        return "No H0 cell finished: no U_work."
    parts = []
    for r in rows:
        if r["u_work"] is None:
            parts.append(f"{r['stack']} has no stable pair of steps (using {r['u_work_used']})")
        else:
            parts.append(f"{r['stack']} {r['u_work']}{' (censored: stable to the end of the sweep)' if r['censored'] else ''}")
    sentence = "U_work: " + "; ".join(parts) + "."
    for r in rows:
        if "transparent" in r:
            sentence += (f" {r['stack']}'s p50 TTFT is {'within' if r['transparent'] else 'outside'} "
                         f"±{TRANSPARENCY_PCT:g} % of A at the shared stable steps (worst {r['vs_A_ttft_p50_worst_pct']:+.1f} %).")
    return sentence


def gates(result: Result) -> list[Gate]:
    out = []
    for r in result.facts["uwork"]:
        if "transparent" in r:
            out.append(Gate(f"{r['stack']} transparent vs A (p50 TTFT)", r["transparent"],
                            r["vs_A_ttft_p50_worst_pct"], f"±{TRANSPARENCY_PCT:g} %"))
    return out


register(Hypothesis(
    id="H0",
    question="Where is each stack's queue knee (U_work), and is the tiered stack transparent below it?",
    analyze=analyze,
    tables=(Table("summary", H0_COLUMNS, "per stack x concurrency: TTFT/E2E percentiles, stability"),
            Table("uwork", ["stack", "role", "u_work", "u_work_used"], "U_work, knee and collapse point per stack")),
    verdict=verdict,
    gates=gates,
    provides={"uwork": "uwork"},
    how_to_read="A step is stable when p99 TTFT <= 2 x p50. U_work is the highest concurrency whose step and the next "
                "are both stable, below the first two consecutive unstable steps (the knee).",
))
