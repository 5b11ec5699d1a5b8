"""Per-cell spill and storage facts for H2A, H2B and H3, read back from a cell's records.

* ``kv_totals``: the cell's KV tier movements summed over its telemetry ticks (``dynkv.jsonl``): blocks
  onboarded from tier 1 / tier 2 (hits), bytes moved in and out of each tier, evictions, preemptions,
  the simulator's real tier-2 file bytes, and the stack's own tier-2 fetch p95 where it exports one
  (``tier2.fetch_p95_ms``: KVBM/LMCache histograms, the simulator's ``kvsim_tier_fetch_seconds``).
* ``window_join``: one row per telemetry window: the TTFT of the requests whose first token fell in it,
  joined on the tick index with the tier-2 device's NVMe counters and the stack's tier-2 read bytes.
* ``join_fetch_p95``: the tier-2 fetch p95 estimated from that join (the storage knee's second method).
* ``idle_nvme``: the tier-2 device's reads during the cell's idle window against those during the load,
  and the stack's own process-tree reads in both (attribution).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from kvharness.analysis.records import read_jsonl
from kvharness.stats import percentile
from kvharness.cellfolder import CellFolder
from kvharness.cellfiles import DYNKV_JSONL, SYSMON_JSONL


def _ticks(cell_dir: Path, name: str) -> list[dict]:
    path = cell_dir / name
    return read_jsonl(path)[0] if path.is_file() else []


def _interval_ns(cell_dir: Path) -> int:
    try:
        return int(round(float(CellFolder(cell_dir).collector_summary["interval_ms"]) * 1e6))
    except Exception:  # a cell without a collector summary: the configured cadence
        return int(round(float(CellFolder(cell_dir).spec["telemetry"]["interval_ms"]) * 1e6))


def _ok_requests(cell_dir: Path) -> list[dict]:
    records, _ = CellFolder(cell_dir).records()
    return [r for r in records if r.get("rc") == 0 and r.get("lat_ttft_ms") is not None]


def _sum(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def _first(*values):
    return next((v for v in values if v is not None), None)


def weighted_percentile(pairs: Sequence[tuple[float, float]], q: float) -> float | None:
    """q-th percentile of values given as (value, weight) pairs (weights: counts of the value)."""
    pairs = sorted((v, w) for v, w in pairs if v is not None and w and w > 0)
    total = sum(w for _, w in pairs)
    if not total:
        return None
    rank = q / 100.0 * total
    seen = 0.0
    for v, w in pairs:
        seen += w
        if seen >= rank:
            return v
    return pairs[-1][0]


def kv_totals(cell_dir: str | Path) -> dict:
    """Sums over the cell's ``dynkv.jsonl`` ticks; None for a quantity no source reported (never 0)."""
    cell_dir = Path(cell_dir)
    ticks = _ticks(cell_dir, DYNKV_JSONL)
    spec = CellFolder(cell_dir).spec
    out: dict = {"kv_ticks": len(ticks)}
    for i in range(3):
        for f in ("hits", "bytes_in", "bytes_out", "evictions"):
            out[f"tier{i}_{f}"] = _sum((t.get(f"tier{i}") or {}).get(f) for t in ticks)
    out["preemptions"] = _sum(_first((t.get("sim") or {}).get("preemptions"), (t.get("server") or {}).get("preemptions"))
                              for t in ticks)
    # Users the engine held at once (its running-requests gauge, sampled every tick) and the most waiting.
    running = [_first((t.get("gauges") or {}).get("requests_running"), (t.get("gauges") or {}).get("kvsim_running_requests"))
               for t in ticks]
    waiting = [_first((t.get("gauges") or {}).get("kvsim_queue_depth"), (t.get("gauges") or {}).get("requests_waiting"))
               for t in ticks]
    out["running_max"] = max((v for v in running if v is not None), default=None)
    out["waiting_max"] = max((v for v in waiting if v is not None), default=None)
    out["tier2_file_read_bytes"] = _sum((t.get("sim") or {}).get("tier2_file_read_bytes") for t in ticks)
    out["tier2_file_write_bytes"] = _sum((t.get("sim") or {}).get("tier2_file_write_bytes") for t in ticks)
    # The stack's own per-tier fetch latency: each window's p95, weighted by the window's onboarded blocks
    # (an approximation of the cell's p95: the raw histograms stay in scrapes.jsonl.gz).
    for i in (1, 2):
        pairs = [((t.get(f"tier{i}") or {}).get("fetch_p95_ms"), (t.get(f"tier{i}") or {}).get("hits") or 1)
                 for t in ticks]
        out[f"tier{i}_fetch_ms_p95"] = weighted_percentile([p for p in pairs if p[0] is not None], 95)
    # hit % per tier: blocks onboarded from the tier / prompt blocks the successful requests asked for
    tpb = int(spec["engine"].get("tokens_per_block") or 0)
    prompt_blocks = sum(int(r.get("prompt_tokens") or 0) for r in _ok_requests(cell_dir)) / tpb if tpb else 0
    for i in (1, 2):
        hits = out[f"tier{i}_hits"]
        out[f"tier{i}_hit_pct"] = 100.0 * hits / prompt_blocks if hits is not None and prompt_blocks else None
    out["spill_bytes"] = out["tier2_bytes_in"]      # written into the disk tier
    out["onboard_bytes"] = _sum((out["tier1_bytes_out"], out["tier2_bytes_out"]))  # read back up to T0
    return out


def window_join(cell_dir: str | Path) -> list[dict]:
    """One row per telemetry window with at least one first token in it (tick index: a tick with
    ``mono_ns = m`` covers ``(m - interval, m]``), joined with the NVMe counters and tier-2 reads of that tick.

    ``t2_read_ms`` = the device's busy wall time in the window (%util x window) times tier 2's share of the
    device's read bytes (the stack's tier-2 read bytes, real file bytes for the simulator, / the device's
    read bytes; 1 for a stack without tier counters); ``t2_fetchers`` = the requests that fetched from tier
    2 in the window: tier-2 hit blocks / prompt blocks per request (no tier counters: every request whose
    first token fell in the window); ``t2_fetch_est_ms`` = ``t2_read_ms`` per fetching request, for windows
    with tier-2 reads. An upper bound on a request's tier-2 stall when fetches overlap one another.
    """
    from kvharness.telemetry.read import TickIndex

    cell_dir = Path(cell_dir)
    interval = _interval_ns(cell_dir)
    sysmon = TickIndex(_ticks(cell_dir, SYSMON_JSONL), interval)
    dyn = {t.get("tick"): t for t in _ticks(cell_dir, DYNKV_JSONL)}
    has_tier_counters = any((t.get("tier2") or {}).get("bytes_out") is not None
                            or (t.get("sim") or {}).get("tier2_file_read_bytes") is not None for t in dyn.values())
    by_tick: dict[int, list[float]] = {}
    ok = _ok_requests(cell_dir)
    tpb = int(CellFolder(cell_dir).spec["engine"].get("tokens_per_block") or 0)
    blocks_per_request = (sum(int(r.get("prompt_tokens") or 0) for r in ok) / len(ok) / tpb) if ok and tpb else None
    for r in ok:
        if r.get("first_token_ns") is None:
            continue
        tick = sysmon.at(r["first_token_ns"])
        if tick is not None:
            by_tick.setdefault(tick["tick"], []).append(r["lat_ttft_ms"])
    ticks = {t["tick"]: t for t in sysmon.ticks}
    rows = []
    for k in sorted(by_tick):
        tick, ttfts = ticks[k], by_tick[k]
        nvme = tick.get("nvme") or {}
        d = dyn.get(k) or {}
        t2_bytes = (d.get("tier2") or {}).get("bytes_out")
        t2_file = (d.get("sim") or {}).get("tier2_file_read_bytes")
        rps, r_await, util = nvme.get("rps"), nvme.get("r_await_ms"), nvme.get("util_pct")
        real = t2_file if t2_file is not None else t2_bytes
        dev_bytes = nvme.get("r_bytes")
        share = min(1.0, real / dev_bytes) if real is not None and dev_bytes else (1.0 if not has_tier_counters else 0.0)
        read_ms = util / 100.0 * interval / 1e6 * share if util is not None else None
        fetched = bool(t2_bytes or t2_file) if has_tier_counters else bool(rps)
        t2_hits = (d.get("tier2") or {}).get("hits")
        fetchers = (max(1.0, t2_hits / blocks_per_request) if t2_hits and blocks_per_request
                    else float(len(ttfts)))
        rows.append({
            "tick": k, "mono_ns": tick["mono_ns"], "ts": tick.get("ts"), "n_first_tokens": len(ttfts),
            "ttft_ms_p50": percentile(ttfts, 50), "ttft_ms_p95": percentile(ttfts, 95), "ttft_ms_p99": percentile(ttfts, 99),
            "nvme_device": nvme.get("device"), "nvme_rps": rps, "nvme_rMBs": nvme.get("rMBs"), "nvme_r_await_ms": r_await,
            "nvme_aqu_sz": nvme.get("aqu_sz"), "nvme_util_pct": nvme.get("util_pct"),
            "tier2_read_bytes": t2_bytes, "tier2_file_read_bytes": t2_file,
            "tier2_fetch_ms_p95_metric": (d.get("tier2") or {}).get("fetch_p95_ms"),
            "t2_read_ms": read_ms, "tier2_fetched": fetched, "t2_fetchers": fetchers if fetched else 0.0,
            "t2_fetch_est_ms": read_ms / fetchers if fetched and read_ms is not None else (0.0 if read_ms is not None else None),
        })
    return rows


def join_fetch_p95(rows: Sequence[dict]) -> tuple[float | None, str]:
    """(tier-2 fetch p95 from the window join, note): the 95th percentile, over the tier-2 fetching requests
    of the windows with tier-2 reads, of their window's ``t2_fetch_est_ms``; 0 when the cell had windows
    but none read tier 2; None with the reason when no window has NVMe telemetry."""
    with_nvme = [r for r in rows if r.get("t2_read_ms") is not None]
    if not rows:
        return None, "no request's first token fell in a recorded telemetry window"
    if not with_nvme:
        return None, "no NVMe telemetry for the tier-2 device (sysmon nvme is null)"
    fetched = [(r["t2_fetch_est_ms"], r["t2_fetchers"]) for r in with_nvme if r["tier2_fetched"]]
    if not fetched:
        return 0.0, "no window read tier 2"
    return weighted_percentile(fetched, 95), f"{len(fetched)} of {len(with_nvme)} windows read tier 2"


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def idle_nvme(cell_dir: str | Path) -> dict:
    """The tier-2 device's mean read rate (MiB/s, r/s over its ticks) in the cell's idle window and during
    its load, and the stack's own storage reads (its process tree's /proc io) in both.

    The idle window is ``summary.json``'s ``idle_window`` (``load.idle_window_s`` > 0); the load window
    runs from the first scheduled request to the last completion. Ticks are assigned by their window end.
    Means over equal ticks, i.e. bytes read / time: a stack that reads the device in bursts moves them as
    much as one that reads steadily (a median would not see reads in fewer than half of the ticks)."""
    cell_dir = Path(cell_dir)
    summary = CellFolder(cell_dir).summary
    ticks = [t for t in _ticks(cell_dir, SYSMON_JSONL) if t.get("nvme")]
    out = {"idle_window_s": None, "idle_ticks": 0, "load_ticks": 0, "idle_rMBs": None, "load_rMBs": None,
           "idle_rps": None, "load_rps": None, "nvme_device": ticks[0]["nvme"].get("device") if ticks else None,
           "stack_idle_read_MBs": None, "stack_load_read_MBs": None}
    window = summary.get("idle_window")
    records, _ = CellFolder(cell_dir).records()
    starts = [r["sched_ns"] for r in records if r.get("sched_ns") is not None]
    ends = [r["end_ns"] for r in records if r.get("end_ns") is not None]
    if starts and ends:
        load = [t for t in ticks if min(starts) < t["mono_ns"] <= max(ends)]
        out["load_ticks"] = len(load)
        out["load_rMBs"] = _mean(t["nvme"].get("rMBs") for t in load)
        out["load_rps"] = _mean(t["nvme"].get("rps") for t in load)
    if window:
        # the stack's own storage reads (/proc/<pid>/io of its process tree) in the idle window and the load
        a, b, c = (window.get(k) for k in ("stack_io_start", "stack_io_load_start", "stack_io_load_end"))
        load_s = (max(ends) - min(starts)) / 1e9 if starts and ends else None
        if a and b and window.get("seconds"):
            out["stack_idle_read_MBs"] = (b["read_bytes"] - a["read_bytes"]) / 2**20 / window["seconds"]
        if b and c and load_s:
            out["stack_load_read_MBs"] = (c["read_bytes"] - b["read_bytes"]) / 2**20 / load_s
        interval = _interval_ns(cell_dir)
        idle = [t for t in ticks if window["start_mono_ns"] + interval <= t["mono_ns"] <= window["end_mono_ns"]]
        out.update(idle_window_s=window.get("seconds"), idle_ticks=len(idle))
        out["idle_rMBs"] = _mean(t["nvme"].get("rMBs") for t in idle)
        out["idle_rps"] = _mean(t["nvme"].get("rps") for t in idle)
    return out


def error_classes(cell_dir: str | Path) -> dict[str, int]:
    records, _ = CellFolder(cell_dir).records()
    out: dict[str, int] = {}
    for r in records:
        if r.get("rc") != 0:
            cls = r.get("error_class") or f"rc_{r.get('rc')}"
            out[cls] = out.get(cls, 0) + 1
    return out


def dumps_classes(classes: dict[str, int]) -> str:
    return json.dumps(classes, sort_keys=True) if classes else ""


def spill_row(cell_dir: str | Path, row: dict) -> dict:
    """``row`` (analysis.cells.cell_row of the cell) with its KV tier totals, error classes, prompt
    tokens/s and the largest context its device pool admits at its concurrency (pool bytes /
    (concurrency x KV bytes per token), SPEC's arithmetic; None where unknown)."""
    cell_dir = Path(cell_dir)
    spec = CellFolder(cell_dir).spec
    out = {**row, **kv_totals(cell_dir)}
    classes = error_classes(cell_dir)
    out["error_classes"] = classes
    out["error_classes_json"] = dumps_classes(classes)
    kv = (spec.get("working_set") or {}).get("kv_bytes_per_token")
    out["kv_bytes_per_token"] = kv
    conc = row.get("concurrency")
    out["pool_bytes"] = row.get("tier0_bytes")
    out["admits_context_tokens"] = (int(row["tier0_bytes"] // (conc * kv))
                                    if kv and isinstance(conc, int) and conc > 0 and row.get("tier0_bytes") else None)
    from kvharness.stats import enough_samples

    out["p99_enough_samples"] = enough_samples(row.get("n_ok"), 99)  # p99 from fewer is flagged, still shown
    ctx = row.get("context_tokens")
    out["prompt_tok_s"] = row["req_s"] * ctx if row.get("req_s") is not None and ctx else row.get("req_s")
    return out


def spill_rows(cell_dirs: Sequence[str | Path], rows: Sequence[dict]) -> list[dict]:
    by_cell = {r["cell"]: r for r in rows}
    out = []
    for d in cell_dirs:
        name = CellFolder(d).spec["cell"]
        out.append(spill_row(d, by_cell[name]))
    return out


def envelope(steps: Sequence[dict], collapse: dict, axis: str = "context_tokens"):
    """(largest swept value before the collapse point, note): the last step when nothing collapsed
    (censored: the envelope reaches at least that far); None when the first step already collapsed."""
    ordered = sorted(steps, key=lambda s: s[axis])
    i = collapse.get("collapse_index")
    if i is None:
        return (ordered[-1][axis] if ordered else None), "no collapse within the sweep (censored: at least this)"
    if i == 0:
        return None, f"collapsed at the first point ({ordered[0][axis]}): the envelope lies below the sweep"
    return ordered[i - 1][axis], ""
