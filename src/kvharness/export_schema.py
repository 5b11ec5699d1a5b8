"""What each column of `kvharness export` means and its unit, for the Parquet schema's metadata.

Known names are listed; families (``sweep_*``, ``engine_*``, ``cell_*``) and units by suffix
(``_ms``, ``_ns``, ``_s``, ``_bytes``, ``_tokens``) cover the rest, so a new record field gets at
least its unit without an edit here. Add a line to COLUMNS when a record or cell field is added.
"""

from __future__ import annotations

COLUMNS: dict[str, tuple[str, str]] = {  # name -> (description, unit; "" when it has none)
    "hyp": ("hypothesis id", ""),
    "cell": ("cell id within the hypothesis", ""),
    "cell_status": ("how the cell ended: ok, degraded or failed (summary.json status)", ""),
    "role": ("stack role in the comparison: A memory-only, B tiered", ""),
    "stack_name": ("stack config name (configs/stacks/<name>.yaml)", ""),
    "stack_label": ("the record's stack label where it differs from stack_name", ""),
    "tiered": ("whether the stack has tiered KV (host DRAM / NVMe)", ""),
    "profile": ("memory profile of the cell (tier sizes)", ""),
    "model_profile": ("model profile (configs/models.yaml)", ""),
    "precision": ("weights/KV precision", ""),
    "hardware": ("hardware profile", ""),
    "concurrency": ("closed-loop users the request ran under (the load's concurrency)", "requests"),
    "load_concurrency": ("the cell's resolved concurrency, where the record carries none", "requests"),
    "load_pattern": ("arrival pattern kind", ""),
    "load_workload": ("workload kind", ""),
    "load_context_tokens": ("the cell's prompt length setting", "tokens"),
    "load_output_tokens": ("the cell's max output tokens", "tokens"),
    "load_duration_s": ("the cell's load duration", "s"),
    "tier0_bytes": ("GPU/UMA KV pool size", "bytes"),
    "tier1_bytes": ("host DRAM KV tier size", "bytes"),
    "tier2_bytes": ("NVMe KV tier size", "bytes"),
    "memory_budget_bytes": ("memory budget of the profile", "bytes"),
    "telemetry_interval_ms": ("telemetry sampling interval", "ms"),
    "cell_dir": ("the cell's folder", ""),
    "ts": ("wall clock of the scheduled send (Unix seconds)", "s"),
    "sched_ns": ("scheduled send, monotonic clock", "ns"),
    "sent_ns": ("sent, monotonic clock", "ns"),
    "first_byte_ns": ("first response byte, monotonic clock", "ns"),
    "first_token_ns": ("first event carrying generated text, monotonic clock", "ns"),
    "end_ns": ("last event, monotonic clock", "ns"),
    "lat_ttft_ms": ("time to first token: scheduled send -> first event carrying text", "ms"),
    "lat_ttfb_ms": ("time to first byte from the scheduled send", "ms"),
    "lat_e2e_ms": ("scheduled send -> last event", "ms"),
    "lat_tpot_ms": ("time per output token: (E2E - TTFT) / (output tokens - 1)", "ms"),
    "client_queue_ms": ("scheduled -> sent (client-side delay)", "ms"),
    "itl_ms": ("every gap between token-carrying events (list)", "ms"),
    "itl_ms_mean": ("mean of itl_ms", "ms"),
    "itl_ms_max": ("largest gap in itl_ms", "ms"),
    "prompt_tokens": ("prompt tokens from the server's usage", "tokens"),
    "output_tokens": ("output tokens from the server's usage", "tokens"),
    "cached_tokens": ("prompt tokens served from cache (server's usage)", "tokens"),
    "rc": ("0 ok; else the HTTP status, or -1 for a transport error / timeout", ""),
    "error_class": ("null when ok; else http_<status>, timeout, connect, parse, disconnect, ...", ""),
    "error": ("the error's text (the server's body for an HTTP error)", ""),
    "model": ("model (or adapter) name sent", ""),
    "context_tokens": ("requested prompt length", "tokens"),
    "bucket": ("context bucket of a mixed workload", ""),
    "adapter_id": ("LoRA adapter of the request", ""),
    "session_id": ("chat session (null outside sessioned workloads)", ""),
    "turn": ("turn within the session (null outside sessioned workloads)", ""),
    "phase": ("phase of a sessioned workload", ""),
    "request_id": ("request id", ""),
    "window": ("warmup, measure or cooldown: only measure is analysed", ""),
    "client_bound": ("the load generator was the bottleneck when this request finished", ""),
}

UNIT_SUFFIXES = (("_ms", "ms"), ("_ns", "ns"), ("_bytes", "bytes"), ("_tokens", "tokens"), ("_s", "s"),
                 ("_pct", "%"))


def describe(name: str) -> tuple[str, str]:
    """(description, unit) of a column; a family or suffix rule when the name is not listed."""
    if name in COLUMNS:
        return COLUMNS[name]
    unit = next((u for suffix, u in UNIT_SUFFIXES if name.endswith(suffix)), "")
    for prefix, what in (("sweep_", "swept value of the cell: "), ("engine_", "engine setting of the cell: "),
                         ("cell_", "cell parameter (a record field has the same name): ")):
        if name.startswith(prefix):
            base = name[len(prefix):]
            return what + base, unit or describe(base)[1]
    return "record field " + name, unit
