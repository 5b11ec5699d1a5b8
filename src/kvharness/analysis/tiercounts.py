"""Counter totals of a cell over its measured window: KV tiers and LoRA loads from ``dynkv.jsonl``,
NVMe reads from ``sysmon.jsonl``.

Every tick of ``dynkv.jsonl`` holds counter *deltas* since the previous tick. The measured window starts
``warmup_s`` after the first scheduled request (the records' ``sched_ns`` and the ticks' ``mono_ns`` are the
same monotonic clock); a tick counts when the interval it covers ends inside the window (so the tick that
straddles the end of the warm-up counts: "nothing after warm-up" is never flattered). ``*_all`` totals
count every tick of the cell.
"""

from __future__ import annotations

from pathlib import Path

from kvharness.analysis.records import read_jsonl
from kvharness.stats import mean, percentile
from kvharness.cellfolder import CellFolder
from kvharness.cellfiles import DYNKV_JSONL, SCRAPES_JSONL_GZ, SYSMON_JSONL

TIER_KEYS = ("hits", "misses", "hit_tokens", "miss_tokens", "bytes_in", "bytes_out", "evictions")
SIM_KEYS = ("lora_loads", "lora_hits", "tier2_file_read_bytes", "tier2_file_write_bytes")


def window_start_ns(records: list[dict], warmup_s: float) -> int | None:
    sched = [r["sched_ns"] for r in records if r.get("sched_ns") is not None]
    return int(min(sched) + warmup_s * 1e9) if sched else None


def _ticks(path: Path, start_ns: int | None, interval_ns: int) -> list[dict]:
    if not path.exists():
        return []
    ticks, _ = read_jsonl(path)
    if start_ns is None:
        return ticks
    return [t for t in ticks if t.get("mono_ns") is not None and t["mono_ns"] > start_ns]


PROXY_COUNTERS = {"kvproxy_lora_loads_total": "lora_loads", "kvproxy_lora_hits_total": "lora_hits",
                  "kvproxy_lora_read_bytes_total": "lora_file_read_bytes"}


def proxy_counters(cell_dir: Path, start_ns: int | None) -> dict | None:
    """LoRA counters of a `kvharness proxy` in front of the stack (its ``proxy`` scrape, read from the raw
    ``scrapes.jsonl.gz``): {key: in the window, key_all: whole run}; None when the cell had no proxy."""
    import gzip
    import json

    path = cell_dir / SCRAPES_JSONL_GZ
    if not path.exists():
        return None
    series: list[tuple[int, dict]] = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed collector
            if rec.get("source") != "proxy" or not rec.get("body"):
                continue
            values = {}
            for ln in rec["body"].splitlines():
                name, _, value = ln.partition(" ")
                if name in PROXY_COUNTERS:
                    values[PROXY_COUNTERS[name]] = int(float(value))
            series.append((int(rec.get("mono_ns") or 0), values))
    if not series:
        return None
    first, last = series[0][1], series[-1][1]
    base = next((v for t, v in reversed(series) if start_ns is not None and t <= start_ns), first)
    out = {}
    for key in PROXY_COUNTERS.values():
        out[key] = last.get(key, 0) - base.get(key, 0)
        out[f"{key}_all"] = last.get(key, 0)  # the proxy starts with the stack: its counters start at 0
    return out


def cell_counters(cell_dir: str | Path, records: list[dict] | None = None) -> dict:
    """{tier0_hits, ..., tier2_bytes_out, lora_loads, lora_hits, nvme_rps_mean, nvme_rps_p95, ...} over the
    measured window, plus ``lora_loads_all`` over the whole load (warm-up included)."""
    cell_dir = Path(cell_dir)
    spec = CellFolder(cell_dir).spec
    if records is None:
        records, _ = CellFolder(cell_dir).records()
    interval_ns = int(spec["telemetry"]["interval_ms"] * 1e6)
    start = window_start_ns(records, float(spec["load"].get("warmup_s") or 0))
    out: dict = {}
    for label, since in (("", start), ("_all", None)):
        ticks = _ticks(cell_dir / DYNKV_JSONL, since, interval_ns)
        sums = {f"tier{i}_{k}": 0 for i in range(3) for k in TIER_KEYS}
        sums.update({k: 0 for k in SIM_KEYS})
        sums.update({f"sim_tier{i}_{k}_blocks": 0 for i in range(3) for k in ("hit", "miss")})
        sums["matched_tokens"] = 0
        for t in ticks:
            for raw in (t.get("raw") or {}).values():  # the simulator's own per-tier block counts (ground truth)
                for i in range(3):
                    sums[f"sim_tier{i}_hit_blocks"] += raw.get(f"kvsim_tier_hit_blocks{{tier={i}}}") or 0
                    sums[f"sim_tier{i}_miss_blocks"] += raw.get(f"kvsim_tier_miss_blocks{{tier={i}}}") or 0
            sums["matched_tokens"] += (t.get("server") or {}).get("matched_tokens") or 0
            for i in range(3):
                tier = t.get(f"tier{i}") or {}
                for k in TIER_KEYS:
                    sums[f"tier{i}_{k}"] += tier.get(k) or 0
            sim = t.get("sim") or {}
            for k in SIM_KEYS:
                sums[k] += sim.get(k) or 0
        if label:
            out["lora_loads_all"] = sums["lora_loads"]
        else:
            out.update(sums)
            out["ticks"] = len(ticks)
    proxy = proxy_counters(cell_dir, start) if spec["stack"].get("proxy") else None
    if proxy is not None:  # the adapters were the proxy's, not the engine's
        out.update({"lora_loads": proxy["lora_loads"], "lora_loads_all": proxy["lora_loads_all"],
                    "lora_hits": proxy["lora_hits"], "lora_file_read_bytes": proxy["lora_file_read_bytes"]})
    out["lora_by"] = "proxy" if proxy is not None else "engine"
    sys_ticks = _ticks(cell_dir / SYSMON_JSONL, start, interval_ns)
    end = max((r.get("end_ns") or 0 for r in records), default=0)
    rps = [t["nvme"]["rps"] for t in sys_ticks
           if t.get("nvme") and t["nvme"].get("rps") is not None and (not end or t["mono_ns"] <= end + interval_ns)]
    out["nvme_rps_mean"] = mean(rps)
    out["nvme_rps_p95"] = percentile(rps, 95)
    out["nvme_device"] = next((t["nvme"].get("device") for t in sys_ticks if t.get("nvme")), None)
    return out


def hit_ratios(c: dict, prompt_tokens: int | None = None, tokens_per_block: int | None = None) -> dict:
    """T0/T1/T2 hit ratios: blocks found on each tier as a share of all prompt blocks looked up.

    The simulator's ground truth (``kvsim_tier_{hit,miss}_blocks{tier}``: every prompt block is looked up
    in T0; T1 and T2 continue the match) when the cell has it; otherwise T0 hits = matched tokens / block
    size - T1 hits - T2 hits over ``prompt_tokens`` / block size (a real KVBM exports no G1 hit counter)."""
    h = [c.get(f"sim_tier{i}_hit_blocks") or 0 for i in range(3)]
    total = h[0] + (c.get("sim_tier0_miss_blocks") or 0)
    if not total and tokens_per_block and prompt_tokens:
        h = [c.get(f"tier{i}_hits") or 0 for i in range(3)]
        if not h[0] and c.get("matched_tokens"):
            h[0] = max(0.0, c["matched_tokens"] / tokens_per_block - h[1] - h[2])
        total = prompt_tokens / tokens_per_block
    out = {f"t{i}_hit_ratio": (v / total if total else None) for i, v in enumerate(h)}
    out.update({f"tier{i}_hit_blocks": v for i, v in enumerate(h)})
    out["lookup_blocks"] = total
    return out


def tier_hits(tick: dict) -> tuple[float, float, float]:
    """(T0 prefix-hit blocks, T1 onboarded blocks, T2 onboarded blocks) of one dynkv tick."""
    raw = {k: v for src in (tick.get("raw") or {}).values() for k, v in src.items()}
    t0 = (tick.get("tier0") or {}).get("hits")
    if t0 is None:
        t0 = raw.get("kvsim_tier_hit_blocks{tier=0}")
    return (float(t0 or 0), float((tick.get("tier1") or {}).get("hits") or 0),
            float((tick.get("tier2") or {}).get("hits") or 0))
