"""H2A: the memory-only control. Stack A under profiles comfy -> spill -> stress, context swept: the
collapse point per profile, and SPEC's control gate "A's NVMe reads stay within +-10 % of idle", measured
against the idle window each cell records before its load starts (``load.idle_window_s``).

A memory-only stack has no disk tier, so whatever its pool does, the tier-2 device must not see it. The
gate is on the **device**: its mean read MiB/s during the load against the idle window's
(``gates.nvme_idle_gate``: within +-10 %, or both at the 1 MiB/s noise floor). A device shared with the
rest of the machine can fail it; the control then is not established on that machine, whoever read. The
stack's own storage reads (its process tree's /proc io at idle start, load start and load end) and its
tier-2 file reads (simulator ground truth) sit beside the gate as attribution: they say whether the reads
that failed it were the stack's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis import gates as G
from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.knee import COLLAPSE_TTFT_P99_MS, collapse_limit_wall_ms, collapse_point
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.analysis.spill import envelope, idle_nvme, spill_rows
from kvharness.clock import describe

AXIS = "context_tokens"
PROFILE_ORDER = ("comfy", "spill", "stress")
NVME_GATE = f"A's NVMe reads within ±{G.NVME_IDLE_PCT:g} % of idle"
SUMMARY_COLUMNS = [
    "stack", "profile", "context_tokens", "concurrency", "status", "n_ok", "n_errors", "error_classes_json",
    "preemptions", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "p99_enough_samples", "req_s", "prompt_tok_s", "pool_bytes",
    "admits_context_tokens", "working_set_bytes", "fits_in", "collapsed", "speedup", "nvme_device", "idle_window_s",
    "idle_rMBs", "load_rMBs", "nvme_delta_MBs", "nvme_delta_pct", "nvme_limit", "nvme_gate", "nvme_note",
    "stack_idle_read_MBs", "stack_load_read_MBs", "stack_delta_MBs", "tier2_file_read_bytes",
]
COLLAPSE_COLUMNS = ["stack", "profile", "concurrency", "pool_bytes", "collapse_at", "collapse_cause", "collapse_reason",
                    "censored", "collapse_limit", "envelope_context_tokens", "envelope_note", "admits_context_tokens"]


def nvme_gate(idle: dict) -> dict:
    """SPEC's control gate on the tier-2 device's reads (``gates.nvme_idle_gate``), with the stack's own
    reads beside it: ``stack_delta_MBs`` = its process tree's read MiB/s under load minus at idle."""
    s_idle, s_load = idle.get("stack_idle_read_MBs"), idle.get("stack_load_read_MBs")
    stack_delta = s_load - s_idle if s_idle is not None and s_load is not None else None
    i, l = idle.get("idle_rMBs"), idle.get("load_rMBs")
    g = G.nvme_idle_gate(l, i, name=NVME_GATE)
    note = g.note
    if idle.get("idle_window_s") is None:
        note = "no idle window (load.idle_window_s is 0)"
    elif i is None or l is None:
        note = "no NVMe telemetry for the tier-2 device"
    if stack_delta is not None:
        note += f"; the stack's own reads {stack_delta:+.3f} MiB/s over its idle"
        if g.passed is False and abs(stack_delta) <= G.NVME_IDLE_FLOOR_MBS:
            note += " (not the stack's: another process read the device)"
    return {"nvme_delta_MBs": l - i if i is not None and l is not None else None,
            "nvme_delta_pct": 100.0 * (l - i) / i if i and l is not None else None,
            "nvme_limit": g.limit, "nvme_gate": g.passed, "nvme_note": note, "stack_delta_MBs": stack_delta}


def _p99_steps(steps: Sequence[dict], col: dict) -> list[dict]:
    """The steps whose p99 TTFT a collapse claim reads: up to and including the collapse when p99 decided
    it (over the limit, or growing without bound), the steps before it when errors did, every step when
    nothing collapsed (each one's p99 stayed under the limit)."""
    i = col.get("collapse_index")
    if i is None:
        return list(steps)
    return list(steps[:i + 1]) if col.get("collapse_cause") in ("p99", "unbounded") else list(steps[:i])


def h2a_tables(cell_dirs: Sequence[Path], rows: Sequence[dict]):
    """(summary rows, collapse rows, profile order, claim gates): the claim gates are the samples gate
    evaluated on the cells whose p99 each profile's collapse claim reads (``_p99_steps``)."""
    dirs = {Path(d).name: Path(d) for d in cell_dirs}
    points = spill_rows(cell_dirs, rows)
    for p in points:
        idle = idle_nvme(dirs[p["cell"]])
        p.update(idle)
        p.update(nvme_gate(idle))
    order = [p for p in PROFILE_ORDER if any(r["profile"] == p for r in points)]
    order += sorted({r["profile"] for r in points} - set(order))
    summary, collapse, claim_gates = [], [], []
    for prof in order:
        for stack in sorted({r["stack"] for r in points if r["profile"] == prof}):
            steps = sorted((r for r in points if r["profile"] == prof and r["stack"] == stack), key=lambda r: r[AXIS])
            col = collapse_point(steps, axis=AXIS, throughput_key="prompt_tok_s")
            env, note = envelope(steps, col, AXIS)
            collapse.append({"stack": stack, "profile": prof, "concurrency": steps[0]["concurrency"],
                             "pool_bytes": steps[0]["pool_bytes"], **{k: col[k] for k in ("collapse_at", "collapse_cause",
                             "collapse_reason", "censored")},
                             "collapse_limit": f"p99 TTFT > {describe(COLLAPSE_TTFT_P99_MS, steps[0].get('speedup'))}",
                             "envelope_context_tokens": env, "envelope_note": note,
                             "admits_context_tokens": steps[0]["admits_context_tokens"]})
            read = _p99_steps(steps, col)
            if read:
                claim_gates.append(G.renamed(G.samples_gate(read), f"enough samples for p99 ({stack}, {prof})"))
            for i, s in enumerate(steps):
                summary.append({**{k: s.get(k) for k in SUMMARY_COLUMNS},
                                "collapsed": col["collapse_index"] is not None and i >= col["collapse_index"]})
    return summary, collapse, order, claim_gates


def plot_h2a(summary: Sequence[dict], order: Sequence[str], path: Path) -> None:
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for prof in order:
        pts = [r for r in summary if r["profile"] == prof and r.get("ttft_ms_p99") is not None]
        line, = ax1.plot([r[AXIS] for r in pts], [r["ttft_ms_p99"] for r in pts], marker="o", label=f"{prof} p99")
        bad = [r for r in pts if r["collapsed"]]
        ax1.scatter([r[AXIS] for r in bad], [r["ttft_ms_p99"] for r in bad], s=90, facecolors="none",
                    edgecolors=line.get_color(), linewidths=1.5)
        nv = [r for r in summary if r["profile"] == prof and r.get("load_rMBs") is not None]
        ax2.plot([r[AXIS] for r in nv], [r["nvme_delta_MBs"] for r in nv], marker="o", label=prof)
    if summary:
        ax1.axhline(collapse_limit_wall_ms(summary[0]), color="grey", ls=":", lw=1)
    ax1.set_xlabel("context (tokens)")
    ax1.set_ylabel("p99 TTFT (ms, wall)")
    ax1.set_yscale("log")
    ax1.set_title("Stack A p99 TTFT per profile; circled = collapsed")
    ax1.legend(fontsize=7)
    ax2.axhline(0, color="grey", lw=1)
    ax2.set_xlabel("context (tokens)")
    ax2.set_ylabel("NVMe reads, load minus idle (MiB/s)")
    ax2.set_title("tier-2 device reads vs the idle window")
    ax2.legend(fontsize=7)
    save_figure(fig, path)


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    summary, collapse, order, claim_gates = h2a_tables(ctx.cell_dirs, ctx.rows)
    return Result(tables={"summary": summary, "collapse": collapse},
                  figures={"p99": lambda path: plot_h2a(summary, order, path)},
                  facts={"summary": summary, "collapse": collapse, "claim_gates": claim_gates})


def _collapse_claim(c: dict) -> str:
    if c["collapse_at"] is not None:
        return f"collapses at {c['collapse_at']} tokens ({c['collapse_cause']}: {c['collapse_reason']})"
    return f"no collapse within the sweep (up to {c['envelope_context_tokens']} tokens)"


def verdict(result: Result) -> str:
    col, summary = result.facts["collapse"], result.facts["summary"]
    if not col:
        return "No H2A cell finished."
    own = gates(result) + result.facts.get("claim_gates", [])
    parts = [f"{c['profile']}: " + G.gated_sentence(_collapse_claim(c), own,
                                                    [f"enough samples for p99 ({c['stack']}, {c['profile']})"])
             for c in col]
    gated = [r for r in summary if r.get("nvme_delta_pct") is not None or r.get("nvme_gate") is not None]
    worst = max(gated, key=lambda r: abs(r.get("nvme_delta_pct") or 0.0), default=None)
    worst_txt = (f" (largest change {worst['nvme_delta_pct']:+.1f} % at {worst['profile']} {worst[AXIS]})"
                 if worst is not None and worst.get("nvme_delta_pct") is not None else "")
    nv = G.gated_sentence(f"the tier-2 device's reads stay within ±{G.NVME_IDLE_PCT:g} % of idle at every point{worst_txt}",
                          own, [NVME_GATE])
    return (f"Stack A at {col[0]['concurrency']} users, collapse point per profile — " + "; ".join(parts)
            + f". NVMe control: {nv}.")


def gates(result: Result) -> list[Gate]:
    return [Gate(f"{NVME_GATE} ({r['profile']}, {r[AXIS]} tokens)", r.get("nvme_gate"), r.get("nvme_delta_pct"),
                 r.get("nvme_limit"), r.get("nvme_note") or "")
            for r in result.facts["summary"]]


register(Hypothesis(
    id="H2A",
    question="Where does the memory-only stack collapse as context grows under each profile, and does its NVMe stay idle?",
    analyze=analyze,
    tables=(Table("summary", SUMMARY_COLUMNS, "per profile x context: TTFT, errors, preemptions, what the pool admits, "
                                              "NVMe reads in the idle window and under load, the NVMe gate"),
            Table("collapse", COLLAPSE_COLUMNS, "collapse point per profile (first context that collapses, cause)")),
    figures=(Figure("p99", "Left: Stack A p99 TTFT (wall ms, log) vs context (tokens) per profile, collapsed points "
                           "circled, the collapse limit (1000 ms of stack time, in wall ms) dotted. Right: tier-2 device "
                           "reads during the load minus the idle window (MiB/s) vs context (tokens)."),),
    verdict=verdict,
    verdict_gates=(),  # each claim reads its own gates inline (gates.gated_sentence)
    gates=gates,
    how_to_read="Collapse (docs/definitions.md): p99 TTFT > 1000 ms of stack time (collapse_limit gives the wall "
                "equivalent), failed requests or preemptions, prompt tokens/s below 90 % of the best so far, or p99 "
                "growing without bound. The NVMe gate (SPEC) is on the tier-2 device: its mean read MiB/s under load "
                "within ±10 % of the idle window's (both at or below 1 MiB/s counts as idle); stack_*_read_MBs are the "
                "stack's own reads, beside it as attribution.",
))
