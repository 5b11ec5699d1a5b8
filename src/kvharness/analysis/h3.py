"""H3: the context envelope. Under the stress profile, the largest context each stack serves without
collapsing (its envelope), per concurrency, and a context x concurrency feasibility map saying which
cells collapsed and why (preemption, rejection, timeout, p99 > 1000 ms of the stack's time, p99 growing
without bound).

Known truth: a stack's envelope at concurrency c is bounded by what its device KV pool admits,
pool bytes / (c x KV bytes per token); at equal memory budget the memory-only stack's pool is T0+T1
and the tiered stack's is T0 (its T1/T2 hold reusable blocks, not running sequences).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.knee import collapse_limit_wall_ms, collapse_point, step_causes
from kvharness.analysis.registry import Context, Figure, Hypothesis, Result, Table, register
from kvharness.analysis.spill import envelope, spill_rows

AXIS = "context_tokens"
MAP_COLUMNS = [
    "stack", "role", "concurrency", "context_tokens", "status", "collapsed", "why", "n_requests", "n_ok",
    "n_errors", "error_classes_json", "preemptions", "ttft_ms_p50", "ttft_ms_p99", "p99_enough_samples", "req_s", "prompt_tok_s",
    "pool_bytes", "admits_context_tokens", "working_set_bytes", "fits_in", "speedup",
]
ENVELOPE_COLUMNS = [
    "stack", "role", "tiered", "concurrency", "memory_budget_bytes", "pool_bytes", "envelope_context_tokens",
    "envelope_note", "collapse_at", "collapse_cause", "collapse_reason", "admits_context_tokens",
    "expected_envelope_tokens", "steps_from_expected",
]


def _steps_off(values: Sequence, a, b) -> int | None:
    """How many sweep steps apart a and b are on the swept ``values`` (None if either is None)."""
    if a is None or b is None:
        return None
    vals = sorted(values)
    return abs(vals.index(a) - vals.index(b))


def h3_tables(rows: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(envelope rows per stack x concurrency, feasibility map rows per cell)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["role"], r["stack"], r["concurrency"]), []).append(r)
    summary, fmap = [], []
    for (role, stack, conc), steps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        steps = sorted(steps, key=lambda s: s[AXIS])
        col = collapse_point(steps, axis=AXIS, throughput_key="prompt_tok_s")
        env, note = envelope(steps, col, AXIS)
        contexts = [s[AXIS] for s in steps]
        admits = steps[0].get("admits_context_tokens")
        expected = max((c for c in contexts if admits is not None and c <= admits), default=None)
        off = _steps_off(contexts, env, expected)
        if env is None and expected is None:
            off = 0  # both below the sweep
        elif off is None:
            off = (contexts.index(env if env is not None else expected) + 1)  # one of them below the sweep
        summary.append({
            "stack": stack, "role": role, "tiered": steps[0].get("tiered"), "concurrency": conc,
            "memory_budget_bytes": steps[0].get("memory_budget_bytes"), "pool_bytes": steps[0].get("pool_bytes"),
            "envelope_context_tokens": env, "envelope_note": note, "collapse_at": col["collapse_at"],
            "collapse_cause": col["collapse_cause"], "collapse_reason": col["collapse_reason"],
            "admits_context_tokens": admits, "expected_envelope_tokens": expected, "steps_from_expected": off,
        })
        at = col["collapse_index"]
        for i, s in enumerate(steps):
            why = step_causes(s)
            collapsed = at is not None and i >= at
            if collapsed and not why:
                why = [f"beyond the collapse at {col['collapse_at']} ({col['collapse_cause']}: {col['collapse_reason']})"]
            fmap.append({**{k: s.get(k) for k in MAP_COLUMNS}, "collapsed": collapsed,
                         "why": "; ".join(why) if collapsed or why else ""})
    return summary, fmap


def plot_h3(summary: Sequence[dict], fmap: Sequence[dict], path: Path) -> None:
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"A": "o", "B": "s"}
    for key in sorted({(r["role"], r["stack"], r["concurrency"]) for r in fmap}, key=lambda k: (k[0], k[2])):
        pts = sorted((r for r in fmap if (r["role"], r["stack"], r["concurrency"]) == key), key=lambda r: r[AXIS])
        xs = [r[AXIS] for r in pts if r.get("ttft_ms_p99") is not None]
        ys = [r["ttft_ms_p99"] for r in pts if r.get("ttft_ms_p99") is not None]
        line, = ax1.plot(xs, ys, marker=markers.get(key[0], "^"), label=f"{key[1]} c={key[2]}")
        bad = [r for r in pts if r["collapsed"] and r.get("ttft_ms_p99") is not None]
        ax1.scatter([r[AXIS] for r in bad], [r["ttft_ms_p99"] for r in bad], s=90, facecolors="none",
                    edgecolors=line.get_color(), linewidths=1.5)
    if fmap:
        ax1.axhline(collapse_limit_wall_ms(fmap[0]), color="grey", ls=":", lw=1)
    ax1.set_xlabel("context (tokens)")
    ax1.set_ylabel("p99 TTFT (ms, wall)")
    ax1.set_yscale("log")
    ax1.set_title("p99 TTFT; circled = collapsed")
    ax1.legend(fontsize=7)
    floor = min((r[AXIS] for r in fmap), default=1) / 2  # "no context of the sweep": drawn below its first point
    for role in sorted({r["role"] for r in summary}):
        rows = sorted((r for r in summary if r["role"] == role), key=lambda r: r["concurrency"])
        cs = [r["concurrency"] for r in rows]
        env, = ax2.plot(cs, [r["envelope_context_tokens"] or floor for r in rows], marker=markers.get(role, "^"),
                        label=f"{rows[0]['stack']} envelope (measured)")
        ax2.plot(cs, [r["admits_context_tokens"] or floor for r in rows], ls="--", lw=1, color=env.get_color(),
                 label=f"{rows[0]['stack']} pool / (c x KV bytes per token)")
        for r in rows:
            if r["envelope_context_tokens"] is None:
                ax2.annotate("below the sweep", (r["concurrency"], floor), fontsize=7, textcoords="offset points",
                             xytext=(4, 4))
    ax2.set_xlabel("concurrency (users in flight)")
    ax2.set_ylabel("largest context without collapse (tokens)")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log", base=2)
    ax2.legend(fontsize=7)
    save_figure(fig, path)


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    rows = spill_rows(ctx.cell_dirs, ctx.rows)
    summary, fmap = h3_tables(rows)
    return Result(tables={"summary": summary, "feasibility": fmap},
                  figures={"envelope": lambda path: plot_h3(summary, fmap, path)},
                  facts={"summary": summary})


def _fmt_env(r: dict) -> str:
    v = r["envelope_context_tokens"]
    if v is None:
        return "none in the sweep"
    return f"{v}{'+' if r['collapse_at'] is None else ''} tokens"


def verdict(result: Result) -> str:
    rows = result.facts["summary"]
    by_role: dict[str, dict] = {}
    for r in rows:
        by_role.setdefault(r["role"], {})[r["concurrency"]] = r
    if "A" not in by_role or "B" not in by_role:
        envs = "; ".join(f"{r['stack']} c={r['concurrency']}: {_fmt_env(r)}" for r in rows)
        return f"H3 needs both stacks for a comparison; envelopes: {envs or 'none measured'}."
    parts, wins = [], {"A": 0, "B": 0, "tie": 0}
    for c in sorted(set(by_role["A"]) & set(by_role["B"])):
        a, b = by_role["A"][c], by_role["B"][c]
        ea, eb = a["envelope_context_tokens"] or 0, b["envelope_context_tokens"] or 0
        winner = "A" if ea > eb else "B" if eb > ea else "tie"
        wins[winner] += 1
        parts.append(f"c={c}: {a['stack']} {_fmt_env(a)} vs {b['stack']} {_fmt_env(b)}")
    budget = rows[0].get("memory_budget_bytes")
    gib = f"{budget / 2**30:g} GiB" if budget else "the same memory budget"
    if wins["A"] and not wins["B"]:
        head = "Stack A's (memory-only) envelope is wider"
    elif wins["B"] and not wins["A"]:
        head = "Stack B's (tiered) envelope is wider"
    elif not wins["A"] and not wins["B"]:
        head = "Neither stack's envelope is wider"
    else:
        head = "Neither stack's envelope is wider at every concurrency"
    text = f"{head} at equal memory budget ({gib}): largest context without collapse, " + "; ".join(parts) + "."
    # the envelope rests on every collapse cause (admission, throughput, p99); a p99 from too few requests
    # only weakens the p99 cause, so a short sample qualifies the sentence instead of replacing it
    short = [g for g in result.facts.get("gates", []) if g["name"].startswith("enough samples") and g["passed"] is False]
    if short:
        text += (f" A collapse by p99 TTFT is indicative only: {short[0]['name']} {short[0]['value']} vs "
                 f"{short[0]['limit']}.")
    return text


register(Hypothesis(
    id="H3",
    question="What is the largest context each stack serves without collapsing under the stress profile (its envelope)?",
    analyze=analyze,
    tables=(Table("summary", ENVELOPE_COLUMNS, "envelope per stack x concurrency: largest context without collapse, "
                                               "collapse point and cause, and what the device pool admits"),
            Table("feasibility", MAP_COLUMNS, "context x concurrency feasibility map: which cells collapsed and why")),
    figures=(Figure("envelope", "Left: p99 TTFT (wall ms, log) vs context (tokens) per stack and concurrency, collapsed "
                                "cells circled, the collapse limit (1000 ms of stack time, in wall ms) dotted. Right: envelope (largest context without collapse, tokens) vs "
                                "concurrency (users), against pool bytes / (concurrency x KV bytes per token) dashed."),),
    verdict=verdict,
    verdict_gates=("telemetry alignment", "CoV of p99", "p99 TTFT reproducible"),  # samples: in the sentence
    how_to_read="A (stack, concurrency) row collapses at the first context with p99 TTFT > 1000 ms of the stack's time "
                "(in wall time 1000 / speedup; collapse_reason shows both), failed requests or "
                "preemptions, prompt tokens/s below 90 % of the best so far, or p99 growing without bound "
                "(docs/definitions.md); the envelope is the context before it. admits_context_tokens is the device pool "
                "divided by concurrency x KV bytes per token; steps_from_expected compares the two on the sweep.",
))
