"""Cell folders -> one flat row per cell (the input of every hypothesis analysis)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from kvharness import clock, stats
from kvharness.analysis.records import RecordError
from kvharness.cellfolder import CellFolder


def cell_row(cell_dir: str | Path, folder: CellFolder | None = None, read: tuple[list[dict], int] | None = None) -> dict:
    """Summary row of one finished cell, recomputed from its raw records (never trusting a cache).
    ``folder``/``read``: a caller that reads the cell itself (H7) passes its reader and ``folder.records()``
    so the records are parsed once."""
    cell_dir = Path(cell_dir)
    folder = folder or CellFolder(cell_dir)
    spec, summary = folder.spec, folder.summary
    records, truncated = read if read is not None else folder.records()
    warmup_s = float(spec["load"].get("warmup_s") or 0)
    if warmup_s > 0 and records:
        t0 = min(r["sched_ns"] for r in records if r.get("sched_ns") is not None)
        records = [r for r in records if r.get("sched_ns", t0) - t0 >= warmup_s * 1e9]
    speedup = clock.speedup_of(spec)
    # SLOs are stated in the stack's time; the records are wall time (clock.wall_slo)
    req = stats.summarize_requests(records, slo=clock.wall_slo(spec["load"].get("slo"), speedup))
    req.pop("error_classes", None)
    workload = spec["load"]["workload"]
    row = {
        "hyp": spec["hyp"], "cell": spec["cell"], "stack": spec["stack"]["name"], "role": spec["role"],
        "tiered": bool(spec["stack"].get("tiered")), "profile": spec["profile"],
        "concurrency": spec["load"]["concurrency"],
        "workload": workload["kind"],
        # a chat session's context is its first turn (the context axis sets first_turn_tokens there)
        "context_tokens": workload.get("context_tokens") or workload.get("first_turn_tokens"),
        "speedup": speedup,
        **{k: spec["tiers"][k] for k in ("tier0_bytes", "tier1_bytes", "tier2_bytes", "memory_budget_bytes")},
        "status": summary["status"],
        "alignment": summary.get("quality", {}).get("alignment"),
        "client_bound": summary.get("client_bound", False),
        "tier2_file_bytes": summary.get("tier2_file_bytes"),
        "truncated_lines": truncated,
        "rep": spec.get("rep", 0),
        "code_fingerprint": (folder.provenance() or {}).get("code_fingerprint"),
        **req,
    }
    ws = spec.get("working_set") or {}
    for key in ("working_set_bytes", "reusable_bytes", "inflight_bytes", "fits_in"):
        row[key] = ws.get(key)
    for key, value in (spec.get("sweep") or {}).items():  # every swept axis value is a column
        if row.get(key) is None:  # a point is keyed by every swept value: never leave one blank
            row[key] = value
    # every ok request's TTFT (measure window): the samples behind the cell's percentiles, for the
    # within-cell intervals and the across-rep comparison of kvharness.stats (never written to a table)
    row["_ttft_ms"] = [r["lat_ttft_ms"] for r in records if stats.is_ok(r) and r.get("lat_ttft_ms") is not None]
    ttft50, ttft99 = row.get("ttft_ms_p50"), row.get("ttft_ms_p99")
    row["ttft_p99_over_p50"] = (ttft99 / ttft50) if ttft50 else None
    return row


def cell_rows(cell_dirs: Iterable[str | Path]) -> list[dict]:
    rows = []
    for d in cell_dirs:
        try:
            rows.append(cell_row(d))
        except RecordError as exc:
            raise RecordError(f"cell {d}: {exc}") from None
    return rows
