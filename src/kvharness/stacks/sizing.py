"""Exact tier sizes and the engine settings both stacks share, as template names for stack configs.

KVBM reads ``DYN_KVBM_CPU_CACHE_GB`` / ``DYN_KVBM_DISK_CACHE_GB`` as floats times 10^9 bytes (Dynamo
``lib/bindings/kvbm/src/block_manager/distributed/leader.rs``), and ``DYN_KVBM_*_OVERRIDE_NUM_BLOCKS``,
when set, wins over the size. So the harness gives both: the block count (exact: bytes // block bytes) and
the size in decimal GB written to the byte (``8 GiB`` -> ``8.589934592``). Writing GiB numbers into a GB
variable made every real tier 7.4 % smaller than its budget.

KVBM's host tier is write-through behind the device pool: with a host cache smaller than the GPU pool
it churns (Dynamo's KVBM guide), so such a cell is refused before launch.
"""

from __future__ import annotations

import os

from kvharness.errors import ConfigError
from kvharness.units import format_bytes

GB = 10**9


def decimal_gb(nbytes: int) -> str:
    """Bytes as decimal GB, exact to the byte (9 decimals), without trailing zeros: 8 GiB -> '8.589934592'."""
    whole, frac = divmod(int(nbytes), GB)
    return f"{whole}.{frac:09d}".rstrip("0").rstrip(".")


def workload_max_seq_len(load: dict, tokens_per_block: int) -> int | None:
    """The longest sequence the cell's workload asks for (prompt + output), rounded up to whole blocks.

    Both stacks of a hypothesis run the same workload, so both get the same ``max_seq_len``."""
    wl = load.get("workload") or {}
    prompts = [wl.get("context_tokens")] + [b.get("max_tokens") for b in wl.get("buckets") or []]
    prompts += [wl.get("max_context_tokens"), wl.get("scan_tokens")]
    if wl.get("kind") == "sessioned_chat":  # the last turn resends the whole history
        first = max([wl.get("first_turn_tokens") or 0] + [b.get("max_tokens") or 0 for b in wl.get("first_turn_buckets") or []])
        turns = int(wl.get("turns") or 1) + int(wl.get("resume_turns") or 0)
        per_turn = int(wl.get("turn_tokens") or 0) + int(wl.get("output_tokens") or 0) + 2
        prompts.append(first + 1 + int(wl.get("output_tokens") or 0) + (turns - 1) * per_turn)
        pressure = wl.get("pressure") or {}
        prompts.append(pressure.get("context_tokens"))
    if wl.get("kind") == "trace" and (load.get("pattern") or {}).get("path"):  # the window's longest row
        from kvharness.loadgen.patterns import trace_rows
        from kvharness.loadgen.workloads import trace_lengths

        full = {"block_tokens": tokens_per_block, **wl}
        rows = trace_rows(load["pattern"])
        if rows:
            return -(-max(sum(trace_lengths(r, full)) for r in rows) // tokens_per_block) * tokens_per_block
    prompts = [int(p) for p in prompts if isinstance(p, (int, float)) and p > 0]
    if not prompts:
        return None
    need = max(prompts) + int(wl.get("output_tokens") or 0)
    tpb = max(int(tokens_per_block), 1)
    return -(-need // tpb) * tpb


def sizing_names(spec: dict, kv_bytes_per_token: int | None) -> dict:
    """Template names: ``tier{0,1,2}_gb`` (decimal, exact), ``kv_block_bytes``, ``tier{1,2}_blocks``,
    ``max_seq_len`` (from the engine section if given, else from the workload)."""
    tiers = spec["tiers"]
    tpb = int(spec["engine"]["tokens_per_block"])
    names: dict = {f"tier{i}_gb": decimal_gb(tiers[f"tier{i}_bytes"]) for i in range(3)}
    # GiB for the stacks that read GiB (vLLM --kv-offloading-size): repr of bytes / 2^30 round-trips exactly
    names.update({f"tier{i}_gib": repr(tiers[f"tier{i}_bytes"] / 2**30) for i in range(3)})
    block = kv_bytes_per_token * tpb if kv_bytes_per_token else None
    names["kv_block_bytes"] = block
    for i in (0, 1, 2):
        names[f"tier{i}_blocks"] = tiers[f"tier{i}_bytes"] // block if block else None
    # SGLang HiCache sizes its host pool as a ratio of the device pool
    names["hicache_ratio"] = repr(tiers["tier1_bytes"] / tiers["tier0_bytes"]) if tiers["tier0_bytes"] else None
    max_seq = spec["engine"].get("max_seq_len") or workload_max_seq_len(spec.get("load") or {}, tpb)
    names["max_seq_len"] = max_seq
    return names


def check_host_tier(spec: dict) -> None:
    """Refuse a tiered cell whose host tier (tier1) is smaller than its device pool (tier0)."""
    if not spec["stack"].get("tiered"):
        return
    t0, t1 = spec["tiers"]["tier0_bytes"], spec["tiers"]["tier1_bytes"]
    if 0 < t1 < t0:
        raise ConfigError(
            f"profiles.{spec['profile']}: tier1 ({format_bytes(t1)}) is smaller than tier0 ({format_bytes(t0)}) for "
            f"tiered stack {spec['stack']['name']}: KVBM's host cache is write-through behind the device pool and "
            f"churns when smaller; make tier1 >= tier0"
        )


def machine_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory_pools(spec: dict, total: int | None = None) -> None:
    """Refuse a launched stack whose KV pool (tier0 on the device, tier1 in host memory; one memory on a
    unified-memory box) is larger than this machine's memory, unless ``remote_machine`` says the stack
    runs elsewhere. An ``external`` stack is not ours to size."""
    if spec["stack"].get("kind") == "external" or spec.get("remote_machine"):
        return
    total = total if total is not None else machine_memory_bytes()
    if not total:
        return
    for tier in ("tier0", "tier1"):
        size = int(spec["tiers"].get(f"{tier}_bytes") or 0)
        if size > total:
            raise ConfigError(
                f"profiles.{spec['profile']}.{tier}: {format_bytes(size)} is larger than this machine's memory "
                f"({format_bytes(total)}) for launched stack {spec['stack']['name']}; shrink it, or set "
                f"remote_machine: true when the stack runs on another machine")


def vllm_transfer_config(names: dict) -> str:
    """vLLM's ``--kv-transfer-config`` for native offloading with a file tier behind the CPU tier
    (OffloadingConnector + TieringOffloadingSpec, vLLM docs/features/kv_offloading_usage.md), as one
    JSON argv element: CPU tier = tier1 bytes, secondary tier = files under the cell's tier-2 dir."""
    import json

    extra = {"spec_name": "TieringOffloadingSpec", "cpu_bytes_to_use": names["tier1_bytes"],
             "block_size": names.get("tokens_per_block"),
             "secondary_tiers": [{"type": "fs", "root_dir": names["tier2_dir"]}]}
    return json.dumps({"kv_connector": "OffloadingConnector", "kv_role": "kv_both",
                       "kv_connector_extra_config": extra}, separators=(",", ":"))
