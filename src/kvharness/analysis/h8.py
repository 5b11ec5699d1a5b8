"""H8, the hero comparison: Stack A vs Stack B at equal memory budget, each at its own U_work,
mixed context, bursty load. One row per stack with B-vs-A deltas."""

from __future__ import annotations

from typing import Sequence

from kvharness.stats import pct_delta

LATENCY_COLUMNS = [f"{m}_p{q}" for m in ("ttft_ms", "e2e_ms") for q in (50, 95, 99)]
H8_COLUMNS = [
    "stack", "role", "tiered", "profile", "status", "u_work", "concurrency", "memory_budget_bytes",
    "tier0_bytes", "tier1_bytes", "tier2_bytes", "n_requests", "n_ok", "n_errors", "error_rate",
    *LATENCY_COLUMNS, "req_s", "output_tok_s", "kv_hit_pct", "tier2_file_bytes", "client_bound",
]
H8_DELTA_METRICS = [*LATENCY_COLUMNS, "req_s", "output_tok_s", "error_rate"]


def h8_table(rows: Sequence[dict], uwork: dict[str, int | None] | None = None) -> list[dict]:
    """Hero table: one row per stack, with B-vs-A deltas (percent) on every non-A row."""
    table = []
    ref = next((r for r in rows if r["role"] == "A"), None)
    for r in sorted(rows, key=lambda r: (r["role"], r["stack"])):
        row = {k: r.get(k) for k in H8_COLUMNS}
        row["u_work"] = (uwork or {}).get(r["stack"], r.get("concurrency"))
        for m in H8_DELTA_METRICS:
            row[f"vs_A_{m}_pct"] = None if ref is None or r is ref else pct_delta(r.get(m), ref.get(m))
        table.append(row)
    return table
