"""Cold starts between cells, and their proof.

Each cell starts from an empty KV cache on every tier, or its numbers mix this cell's reuse with the last
one's. What each stack offers (stack config ``cold_start``):

- every launched stack is relaunched per cell and its tier-2 directory is wiped before launch (the cell
  runner does both), so TRT-LLM and Dynamo+KVBM, which have no reset route, are cold by construction;
- ``reset: [{method: POST, path: /reset_prefix_cache}]`` (vLLM) or ``/flush_cache`` (SGLang) is called
  after readiness, for an endpoint that outlives the cell (``external``);
- ``drop_page_cache: true`` also drops the OS page cache (needs root; recorded when not permitted), so
  the disk tier's first reads come from the device and not from DRAM.

Verification, recorded as ``cold_start`` in summary.json (a cell that fails it is ``degraded``):

1. the tier-2 directory holds no file older than the launch (the stack's own preallocation is new);
2. the stack's hit counters (every tier's hits/hit tokens, KVBM matched tokens) are 0 at the baseline
   scrape of a freshly launched stack: the collector's own first scrape (``dynkv.jsonl`` tick 0,
   ``baseline_hits``, taken before the load starts) when the stack has no reset route, so the cell need
   not parse metrics itself; the cell's own scrape where resets come first;
3. where a reset route exists, a probe prompt is sent, the cache reset, and the same probe sent again:
   its counters must show 0 hits (the reset really empties the cache), then the cache is reset again;
4. after the load, the cell's first request (earliest scheduled) reports 0 cached tokens in its usage.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from kvharness.stacks.launcher import StackLaunchError

if TYPE_CHECKING:  # the Prometheus parser is imported when a cold-start check first scrapes (prometheus_client)
    from kvharness.telemetry.prom import Snapshot

#: check 2's value until the collector's baseline scrape answers it (baseline_check)
PENDING_BASELINE = "pending: the collector's baseline scrape"


def scrape(client, urls: dict[str, str]) -> dict[str, Snapshot | None]:
    from kvharness.telemetry.prom import parse_body

    out: dict[str, Snapshot | None] = {}
    for name, url in urls.items():
        try:
            resp = client.get(url)
            out[name] = parse_body(resp.text) if resp.status_code == 200 else None
        except Exception:  # a source that does not answer is recorded as such
            out[name] = None
    return out


def _reset(client, base_url: str, resets: list[dict]) -> list[dict]:
    done = []
    for r in resets:
        method = r.get("method", "POST")
        resp = client.request(method, base_url + r["path"])
        done.append({"method": method, "path": r["path"], "status": resp.status_code})
        if resp.status_code >= 300:
            raise StackLaunchError(f"cold start: {method} {base_url}{r['path']} answered HTTP {resp.status_code}; "
                                   f"the cell cannot start from an empty cache")
    return done


def drop_page_cache() -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("1\n")
        return "dropped"
    except OSError as exc:
        return f"not dropped ({exc.strerror}; needs root)"


def prepare(plan, cfg: dict | None, tier2_dir: Path, fresh: bool, launched_at: float | None = None) -> dict:
    """Run the stack's resets and the checks 1-3 above; returns the ``cold_start`` record."""
    from kvharness.stacks import http

    cfg = cfg or {}
    out: dict = {"resets": [], "checks": {}, "verified": True}
    files = [p for p in tier2_dir.rglob("*") if p.is_file()] if tier2_dir.is_dir() else []
    # the stack preallocates its disk tier at startup (KVBM, the simulator): only older files are stale
    stale = [p for p in files if launched_at is not None and p.stat().st_mtime < launched_at - 1.0]
    out["checks"]["tier2_files_at_start"] = len(files)
    out["checks"]["tier2_files_older_than_launch"] = len(stale)
    if stale:
        out["verified"] = False
    if cfg.get("drop_page_cache"):
        out["page_cache"] = drop_page_cache()
    if not plan.metrics_urls and not cfg.get("reset"):
        out["checks"]["counters"] = "no metrics source"
        return out
    if not cfg.get("reset"):  # check 2 reads the collector's baseline scrape (baseline_check)
        out["checks"]["hits_at_baseline"] = PENDING_BASELINE if fresh else None
        return out
    try:
        with http.Client(timeout=30.0) as client:
            _run_checks(client, plan, cfg, fresh, out)
    except http.HTTPError as exc:
        raise StackLaunchError(f"cold start: {type(exc).__name__} talking to {plan.base_url}: {exc}") from None
    return out


def _run_checks(client, plan, cfg: dict, fresh: bool, out: dict) -> None:
    from kvharness.telemetry.prom import absolute_hits, hits_between

    resets = cfg.get("reset") or []
    if resets:
        out["resets"] += _reset(client, plan.base_url, resets)
    base = scrape(client, plan.metrics_urls)
    if fresh:
        hits = absolute_hits(base)
        out["checks"]["hits_at_baseline"] = hits
        if hits:
            out["verified"] = False
    if resets and plan.served_model_name:
        prompt = f"kvharness cold-start probe {uuid.uuid4().hex} " + "lorem ipsum " * 64
        body = {"model": plan.served_model_name, "prompt": prompt, "max_tokens": 1, "stream": False}
        client.post(plan.base_url + "/v1/completions", json=body)
        out["resets"] += _reset(client, plan.base_url, resets)
        before = scrape(client, plan.metrics_urls)
        client.post(plan.base_url + "/v1/completions", json=body)
        after = scrape(client, plan.metrics_urls)
        probe_hits = hits_between(before, after)
        out["checks"]["probe_hits_after_reset"] = probe_hits
        if probe_hits:
            out["verified"] = False
        out["resets"] += _reset(client, plan.base_url, resets)


def baseline_check(cold: dict, tick0: dict | None) -> dict:
    """Check 2 from the collector's first scrape (``dynkv.jsonl`` tick 0: ``baseline_hits``, the stack's hit
    counters since its start); a stack whose baseline never came is not verified."""
    if cold["checks"].get("hits_at_baseline") != PENDING_BASELINE:
        return cold
    hits = (tick0 or {}).get("baseline_hits")
    cold["checks"]["hits_at_baseline"] = hits
    if hits is None:
        cold["checks"]["hits_at_baseline_missing"] = "the collector's baseline scrape has no answer from the stack"
        cold["verified"] = False
    elif hits:
        cold["verified"] = False
    return cold


def first_request_check(cold: dict, records: list[dict]) -> dict:
    """Check 4: the earliest scheduled request of the load found nothing cached (where usage says so).

    Requests due at the same first instant (a trace's rows with one timestamp) may reach the server in
    any order, and a later one of them may reuse the first one's blocks: one of them must have found
    nothing."""
    if not records:
        return cold
    first = min(records, key=lambda r: r.get("ts") or 0)
    due = first.get("sched_ns")
    tied = [r for r in records if due is not None and r.get("sched_ns") == due] or [first]
    known = [r["cached_tokens"] for r in tied if r.get("cached_tokens") is not None]
    cached = min(known) if known else None
    cold["checks"]["first_request_cached_tokens"] = cached
    if cached:
        cold["verified"] = False
    return cold
