"""H7: telemetry cadence. What does sampling cost (collector CPU, p99 TTFT impact), and at which
cadence do tail requests stay attributable to what the machine was doing?

Per cadence: the collector's CPU as % of one core and its achieved interval; p99 TTFT and its change
against the slowest cadence measured (the least-observed run is the reference); and, for the requests
at or above the cell's p99 TTFT, the share whose span is covered by present ticks (``tail_covered``)
and the share that last at least one sampling window, so a tick can resolve them (``tail_resolved``).
A cadence keeps tail events **attributable** when both shares are >= ``ATTRIBUTABLE_SHARE`` (95 %).

The verdict answers all three parts: collector cost (gated on telemetry alignment: a collector that
missed its ticks did not cost what its cadence would), p99 impact (the reps' 95 % t intervals when a
cadence has >= 2 reps, ``kvharness.stats.compare``; else it says one repetition leaves launch-to-launch
variation uncovered; gated on the p99 samples), and attribution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis import evidence, gates as G
from kvharness.analysis.cells import cell_row
from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.stats import compare, mean_ci, pct_delta, percentile, samples
from kvharness.cellfolder import CellFolder

OVERHEAD_LIMIT_PCT = 3.0
ATTRIBUTABLE_SHARE = 0.95   # a cadence keeps tail events attributable when >= 95 % are covered and resolved
POINT_KEYS = ("stack", "telemetry_interval_ms")
H7_COLUMNS = [
    "stack", "telemetry_interval_ms", "interval_achieved_median_ms", "interval_achieved_p99_ms", "ticks_missed",
    "alignment", "collector_cpu_pct_of_core", "overhead_ok", "n_ok", "ttft_ms_p50", "ttft_ms_p99",
    "p99_impact_pct", "goodput_req_s", "good_fraction", "tail_requests", "tail_covered", "tail_resolved", "code_fingerprint",
]

IMPACT_COLUMNS = [
    "stack", "telemetry_interval_ms", "reference_interval_ms", "n_reps", "ttft_ms_p99_mean", "ttft_ms_p99_ci_low",
    "ttft_ms_p99_ci_high", "p99_impact_pct", "p99_ratio", "p99_ratio_ci95_low", "p99_ratio_ci95_high", "p99_outcome",
    "p99_differs", "differs_method", "cpu_pct_max", "tail_covered_min",
    "tail_resolved_min", "attributable",
]


def cadence_row(cell_dir: str | Path) -> dict:
    from kvharness.telemetry.read import TickIndex, attributable_fraction

    cell_dir = Path(cell_dir)
    folder = CellFolder(cell_dir)
    read = folder.records()
    row = cell_row(cell_dir, folder, read)
    spec, collector = folder.spec, folder.collector_summary
    records = read[0]
    ok = [r for r in records if r.get("rc") == 0 and r.get("lat_ttft_ms") is not None]
    p99 = percentile([r["lat_ttft_ms"] for r in ok], 99)
    tail = [r for r in ok if p99 is not None and r["lat_ttft_ms"] >= p99]
    interval_ms = float(spec["telemetry"]["interval_ms"])
    ticks = TickIndex.from_cell(cell_dir)
    cpu = collector.get("collector_cpu_pct_of_core")
    return {
        **row,
        "telemetry_interval_ms": interval_ms,
        "interval_achieved_median_ms": collector.get("interval_achieved_median_ms"),
        "interval_achieved_p99_ms": collector.get("interval_achieved_p99_ms"),
        "ticks_missed": collector.get("ticks_missed"),
        "collector_cpu_pct_of_core": cpu,
        "overhead_ok": cpu is not None and cpu < OVERHEAD_LIMIT_PCT,
        "tail_requests": len(tail),
        "tail_covered": attributable_fraction(tail, ticks) if tail else None,
        "tail_resolved": (sum(1 for r in tail if r["lat_ttft_ms"] >= interval_ms) / len(tail)) if tail else None,
    }


def h7_table(rows: Sequence[dict]) -> list[dict]:
    """Rows per stack x cadence, with p99 impact against the stack's slowest cadence."""
    table = []
    for stack in sorted({r["stack"] for r in rows}):
        mine = sorted((r for r in rows if r["stack"] == stack), key=lambda r: r["telemetry_interval_ms"])
        reference = mine[-1]
        for r in mine:
            table.append({**{k: r.get(k) for k in H7_COLUMNS}, "cell": r.get("cell"), "_ttft_ms": r.get("_ttft_ms"),
                          "p99_impact_pct": pct_delta(r.get("ttft_ms_p99"), reference.get("ttft_ms_p99")),
                          "reference_interval_ms": reference["telemetry_interval_ms"]})
    return table


def plot_h7(table: Sequence[dict], path: str | Path) -> Path:
    """Collector CPU (% of a core) and p99 TTFT vs cadence per stack: every cell a dot, the mean per
    cadence a line; the overhead limit dashed."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stack in sorted({r["stack"] for r in table}):
        mine = [r for r in table if r["stack"] == stack]
        for ax, key in ((ax1, "collector_cpu_pct_of_core"), (ax2, "ttft_ms_p99")):
            pts = [(r["telemetry_interval_ms"], r[key]) for r in mine if r.get(key) is not None]
            if not pts:
                continue
            xs = sorted({x for x, _ in pts})
            means = [sum(y for x2, y in pts if x2 == x) / sum(1 for x2, _ in pts if x2 == x) for x in xs]
            line, = ax.plot(xs, means, marker="o", label=stack)
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=12, alpha=0.5, color=line.get_color())
    ax1.axhline(OVERHEAD_LIMIT_PCT, color="grey", linestyle="--", linewidth=1, label=f"limit {OVERHEAD_LIMIT_PCT:g} %")
    ax1.set_ylabel("collector CPU (% of one core)")
    ax2.set_ylabel("p99 TTFT (ms)")
    cadences = sorted({r["telemetry_interval_ms"] for r in table})
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(cadences, [f"{x:g}" for x in cadences])
        ax.set_xlabel("telemetry interval (ms)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax1.set_title("what sampling costs")
    ax2.set_title("what the load sees")
    fig.suptitle("H7: telemetry cadence (dots: cells; lines: mean per cadence)")
    return save_figure(fig, path, rect=(0, 0, 1, 0.94))


# --------------------------------------------------------------------------- declaration

def impact_rows(table: Sequence[dict]) -> list[dict]:
    """Per stack x cadence over its reps: mean p99 TTFT (descriptive 95 % t interval), its change against
    the slowest cadence as the pooled-p99 ratio with its hierarchical-bootstrap interval and the three-outcome
    comparison of ``kvharness.stats.compare`` (differs / equivalent within ±5 % / inconclusive; none
    without per-request samples), and whether tail events stay attributable (every rep's tail covered and
    resolved >= ``ATTRIBUTABLE_SHARE``)."""
    out = []
    for stack in sorted({r["stack"] for r in table}):
        mine = [r for r in table if r["stack"] == stack]
        cadences = sorted({r["telemetry_interval_ms"] for r in mine})
        ref_rows = [r for r in mine if r["telemetry_interval_ms"] == cadences[-1]]
        for c in cadences:
            reps = [r for r in mine if r["telemetry_interval_ms"] == c]
            p99 = [r.get("ttft_ms_p99") for r in reps]
            ci = mean_ci(p99)
            delta = pct_delta(ci["mean"], mean_ci([r.get("ttft_ms_p99") for r in ref_rows])["mean"])
            cmp = _compare(ref_rows, reps) if c != cadences[-1] else {}
            cov = [r.get("tail_covered") for r in reps]
            res = [r.get("tail_resolved") for r in reps]
            known = all(v is not None for v in cov + res)
            out.append({"stack": stack, "telemetry_interval_ms": c, "reference_interval_ms": cadences[-1],
                        "n_reps": len(reps), "ttft_ms_p99_mean": ci["mean"], "ttft_ms_p99_ci_low": ci["ci_low"],
                        "ttft_ms_p99_ci_high": ci["ci_high"], "p99_impact_pct": delta,
                        "p99_ratio": cmp.get("ratio"), "p99_ratio_ci95_low": cmp.get("ci95_low"),
                        "p99_ratio_ci95_high": cmp.get("ci95_high"), "p99_outcome": cmp.get("outcome"),
                        "p99_differs": {"differs": True, "equivalent": False}.get(cmp.get("outcome")),
                        "differs_method": cmp.get("method"),
                        "cpu_pct_max": max((r.get("collector_cpu_pct_of_core") or 0.0 for r in reps), default=None),
                        "tail_covered_min": min(cov) if known else None, "tail_resolved_min": min(res) if known else None,
                        "attributable": (min(cov) >= ATTRIBUTABLE_SHARE and min(res) >= ATTRIBUTABLE_SHARE) if known else None})
    return out


def _compare(ref_rows: Sequence[dict], rows: Sequence[dict]) -> dict:
    """stats.compare of the cadence's p99 against the reference cadence's, from the cells' per-request
    TTFTs; {} when a cell has none (hand-made rows) or there is a single rep on either side."""
    a, b = [samples(r) for r in ref_rows], [samples(r) for r in rows]
    if len(a) < 2 or len(b) < 2 or any(x is None or len(x) == 0 for x in a + b):
        return {}
    return compare(a, b, 99)


def claim_gates(table: Sequence[dict]) -> list[Gate]:
    """The shared gates the verdict's claims read, evaluated on H7's cells and per-cadence points."""
    if not table:
        return []
    points = evidence.aggregate(table, POINT_KEYS, ("ttft_ms_p99",))
    return [G.samples_gate(table), G.alignment_gate(table), G.cov_p99_gate(points, POINT_KEYS),
            G.reproducible_p99_gate(table, POINT_KEYS)]


def analyze(ctx: Context) -> Result:
    table = h7_table([cadence_row(d) for d in ctx.cell_dirs])
    impact = impact_rows(table)
    return Result(tables={"summary": table, "impact": impact}, figures={"cadence": lambda path: plot_h7(table, path)},
                  facts={"rows": table, "impact": impact, "claim_gates": claim_gates(table)})


COST_DEPENDS = ("telemetry alignment",)
P99_DEPENDS = ("enough samples for p99", "CoV of p99 TTFT across reps", "p99 TTFT reproducible across reps")
TAIL_DEPENDS = ("enough samples for p99",)


def _cost(rows: Sequence[dict]) -> str:
    ok = [r for r in rows if r.get("overhead_ok")]
    fastest_ok = min((r["telemetry_interval_ms"] for r in ok), default=None)
    worst = max(rows, key=lambda r: r.get("collector_cpu_pct_of_core") or 0)
    head = (f"under {OVERHEAD_LIMIT_PCT:g} % of a core down to a {fastest_ok:g} ms cadence"
            if fastest_ok is not None else f"over {OVERHEAD_LIMIT_PCT:g} % of a core at every cadence")
    return f"{head} (costliest: {(worst.get('collector_cpu_pct_of_core') or 0):.2f} % at {worst['telemetry_interval_ms']:g} ms)"


def _impact(impact: Sequence[dict]) -> str:
    faster = [r for r in impact if r["telemetry_interval_ms"] != r["reference_interval_ms"] and r["p99_impact_pct"] is not None]
    if not faster:
        return "not measurable (one cadence)"
    worst = max(faster, key=lambda r: abs(r["p99_impact_pct"]))
    ref = worst["reference_interval_ms"]
    if all(r["p99_outcome"] is None for r in faster):
        return (f"at most {worst['p99_impact_pct']:+.1f} % against the {ref:g} ms cadence (at "
                f"{worst['telemetry_interval_ms']:g} ms), without an interval")
    parts = [f"{r['telemetry_interval_ms']:g} ms {r['p99_ratio']:.2f}× [{r['p99_ratio_ci95_low']:.2f}, "
             f"{r['p99_ratio_ci95_high']:.2f}] ({r['p99_outcome']})" for r in faster if r["p99_outcome"] and r["p99_ratio"]]
    return f"p99 vs the {ref:g} ms cadence: " + ", ".join(parts)


def _tail(impact: Sequence[dict]) -> str:
    known = [r for r in impact if r["attributable"] is not None]
    if not known:
        return "no tail request to attribute"
    held = [r["telemetry_interval_ms"] for r in known if r["attributable"]]
    lost = [r for r in known if not r["attributable"]]
    share = f"≥ {ATTRIBUTABLE_SHARE:.0%} of p99-tail requests covered by ticks and lasting a window"
    if not lost:
        return f"attributable at every cadence ({share})"
    if not held:
        worst = min(lost, key=lambda r: min(r["tail_covered_min"], r["tail_resolved_min"]))
        return (f"not attributable at any cadence (at {worst['telemetry_interval_ms']:g} ms covered "
                f"{worst['tail_covered_min']:.0%}, resolved {worst['tail_resolved_min']:.0%})")
    not_at = ", ".join(f"{r['telemetry_interval_ms']:g} ms (covered {r['tail_covered_min']:.0%}, resolved "
                       f"{r['tail_resolved_min']:.0%})" for r in sorted(lost, key=lambda r: r["telemetry_interval_ms"]))
    return f"attributable at {', '.join(f'{c:g}' for c in sorted(held))} ms ({share}), not at {not_at}"


def verdict(result: Result) -> str:
    rows, impact = result.facts["rows"], result.facts["impact"]
    if not rows:
        return "No H7 cell finished."
    own = gates(result) + result.facts.get("claim_gates", [])
    out = []
    for stack in sorted({r["stack"] for r in rows}):
        mine, imp = [r for r in rows if r["stack"] == stack], [r for r in impact if r["stack"] == stack]
        out.append(f"{stack}: collector cost {G.gated_sentence(_cost(mine), own, COST_DEPENDS)}; "
                   f"p99 TTFT impact {G.gated_sentence(_impact(imp), own, P99_DEPENDS)}; "
                   f"tail events {G.gated_sentence(_tail(imp), own, TAIL_DEPENDS)}.")
    return " ".join(out)


def gates(result: Result) -> list[Gate]:
    return [Gate(f"collector overhead at {r['telemetry_interval_ms']:g} ms", r.get("overhead_ok"),
                 r.get("collector_cpu_pct_of_core"), f"< {OVERHEAD_LIMIT_PCT:g} % of a core")
            for r in result.facts["rows"]]


register(Hypothesis(
    id="H7",
    question="What does the telemetry cadence cost (collector CPU, p99 impact), and do tail events stay attributable?",
    analyze=analyze,
    tables=(Table("summary", H7_COLUMNS, "per cadence: collector cost, p99 impact, tail attribution",
                  key_columns=("stack", "telemetry_interval_ms", "interval_achieved_median_ms", "alignment",
                               "collector_cpu_pct_of_core", "overhead_ok", "ttft_ms_p99", "p99_impact_pct",
                               "goodput_req_s", "good_fraction", "tail_covered", "tail_resolved")),
            Table("impact", IMPACT_COLUMNS, "per cadence over its reps: p99 TTFT with its 95 % t interval, its change "
                                            "against the slowest cadence, and whether tail events stay attributable")),
    figures=(Figure("cadence", "Left: the collector's CPU (% of one core) vs telemetry interval (ms, log) per stack, "
                               "the 3 % limit dashed. Right: p99 TTFT (ms) vs telemetry interval (ms, log). Dots are "
                               "cells (repetitions), lines the mean per cadence."),),
    verdict=verdict,
    verdict_gates=(),  # each claim reads its own gates inline (gates.gated_sentence)
    gates=gates,
    how_to_read="p99_impact_pct compares each cadence's p99 TTFT with the slowest cadence measured (impact.csv: "
                "over reps, with the 95 % t intervals when a cadence has >= 2 reps); tail_covered is the share of "
                "p99-tail requests whose span has telemetry ticks, tail_resolved the share lasting at least one "
                "window; a cadence keeps tail events attributable when both are >= 95 %.",
))
