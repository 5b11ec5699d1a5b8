"""H1: LoRA adapter churn. When a load uses more adapters than the stack keeps resident, what does the
churn cost: adapter loads (tier-2 reads of adapter files), NVMe random-read IOPS, tier-2 bytes, and does
TTFT drift over the run?

Per cell (stack x adapter count x churn policy): adapter loads in the measured window (after warm-up)
and ``lora_reloads`` = all loads of the run minus the adapters it used (the loads a resident set that held
every adapter would not do), loads per 1,000 requests, adapter bytes read from tier 2 (loads x
``engine.lora_adapter_bytes``), KV tier-2 bytes in/out, NVMe read IOPS on the tier-2 device, p50/p99 TTFT and
its drift (median TTFT of the last third of the measured window minus that of the first third).
When the stack has a ``proxy:`` (``kvharness proxy`` doing the adapter I/O for a backend that loads no
adapters), loads, slots and adapter bytes are the proxy's (``lora_by = proxy``), read from its scrapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from kvharness.analysis.plotting import pyplot, save_figure
from kvharness.analysis.cells import cell_row
from kvharness.stats import enough_samples
from kvharness.analysis.registry import Context, Figure, Hypothesis, Result, Table, register
from kvharness.analysis.tiercounts import cell_counters, window_start_ns
from kvharness.stats import percentile
from kvharness.cellfolder import CellFolder

H1_COLUMNS = [
    "stack", "role", "tiered", "lora_adapters", "lora_churn", "max_loras", "lora_by", "status", "n_requests", "n_ok",
    "adapters_used", "lora_loads", "lora_loads_all", "lora_reloads", "loads_per_1k_requests", "adapter_read_bytes",
    "tier2_bytes_in", "tier2_bytes_out", "tier2_read_bytes_total", "nvme_rps_mean", "nvme_rps_p95", "nvme_device",
    "ttft_ms_p50", "ttft_ms_p99", "enough_samples_p99", "ttft_first_third_ms", "ttft_last_third_ms", "ttft_drift_ms",
]


def ttft_drift(records: list[dict], start_ns: int | None) -> tuple[float | None, float | None, float | None]:
    """(median TTFT of the first third, of the last third, last - first) of the measured ok requests, by send time."""
    ok = sorted((r for r in records if r.get("rc") == 0 and r.get("lat_ttft_ms") is not None
                 and r.get("sched_ns") is not None and (start_ns is None or r["sched_ns"] >= start_ns)),
                key=lambda r: r["sched_ns"])
    if len(ok) < 6:
        return None, None, None
    k = len(ok) // 3
    first = percentile([r["lat_ttft_ms"] for r in ok[:k]], 50)
    last = percentile([r["lat_ttft_ms"] for r in ok[-k:]], 50)
    return first, last, last - first


def churn_row(cell_dir: str | Path) -> dict:
    cell_dir = Path(cell_dir)
    row = cell_row(cell_dir)
    folder = CellFolder(cell_dir)
    spec = folder.spec
    records, _ = folder.records()
    c = cell_counters(cell_dir, records)
    lora = spec["load"].get("lora") or {}
    start = window_start_ns(records, float(spec["load"].get("warmup_s") or 0))
    measured = [r for r in records if start is None or (r.get("sched_ns") or 0) >= start]
    used = len({r.get("adapter_id") for r in records if r.get("adapter_id") is not None})
    adapter_bytes = int(spec["engine"].get("lora_adapter_bytes") or 0)
    slots = spec["engine"].get("max_loras")
    if c["lora_by"] == "proxy":  # a proxy in front of the stack did the adapter I/O: its set and file size
        from kvharness.units import parse_bytes

        adapter_bytes, slots = parse_bytes(spec["stack"]["proxy"]["adapter_bytes"]), spec["stack"]["proxy"]["resident"]
    first, last, drift = ttft_drift(records, start)
    row.update({
        "lora_adapters": len(lora.get("adapters") or ()) or lora.get("count"),
        "lora_churn": lora.get("policy"),
        "max_loras": slots,
        "lora_by": c["lora_by"],
        "adapters_used": used,
        "lora_loads": c["lora_loads"],
        "lora_loads_all": c["lora_loads_all"],
        "lora_reloads": max(0, c["lora_loads_all"] - used),
        "loads_per_1k_requests": (1000.0 * c["lora_loads"] / len(measured)) if measured else None,
        "adapter_read_bytes": c["lora_loads"] * adapter_bytes,
        "tier2_bytes_in": c["tier2_bytes_in"],
        "tier2_bytes_out": c["tier2_bytes_out"],
        "tier2_read_bytes_total": c["tier2_bytes_out"] + c["lora_loads"] * adapter_bytes,
        "nvme_rps_mean": c["nvme_rps_mean"], "nvme_rps_p95": c["nvme_rps_p95"], "nvme_device": c["nvme_device"],
        "ttft_first_third_ms": first, "ttft_last_third_ms": last, "ttft_drift_ms": drift,
        "enough_samples_p99": enough_samples(row.get("n_ok"), 99),
    })
    return row


def h1_table(rows: Sequence[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["role"], r["stack"], str(r.get("lora_churn")), r.get("lora_adapters") or 0))


# --------------------------------------------------------------------------- figure

def plot_h1(table: Sequence[dict], path: str | Path) -> Path:
    plt = pyplot()

    panels = [("loads_per_1k_requests", "adapter loads per 1,000 requests", 1.0),
              ("tier2_read_bytes_total", "tier-2 reads: KV + adapters (MiB)", 1 / 2**20),
              ("nvme_rps_mean", "NVMe reads/s (tier-2 device)", 1.0),
              ("ttft_ms_p99", "p99 TTFT (ms)", 1.0),
              ("ttft_drift_ms", "TTFT drift: last third - first third (ms)", 1.0)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8))
    slots = next((r.get("max_loras") for r in table if r.get("max_loras")), None)
    for ax, (key, label, scale) in zip(axes, panels):
        for (stack, churn) in sorted({(r["stack"], r.get("lora_churn")) for r in table}, key=str):
            pts = sorted((r["lora_adapters"], r[key] * scale) for r in table
                         if r["stack"] == stack and r.get("lora_churn") == churn and r.get(key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{stack} {churn}")
        if slots:
            ax.axvline(slots, color="grey", linestyle="--", linewidth=1)
            ax.text(slots, ax.get_ylim()[1], f" {slots} slots", va="top", fontsize=7, color="grey")
        ax.set_xlabel("adapters in the load (count)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("H1: LoRA adapter churn vs adapter count (dashed: resident slots)")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- declaration

def analyze(ctx: Context) -> Result:
    table = h1_table([churn_row(d) for d in ctx.cell_dirs])
    return Result(tables={"summary": table}, figures={"churn": lambda path: plot_h1(table, path)},
                  facts={"rows": table})


def verdict(result: Result) -> str:
    rows = [r for r in result.facts["rows"] if r.get("lora_adapters")]
    if not rows:
        return "No H1 cell finished."
    parts = []
    slots = next((r.get("max_loras") for r in rows if r.get("max_loras") is not None), None)
    within = [r for r in rows if slots is not None and r["lora_adapters"] <= slots]
    if within:
        n = sum(r["lora_reloads"] for r in within)
        parts.append(f"with at most {slots} adapters (the resident slots) the stacks reload {n} adapters")
    over = [r for r in rows if slots is not None and r["lora_adapters"] > slots and r.get("loads_per_1k_requests") is not None]
    if over:
        top = max(r["lora_adapters"] for r in over)
        treated = max(x["role"] for x in over)  # B when present: the treatment
        at_top = {r.get("lora_churn"): r for r in over if r["lora_adapters"] == top and r["role"] == treated}
        loads = ", ".join(f"{churn} {r['loads_per_1k_requests']:.0f}" for churn, r in sorted(at_top.items(), key=str))
        stack = next(iter(at_top.values()))["stack"]
        parts.append(f"at {top} adapters {stack} does {loads} adapter loads per 1,000 requests")
        p99 = sorted(((r["role"], r["stack"], r.get("ttft_ms_p99")) for r in over
                      if r["lora_adapters"] == top and r.get("lora_churn") == "random" and r.get("ttft_ms_p99") is not None))
        if len(p99) > 1:
            parts.append("p99 TTFT under random churn there: " + ", ".join(f"{s} {v:.0f} ms" for _, s, v in p99))
        for stack in sorted({r["stack"] for r in over}):
            mine = [r for r in over if r["stack"] == stack and r.get("ttft_drift_ms") is not None]
            if mine:
                worst = max(mine, key=lambda r: abs(r["ttft_drift_ms"]))
                parts.append(f"{stack}'s TTFT drifts by at most {worst['ttft_drift_ms']:+.1f} ms over a run "
                             f"({worst['lora_adapters']} adapters, {worst['lora_churn']})")
    if not parts:
        return "H1 cells finished but none used LoRA adapters."
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


register(Hypothesis(
    id="H1",
    question="What does LoRA adapter churn beyond the resident slots cost in adapter loads, tier-2 reads, NVMe IOPS and TTFT?",
    analyze=analyze,
    tables=(Table("summary", H1_COLUMNS, "per stack x adapter count x churn policy: adapter loads, tier-2 bytes, NVMe reads, TTFT"),),
    figures=(Figure("churn", "H1: adapter loads per 1,000 requests, tier-2 read bytes (KV + adapter files, MiB), NVMe "
                             "reads/s, p99 TTFT (ms) and TTFT drift (ms) against the number of adapters in the load, one "
                             "line per stack and churn policy; the dashed line is the resident adapter slots."),),
    verdict=verdict,
    how_to_read="lora_loads counts adapter loads after warm-up; lora_reloads = every load of the run minus the adapters "
                "used (0 when the resident slots hold every adapter). adapter_read_bytes = loads x engine.lora_adapter_bytes "
                "(the simulator's files hold that x sim.block_bytes_scale). ttft_drift_ms compares the last third of "
                "the measured requests with the first.",
))
