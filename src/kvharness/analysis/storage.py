"""Per-cell storage and KV-tier facts shared by the storage hypotheses (H4A/H4B, H6).

* :func:`tier_stats` — totals over a cell: blocks found per tier (T0, T1, T2) and looked up, the
  memory-tier hit rate (T0+T1 hits over prompt blocks), tier-2 read bytes (KV bytes onboarded from disk and
  the real file bytes the simulator read), tier-2 fetch latency (mean and p95 over the cell, from the
  scraped histograms' first and last bodies, so bucket-per-tick noise does not matter) and the tier-2
  device's NVMe r_await during the cell.
* :func:`windows` — the per-window join of TTFT (requests by scheduled time) with NVMe r_await, tier-2
  bytes and tier-2 fetch latency (H4B's ``p99_vs_nvme`` table).

Sources: ``dynkv.jsonl`` (per-tick deltas; the simulator's ground-truth ``kvsim_tier_hit_blocks{tier}``
counters sit in its ``raw`` section), ``scrapes.jsonl.gz`` (raw bodies), ``sysmon.jsonl`` (nvme).
A field no source reports stays None.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from kvharness.analysis.records import read_jsonl
from kvharness.stats import percentile
from kvharness.cellfolder import CellFolder
from kvharness.cellfiles import DYNKV_JSONL, SCRAPES_JSONL_GZ, SYSMON_JSONL

FETCH_HIST = "kvsim_tier_fetch_seconds"
READ_IO_HIST = "kvsim_tier2_read_io_seconds"


def _ticks(cell_dir: Path, name: str) -> list[dict]:
    path = cell_dir / name
    if not path.exists():
        return []
    return read_jsonl(path)[0]


def _sum(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) if vals else None


def _raw_counter(ticks: list[dict], series: str) -> float | None:
    return _sum(src.get(series) for t in ticks for src in (t.get("raw") or {}).values())


def _histograms(cell_dir: Path, names: tuple[str, ...]) -> dict[str, dict]:
    """{series key: {"count", "sum", "buckets"}} deltas between the first and last body that carry ``names``."""
    path = cell_dir / SCRAPES_JSONL_GZ
    if not path.exists():
        return {}
    first: dict[str, str] = {}
    last: dict[str, str] = {}
    with gzip.open(path, "rt") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a cut last line (the collector was killed) loses one scrape, not the cell
            body = rec.get("body")
            if not body or not any(n in body for n in names):
                continue
            first.setdefault(rec["source"], body)
            last[rec["source"]] = body
    out: dict[str, dict] = {}
    for source, body in last.items():
        a, b = _parse(first[source], names), _parse(body, names)
        for key, h in b.items():
            base = a.get(key, {"count": 0.0, "sum": 0.0, "buckets": {}})
            if first[source] is body:
                base = {"count": 0.0, "sum": 0.0, "buckets": {}}
            out[key] = {"count": h["count"] - base["count"], "sum": h["sum"] - base["sum"],
                        "buckets": {le: c - base["buckets"].get(le, 0.0) for le, c in h["buckets"].items()}}
    return out


def _parse(body: str, names: tuple[str, ...]) -> dict[str, dict]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict] = {}
    try:
        families = list(text_string_to_metric_families(body))
    except ValueError:
        return out
    for fam in families:
        if fam.name not in names:
            continue
        for s in fam.samples:
            labels = {k: v for k, v in s.labels.items() if k != "le"}
            key = fam.name + "".join(f"{{{k}={v}}}" for k, v in sorted(labels.items()))
            h = out.setdefault(key, {"count": 0.0, "sum": 0.0, "buckets": {}})
            if s.name.endswith("_count"):
                h["count"] = s.value
            elif s.name.endswith("_sum"):
                h["sum"] = s.value
            elif s.name.endswith("_bucket"):
                h["buckets"][float(s.labels["le"])] = s.value
    return out


def _hist_stats(h: dict | None) -> tuple[float | None, float | None, int]:
    """(mean ms, p95 ms, count) of a histogram delta."""
    from kvharness.telemetry.prom import histogram_quantile

    if not h or h["count"] <= 0:
        return None, None, 0
    p95 = histogram_quantile(0.95, h["buckets"])
    return 1000.0 * h["sum"] / h["count"], (1000.0 * p95 if p95 is not None else None), int(h["count"])


def quantile_bucket(h: dict | None, q: float) -> tuple[float | None, float | None, float | None]:
    """(q-quantile in ms by Prometheus' interpolation, lower and upper bound in ms of the bucket it lies in)
    of a histogram delta. The quantile is only known to lie in that bucket: interpolation assumes the
    bucket's observations spread evenly, so identical fetches of 38 ms in a (25, 50] ms bucket read as a
    p95 of 48.75 ms. The upper bound of the +Inf bucket is inf."""
    from kvharness.telemetry.prom import histogram_quantile

    if not h or h["count"] <= 0 or not h["buckets"]:
        return None, None, None
    les = sorted(h["buckets"])
    rank = q / 100.0 * max(h["buckets"][le] for le in les)
    lo, running = 0.0, 0.0
    for le in les:
        running = max(running, h["buckets"][le])
        if running >= rank:
            est = histogram_quantile(q / 100.0, h["buckets"])
            return (None if est is None else 1000.0 * est), 1000.0 * lo, 1000.0 * le
        lo = le
    return None, None, None


def tier2_fetch_p95(cell_dir: str | Path) -> dict:
    """The cell's tier-2 fetch p95 from its fetch histogram (first and last scrape) with the bounds of
    the bucket it lies in (``tier2_fetch_ms_p95_lo`` / ``_hi``); all None without the histogram."""
    h = _histograms(Path(cell_dir), (FETCH_HIST,)).get(f"{FETCH_HIST}{{tier=2}}")
    est, lo, hi = quantile_bucket(h, 95)
    return {"tier2_fetch_ms_p95_hist": est, "tier2_fetch_ms_p95_lo": lo, "tier2_fetch_ms_p95_hi": hi}


def tier_stats(cell_dir: str | Path) -> dict:
    cell_dir = Path(cell_dir)
    kv = _ticks(cell_dir, DYNKV_JSONL)
    sysmon = _ticks(cell_dir, SYSMON_JSONL)
    hits = {t: _raw_counter(kv, f"kvsim_tier_hit_blocks{{tier={t}}}") for t in (0, 1, 2)}
    miss0 = _raw_counter(kv, "kvsim_tier_miss_blocks{tier=0}")
    for t in (0, 1, 2):  # real stacks: the mapped tier fields (KVBM onboards = T1/T2 hits, TRT-LLM reuse = T0)
        if hits[t] is None:
            hits[t] = _sum((x.get(f"tier{t}") or {}).get("hits") for x in kv)
    if miss0 is None:
        miss0 = _sum((x.get("tier0") or {}).get("misses") for x in kv)
    looked_up = (hits[0] + miss0) if hits[0] is not None and miss0 is not None else None
    mem_hits = (hits[0] or 0) + (hits[1] or 0) if hits[0] is not None else None
    hists = _histograms(cell_dir, (FETCH_HIST, READ_IO_HIST))
    fetch_mean, fetch_p95, n_fetch = _hist_stats(hists.get(f"{FETCH_HIST}{{tier=2}}"))
    read_mean, read_p95, _ = _hist_stats(hists.get(READ_IO_HIST))
    if fetch_p95 is None:  # no histogram bodies: the per-tick p95 the collector mapped
        fetch_p95 = percentile([(x.get("tier2") or {}).get("fetch_p95_ms") for x in kv
                                if (x.get("tier2") or {}).get("fetch_p95_ms") is not None], 50)
    awaits = [(x.get("nvme") or {}).get("r_await_ms") for x in sysmon]
    reads = [(x.get("nvme") or {}).get("rps") for x in sysmon]
    busy = [a for a, r in zip(awaits, reads) if a is not None and r]
    return {
        "t0_hit_blocks": hits[0], "t1_hit_blocks": hits[1], "t2_hit_blocks": hits[2], "prompt_blocks": looked_up,
        "t0_hit_pct": 100.0 * hits[0] / looked_up if looked_up else None,
        "memory_hit_pct": 100.0 * mem_hits / looked_up if looked_up else None,
        "t2_hit_pct": 100.0 * (hits[2] or 0) / looked_up if looked_up else None,
        "tier2_read_kv_bytes": _sum((x.get("tier2") or {}).get("bytes_out") for x in kv),
        "tier2_file_read_bytes": _sum((x.get("sim") or {}).get("tier2_file_read_bytes") for x in kv),
        "tier2_fetches": n_fetch,
        "tier2_fetch_ms_mean": fetch_mean, "tier2_fetch_ms_p95": fetch_p95,
        "tier2_read_io_ms_mean": read_mean, "tier2_read_io_ms_p95": read_p95,
        "nvme_r_await_ms_mean": sum(busy) / len(busy) if busy else None,
        "nvme_r_await_ms_p95": percentile(busy, 95) if busy else None,
    }


def windows(cell_dir: str | Path, window_s: float = 1.0) -> list[dict]:
    """Per window of ``window_s`` from the first scheduled request: TTFT p50/p99 of the requests scheduled
    in it, joined with the NVMe r_await, tier-2 bytes and tier-2 fetch p95 of the ticks inside it."""
    cell_dir = Path(cell_dir)
    records = [r for r in CellFolder(cell_dir).records()[0] if r.get("sched_ns") is not None]
    if not records:
        return []
    t0 = min(r["sched_ns"] for r in records)
    step = int(window_s * 1e9)
    win: dict[int, dict] = {}

    def slot(ns: int) -> dict | None:
        if ns < t0:
            return None
        return win.setdefault((ns - t0) // step, {"ttft": [], "await": [], "rMBs": [], "t2_bytes": [], "t2_file": [], "fetch": []})

    for r in records:
        if r.get("rc") == 0 and r.get("lat_ttft_ms") is not None:
            slot(r["sched_ns"])["ttft"].append(r["lat_ttft_ms"])
    for x in _ticks(cell_dir, SYSMON_JSONL):
        s = slot(x.get("mono_ns") or 0)
        nv = x.get("nvme") or {}
        if s is not None and nv:
            s["await"].append(nv.get("r_await_ms"))
            s["rMBs"].append(nv.get("rMBs"))
    for x in _ticks(cell_dir, DYNKV_JSONL):
        s = slot(x.get("mono_ns") or 0)
        if s is not None:
            s["t2_bytes"].append((x.get("tier2") or {}).get("bytes_out"))
            s["t2_file"].append((x.get("sim") or {}).get("tier2_file_read_bytes"))
            s["fetch"].append((x.get("tier2") or {}).get("fetch_p95_ms"))
    out = []
    for k in sorted(win):
        s = win[k]
        if not s["ttft"]:
            continue  # the closed loop's tail: ticks after the last scheduled request
        aw = [a for a in s["await"] if a is not None]
        mbs = [m for m in s["rMBs"] if m is not None]
        out.append({
            "window_start_s": round(k * window_s, 3), "n_ok": len(s["ttft"]),
            "ttft_ms_p50": percentile(s["ttft"], 50), "ttft_ms_p99": percentile(s["ttft"], 99),
            "nvme_r_await_ms": sum(aw) / len(aw) if aw else None,
            "nvme_rMBs": sum(mbs) / len(mbs) if mbs else None,
            "tier2_read_kv_bytes": _sum(s["t2_bytes"]), "tier2_file_read_bytes": _sum(s["t2_file"]),
            "tier2_fetch_ms_p95": max((f for f in s["fetch"] if f is not None), default=None),
        })
    return out
