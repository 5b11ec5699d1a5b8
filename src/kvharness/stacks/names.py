"""The names a stack's command template is filled from (``{tier0_bytes}``, ``{kv_bytes_per_token}``,
``{lora_config}``, ...): stack-layer code, read by the cell runner and by ``kvharness cell --show``."""

from __future__ import annotations

from pathlib import Path

from kvharness.sim.profiles import build_timing_model, kv_bytes_per_token
from kvharness.stacks.sizing import sizing_names, vllm_transfer_config


def template_names(spec: dict, tier2_dir: Path) -> dict:
    tiers = spec["tiers"]
    names = {
        "host": spec["host"],
        "model": spec["model"], "model_path": spec["model_path"],
        "served_model_name": spec["served_model_name"], "precision": spec["precision"],
        "hardware": spec["hardware"], "tier2_dir": str(tier2_dir),
        **{k: tiers[k] for k in ("tier0_bytes", "tier1_bytes", "tier2_bytes")},
        **spec["engine"], **spec["sim"],
    }
    kv_per_token = kv_bytes_per_token(spec["model"], spec["precision"], spec["hardware"])
    names["tier0_tokens"] = tiers["tier0_bytes"] // kv_per_token if kv_per_token else None
    names["kv_bytes_per_token"] = kv_per_token
    names.update(engine_model_names(spec))
    names.update(sizing_names(spec, kv_per_token))  # exact decimal GB, KVBM block counts, max_seq_len
    names["vllm_kv_transfer_config"] = vllm_transfer_config(names)
    names["lora_config"] = lora_engine_config(spec["engine"])
    return names


def engine_model_names(spec: dict) -> dict:
    """Names for an engine model that is not ours (Dynamo's mocker): its tokenizer directory and the host
    tier's copy bandwidths (decimal GB/s) of the simulator's hardware profile, so both engine models move
    a block between device and host at the same speed."""
    from kvharness.stacks.mocker_model import MODEL_DIR

    names = {"mocker_model_dir": str(MODEL_DIR), "tier1_bandwidth_gbps": None}
    try:
        names["tier1_bandwidth_gbps"] = repr(build_timing_model(spec["hardware"], spec["model"], spec["precision"]).bw_g1_g2 / 1e9)
    except (KeyError, ValueError):
        pass
    return names


def lora_engine_config(engine: dict) -> dict | None:
    """TRT-LLM's ``lora_config`` (LLM API options) from the engine's LoRA slots; None (key omitted) when off."""
    if not engine.get("max_loras"):
        return None
    out = {"max_loras": int(engine["max_loras"])}
    if engine.get("max_cpu_loras"):
        out["max_cpu_loras"] = int(engine["max_cpu_loras"])
    return out
