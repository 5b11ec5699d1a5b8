"""Eviction pressure sized in bytes: the ``pressure_bytes`` axis of a sessioned_chat workload.

Between the build and the resume of the sessions, the load generator sends ``count`` unique prompts
of ``context_tokens`` (phase ``pressure``), spread over the idle gap, and resumes only once all of them
finished. The count is the pressure volume in KV bytes over the KV bytes one pressure prompt occupies
(its tokens x the model's KV bytes per token, configs/models.yaml), rounded up: 768 MiB of pressure on
Llama 3.1 8B fp8 (64 KiB per token) with 2048-token prompts is 6 requests.
"""

from __future__ import annotations

import math

from kvharness.errors import AxisError
from kvharness.units import parse_bytes

DEFAULT_CONTEXT_TOKENS = 2048


def pressure_requests(nbytes: int, context_tokens: int, kv_bytes_per_token: int) -> int:
    """How many unique prompts of ``context_tokens`` fill ``nbytes`` of KV (0 for no pressure)."""
    if nbytes <= 0:
        return 0
    return math.ceil(nbytes / (context_tokens * kv_bytes_per_token))


def apply_pressure_bytes(spec: dict, value, cfg: dict) -> None:
    """Turn a pressure volume into the load generator's ``pressure: {count, context_tokens, output_tokens}``.

    The byte volume itself is kept as ``load.pressure_bytes`` (the cell records it; the load generator
    never sees it). Raises ``AxisError`` for a workload that has no idle phase to put pressure in.
    """
    from kvharness.sim.profiles import kv_bytes_per_token

    w = spec["load"]["workload"]
    if w.get("kind") != "sessioned_chat":
        raise AxisError(f"applies to a sessioned_chat workload, the load's workload is {w.get('kind')!r}")
    try:
        nbytes = parse_bytes(value)
    except ValueError as exc:
        raise AxisError(str(exc)) from None
    kv = kv_bytes_per_token(spec["model"], spec["precision"], spec["hardware"])
    if not kv:
        raise AxisError(f"model {spec['model']!r} ({spec['precision']}) has no KV bytes per token in configs/models.yaml")
    base = dict(w.get("pressure") or {})
    ctx = int(base.get("context_tokens") or DEFAULT_CONTEXT_TOKENS)
    count = pressure_requests(nbytes, ctx, kv)
    spec["load"]["pressure_bytes"] = nbytes
    if count == 0:
        w["pressure"] = None
        return
    w["pressure"] = {"count": count, "context_tokens": ctx, "output_tokens": int(base.get("output_tokens") or 1)}
