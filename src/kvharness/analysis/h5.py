"""H5: the working set. As the bytes a load keeps coming back to grow past T0, then T0+T1, where are the
hits served from, how much spills, and what happens to the tail?

The working set of a cell is the KV of its live sessions (sessions x history tokens x KV bytes per token,
``kvharness.plan.workingset``) plus its resident adapter bytes (min(adapters, resident slots) x adapter bytes),
as recorded in ``cell.json``. Per cell: T0/T1/T2 hit ratios (blocks found on each tier, as a share of all
prefix-block lookups), spill volume (bytes written into T1 and T2), and p95/p99 TTFT; the figure draws
T0, T0+T1 and T0+T1+T2 as vertical lines. Two checks of the model against its own parameters: the T0 hit
ratio falls within one sweep step after the working set exceeds T0, and tier-2 hits appear no earlier than
one step before the working set exceeds max(T0, T1) — the tiers are inclusive (T1 keeps a copy of every
registered block, as in KVBM), so that, not T0+T1, is where disk reads start (docs/simulator.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.cells import cell_row
from kvharness.stats import enough_samples
from kvharness.analysis.registry import Context, Figure, Gate, Hypothesis, Result, Table, register
from kvharness.analysis.tiercounts import cell_counters, hit_ratios, window_start_ns
from kvharness.cellfolder import CellFolder

H5_COLUMNS = [
    "stack", "sessions", "lora_adapters", "concurrency", "status", "working_set_bytes", "kv_working_set_bytes",
    "adapter_bytes", "fits_in", "tier0_bytes", "tier1_bytes", "tier2_bytes", "t0_hit_ratio", "t1_hit_ratio",
    "t2_hit_ratio", "tier0_hit_blocks", "tier1_hit_blocks", "tier2_hit_blocks", "lookup_blocks", "spill_bytes", "tier1_bytes_in",
    "tier2_bytes_in", "lora_loads", "n_requests", "n_ok", "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99",
    "enough_samples_p95", "enough_samples_p99",
]
#: the T0 hit ratio has "fallen" at a point once it is below this share of the highest ratio seen before T0
T0_FALL = 0.9


def ws_row(cell_dir: str | Path) -> dict:
    cell_dir = Path(cell_dir)
    row = cell_row(cell_dir)
    folder = CellFolder(cell_dir)
    spec = folder.spec
    records, _ = folder.records()
    c = cell_counters(cell_dir, records)
    ws = spec.get("working_set") or {}
    lora = spec["load"].get("lora") or {}
    adapter_bytes = ws.get("adapter_bytes") or 0
    row.update({k: c[k] for k in ("tier1_bytes_in", "tier2_bytes_in", "lora_loads")})
    start = window_start_ns(records, float(spec["load"].get("warmup_s") or 0))
    prompt = sum(int(r.get("prompt_tokens") or 0) for r in records
                 if r.get("rc") == 0 and (start is None or (r.get("sched_ns") or 0) >= start))
    row.update(hit_ratios(c, prompt, int(spec["engine"]["tokens_per_block"])))
    row.update({
        "sessions": spec["load"]["workload"].get("sessions"),
        "lora_adapters": (len(lora.get("adapters") or ()) or lora.get("count")) if lora else 0,
        "adapter_bytes": adapter_bytes,
        "kv_working_set_bytes": (ws["working_set_bytes"] - adapter_bytes) if ws.get("working_set_bytes") is not None else None,
        "spill_bytes": c["tier1_bytes_in"] + c["tier2_bytes_in"],
        "enough_samples_p95": enough_samples(row.get("n_ok"), 95),
        "enough_samples_p99": enough_samples(row.get("n_ok"), 99),
    })
    return row


def h5_table(rows: Sequence[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["stack"], r.get("working_set_bytes") or 0, r.get("lora_adapters") or 0))


def crossings(table: Sequence[dict]) -> dict:
    """Where the model's tier boundaries show in the data, per stack and adapter set (its sweep points ordered
    by working set).

    ``t0_fall_step``: steps between the first point past T0 and the first point whose T0 hit ratio is
    below T0_FALL x the best ratio before it (0 = at the first point past T0; None = never fell).
    ``t2_first_step``: steps between the first point past max(T0, T1) (the spill onset of inclusive tiers)
    and the first point with tier-2 hits (negative = tier-2 hits before it; None = no tier-2 hits)."""
    out = {}
    for stack, adapters in sorted({(r["stack"], r.get("lora_adapters") or 0) for r in table}):
        pts = [r for r in table if r["stack"] == stack and (r.get("lora_adapters") or 0) == adapters
               and r.get("working_set_bytes") is not None and r.get("t0_hit_ratio") is not None]
        pts.sort(key=lambda r: r["working_set_bytes"])
        if not pts:
            continue
        t0, t1 = pts[0]["tier0_bytes"], pts[0]["tier1_bytes"]
        past_t0 = next((i for i, r in enumerate(pts) if r["working_set_bytes"] > t0), None)
        past_t01 = next((i for i, r in enumerate(pts) if r["working_set_bytes"] > t0 + t1), None)
        onset = next((i for i, r in enumerate(pts) if r["working_set_bytes"] > max(t0, t1)), None)
        best = max((r["t0_hit_ratio"] for r in pts[: past_t0 or len(pts)]), default=None)
        fell = next((i for i, r in enumerate(pts) if best and r["t0_hit_ratio"] < T0_FALL * best), None)
        t2 = next((i for i, r in enumerate(pts) if (r.get("tier2_hit_blocks") or 0) > 0), None)
        out[f"{stack}, {adapters} adapters" if adapters else stack] = {
            "points": len(pts), "past_t0": past_t0, "past_t0_t1": past_t01, "past_onset": onset, "t0_fell_at": fell,
            "t2_first_at": t2,
            "t0_fall_step": (fell - past_t0) if (fell is not None and past_t0 is not None) else None,
            "t2_first_step": (t2 - onset) if (t2 is not None and onset is not None)
            else ((t2 - len(pts)) if t2 is not None else None),
            "t0_fell_ws": pts[fell]["working_set_bytes"] if fell is not None else None,
            "t2_first_ws": pts[t2]["working_set_bytes"] if t2 is not None else None,
            "best_t0_hit_ratio": best,
            "t0_hit_ratio_last": pts[-1]["t0_hit_ratio"], "ws_max": pts[-1]["working_set_bytes"],
            "tier0_bytes": t0, "tier1_bytes": t1,
        }
    return out


# --------------------------------------------------------------------------- figure

def plot_h5(table: Sequence[dict], path: str | Path) -> Path:
    plt = pyplot()

    gib = 2**30
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2))
    pts = sorted((r for r in table if r.get("working_set_bytes")), key=lambda r: r["working_set_bytes"])
    colors = {"t0_hit_ratio": "tab:blue", "t1_hit_ratio": "tab:orange", "t2_hit_ratio": "tab:green"}
    lines = ("-", "--", ":", "-.")
    for n, (stack, adapters) in enumerate(sorted({(r["stack"], r.get("lora_adapters") or 0) for r in pts})):
        mine = [r for r in pts if r["stack"] == stack and (r.get("lora_adapters") or 0) == adapters]
        x = [r["working_set_bytes"] / gib for r in mine]
        tag = f"{stack} {adapters} adapters"
        ls = lines[n % len(lines)]
        for key in colors:
            ax1.plot(x, [100 * (r.get(key) or 0) for r in mine], marker="o", linestyle=ls, color=colors[key],
                     label=f"{tag}: {key[:2].upper()}")
        ax2.plot(x, [(r.get("spill_bytes") or 0) / gib for r in mine], marker="o", linestyle=ls, label=tag)
        for q, color in ((95, "tab:purple"), (99, "tab:red")):
            ax3.plot(x, [r.get(f"ttft_ms_p{q}") for r in mine], marker="o", linestyle=ls, color=color, label=f"{tag}: p{q}")
    if pts:
        t0, t1, t2 = (pts[0][k] / gib for k in ("tier0_bytes", "tier1_bytes", "tier2_bytes"))
        for ax in (ax1, ax2, ax3):
            for xv, name in ((t0, "T0"), (t0 + t1, "T0+T1"), (t0 + t1 + t2, "T0+T1+T2")):
                ax.axvline(xv, color="grey", linestyle=":", linewidth=1)
                ax.text(xv, 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=7, color="grey")
            ax.set_xscale("log")
            ax.set_xlabel("working set: live-session KV + resident adapters (GiB, log)")
            ax.grid(alpha=0.3)
            ax.set_xlim(min(r["working_set_bytes"] for r in pts) / gib * 0.8, (t0 + t1 + t2) * 1.3)
    ax1.set_ylabel("hit ratio (% of prefix-block lookups)")
    ax2.set_ylabel("spill volume (GiB written into T1 and T2)")
    ax3.set_ylabel("TTFT (ms)")
    for ax in (ax1, ax2, ax3):
        ax.legend(fontsize=7)
    fig.suptitle("H5: hit ratios, spill and tail TTFT vs working-set bytes (dotted: tier capacities)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    table = h5_table([ws_row(d) for d in ctx.cell_dirs])
    return Result(tables={"summary": table}, figures={"working_set": lambda path: plot_h5(table, path)},
                  facts={"rows": table, "crossings": crossings(table)})


def _gib(b) -> str:
    return f"{b / 2**30:.2f} GiB"


def verdict(result: Result) -> str:
    cross = result.facts["crossings"]
    if not cross:
        return "No H5 cell finished."
    parts = []
    for stack, c in cross.items():
        t0, t01 = c["tier0_bytes"], c["tier0_bytes"] + c["tier1_bytes"]
        if c["past_t0"] is None:
            parts.append(f"{stack}: the sweep's working set (up to {_gib(c['ws_max'])}) never exceeds T0 ({_gib(t0)})")
            continue
        if c["t0_fell_at"] is None:
            fall = f"its T0 hit ratio never falls below {T0_FALL:.0%} of its best ({c['best_t0_hit_ratio']:.0%})"
        else:
            fall = (f"its T0 hit ratio falls from {c['best_t0_hit_ratio']:.0%} (best below T0 = {_gib(t0)}) once the "
                    f"working set reaches {_gib(c['t0_fell_ws'])}, to {c['t0_hit_ratio_last']:.0%} at {_gib(c['ws_max'])}")
        if c["t2_first_at"] is None:
            t2 = "no tier-2 hit in the sweep"
        else:
            t2 = (f"tier-2 hits first appear at {_gib(c['t2_first_ws'])} (max(T0, T1) = "
                  f"{_gib(max(t0, c['tier1_bytes']))}, T0+T1 = {_gib(t01)})")
        parts.append(f"{stack}: {fall}; {t2}")
    return "; ".join(parts) + "."


def gates(result: Result) -> list[Gate]:
    out = []
    for stack, c in result.facts["crossings"].items():
        s = c["t0_fall_step"]
        out.append(Gate(f"{stack}: T0 hit ratio falls within one step past T0", None if s is None else 0 <= s <= 1, s,
                        "0..1 sweep steps after the first point past T0"))
        s = c["t2_first_step"]
        out.append(Gate(f"{stack}: tier-2 hits only past max(T0, T1)", None if s is None else -1 <= s, s,
                        ">= -1 sweep steps from the first point past max(T0, T1) (inclusive tiers)"))
    return out


register(Hypothesis(
    id="H5",
    question="As the working set grows past T0 and T0+T1, where are hits served from, how much spills, and what does the tail do?",
    analyze=analyze,
    tables=(Table("summary", H5_COLUMNS, "per stack x sessions x adapter set: working-set bytes, tier hit ratios, spill, TTFT"),),
    figures=(Figure("working_set", "H5: T0/T1/T2 hit ratios (% of prefix-block lookups), spill volume (GiB written into "
                                   "T1 and T2) and p95/p99 TTFT (ms) against the working set (GiB, log scale: KV of the "
                                   "live sessions + resident adapter bytes); dotted lines at T0, T0+T1 and T0+T1+T2."),),
    verdict=verdict,
    gates=gates,
    how_to_read="working_set_bytes = sessions x history tokens x KV bytes per token + min(adapters, resident slots) x "
                "adapter bytes. A hit ratio is the share of prompt blocks looked up that the tier served. A cell has "
                "sessions x (turns + resume turns) requests: its p95/p99 are marked by enough_samples_p95/_p99 "
                "(kvharness.analysis.evidence: >= 100 / >= 500 successful requests).",
))
