"""Capacity read-back: after health, the cell asks the stack what tier sizes (and eviction policy) it
actually runs with, and fails with one line when they differ from what the cell requested.

The v3.3 harness exported tier sizes after the server had started, so its H6 measured the same
configuration at every "tier point". A point whose setting does not reach the stack is now a failed cell.

Readers per stack kind: ``sim`` reads ``/health`` (``tiers.t0/t1/t2.bytes`` and ``eviction_policy``).
Real stacks (TRT-LLM, Dynamo+KVBM, vLLM, SGLang) report capacity in their metrics or startup log; their
reader is a hook (:data:`READERS`) that returns ``None`` until implemented, and the cell records
``verified: false`` with the reason instead of guessing.
"""

from __future__ import annotations

import json
from typing import Callable

from kvharness.units import format_bytes

TIERS = ("tier0_bytes", "tier1_bytes", "tier2_bytes")


class CapacityMismatch(RuntimeError):
    """The stack reports tier sizes (or a policy) other than the cell requested; the message is one line."""


def _get_json(url: str, timeout: float = 5.0) -> dict:
    from kvharness.stacks import http

    try:
        with http.Client(timeout=timeout) as client:  # the cell's light stdlib client (no urllib.request import)
            resp = client.get(url)
    except http.HTTPError as exc:
        raise OSError(f"GET {url}: {type(exc).__name__}: {exc}") from None
    if resp.status_code != 200:
        raise OSError(f"GET {url}: HTTP {resp.status_code}")
    return json.loads(resp.content.decode())


def read_sim(spec: dict, plan, stack) -> dict | None:
    """The simulator's own report: ``/health`` tiers (bytes) and eviction policy."""
    url = plan.health_url or (plan.base_url.rstrip("/") + "/health")
    health = _get_json(url)
    tiers = health.get("tiers") or {}
    return {
        "source": url,
        "tier0_bytes": (tiers.get("t0") or {}).get("bytes"),
        "tier1_bytes": (tiers.get("t1") or {}).get("bytes"),
        "tier2_bytes": (tiers.get("t2") or {}).get("bytes"),
        "block_bytes": health.get("kv_block_size_bytes"),
        "eviction_policy": health.get("eviction_policy"),
    }


def read_not_implemented(spec: dict, plan, stack) -> dict | None:
    """Real stacks: a hook for their metrics / startup-log reader (not implemented here)."""
    return None


#: stack kind -> reader(spec, plan, running stack) -> reported capacity dict, or None (cannot tell)
READERS: dict[str, Callable] = {"sim": read_sim}


def expected(spec: dict) -> dict:
    """What the cell asked for. Memory-only stacks run T0+T1 as one device pool (``config.tier_bytes``)."""
    want = {k: int(spec["tiers"][k]) for k in TIERS}
    if not spec["stack"].get("tiered"):
        want["tier1_bytes"] = want["tier2_bytes"] = 0
    return want


def compare(spec: dict, reported: dict) -> list[str]:
    """Differences between requested and reported, as short phrases (empty = as requested).

    A reported size may differ by less than one KV block (rounding to whole blocks or to GB strings)."""
    want = expected(spec)
    slack = max(int(reported.get("block_bytes") or 0), 1)
    problems = []
    for key in TIERS:
        got = reported.get(key)
        if got is None:
            continue
        if abs(int(got) - want[key]) >= slack and not (want[key] == 0 and int(got) == 0):
            problems.append(f"{key.replace('_bytes', '')} {format_bytes(int(got))} (requested {format_bytes(want[key])})")
    policy = spec.get("engine", {}).get("eviction_policy")
    if policy and reported.get("eviction_policy") and reported["eviction_policy"] != policy:
        problems.append(f"eviction policy {reported['eviction_policy']} (requested {policy})")
    return problems


def verify_capacity(spec: dict, plan, stack) -> dict:
    """Read the capacity the running stack reports and compare; raises CapacityMismatch (one line)."""
    kind = spec["stack"].get("kind")
    if kind == "external":
        return {"verified": False, "reason": "external endpoint: not launched by the cell, capacity not checked"}
    reader = READERS.get(kind, read_not_implemented)
    try:
        reported = reader(spec, plan, stack)
    except (OSError, ValueError) as exc:
        raise CapacityMismatch(f"capacity check: could not read the tier sizes stack {spec['stack']['name']} reports "
                               f"({type(exc).__name__}: {exc})") from None
    if reported is None:
        return {"verified": False, "reason": f"no capacity reader for stack kind {kind!r} yet (stacks.capacity.READERS)"}
    problems = compare(spec, reported)
    if problems:
        raise CapacityMismatch(
            f"capacity check: stack {spec['stack']['name']} reports {'; '.join(problems)} — the tier setting did not "
            f"reach the stack (does its stack config pass it through to the command or env?)")
    return {"verified": True, "requested": expected(spec), "reported": reported}
