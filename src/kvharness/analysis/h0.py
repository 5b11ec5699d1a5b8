"""H0: the queue knee. p50/p95/p99 TTFT vs concurrency, U_work and collapse point per stack, and
whether the tiered stack is transparent (within +-5 % of the memory-only one) where both are stable."""

from __future__ import annotations

from typing import Sequence

from kvharness import stats
from kvharness.stats import cov, mean_ci
from kvharness.analysis.knee import collapse_point, u_work
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.stats import pct_delta

TRANSPARENCY_PCT = 5.0
H0_COLUMNS = [
    "stack", "role", "tiered", "profile", "concurrency", "status", "n_reps", "n_requests", "n_ok", "n_errors",
    "error_rate", "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "ttft_ms_p99_ci_low",
    "ttft_ms_p99_ci_high", "ttft_ms_p99_upper95", "ttft_ms_p99_es", "ttft_p99_cov", "ttft_p99_over_p50", "stable",
    "stable_reps", "enough_samples_p99",
    "e2e_ms_p50", "e2e_ms_p95", "e2e_ms_p99", "tpot_ms_p50", "itl_ms_p99", "req_s", "output_tok_s",
    "goodput_req_s", "good_fraction", "kv_hit_pct", "alignment", "client_bound", "tier2_file_bytes", "code_fingerprint",
    "speedup",  # the collapse limit (stack time) is compared in wall time: knee.collapse_limit_wall_ms
]
UWORK_COLUMNS = ["stack", "role", "u_work", "u_work_high", "decided", "undecided_steps", "short_steps", "u_work_used",
                 "u_work_reps", "u_work_min", "u_work_max", "reps_agree", "headline_rep", "censored", "knee_at",
                 "knee_reps", "n_steps", "n_reps", "n_ok_min"]
#: metrics averaged over a step's repetitions in the summary (the mean of each rep's percentile)
_MEAN_METRICS = ("n_requests", "n_ok", "n_errors", "error_rate", "ttft_ms_mean", "ttft_ms_p50", "ttft_ms_p95",
                 "ttft_ms_p99", "e2e_ms_p50", "e2e_ms_p95", "e2e_ms_p99", "tpot_ms_p50", "itl_ms_p99", "req_s",
                 "output_tok_s", "goodput_req_s", "good_fraction", "kv_hit_pct", "tier2_file_bytes")


def by_stack(rows: Sequence[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["stack"], []).append(r)
    return out


def _mean_steps(rows: Sequence[dict]) -> list[dict]:
    """One step per concurrency of one stack: each metric the mean over its reps, p99 with its t interval."""
    per_c: dict[int, list[dict]] = {}
    for r in rows:
        per_c.setdefault(r["concurrency"], []).append(r)
    steps = []
    for c, reps in sorted(per_c.items()):
        first = reps[0]
        step = {k: first.get(k) for k in H0_COLUMNS}
        for m in _MEAN_METRICS:
            step[m] = mean_ci(r.get(m) for r in reps)["mean"]
        pooled = [x for r in reps for x in stats.samples(r)]
        os_ci = stats.order_stat_ci(pooled, 99)
        step.update(n_reps=len(reps), ttft_ms_p99_ci_low=os_ci["low"], ttft_ms_p99_ci_high=os_ci["high"],
                    ttft_ms_p99_upper95=os_ci["upper"], ttft_ms_p99_es=stats.early_stopping_estimate(pooled, 99)["estimate"],
                    enough_samples_p99=all(stats.enough_samples(r.get("n_ok"), 99) for r in reps), _ttft_ms=pooled,
                    ttft_p99_cov=cov(r.get("ttft_ms_p99") for r in reps),
                    ttft_p99_over_p50=(step["ttft_ms_p99"] / step["ttft_ms_p50"]) if step.get("ttft_ms_p50") else None,
                    status=";".join(sorted({str(r.get("status")) for r in reps})),
                    alignment=min((r["alignment"] for r in reps if r.get("alignment") is not None), default=None),
                    client_bound=any(r.get("client_bound") for r in reps))
        steps.append(step)
    return steps


def headline(per_rep: dict[int, dict]) -> int:
    """The repetition whose U_work is the headline: the lower median of the per-rep U_work values.

    A rep without U_work (no stable pair) ranks below every number. With 2 reps this is the smaller
    value, with 3 the middle one: the headline is a load that at least half of the launches held."""
    order = sorted(per_rep, key=lambda rep: (per_rep[rep]["u_work"] is not None, per_rep[rep]["u_work"] or 0, rep))
    return order[(len(order) - 1) // 2]


def h0_tables(rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(summary rows per stack x concurrency over reps, U_work row per stack with its per-rep spread).

    U_work and the knee are computed per repetition (each rep is a full sweep, its own launches); the
    headline value is the lower-median rep's (:func:`headline`). The summary's ``stable`` is the step's
    stability on the rep-mean curve, ``stable_reps`` how many reps found it stable."""
    summary, uwork_rows = [], []
    per_stack = by_stack(rows)
    curves, knees, heads = {}, {}, {}
    for stack, stack_rows in sorted(per_stack.items()):
        per_rep: dict[int, list[dict]] = {}
        for r in stack_rows:
            per_rep.setdefault(int(r.get("rep") or 0), []).append(r)
        rep_knees = {rep: u_work(steps) for rep, steps in sorted(per_rep.items())}
        curve = _mean_steps(stack_rows)
        mean_knee = u_work(curve)
        curves[stack], knees[stack] = curve, mean_knee
        head_rep = headline(rep_knees)
        heads[stack] = (head_rep, rep_knees)
        for step in curve:
            c = step["concurrency"]
            n_stable = sum(1 for k in rep_knees.values() if k["stable"].get(c))
            state = {True: "stable", False: "unstable", None: "undecided"}[mean_knee["stable"][c]]
            summary.append({**step, "stable": state, "stable_reps": f"{n_stable}/{step['n_reps']}"})
    roles = {r["stack"]: r["role"] for r in rows}
    ref_stack = next((s for s, role in roles.items() if role == "A"), None)
    for stack in sorted(per_stack):
        head_rep, rep_knees = heads[stack]
        knee = rep_knees[head_rep]
        steps = curves[stack]
        values = [k["u_work"] for _, k in sorted(rep_knees.items())]
        numbers = [v for v in values if v is not None]
        agree = len(set(values)) == 1
        used, note = _uwork_used(knee, steps, values, head_rep)
        short = sorted({r["concurrency"] for r in per_stack[stack] if not stats.enough_samples(r.get("n_ok"), 99)})
        row = {"stack": stack, "role": roles[stack], "u_work": knee["u_work"], "u_work_high": knee["u_work_high"],
               "decided": knee["u_work"] is not None and knee["u_work_high"] == knee["u_work"],
               "undecided_steps": ";".join(map(str, knee["undecided"])), "short_steps": ";".join(map(str, short)),
               "n_ok_min": min((r.get("n_ok") or 0) for r in per_stack[stack]), "u_work_used": used,
               "u_work_reps": ";".join("none" if v is None else str(v) for v in values),
               "u_work_min": min(numbers) if numbers else None, "u_work_max": max(numbers) if numbers else None,
               "reps_agree": agree, "headline_rep": head_rep, "censored": knee["censored"],
               "knee_at": knee["knee_at"],
               "knee_reps": ";".join("none" if k["knee_at"] is None else str(k["knee_at"]) for _, k in sorted(rep_knees.items())),
               "n_steps": knee["n_steps"], "n_reps": len(rep_knees), **collapse_point(steps), "note": note}
        if ref_stack and stack != ref_stack:
            row.update(_transparency(steps, curves[ref_stack], knees[stack], knees[ref_stack]))
        uwork_rows.append(row)
    return summary, uwork_rows


def _uwork_used(knee: dict, steps: list[dict], values: list, head_rep: int) -> tuple[int, str]:
    """The U_work a stack's later cells run at and the note that says why: the headline rep's, else the lowest
    swept concurrency; censored, undecided and disagreeing reps are named."""
    used, note = knee["u_work"], ""
    if used is None:
        used = steps[0]["concurrency"]
        unstable = [c for c, ok in sorted(knee["stable"].items()) if not ok]
        note = (f"no two consecutive stable steps below the knee (p99 > 2 x p50 at concurrency "
                f"{', '.join(str(c) for c in unstable[:4])}{', ...' if len(unstable) > 4 else ''}); "
                f"using the lowest swept concurrency {used}")
    elif knee["censored"]:
        note = f"stable to the end of the sweep: the knee lies above {used}"
    if knee["undecided"] and knee["u_work_high"] != knee["u_work"]:
        note = "; ".join(filter(None, [note, f"the samples cannot decide the stability of concurrency "
                                             f"{', '.join(map(str, knee['undecided']))}: U_work lies in "
                                             f"[{knee['u_work'] or 'none'}, {knee['u_work_high']}]"]))
    if len(set(values)) != 1:
        note = "; ".join(filter(None, [note, f"U_work differs between reps ({', '.join(str(v) for v in values)}): "
                                             f"the headline is the lower median (rep {head_rep})"]))
    return used, note


def _transparency(steps: list[dict], ref_steps: list[dict], knee: dict, ref_knee: dict) -> dict:
    """B vs A within +-5 % at the concurrency levels both stacks hold stably: per level the p50 TTFT ratio
    B/A with its bootstrap interval and the three-outcome comparison (``stats.compare``, q = 50, requests
    pooled over reps). ``transparent`` is True when every level is equivalent within ±5 %, False when one
    differs by more than 5 % (its 95 % interval outside [0.95, 1.05]), else None (undecided). No keys when
    the stacks share no stable level."""
    ref = {s["concurrency"]: s for s in ref_steps}
    shared = [s for s in steps if s["concurrency"] in ref and knee["stable"][s["concurrency"]]
              and ref_knee["stable"].get(s["concurrency"])]
    compared = []
    for s in shared:
        a, b = ref[s["concurrency"]].get("_ttft_ms") or [], s.get("_ttft_ms") or []
        cmp = stats.compare([a], [b], 50) if len(a) and len(b) else {}
        delta = pct_delta(s.get("ttft_ms_p50"), ref[s["concurrency"]].get("ttft_ms_p50"))
        if delta is not None:
            compared.append((s["concurrency"], delta, cmp))
    if not compared:
        return {}
    c, worst, cmp = max(compared, key=lambda t: abs(t[1]))
    outcomes = [x[2].get("outcome") for x in compared]
    beyond = [x for x in compared if x[2].get("outcome") == "differs"
              and (x[2]["ci95_low"] > 1 + TRANSPARENCY_PCT / 100 or x[2]["ci95_high"] < 1 - TRANSPARENCY_PCT / 100)]
    transparent = False if beyond else True if all(o == "equivalent" for o in outcomes) else None
    if beyond:
        c, worst, cmp = max(beyond, key=lambda t: abs(t[1]))
    interval = (f"{cmp['ratio']:.2f}× [{cmp['ci95_low']:.2f}, {cmp['ci95_high']:.2f}] at c={c} ({cmp['outcome']})"
                if cmp.get("ratio") and cmp.get("ci95_low") is not None else f"{worst:+.1f} % at c={c} (no interval)")
    return {"vs_A_ttft_p50_worst_pct": round(worst, 2), "transparent": transparent, "transparency": interval}


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    from kvharness.analysis.figures import plot_latency_vs_concurrency

    summary, uwork_rows = h0_tables(ctx.rows)
    return Result(tables={"summary": summary, "uwork": uwork_rows},
                  figures={"latency": lambda path: plot_latency_vs_concurrency(summary, uwork_rows, path)},
                  facts={"uwork": uwork_rows})


def verdict(result: Result) -> str:
    rows = result.facts["uwork"]
    if not rows:
        return "No H0 cell finished: no U_work."
    parts = []
    for r in rows:
        if r["u_work"] is None and r.get("u_work_high") is None:
            parts.append(f"{r['stack']} has no stable pair of steps (using {r['u_work_used']})")
        elif not r.get("decided"):
            parts.append(f"{r['stack']} undecided between {r['u_work'] or 'none'} and {r['u_work_high']} "
                         f"(stability of concurrency {r['undecided_steps'].replace(';', ', ')} not decided by the samples)")
        else:
            spread = "" if r.get("reps_agree", True) else f", reps ranged {r['u_work_min']}–{r['u_work_max']}: unstable"
            parts.append(f"{r['stack']} {r['u_work']}{' (censored: stable to the end of the sweep)' if r['censored'] else ''}{spread}")
    sentence = "U_work: " + "; ".join(parts) + "."
    short = [f"{r['stack']} at c={r['short_steps'].replace(';', ', ')}" for r in rows if r.get("short_steps")]
    if short:
        sentence += (f" Cells short of {stats.min_ok_requests(99)} ok requests (their steps are undecided unless the "
                     f"bounds still decide them): {'; '.join(short)}.")
    for r in rows:
        if "transparent" in r:
            said = {True: f"within ±{TRANSPARENCY_PCT:g} % of A (equivalent)", False: f"not within ±{TRANSPARENCY_PCT:g} % of A",
                    None: f"not decided against ±{TRANSPARENCY_PCT:g} % of A"}[r["transparent"]]
            sentence += (f" {r['stack']}'s p50 TTFT at the shared stable steps is {said}: B/A {r['transparency']}.")
    return sentence


def gates(result: Result) -> list[Gate]:
    out = []
    for r in result.facts["uwork"]:
        if (r.get("n_reps") or 1) >= 2:
            out.append(Gate(f"{r['stack']} U_work the same in every rep", r["reps_agree"], r["u_work_reps"],
                            "one value", f"headline = lower median (rep {r['headline_rep']})"))
    for r in result.facts["uwork"]:
        if "transparent" in r:
            out.append(Gate(f"{r['stack']} transparent vs A (p50 TTFT)", r["transparent"],
                            r["vs_A_ttft_p50_worst_pct"], f"±{TRANSPARENCY_PCT:g} %"))
    return out


register(Hypothesis(
    id="H0",
    question="Where is each stack's queue knee (U_work), and is the tiered stack transparent below it?",
    analyze=analyze,
    tables=(Table("summary", H0_COLUMNS, "per stack x concurrency, means over reps: TTFT/E2E percentiles, stability, goodput",
                  key_columns=("stack", "concurrency", "n_reps", "ttft_ms_p50", "ttft_ms_p99", "ttft_p99_cov",
                               "stable", "stable_reps", "goodput_req_s", "good_fraction", "error_rate", "status")),
            Table("uwork", UWORK_COLUMNS, "U_work, knee and collapse point per stack, per rep and headline",
                  key_columns=("stack", "role", "u_work", "u_work_reps", "reps_agree", "censored", "knee_at",
                               "collapse_at", "vs_A_ttft_p50_worst_pct", "transparent", "transparency", "note"))),
    figures=(Figure("latency", "TTFT p50 and p99 (ms, log scale) vs concurrency (users in flight, log scale), one "
                               "panel per stack, means over repetitions with the p99's 95 % t interval; the solid "
                               "line marks the headline U_work, the band the range of per-rep U_work, the dashed "
                               "line the knee (first two consecutive unstable steps)."),),
    verdict=verdict,
    gates=gates,
    # short cells make their steps undecided inside u_work (and the verdict names them), so U_work hangs on
    # the reproducibility gates only: with one rep they are n/a and the verdict says what it does not cover
    verdict_gates=("CoV of p99", "p99 TTFT reproducible"),
    provides={"uwork": "uwork"},
    how_to_read="A step is stable when p99 TTFT <= 2 x p50, decided from its requests: stable when the one-sided 95 % "
                "order-statistic upper bound of p99 is <= 2 x the lower bound of p50, unstable when the p99's lower "
                "bound exceeds 2 x the p50's upper bound, otherwise undecided (u_work..u_work_high brackets U_work). U_work is the highest concurrency whose step and the next "
                "are both stable, below the first two consecutive unstable steps (the knee). It is computed per "
                "repetition; the headline is the lower median of the reps' values, and u_work_reps shows their "
                "spread (reps that disagree mean the knee is not sharp on this machine). Percentiles in the "
                "summary are means over reps; goodput counts requests meeting every SLO of the load.",
))
