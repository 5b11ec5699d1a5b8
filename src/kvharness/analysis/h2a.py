"""H2A: the memory-only control. Stack A under profiles comfy -> spill -> stress, context swept: the
collapse point per profile, and the control gate "A's NVMe reads stay within +-10 % of idle", measured
against the idle window each cell records before its load starts (``load.idle_window_s``).

A memory-only stack has no disk tier, so whatever its pool does, the tier-2 device must not see it. The
gate compares the stack's own storage reads (its process tree's /proc io, recorded by the cell at idle
start, load start and load end) during the load with the idle window's; without them, the tier-2
device's median read MB/s per tick (shared with the rest of the machine). A difference below an absolute
noise floor (``NVME_FLOOR_MBS``, 2 MB/s) also passes; the table says which basis and bound applied. The
stack's own tier-2 file reads (simulator ground truth) and the device's reads sit beside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.knee import collapse_point
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.analysis.spill import envelope, idle_nvme, spill_rows

AXIS = "context_tokens"
PROFILE_ORDER = ("comfy", "spill", "stress")
NVME_TOLERANCE_PCT = 10.0
NVME_FLOOR_MBS = 2.0
SUMMARY_COLUMNS = [
    "stack", "profile", "context_tokens", "concurrency", "status", "n_ok", "n_errors", "error_classes_json",
    "preemptions", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "p99_enough_samples", "req_s", "prompt_tok_s", "pool_bytes",
    "admits_context_tokens", "working_set_bytes", "fits_in", "collapsed", "nvme_device", "idle_window_s",
    "stack_idle_read_MBs", "stack_load_read_MBs", "idle_rMBs", "load_rMBs", "nvme_basis", "nvme_delta_MBs",
    "nvme_delta_pct", "nvme_bound", "nvme_gate",
    "tier2_file_read_bytes",
]
COLLAPSE_COLUMNS = ["stack", "profile", "concurrency", "pool_bytes", "collapse_at", "collapse_cause", "collapse_reason",
                    "censored", "envelope_context_tokens", "envelope_note", "admits_context_tokens"]


def nvme_gate(idle: dict, tolerance_pct: float = NVME_TOLERANCE_PCT, floor_mbs: float = NVME_FLOOR_MBS) -> dict:
    """Load-window reads within +-tolerance of the idle window's, or within the absolute floor.

    The reads compared are the stack's own (its process tree's storage read bytes, /proc/<pid>/io) when the
    cell recorded them, so a neighbour on a shared disk cannot fail the control; else the tier-2 device's
    median read MB/s (``nvme_basis`` says which)."""
    if idle.get("stack_idle_read_MBs") is not None and idle.get("stack_load_read_MBs") is not None:
        i, l, basis = idle["stack_idle_read_MBs"], idle["stack_load_read_MBs"], "stack process reads"
    else:
        i, l, basis = idle.get("idle_rMBs"), idle.get("load_rMBs"), "tier-2 device reads (median per tick)"
    if i is None or l is None:
        why = "no idle window (load.idle_window_s is 0)" if idle.get("idle_window_s") is None else "no NVMe telemetry"
        return {"nvme_delta_MBs": None, "nvme_delta_pct": None, "nvme_bound": why, "nvme_gate": None, "nvme_basis": None}
    delta = l - i
    pct = 100.0 * delta / i if i else None
    allowed = max(tolerance_pct / 100.0 * i, floor_mbs)
    bound = (f"±{tolerance_pct:g} % of idle" if tolerance_pct / 100.0 * i >= floor_mbs
             else f"noise floor {floor_mbs:g} MB/s")
    if delta < -allowed:
        # fewer reads under load than at idle: the stack cannot cause that; the idle baseline caught other traffic
        return {"nvme_delta_MBs": delta, "nvme_delta_pct": pct, "nvme_gate": True, "nvme_basis": basis,
                "nvme_bound": f"{bound}; below idle (the idle window caught other traffic)"}
    return {"nvme_delta_MBs": delta, "nvme_delta_pct": pct, "nvme_bound": bound, "nvme_gate": delta <= allowed,
            "nvme_basis": basis}


def h2a_tables(cell_dirs: Sequence[Path], rows: Sequence[dict], tol: float = NVME_TOLERANCE_PCT,
               floor: float = NVME_FLOOR_MBS):
    dirs = {Path(d).name: Path(d) for d in cell_dirs}
    points = spill_rows(cell_dirs, rows)
    for p in points:
        idle = idle_nvme(dirs[p["cell"]])
        p.update(idle)
        p.update(nvme_gate(idle, tol, floor))
    order = [p for p in PROFILE_ORDER if any(r["profile"] == p for r in points)]
    order += sorted({r["profile"] for r in points} - set(order))
    summary, collapse = [], []
    for prof in order:
        for stack in sorted({r["stack"] for r in points if r["profile"] == prof}):
            steps = sorted((r for r in points if r["profile"] == prof and r["stack"] == stack), key=lambda r: r[AXIS])
            col = collapse_point(steps, axis=AXIS, throughput_key="prompt_tok_s")
            env, note = envelope(steps, col, AXIS)
            collapse.append({"stack": stack, "profile": prof, "concurrency": steps[0]["concurrency"],
                             "pool_bytes": steps[0]["pool_bytes"], **{k: col[k] for k in ("collapse_at", "collapse_cause",
                             "collapse_reason", "censored")}, "envelope_context_tokens": env, "envelope_note": note,
                             "admits_context_tokens": steps[0]["admits_context_tokens"]})
            for i, s in enumerate(steps):
                summary.append({**{k: s.get(k) for k in SUMMARY_COLUMNS},
                                "collapsed": col["collapse_index"] is not None and i >= col["collapse_index"]})
    return summary, collapse, order


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
    ax1.axhline(1000, color="grey", ls=":", lw=1)
    ax1.set_xlabel("context (tokens)")
    ax1.set_ylabel("p99 TTFT (ms)")
    ax1.set_yscale("log")
    ax1.set_title("Stack A p99 TTFT per profile; circled = collapsed")
    ax1.legend(fontsize=7)
    ax2.axhline(0, color="grey", lw=1)
    ax2.set_xlabel("context (tokens)")
    ax2.set_ylabel("NVMe reads, load minus idle (MB/s)")
    ax2.set_title("tier-2 device reads vs the idle window")
    ax2.legend(fontsize=7)
    save_figure(fig, path)


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    summary, collapse, order = h2a_tables(ctx.cell_dirs, ctx.rows)
    return Result(tables={"summary": summary, "collapse": collapse},
                  figures={"p99": lambda path: plot_h2a(summary, order, path)},
                  facts={"summary": summary, "collapse": collapse})


def verdict(result: Result) -> str:
    col, summary = result.facts["collapse"], result.facts["summary"]
    if not col:
        return "No H2A cell finished."
    hit = [f"at {c['collapse_at']} tokens under {c['profile']} ({c['collapse_cause']}: {c['collapse_reason']})"
           for c in col if c["collapse_at"] is not None]
    held = [c for c in col if c["collapse_at"] is None]
    parts = hit + ([f"not within the sweep (up to {held[0]['envelope_context_tokens']} tokens) under "
                    + " and ".join(c["profile"] for c in held)] if held else [])
    gated = [r for r in summary if r.get("nvme_gate") is not None]
    if not gated:
        nv = "its NVMe gate could not be evaluated (no idle window or no NVMe telemetry)"
    else:
        failed = [r for r in gated if not r["nvme_gate"]]
        worst = max(gated, key=lambda r: r["nvme_delta_MBs"])
        if not failed:
            nv = (f"its NVMe reads stay within the idle bound at every point (largest rise "
                  f"{worst['nvme_delta_MBs']:+.2f} MB/s over idle)")
        else:
            where = ", ".join(f"{r['profile']} {r[AXIS]}" for r in failed)
            nv = (f"its NVMe reads exceed the idle bound at {len(failed)} of {len(gated)} points ({where}; largest rise "
                  f"{worst['nvme_delta_MBs']:+.2f} MB/s over idle)")
    return f"Stack A at {col[0]['concurrency']} users collapses " + ", and ".join(parts) + f"; {nv}."


def gates(result: Result) -> list[Gate]:
    out = []
    for r in result.facts["summary"]:
        out.append(Gate(f"A's NVMe reads within ±10 % of idle ({r['profile']}, {r[AXIS]} tokens)", r.get("nvme_gate"),
                        r.get("nvme_delta_MBs"), r.get("nvme_bound")))
    return out


register(Hypothesis(
    id="H2A",
    question="Where does the memory-only stack collapse as context grows under each profile, and does its NVMe stay idle?",
    analyze=analyze,
    tables=(Table("summary", SUMMARY_COLUMNS, "per profile x context: TTFT, errors, preemptions, what the pool admits, "
                                              "NVMe reads in the idle window and under load, the NVMe gate"),
            Table("collapse", COLLAPSE_COLUMNS, "collapse point per profile (first context that collapses, cause)")),
    figures=(Figure("p99", "Left: Stack A p99 TTFT (ms, log) vs context (tokens) per profile, collapsed points circled, "
                           "1 s limit dotted. Right: tier-2 device reads during the load minus the idle window (MB/s) "
                           "vs context (tokens)."),),
    verdict=verdict,
    gates=gates,
    how_to_read="Collapse (docs/definitions.md): p99 TTFT > 1 s, failed requests or preemptions, prompt tokens/s below "
                "90 % of the best so far, or p99 growing without bound. The NVMe gate passes when the load's mean read "
                "MB/s is within ±10 % of the idle window's or within the noise floor, whichever is larger.",
))
