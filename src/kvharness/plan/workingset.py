"""The working set of a cell's workload, in tokens and KV bytes, against the stack's tier capacities.

``reusable`` tokens are prompt tokens that later requests ask for again (a per-user prompt, a shared
group prefix, a session's history): what a KV cache can hit on, and what must spill once it exceeds
T0, then T0+T1. ``inflight`` tokens are unique tokens alive at once in requests being served (every
per-request-nonce prompt in flight). ``working_set = reusable + inflight``; bytes = tokens x the model's
KV bytes per token (configs/models.yaml). Every cell records this next to its tier bytes, so every
table can say where the load stands against T0, T0+T1 and T0+T1+T2.
"""

from __future__ import annotations

from typing import Mapping


def _mean_prompt(workload: Mapping) -> float:
    kind = workload["kind"]
    if kind == "fixed_context":
        return float(workload["context_tokens"])
    if kind == "mixed_context":
        buckets = workload["buckets"]
        total = sum(b["weight"] for b in buckets)
        return sum(b["weight"] / total * (b["min_tokens"] + b["max_tokens"]) / 2 for b in buckets)
    return 0.0


def working_set_tokens(load: Mapping) -> dict:
    """{reusable_tokens, inflight_tokens, working_set_tokens, users} of a resolved cell load."""
    w = load["workload"]
    users = load.get("concurrency") if isinstance(load.get("concurrency"), int) else None
    pattern = load.get("pattern") or {}
    if users is None:
        users = pattern.get("max_in_flight") or 1
    kind = w["kind"]
    if kind == "sessioned_chat":
        per_turn = w["turn_tokens"] + w["output_tokens"] + 2  # user words + reply + two role tokens
        first = _mean_prompt({"kind": "mixed_context", "buckets": w["first_turn_buckets"]}) \
            if w.get("first_turn_buckets") else w["first_turn_tokens"]
        history = first + w["output_tokens"] + 1 + (w["turns"] + w["resume_turns"] - 1) * per_turn
        reusable = w["sessions"] * history
        pressure = w.get("pressure") or {}
        inflight = users * (pressure.get("context_tokens", 0) if pressure else 0)
        return {"reusable_tokens": int(reusable), "inflight_tokens": int(inflight),
                "working_set_tokens": int(reusable + inflight), "users": users}
    if kind == "trace":
        return {"reusable_tokens": None, "inflight_tokens": None, "working_set_tokens": None, "users": users}
    n = _mean_prompt(w)
    ratio = float(w.get("shared_prefix_ratio") or 0.0)
    groups = int(w.get("prefix_groups") or 1)
    nonce = w.get("nonce", "prefix")
    shared = groups * ratio * n if ratio > 0 else 0.0
    rest = (1.0 - ratio) * n
    if nonce == "per_user":
        reusable, inflight = shared + users * rest, 0.0
    elif nonce == "none":
        reusable, inflight = shared + rest, 0.0  # every request's non-shared part is the same text
    else:
        reusable, inflight = shared, users * rest
    return {"reusable_tokens": int(reusable), "inflight_tokens": int(inflight),
            "working_set_tokens": int(reusable + inflight), "users": users}


def working_set(load: Mapping, tiers: Mapping, kv_bytes_per_token: int | None, adapter_bytes: int = 0) -> dict:
    """Tokens and bytes of the working set, and where it stands against the tier capacities."""
    t = working_set_tokens(load)
    out = dict(t)
    kv = kv_bytes_per_token or 0
    for key in ("reusable", "inflight", "working_set"):
        tokens = t[f"{key}_tokens"]
        out[f"{key}_bytes"] = int(tokens * kv) + (adapter_bytes if key in ("reusable", "working_set") else 0) \
            if tokens is not None and kv else None
    out["adapter_bytes"] = adapter_bytes
    out["kv_bytes_per_token"] = kv_bytes_per_token
    ws = out["working_set_bytes"]
    t0, t1, t2 = tiers["tier0_bytes"], tiers["tier1_bytes"], tiers["tier2_bytes"]
    if ws is None:
        out["fits_in"] = None
    elif ws <= t0:
        out["fits_in"] = "T0"
    elif ws <= t0 + t1:
        out["fits_in"] = "T0+T1"
    elif ws <= t0 + t1 + t2:
        out["fits_in"] = "T0+T1+T2"
    else:
        out["fits_in"] = "none"
    return out
